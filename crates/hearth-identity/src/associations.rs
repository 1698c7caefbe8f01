//! Spec "Establishing associations": validated 3PIDs, bind, unbind.

use crate::threepid::canonical;
use crate::{IdentityState, invites, lookup, sessions};
use axum::extract::{OriginalUri, State};
use hearth_auth::TermsAccepted;
use hearth_core::http::Query;
use hearth_core::ids::{ServerName, UserId};
use hearth_core::signed_json::sign_json;
use hearth_core::time::now_ms;
use hearth_core::{ErrCode, Json, MatrixError};
use hearth_federation::xmatrix::Destination;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

/// Associations are valid for a century, as Sydent signs them.
const ASSOCIATION_LIFETIME_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

#[derive(Debug, Deserialize)]
pub(crate) struct SessionQuery {
    sid: String,
    client_secret: String,
}

/// `GET /3pid/getValidated3pid`.
pub(crate) async fn get_validated_3pid(
    State(state): State<IdentityState>,
    _: TermsAccepted,
    Query(query): Query<SessionQuery>,
) -> Result<Json<Value>, MatrixError> {
    let session = sessions::validated(
        &state.db,
        &query.sid,
        &query.client_secret,
        state.config.session_lifetime.as_millis_i64(),
    )
    .await?;
    Ok(Json(json!({
        "medium": session.medium,
        "address": session.address,
        "validated_at": session.validated_ts,
    })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct BindRequest {
    sid: String,
    client_secret: String,
    mxid: UserId,
}

/// `POST /3pid/bind`: publishes the association, signed with our key, and
/// queues the `onbind` callback for invites waiting on this address.
pub(crate) async fn bind(
    State(state): State<IdentityState>,
    TermsAccepted(user): TermsAccepted,
    Json(request): Json<BindRequest>,
) -> Result<Json<Value>, MatrixError> {
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
        &request.client_secret,
        state.config.session_lifetime.as_millis_i64(),
    )
    .await?;
    let ts = now_ms();
    let mut association = json!({
        "address": session.address,
        "medium": session.medium,
        "mxid": request.mxid,
        "not_before": ts,
        "not_after": ts + ASSOCIATION_LIFETIME_MS,
        "ts": ts,
    });
    let mut tx = state.db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO identity_associations (medium, address, mxid, ts, not_before, not_after)
         VALUES ($1, $2, $3, $4, $4, $5)
         ON CONFLICT (medium, address) DO UPDATE SET mxid = $3, ts = $4, not_before = $4, not_after = $5",
    )
    .bind(&session.medium)
    .bind(&session.address)
    .bind(request.mxid.as_str())
    .bind(ts)
    .bind(ts + ASSOCIATION_LIFETIME_MS)
    .execute(&mut *tx)
    .await?;
    lookup::record_change(
        &mut tx,
        &session.medium,
        &session.address,
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
    state.index.apply(
        &session.medium,
        &session.address,
        Some(request.mxid.as_str()),
    );
    // Deliver any onbind callback just queued now, not at the next poll.
    crate::outbox::wake();
    sign_json(
        &mut association,
        state.server_name.as_str(),
        &state.signing_key,
    )
    .map_err(MatrixError::internal)?;
    tracing::info!("3PID bound");
    Ok(Json(association))
}

#[derive(Debug, Deserialize)]
struct ThreePid {
    medium: String,
    address: String,
}

#[derive(Debug, Deserialize)]
struct UnbindRequest {
    mxid: UserId,
    threepid: ThreePid,
    sid: Option<String>,
    client_secret: Option<String>,
}

/// Verifies Synapse's X-Matrix signature. Synapse signs `destination_is`
/// with the identity server's name as its client gave it, which is the host
/// of `public_base_url` when that differs from `server_name` (the cause of
/// Sydent's "SignatureVerifyException on unbind"), so both are accepted.
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
    Err(MatrixError::forbidden(format!(
        "X-Matrix authentication failed: {}",
        failure.map_or_else(String::new, |e| e.to_string())
    )))
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
    Json(content): Json<Value>,
) -> Result<Json<Value>, MatrixError> {
    let request: UnbindRequest = serde_json::from_value(content.clone())
        .map_err(|e| MatrixError::bad_json(format!("Malformed JSON: {e}")))?;
    let address = canonical(&request.threepid.medium, &request.threepid.address)?;
    // A session proves control of the 3PID; it is checked first, since
    // clients may send it beside a Bearer token (Sydent does the same).
    if let (Some(sid), Some(client_secret)) = (&request.sid, &request.client_secret) {
        let session = sessions::validated(
            &state.db,
            sid,
            client_secret,
            state.config.session_lifetime.as_millis_i64(),
        )
        .await
        .map_err(|e| MatrixError::forbidden(e.error))?;
        if session.medium != request.threepid.medium || session.address != address {
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
    let removed = sqlx::query(
        "DELETE FROM identity_associations WHERE medium = $1 AND address = $2 AND mxid = $3",
    )
    .bind(&request.threepid.medium)
    .bind(&address)
    .bind(request.mxid.as_str())
    .execute(&mut *tx)
    .await?;
    if removed.rows_affected() > 0 {
        lookup::record_change(&mut tx, &request.threepid.medium, &address, None).await?;
    }
    tx.commit().await?;
    if removed.rows_affected() > 0 {
        state.index.apply(&request.threepid.medium, &address, None);
        tracing::info!("3PID unbound");
    }
    Ok(Json(json!({})))
}
