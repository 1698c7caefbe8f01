//! Sending phone validation codes (spec "Phone number associations").
//!
//! Three senders, chosen by `identity.sms.sender`:
//! - `log` writes the text (and so the code) to the log at INFO, never the
//!   number: for development only;
//! - `http` POSTs `{"to": "+<E.164>", "text": "..."}` as JSON to an
//!   operator-run gateway, with `Authorization: <http_authorization>`;
//! - `twilio` uses Twilio's Messages API.
//!
//! Gateways are reached through the shared guarded client
//! (`hearth_federation::Outbound`): no redirect is followed, time and size
//! are bounded, and a private address is refused unless the operator says
//! the gateway lives on their network (`sms.http_allow_private`). Failures
//! are logged with the HTTP status only, since gateways' bodies may quote
//! the number.

use crate::config::{SmsConfig, SmsSender};
use hearth_core::config::{Secret, resolve_secret};
use hearth_core::http::RateLimiter;
use hearth_core::{ErrCode, MatrixError};
use hearth_federation::{Outbound, Target};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use std::fmt;
use std::sync::Arc;

const TWILIO_API: &str = "https://api.twilio.com/2010-04-01/Accounts";

pub(crate) struct Sender {
    gateway: Gateway,
    per_number: Arc<RateLimiter<String>>,
}

enum Gateway {
    Log,
    Http {
        target: Target,
        authorization: Option<Secret>,
    },
    Twilio {
        target: Target,
        account_sid: String,
        auth_token: Secret,
        /// A sender number, or a Messaging Service SID (`MG...`).
        from: String,
    },
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gateway = match &self.gateway {
            Gateway::Log => "log".to_owned(),
            Gateway::Http { target, .. } => format!("http {}", target.origin()),
            Gateway::Twilio { .. } => "twilio".to_owned(),
        };
        f.debug_struct("Sender")
            .field("gateway", &gateway)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// Checks the config: each sender's required keys are named when
    /// missing.
    pub(crate) fn new(config: &SmsConfig) -> Result<Self, String> {
        let gateway = match config.sender {
            SmsSender::Log => Gateway::Log,
            SmsSender::Http => {
                let raw = config
                    .http_url
                    .as_deref()
                    .ok_or("identity.sms.sender = \"http\" needs identity.sms.http_url")?;
                let target = Target::parse(raw, config.http_allow_private)
                    .map_err(|e| format!("identity.sms.http_url: {e}"))?;
                Gateway::Http {
                    target,
                    authorization: resolve_secret(
                        "identity.sms.http_authorization",
                        config.http_authorization.as_ref(),
                        config.http_authorization_file.as_deref(),
                    )?,
                }
            }
            SmsSender::Twilio => {
                let missing = |key: &str| {
                    format!("identity.sms.sender = \"twilio\" needs identity.sms.{key}")
                };
                let account_sid = config
                    .twilio_account_sid
                    .clone()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| missing("twilio_account_sid"))?;
                if !account_sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(
                        "identity.sms.twilio_account_sid: letters and digits only".to_owned()
                    );
                }
                let auth_token = resolve_secret(
                    "identity.sms.twilio_auth_token",
                    config.twilio_auth_token.as_ref(),
                    config.twilio_auth_token_file.as_deref(),
                )?
                .ok_or_else(|| missing("twilio_auth_token"))?;
                let from = config
                    .twilio_from
                    .clone()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| missing("twilio_from"))?;
                Gateway::Twilio {
                    target: Target::parse(
                        &format!("{TWILIO_API}/{account_sid}/Messages.json"),
                        false,
                    )
                    .map_err(|e| format!("identity.sms.twilio_account_sid: {e}"))?,
                    account_sid,
                    auth_token,
                    from,
                }
            }
        };
        if matches!(gateway, Gateway::Log) {
            tracing::warn!(
                "identity.sms.sender = \"log\": validation codes are written to the log, not sent"
            );
        }
        Ok(Self {
            gateway,
            per_number: RateLimiter::per_period(
                config.per_number_burst,
                config.per_number_period.0,
            ),
        })
    }

    /// The per-number limit (`sms.per_number_*`).
    pub(crate) fn per_number(&self) -> &RateLimiter<String> {
        &self.per_number
    }

    /// Sends `text` to `msisdn` (E.164 digits without `+`) through
    /// `outbound`. Failure is 400 `M_SEND_ERROR`, as the spec lists it.
    pub(crate) async fn send(
        &self,
        outbound: &Outbound,
        msisdn: &str,
        text: &str,
    ) -> Result<(), MatrixError> {
        let to = format!("+{msisdn}");
        let mut headers = HeaderMap::new();
        let (gateway, target, body) = match &self.gateway {
            Gateway::Log => {
                tracing::info!(text, "SMS not sent (log sender)");
                return Ok(());
            }
            Gateway::Http {
                target,
                authorization,
            } => {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                if let Some(authorization) = authorization {
                    headers.insert(
                        http::header::AUTHORIZATION,
                        header_value(authorization.expose())?,
                    );
                }
                let body = serde_json::json!({ "to": to, "text": text }).to_string();
                ("http", target, body)
            }
            Gateway::Twilio {
                target,
                account_sid,
                auth_token,
                from,
            } => {
                let from_key = if from.starts_with("MG") {
                    "MessagingServiceSid"
                } else {
                    "From"
                };
                let basic = base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("{account_sid}:{}", auth_token.expose()),
                );
                headers.insert(
                    http::header::AUTHORIZATION,
                    header_value(&format!("Basic {basic}"))?,
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("To", &to)
                    .append_pair(from_key, from)
                    .append_pair("Body", text)
                    .finish();
                ("twilio", target, body)
            }
        };
        match outbound
            .send(Method::POST, target, headers, body.into())
            .await
        {
            Ok(response) if response.status.is_success() => {
                tracing::info!(gateway, "SMS sent");
                Ok(())
            }
            Ok(response) => {
                tracing::warn!(gateway, status = %response.status, "SMS gateway refused the message");
                Err(send_error())
            }
            Err(e) => {
                // The error names the host at most, never the path or key.
                tracing::warn!(gateway, error = %e, "SMS gateway could not be reached");
                Err(send_error())
            }
        }
    }
}

/// A secret as a header value; one with a newline cannot be sent.
fn header_value(value: &str) -> Result<HeaderValue, MatrixError> {
    HeaderValue::from_str(value)
        .map_err(|_| MatrixError::internal("an SMS gateway credential is not a valid header value"))
}

fn send_error() -> MatrixError {
    MatrixError::new(
        StatusCode::BAD_REQUEST,
        ErrCode::SEND_ERROR,
        "The SMS could not be sent",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret(hearth_core::Redacted::new(s.to_owned()))
    }

    /// Each sender's required keys are checked at startup and named.
    #[test]
    fn missing_keys_are_named() {
        let mut config = SmsConfig::default();
        assert!(Sender::new(&config).is_ok());

        config.sender = SmsSender::Http;
        assert!(
            Sender::new(&config)
                .unwrap_err()
                .contains("identity.sms.http_url")
        );
        config.http_url = Some("ftp://gateway.example".to_owned());
        assert!(
            Sender::new(&config)
                .unwrap_err()
                .contains("identity.sms.http_url")
        );
        config.http_url = Some("https://gateway.example/send".to_owned());
        assert!(Sender::new(&config).is_ok());

        config.sender = SmsSender::Twilio;
        assert!(
            Sender::new(&config)
                .unwrap_err()
                .contains("identity.sms.twilio_account_sid")
        );
        config.twilio_account_sid = Some("AC123".to_owned());
        assert!(
            Sender::new(&config)
                .unwrap_err()
                .contains("identity.sms.twilio_auth_token")
        );
        config.twilio_auth_token = Some(secret("t"));
        assert!(
            Sender::new(&config)
                .unwrap_err()
                .contains("identity.sms.twilio_from")
        );
        config.twilio_from = Some("+15005550006".to_owned());
        let sender = Sender::new(&config).unwrap();
        assert!(format!("{sender:?}").contains("twilio"));

        config.twilio_account_sid = Some("../x".to_owned());
        assert!(Sender::new(&config).is_err());
    }
}
