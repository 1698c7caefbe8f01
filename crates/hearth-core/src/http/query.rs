//! A query-string extractor whose rejections are Matrix errors: a missing
//! parameter is 400 `M_MISSING_PARAMS` (the Identity Service API's code),
//! a malformed one 400 `M_INVALID_PARAM`.

use crate::{ErrCode, MatrixError};
use axum::extract::FromRequestParts;
use http::StatusCode;
use http::request::Parts;
use serde::de::DeserializeOwned;

#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, MatrixError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection| {
                let detail = rejection.body_text();
                if detail.contains("missing field") {
                    MatrixError::new(
                        StatusCode::BAD_REQUEST,
                        ErrCode::MISSING_PARAMS,
                        format!("Missing query parameter: {detail}"),
                    )
                } else {
                    MatrixError::invalid_param(format!("Invalid query parameter: {detail}"))
                }
            })
    }
}
