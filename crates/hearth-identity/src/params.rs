//! Request bodies as the Identity Service API reads them (spec "API
//! standards" and "Standard error response"): a missing field is 400
//! `M_MISSING_PARAMS`, a field of the wrong type or value 400
//! `M_INVALID_PARAM` (the API's own codes; `M_BAD_JSON` is not among
//! them), a body that is not JSON 400 `M_NOT_JSON`.
//!
//! [`FormOrJson`] also takes `application/x-www-form-urlencoded` bodies,
//! which the spec still allows, deprecated, on `requestToken`,
//! `submitToken` and `/3pid/bind`; every form value is a string.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use hearth_core::{ErrCode, MatrixError};
use http::StatusCode;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde_json::{Map, Value};

/// A JSON body.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Body<T>(pub(crate) T);

/// A JSON or form-urlencoded body.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FormOrJson<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = MatrixError;

    async fn from_request(req: Request, state: &S) -> Result<Self, MatrixError> {
        let bytes = read(req, state).await?;
        parse(json(&bytes)?).map(Body)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for FormOrJson<T> {
    type Rejection = MatrixError;

    async fn from_request(req: Request, state: &S) -> Result<Self, MatrixError> {
        let form = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                mime.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        let bytes = read(req, state).await?;
        let value = if form {
            Value::Object(
                url::form_urlencoded::parse(&bytes)
                    .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                    .collect::<Map<_, _>>(),
            )
        } else {
            json(&bytes)?
        };
        parse(value).map(FormOrJson)
    }
}

async fn read<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, MatrixError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            MatrixError::new(
                rejection.status(),
                ErrCode::TOO_LARGE,
                "Request body is too large",
            )
        } else {
            MatrixError::not_json(rejection.body_text())
        }
    })
}

fn json(bytes: &[u8]) -> Result<Value, MatrixError> {
    serde_json::from_slice(bytes)
        .map_err(|e| MatrixError::not_json(format!("Content not JSON: {e}")))
}

/// Deserialises `value`, mapping serde's complaint to the API's codes.
pub(crate) fn parse<T: DeserializeOwned>(value: Value) -> Result<T, MatrixError> {
    serde_json::from_value(value).map_err(|e| {
        let detail = e.to_string();
        match detail
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            Some(field) => MatrixError::new(
                StatusCode::BAD_REQUEST,
                ErrCode::MISSING_PARAMS,
                format!("Missing parameter: {field}"),
            ),
            None => MatrixError::invalid_param(format!("Invalid parameter: {detail}")),
        }
    })
}

/// `send_attempt`: an integer, or a string of decimal digits. The spec says
/// integer, but matrix-js-sdk sends `sendAttempt.toString()` (Element's
/// Settings → Discovery) and Sydent accepts it, so both are taken.
pub(crate) fn send_attempt<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| de::Error::custom("send_attempt must be an integer")),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse()
            .map_err(|_| de::Error::custom("send_attempt is too large")),
        _ => Err(de::Error::custom(
            "send_attempt must be an integer or a string of decimal digits",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Request {
        sid: String,
        #[serde(deserialize_with = "send_attempt")]
        send_attempt: i64,
    }

    /// Spec "Standard error response": missing is `M_MISSING_PARAMS`, the
    /// wrong type `M_INVALID_PARAM`; `send_attempt` as matrix-js-sdk
    /// sends it (a string) or as the spec has it (an integer).
    #[test]
    fn errors_and_send_attempt_forms() {
        let e = parse::<Request>(serde_json::json!({"send_attempt": 1})).unwrap_err();
        assert_eq!(
            (e.status, e.errcode),
            (StatusCode::BAD_REQUEST, ErrCode::MISSING_PARAMS)
        );
        assert!(e.error.contains("sid"), "{}", e.error);
        let e = parse::<Request>(serde_json::json!({"sid": 1, "send_attempt": 1})).unwrap_err();
        assert_eq!(e.errcode, ErrCode::INVALID_PARAM);
        for (attempt, expected) in [(serde_json::json!(3), 3), (serde_json::json!("12"), 12)] {
            let r: Request =
                parse(serde_json::json!({"sid": "s", "send_attempt": attempt})).unwrap();
            assert_eq!((r.sid.as_str(), r.send_attempt), ("s", expected));
        }
        for bad in [
            serde_json::json!("1.5"),
            serde_json::json!("-1"),
            serde_json::json!(""),
            serde_json::json!(1.5),
            serde_json::json!(null),
            serde_json::json!("99999999999999999999"),
        ] {
            let e =
                parse::<Request>(serde_json::json!({"sid": "s", "send_attempt": bad})).unwrap_err();
            assert_eq!(e.errcode, ErrCode::INVALID_PARAM, "{bad}");
        }
    }
}
