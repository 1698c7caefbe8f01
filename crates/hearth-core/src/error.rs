//! The one error type every handler returns, shaped as the spec's standard
//! error response: `{"errcode": "...", "error": "...", ...extra}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use std::fmt;

/// Error codes from the spec ("Standard error response" and the per-API lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrCode(pub &'static str);

impl ErrCode {
    pub const FORBIDDEN: Self = Self("M_FORBIDDEN");
    pub const UNKNOWN_TOKEN: Self = Self("M_UNKNOWN_TOKEN");
    pub const MISSING_TOKEN: Self = Self("M_MISSING_TOKEN");
    pub const UNAUTHORIZED: Self = Self("M_UNAUTHORIZED");
    pub const BAD_JSON: Self = Self("M_BAD_JSON");
    pub const NOT_JSON: Self = Self("M_NOT_JSON");
    pub const NOT_FOUND: Self = Self("M_NOT_FOUND");
    pub const LIMIT_EXCEEDED: Self = Self("M_LIMIT_EXCEEDED");
    pub const UNRECOGNIZED: Self = Self("M_UNRECOGNIZED");
    pub const UNKNOWN: Self = Self("M_UNKNOWN");
    pub const MISSING_PARAM: Self = Self("M_MISSING_PARAM");
    pub const INVALID_PARAM: Self = Self("M_INVALID_PARAM");
    pub const TOO_LARGE: Self = Self("M_TOO_LARGE");
    pub const TERMS_NOT_SIGNED: Self = Self("M_TERMS_NOT_SIGNED");
    pub const SERVER_NOT_TRUSTED: Self = Self("M_SERVER_NOT_TRUSTED");
    // The Identity Service API's own codes ("Standard error response" and
    // the per-endpoint lists). Note the plural of `M_MISSING_PARAMS`.
    pub const MISSING_PARAMS: Self = Self("M_MISSING_PARAMS");
    pub const INVALID_EMAIL: Self = Self("M_INVALID_EMAIL");
    pub const INVALID_ADDRESS: Self = Self("M_INVALID_ADDRESS");
    pub const EMAIL_SEND_ERROR: Self = Self("M_EMAIL_SEND_ERROR");
    pub const SEND_ERROR: Self = Self("M_SEND_ERROR");
    pub const NO_VALID_SESSION: Self = Self("M_NO_VALID_SESSION");
    pub const SESSION_EXPIRED: Self = Self("M_SESSION_EXPIRED");
    pub const SESSION_NOT_VALIDATED: Self = Self("M_SESSION_NOT_VALIDATED");
    pub const TOKEN_INCORRECT: Self = Self("M_TOKEN_INCORRECT");
    pub const THREEPID_IN_USE: Self = Self("M_THREEPID_IN_USE");
    pub const INVALID_PEPPER: Self = Self("M_INVALID_PEPPER");
}

impl fmt::Display for ErrCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Debug, Clone)]
pub struct MatrixError {
    pub status: StatusCode,
    pub errcode: ErrCode,
    pub error: String,
    /// Extra top-level fields, such as `retry_after_ms` or `mxid`.
    pub extra: Map<String, Value>,
}

impl MatrixError {
    pub fn new(status: StatusCode, errcode: ErrCode, error: impl Into<String>) -> Self {
        Self {
            status,
            errcode,
            error: error.into(),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn bad_json(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrCode::BAD_JSON, error)
    }

    pub fn not_json(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrCode::NOT_JSON, error)
    }

    pub fn forbidden(error: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrCode::FORBIDDEN, error)
    }

    pub fn unauthorized(error: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrCode::UNAUTHORIZED, error)
    }

    pub fn not_found(error: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrCode::NOT_FOUND, error)
    }

    pub fn missing_param(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrCode::MISSING_PARAM, error)
    }

    pub fn invalid_param(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrCode::INVALID_PARAM, error)
    }

    /// 404 for a path no service serves (spec: "Unsupported endpoints").
    pub fn unrecognized() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrCode::UNRECOGNIZED,
            "Unrecognized request",
        )
    }

    /// 405 for a known path with the wrong method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrCode::UNRECOGNIZED,
            "Unrecognized request: method not allowed",
        )
    }

    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrCode::LIMIT_EXCEEDED,
            "Too many requests",
        )
        .with("retry_after_ms", retry_after_ms)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrCode::TOO_LARGE,
            format!("Request body is larger than {limit} bytes"),
        )
    }

    /// 500 whose detail is logged, never sent.
    pub fn internal(detail: impl fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrCode::UNKNOWN,
            "Internal server error",
        )
    }

    pub fn body(&self) -> Value {
        let mut body = self.extra.clone();
        body.insert("errcode".to_owned(), self.errcode.0.into());
        body.insert("error".to_owned(), self.error.clone().into());
        Value::Object(body)
    }
}

impl fmt::Display for MatrixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.errcode,
            self.error
        )
    }
}

impl std::error::Error for MatrixError {}

impl IntoResponse for MatrixError {
    fn into_response(self) -> Response {
        let retry_after = self
            .extra
            .get("retry_after_ms")
            .and_then(Value::as_u64)
            .map(|ms| ms.div_ceil(1000).max(1));
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<sqlx::Error> for MatrixError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(format_args!("database: {e}"))
    }
}
