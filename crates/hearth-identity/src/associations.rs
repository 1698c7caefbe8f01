//! Spec "Establishing associations": validated 3PIDs, bind, unbind.

use crate::params::{Body, FormOrJson};
use crate::threepid::{self, EMAIL};
use crate::{IdentityState, invites, lookup, sessions};
use axum::extract::{OriginalUri, State};
use hearth_auth::TermsAccepted;
use hearth_core::http::Query;
use hearth_core::ids::{ServerName, UserId};
use hearth_core::signed_json::sign_json;
use hearth_core::time::now_ms;
use hearth_core::{ErrCode, Json, MatrixError, Redacted};
use hearth_federation::xmatrix::{Destination, XMatrixError};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;

/// Associations are valid for a century, as Sydent signs them.
const ASSOCIATION_LIFETIME_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

#[derive(Debug, Deserialize)]
pub(crate) struct SessionQuery {
    sid: String,
    client_secret: Redacted<String>,
}

#[derive(Serialize)]
pub(crate) struct Validated3pid {
    medium: String,
    address: String,
    validated_at: i64,
}

/// `GET /3pid/getValidated3pid`.
pub(crate) async fn get_validated_3pid(
    State(state): State<IdentityState>,
    _: TermsAccepted,
    query: Query<SessionQuery>,
) -> Result<Json<Validated3pid>, MatrixError> {
    v1_get_validated_3pid(State(state), query).await
}

/// `GET /_matrix/identity/api/v1/3pid/getValidated3pid`, for Synapse's
/// msisdn delegation (no token), and the v2 handler's body.
pub(crate) async fn v1_get_validated_3pid(
    State(state): State<IdentityState>,
    Query(query): Query<SessionQuery>,
) -> Result<Json<Validated3pid>, MatrixError> {
    let session = sessions::validated(
        &state.db,
        &query.sid,
        query.client_secret.expose(),
        state.config.session_lifetime.as_millis_i64(),
    )
    .await?;
    Ok(Json(Validated3pid {
        validated_at: session.validated_ts.unwrap_or(session.updated_ts),
        medium: session.medium,
        address: session.address,
    }))
}

#[derive(Debug, Deserialize)]
pub(crate) struct BindRequest {
    sid: String,
    client_secret: Redacted<String>,
    mxid: UserId,
}

/// The signed association (spec "Establishing associations").
#[derive(Serialize)]
pub(crate) struct Association {
    address: String,
    medium: String,
    mxid: UserId,
    not_before: i64,
    not_after: i64,
    ts: i64,
    #[serde(skip_serializing_if = "Value::is_null")]
    signatures: Value,
}

/// `POST /3pid/bind`: publishes the association, signed with our key, and
/// queues the `onbind` callback for invites waiting on this address.
pub(crate) async fn bind(
    State(state): State<IdentityState>,
    TermsAccepted(user): TermsAccepted,
    FormOrJson(request): FormOrJson<BindRequest>,
) -> Result<Json<Association>, MatrixError> {
    if request.mxid != user.user_id {
        return Err(MatrixError::new(
            StatusCode::FORBIDDEN,
            ErrCode::UNAUTHORIZED,
            "The token's user and mxid differ",
        ));
    }
    let session = sessions::validated(
        &state.db,
        &request.sid,
        request.client_secret.expose(),
        state.config.session_lifetime.as_millis_i64(),
    )
    .await?;
    let ts = now_ms();
    let not_after = ts + ASSOCIATION_LIFETIME_MS;
    let mut tx = state.db.pool().begin().await?;
    // A binding that had another lower-cased form loses it from lookups.
    let previous = sqlx::query(
        "SELECT lookup_alias FROM identity_associations WHERE medium = $1 AND address = $2",
    )
    .bind(&session.medium)
    .bind(&session.address)
    .fetch_optional(&mut *tx)
    .await?
    .map(|row| row.try_get::<Option<String>, _>("lookup_alias"))
    .transpose()?
    .flatten()
    .filter(|old| Some(old) != session.lookup_alias.as_ref());
    if let Some(old) = &previous {
        lookup::record_change(&mut tx, &session.medium, old, None, None).await?;
    }
    sqlx::query(
        "INSERT INTO identity_associations (medium, address, mxid, ts, not_before, not_after, lookup_alias)
         VALUES ($1, $2, $3, $4, $4, $5, $6)
         ON CONFLICT (medium, address) DO UPDATE
         SET mxid = $3, ts = $4, not_before = $4, not_after = $5, lookup_alias = $6",
    )
    .bind(&session.medium)
    .bind(&session.address)
    .bind(request.mxid.as_str())
    .bind(ts)
    .bind(not_after)
    .bind(&session.lookup_alias)
    .execute(&mut *tx)
    .await?;
    lookup::record_change(
        &mut tx,
        &session.medium,
        &session.address,
        session.lookup_alias.as_deref(),
        Some(request.mxid.as_str()),
    )
    .await?;
    invites::on_bound(
        &state,
        &mut tx,
        &session.medium,
        &session.address,
        &request.mxid,
    )
    .await?;
    tx.commit().await?;
    if let Some(old) = &previous {
        state.index.apply(&session.medium, old, None, None);
    }
    state.index.apply(
        &session.medium,
        &session.address,
        session.lookup_alias.as_deref(),
        Some(request.mxid.as_str()),
    );
    // Deliver any onbind callback just queued now, not at the next poll.
    crate::outbox::wake();
    let mut association = Association {
        address: session.address,
        medium: session.medium,
        mxid: request.mxid,
        not_before: ts,
        not_after,
        ts,
        signatures: Value::Null,
    };
    let mut signed = serde_json::to_value(&association).map_err(MatrixError::internal)?;
    sign_json(&mut signed, state.server_name.as_str(), &state.signing_key)
        .map_err(MatrixError::internal)?;
    association.signatures = signed["signatures"].take();
    tracing::info!("3PID bound");
    Ok(Json(association))
}

#[derive(Debug, Deserialize)]
struct ThreePid {
    medium: String,
    address: Redacted<String>,
}

#[derive(Debug, Deserialize)]
struct UnbindRequest {
    mxid: UserId,
    threepid: ThreePid,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    client_secret: Option<Redacted<String>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Empty {}

/// Verifies Synapse's X-Matrix signature. Synapse signs `destination_is`
/// with the identity server's name as its client gave it, which is the host
/// of `public_base_url` when that differs from `server_name` (the cause of
/// Sydent's "SignatureVerifyException on unbind"), so both are accepted.
///
/// What went wrong with the caller's own header is said; what went wrong
/// checking it against the origin's keys (fetching them involves DNS and
/// another server, whose words must not come back to an unauthenticated
/// caller) is one generic error, the detail logged at debug.
async fn verify_homeserver(
    state: &IdentityState,
    authorization: &str,
    path: &str,
    content: &Value,
) -> Result<ServerName, MatrixError> {
    let mut names = vec![state.server_name.clone()];
    names.extend(public_host(&state.public_base_url).filter(|p| p != &state.server_name));
    let mut failure = None;
    for name in names {
        let ours = Destination::IdentityServer(name);
        match state
            .keys
            .verify_request(authorization, "POST", path, Some(content), &ours)
            .await
        {
            Ok(origin) => return Ok(origin),
            Err(e) => failure = Some(e),
        }
    }
    Err(match failure {
        Some(XMatrixError::Signature(detail)) => {
            tracing::debug!(%detail, "X-Matrix verification of an unbind failed");
            MatrixError::forbidden("The request's X-Matrix signature could not be verified")
        }
        Some(e) => MatrixError::forbidden(format!("X-Matrix authentication failed: {e}")),
        None => MatrixError::forbidden("X-Matrix authentication failed"),
    })
}

/// `host[:port]` of a base URL, as a server name.
fn public_host(base_url: &str) -> Option<ServerName> {
    let uri: http::Uri = base_url.parse().ok()?;
    ServerName::parse(uri.authority()?.as_str()).ok()
}

/// `POST /3pid/unbind`: either signed (X-Matrix) by the homeserver that
/// owns `mxid`, or proven with a validated session for the same 3PID.
/// Removing a binding that does not exist is not an error.
pub(crate) async fn unbind(
    State(state): State<IdentityState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Body(content): Body<Value>,
) -> Result<Json<Empty>, MatrixError> {
    let request: UnbindRequest = crate::params::parse(content.clone())?;
    let medium = request.threepid.medium.as_str();
    // Bindings made before addresses were case-folded are stored
    // lower-cased: both forms are removed.
    let (address, lower) = if medium == EMAIL {
        let email = threepid::email(request.threepid.address.expose())?;
        (email.canonical, email.lower)
    } else {
        (
            threepid::canonical(medium, request.threepid.address.expose())?,
            None,
        )
    };
    // A session proves control of the 3PID; it is checked first, since
    // clients may send it beside a Bearer token (Sydent does the same).
    if let (Some(sid), Some(client_secret)) = (&request.sid, &request.client_secret) {
        let session = sessions::validated(
            &state.db,
            sid,
            client_secret.expose(),
            state.config.session_lifetime.as_millis_i64(),
        )
        .await
        .map_err(|e| MatrixError::forbidden(e.error))?;
        if session.medium != medium || session.address != address {
            return Err(MatrixError::forbidden("The session validated another 3PID"));
        }
    } else if let Some(authorization) = headers.get(http::header::AUTHORIZATION) {
        let authorization = authorization
            .to_str()
            .map_err(|_| MatrixError::forbidden("Malformed Authorization header"))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let origin = verify_homeserver(&state, authorization, path, &content).await?;
        if &origin != request.mxid.server_name() {
            return Err(MatrixError::forbidden(
                "Only the homeserver of mxid may unbind it",
            ));
        }
    } else {
        return Err(MatrixError::forbidden(
            "Unbinding needs an X-Matrix signature or sid and client_secret",
        ));
    }
    let mut tx = state.db.pool().begin().await?;
    let mut removed = Vec::new();
    for address in std::iter::once(&address).chain(lower.as_ref()) {
        let row = sqlx::query(
            "SELECT lookup_alias FROM identity_associations
             WHERE medium = $1 AND address = $2 AND mxid = $3",
        )
        .bind(medium)
        .bind(address)
        .bind(request.mxid.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { continue };
        let alias: Option<String> = row.try_get("lookup_alias")?;
        sqlx::query("DELETE FROM identity_associations WHERE medium = $1 AND address = $2")
            .bind(medium)
            .bind(address)
            .execute(&mut *tx)
            .await?;
        lookup::record_change(&mut tx, medium, address, alias.as_deref(), None).await?;
        removed.push((address.clone(), alias));
    }
    tx.commit().await?;
    for (address, alias) in &removed {
        state.index.apply(medium, address, alias.as_deref(), None);
    }
    if !removed.is_empty() {
        tracing::info!("3PID unbound");
    }
    Ok(Json(Empty {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 6 item 8: client secrets and 3PIDs never show in `Debug`.
    #[test]
    fn requests_redact_secrets_and_3pids() {
        let bind: BindRequest = crate::params::parse(serde_json::json!({
            "sid": "1", "client_secret": "s3cret-cs", "mxid": "@a:hs.test",
        }))
        .unwrap();
        let unbind: UnbindRequest = crate::params::parse(serde_json::json!({
            "mxid": "@a:hs.test", "sid": "1", "client_secret": "s3cret-cs",
            "threepid": {"medium": "email", "address": "who@example.org"},
        }))
        .unwrap();
        let query: SessionQuery = crate::params::parse(serde_json::json!({
            "sid": "1", "client_secret": "s3cret-cs",
        }))
        .unwrap();
        let shown = format!("{bind:?} {unbind:?} {query:?}");
        for secret in ["s3cret-cs", "who@example.org"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
