//! Extractors for handlers that need a service token, and those that also
//! need the current terms accepted. The token comes from
//! `Authorization: Bearer`, or from a query parameter the service allows
//! (Synapse still sends `?access_token=` to `/hash_details`).

use crate::Auth;
use axum::extract::{FromRef, FromRequestParts, Query};
use hearth_core::ids::UserId;
use hearth_core::{ErrCode, MatrixError, Redacted};
use http::StatusCode;
use http::request::Parts;
use std::collections::HashMap;

/// A request with a valid token of this service.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user_id: UserId,
    pub token: Redacted<String>,
}

/// An [`Authenticated`] request whose user accepted every current policy.
#[derive(Debug, Clone)]
pub struct TermsAccepted(pub Authenticated);

/// The token a request carries, if any.
pub(crate) fn token(parts: &Parts, auth: &Auth) -> Option<Redacted<String>> {
    if let Some(value) = parts.headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("Bearer")
            .then(|| Redacted::new(token.trim().to_owned()));
    }
    let Query(query) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri).ok()?;
    auth.0
        .query_token_names
        .iter()
        .find_map(|name| query.get(*name))
        .map(|t| Redacted::new(t.clone()))
}

impl<S> FromRequestParts<S> for Authenticated
where
    Auth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, MatrixError> {
        let auth = Auth::from_ref(state);
        let token = token(parts, &auth)
            .ok_or_else(|| MatrixError::unauthorized("No access token was given"))?;
        let user_id = auth
            .token_user(token.expose())
            .await?
            .ok_or_else(|| MatrixError::unauthorized("Unrecognised access token"))?;
        Ok(Self { user_id, token })
    }
}

impl<S> FromRequestParts<S> for TermsAccepted
where
    Auth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, MatrixError> {
        let authenticated = Authenticated::from_request_parts(parts, state).await?;
        let auth = Auth::from_ref(state);
        if !auth.terms_accepted(&authenticated.user_id).await? {
            return Err(MatrixError::new(
                StatusCode::FORBIDDEN,
                ErrCode::TERMS_NOT_SIGNED,
                "Terms of service have not been accepted",
            ));
        }
        Ok(Self(authenticated))
    }
}
