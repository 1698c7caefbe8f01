//! A JSON body extractor whose rejections are Matrix errors: 400 `M_NOT_JSON`
//! for a body that is not JSON, 400 `M_BAD_JSON` for JSON of the wrong shape,
//! 413 `M_TOO_LARGE` past the body limit.

use crate::MatrixError;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = MatrixError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                MatrixError::new(
                    rejection.status(),
                    crate::ErrCode::TOO_LARGE,
                    "Request body is too large",
                )
            } else {
                MatrixError::not_json(rejection.body_text())
            }
        })?;
        // Content-Type is not checked: Synapse and Sydent accept JSON sent
        // without it, and so do clients' expectations.
        // One pass into `T`: no `Value` tree first, which for a lookup of
        // 1,000 addresses cost as much as the lookup. Whether a refused
        // body is JSON at all, which picks the errcode, is asked only then.
        serde_json::from_slice(&bytes).map(Json).map_err(|e| {
            match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                Ok(_) => MatrixError::bad_json(format!("Malformed JSON: {e}")),
                Err(e) => MatrixError::not_json(format!("Content not JSON: {e}")),
            }
        })
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
