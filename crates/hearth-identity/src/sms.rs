//! Sending phone validation codes (spec "Phone number associations").
//!
//! Three senders, chosen by `identity.sms.sender`:
//! - `log` writes the text (and so the code) to the log at INFO, never the
//!   number: for development only;
//! - `http` POSTs `{"to": "+<E.164>", "text": "..."}` as JSON to an
//!   operator-run gateway, with `Authorization: <http_authorization>`;
//! - `twilio` uses Twilio's Messages API.
//!
//! No redirect is followed and no address guard applies: the gateway URL is
//! the operator's own choice (often a service on their private network), so
//! it is the one destination these requests may reach, and a gateway cannot
//! bounce them anywhere else. Failures are logged with the HTTP status only,
//! since gateways' bodies may quote the number.

use crate::config::{SmsConfig, SmsSender};
use hearth_core::config::{Secret, resolve_secret};
use hearth_core::http::RateLimiter;
use hearth_core::{ErrCode, MatrixError};
use http::StatusCode;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The whole exchange with a gateway, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TWILIO_API: &str = "https://api.twilio.com/2010-04-01/Accounts";

pub(crate) struct Sender {
    gateway: Gateway,
    per_number: Arc<RateLimiter<String>>,
}

enum Gateway {
    Log,
    Http {
        client: reqwest::Client,
        url: reqwest::Url,
        authorization: Option<Secret>,
    },
    Twilio {
        client: reqwest::Client,
        url: String,
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
            Gateway::Http { url, .. } => format!("http {}", url.origin().ascii_serialization()),
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
                let url = reqwest::Url::parse(raw)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .ok_or_else(|| {
                        format!("identity.sms.http_url {raw:?}: not an http or https URL")
                    })?;
                Gateway::Http {
                    client: http_client()?,
                    url,
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
                    client: http_client()?,
                    url: format!("{TWILIO_API}/{account_sid}/Messages.json"),
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

    /// Sends `text` to `msisdn` (E.164 digits without `+`). Failure is 500
    /// `M_SEND_ERROR`.
    pub(crate) async fn send(&self, msisdn: &str, text: &str) -> Result<(), MatrixError> {
        let to = format!("+{msisdn}");
        let (gateway, result) = match &self.gateway {
            Gateway::Log => {
                tracing::info!(text, "SMS not sent (log sender)");
                return Ok(());
            }
            Gateway::Http {
                client,
                url,
                authorization,
            } => {
                let mut request = client
                    .post(url.clone())
                    .json(&serde_json::json!({ "to": to, "text": text }));
                if let Some(authorization) = authorization {
                    request = request.header(http::header::AUTHORIZATION, authorization.expose());
                }
                ("http", request.send().await)
            }
            Gateway::Twilio {
                client,
                url,
                account_sid,
                auth_token,
                from,
            } => {
                let from_key = if from.starts_with("MG") {
                    "MessagingServiceSid"
                } else {
                    "From"
                };
                let request = client
                    .post(url)
                    .basic_auth(account_sid, Some(auth_token.expose()))
                    .form(&[
                        ("To", to.as_str()),
                        (from_key, from.as_str()),
                        ("Body", text),
                    ]);
                ("twilio", request.send().await)
            }
        };
        match result {
            Ok(response) if response.status().is_success() => {
                tracing::info!(gateway, "SMS sent");
                Ok(())
            }
            Ok(response) => {
                tracing::warn!(gateway, status = %response.status(), "SMS gateway refused the message");
                Err(send_error())
            }
            Err(e) => {
                // Without the URL: an operator's may carry an API key.
                tracing::warn!(gateway, error = %e.without_url(), "SMS gateway could not be reached");
                Err(send_error())
            }
        }
    }
}

fn send_error() -> MatrixError {
    MatrixError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrCode("M_SEND_ERROR"),
        "The SMS could not be sent",
    )
}

/// A client with rustls on ring and the system's roots, bounded in time,
/// that follows no redirect.
fn http_client() -> Result<reqwest::Client, String> {
    let roots = hearth_federation::connect::root_store(None)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS for SMS gateways: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("Hearth/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client for SMS gateways: {e}"))
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
