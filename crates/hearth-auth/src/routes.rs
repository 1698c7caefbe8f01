//! Handlers every service mounts under its own prefix: `GET /account`,
//! `POST /account/logout`, `GET /terms`, `POST /terms`, and the policy
//! documents Hearth serves itself.

use crate::extract::token;
use crate::{Auth, Authenticated, TermsAccepted, store};
use axum::extract::{FromRef, FromRequestParts, Path, State};
use axum::response::{IntoResponse, Response};
use hearth_core::{ErrCode, Json, MatrixError};
use http::StatusCode;
use http::request::Parts;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `GET /account` answer.
#[derive(Debug, Serialize)]
pub struct Account {
    pub user_id: hearth_core::ids::UserId,
}

/// An answer with nothing to say: `{}`.
#[derive(Debug, Serialize)]
pub struct Empty {}

/// `GET /account`: who the token belongs to. Requires terms, so clients
/// learn here that they must accept them (Element's flow does).
pub async fn get_account(TermsAccepted(user): TermsAccepted) -> Json<Account> {
    Json(Account {
        user_id: user.user_id,
    })
}

/// A token that may be unknown: logout reports that as `M_UNKNOWN_TOKEN`.
#[derive(Debug)]
pub struct LogoutToken(Option<hearth_core::Redacted<String>>);

impl<S> FromRequestParts<S> for LogoutToken
where
    Auth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, MatrixError> {
        Ok(Self(token(parts, &Auth::from_ref(state))))
    }
}

/// `POST /account/logout`: invalidates the token. Needs no terms and may
/// come without a body.
pub async fn logout(
    State(auth): State<Auth>,
    LogoutToken(token): LogoutToken,
) -> Result<Json<Empty>, MatrixError> {
    let token = token.ok_or_else(|| MatrixError::unauthorized("No access token was given"))?;
    if auth.delete_token(token.expose()).await? {
        Ok(Json(Empty {}))
    } else {
        Err(MatrixError::new(
            StatusCode::UNAUTHORIZED,
            ErrCode::UNKNOWN_TOKEN,
            "Unrecognised access token",
        ))
    }
}

/// `GET /terms`: the current policies; no auth.
pub async fn get_terms(State(auth): State<Auth>) -> Json<Value> {
    Json(auth.terms().to_json())
}

#[derive(Debug, Deserialize)]
pub struct AcceptTerms {
    user_accepts: Vec<String>,
}

/// `POST /terms`: records acceptance. Never answers `M_TERMS_NOT_SIGNED`.
/// URLs that are not documents of current policies are ignored: clients
/// send every URL they ever accepted, for any service.
pub async fn accept_terms(
    State(auth): State<Auth>,
    user: Authenticated,
    Json(body): Json<AcceptTerms>,
) -> Result<Json<Empty>, MatrixError> {
    let terms = auth.terms();
    let urls: Vec<&str> = body
        .user_accepts
        .iter()
        .map(String::as_str)
        .filter(|u| terms.is_current_url(u))
        .collect();
    store::accept_urls(&auth.0.db, auth.0.service, &user.user_id, &urls).await?;
    Ok(Json(Empty {}))
}

/// `GET /_hearth/terms/<service>/{id}/{version}/{lang}`: a policy document
/// configured as a file (mounted by [`Auth::terms_document_route`]).
pub(crate) async fn terms_document(
    State(auth): State<Auth>,
    Path((id, version, lang)): Path<(String, String, String)>,
) -> Result<Response, MatrixError> {
    let file = auth
        .terms()
        .document(&id, &version, &lang)
        .cloned()
        .ok_or_else(|| MatrixError::not_found("No such policy document"))?;
    let body = tokio::fs::read(file)
        .await
        .map_err(|e| MatrixError::internal(format_args!("reading a policy document: {e}")))?;
    Ok((
        [(http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response())
}
