//! `POST /_matrix/key/v2/query` and `GET /_matrix/key/v2/query/{serverName}`
//! (Server-Server API "Querying Keys Through Another Server").
//!
//! Where keys come from, in order: a fresh cache entry; the origin itself;
//! only when the origin cannot be reached, the configured upstream
//! notaries; the last entry held, however stale (its own `valid_until_ts`
//! says so, as the spec asks notaries to keep answering for servers that
//! went offline). A server with none of these is left out of the answer.

use crate::server::{json_response, own_keys};
use crate::{CONCURRENT_FETCHES, NotaryState, Signed, UNKNOWN_KEY_ID_BACKOFF_MS};
use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use hearth_core::http::Query;
use hearth_core::ids::ServerName;
use hearth_core::signed_json::sign_json;
use hearth_core::time::now_ms;
use hearth_core::{ErrCode, Json, MatrixError};
use hearth_federation::keys::ServerKeys;
use http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The request body: server name to key id to criteria. An empty key map
/// asks for every key of that server.
#[derive(Debug, Deserialize)]
pub(crate) struct QueryRequest {
    server_keys: BTreeMap<String, BTreeMap<String, QueryCriteria>>,
}

#[derive(Debug, Default, Deserialize)]
struct QueryCriteria {
    /// Defaults to now, as the spec says.
    minimum_valid_until_ts: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct GetParams {
    minimum_valid_until_ts: Option<i64>,
}

/// `POST /_matrix/key/v2/query`.
pub(crate) async fn query_keys(
    State(state): State<NotaryState>,
    Json(request): Json<QueryRequest>,
) -> Result<Response, MatrixError> {
    let max_servers = state.config.max_servers_per_query;
    if request.server_keys.len() > max_servers {
        return Err(too_large(format!(
            "At most {max_servers} servers can be queried at once"
        )));
    }
    let now = now_ms();
    let mut wanted = Vec::with_capacity(request.server_keys.len());
    for (name, criteria) in &request.server_keys {
        let max_ids = state.config.max_key_ids_per_server;
        if criteria.len() > max_ids {
            return Err(too_large(format!(
                "At most {max_ids} key ids can be queried per server"
            )));
        }
        let server = parse_server_name(name)?;
        let minimum = criteria
            .values()
            .map(|c| c.minimum_valid_until_ts.unwrap_or(now))
            .max()
            .unwrap_or(now);
        wanted.push((
            server,
            criteria.keys().cloned().collect::<Vec<_>>(),
            minimum,
        ));
    }
    let answers = futures_util::stream::iter(wanted)
        .map(|(server, key_ids, minimum)| {
            let state = state.clone();
            async move { lookup(&state, &server, &key_ids, minimum).await }
        })
        .buffered(CONCURRENT_FETCHES)
        .collect::<Vec<_>>()
        .await;
    Ok(json_response(server_keys_body(
        answers.into_iter().flatten(),
    )))
}

/// `GET /_matrix/key/v2/query/{serverName}`: every key of one server.
pub(crate) async fn get_keys(
    State(state): State<NotaryState>,
    Path(server_name): Path<String>,
    Query(params): Query<GetParams>,
) -> Result<Response, MatrixError> {
    let server = parse_server_name(&server_name)?;
    let minimum = params.minimum_valid_until_ts.unwrap_or_else(now_ms);
    let answer = lookup(&state, &server, &[], minimum).await;
    Ok(json_response(server_keys_body(answer)))
}

fn parse_server_name(name: &str) -> Result<ServerName, MatrixError> {
    ServerName::parse(name).map_err(|e| MatrixError::invalid_param(format!("{name:?}: {e}")))
}

fn too_large(error: String) -> MatrixError {
    MatrixError::new(StatusCode::PAYLOAD_TOO_LARGE, ErrCode::TOO_LARGE, error)
}

/// `{"server_keys": [...]}` from objects already serialised and signed.
fn server_keys_body(objects: impl IntoIterator<Item = Bytes>) -> Vec<u8> {
    let mut body = br#"{"server_keys":["#.to_vec();
    for (i, object) in objects.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&object);
    }
    body.extend_from_slice(b"]}");
    body
}

/// One server's keys as served, or `None` when nothing verified is known.
async fn lookup(
    state: &NotaryState,
    server: &ServerName,
    key_ids: &[String],
    minimum_valid_until_ts: i64,
) -> Option<Bytes> {
    if *server == state.server_name {
        return own_keys(state)
            .inspect_err(|e| tracing::warn!(error = %e, "signing our own keys failed"))
            .ok();
    }
    let now = now_ms();
    state.memory().asked.put(server.clone(), now);
    let cached = match state.store.cached(server).await {
        Ok(cached) => cached,
        Err(e) => {
            tracing::warn!(error = %e, "reading cached keys failed");
            None
        }
    };
    if let Some(keys) = &cached
        && is_fresh(keys, key_ids, minimum_valid_until_ts, now)
    {
        metrics::counter!("hearth_notary_cache_total", "result" => "hit").increment(1);
        return signed(state, keys.clone());
    }
    metrics::counter!("hearth_notary_cache_total", "result" => "miss").increment(1);
    if let Some(keys) = fetch(state, server, key_ids, minimum_valid_until_ts).await {
        return signed(state, keys);
    }
    let stale = cached?;
    metrics::counter!("hearth_notary_stale_served_total").increment(1);
    signed(state, stale)
}

/// The point after which an entry is refreshed: half its lifetime, as the
/// spec advises intermediate notaries.
pub(crate) fn refresh_at(keys: &ServerKeys) -> i64 {
    keys.fetched_ts + (keys.usable_until() - keys.fetched_ts).max(0) / 2
}

/// A cached entry answers without a fetch when it lasts long enough, is
/// within half its lifetime, and lists every key id asked for (or was
/// fetched moments ago, so asking again would not help).
fn is_fresh(keys: &ServerKeys, key_ids: &[String], minimum_valid_until_ts: i64, now: i64) -> bool {
    keys.usable_until() >= minimum_valid_until_ts
        && now < refresh_at(keys)
        && key_ids.iter().all(|id| {
            keys.verify_keys.contains_key(id)
                || keys.old_verify_keys.contains_key(id)
                || now - keys.fetched_ts < UNKNOWN_KEY_ID_BACKOFF_MS
        })
}

/// New keys for `server`: from the origin, or when it cannot be reached,
/// from the upstream notaries. `None` when neither gave verified keys.
pub(crate) async fn fetch(
    state: &NotaryState,
    server: &ServerName,
    key_ids: &[String],
    minimum_valid_until_ts: i64,
) -> Option<Arc<ServerKeys>> {
    match state.store.fetch_origin(server).await {
        Ok(keys) => {
            metrics::counter!("hearth_notary_origin_fetches_total", "outcome" => "ok").increment(1);
            Some(keys)
        }
        Err(e) if e.is_unreachable() => {
            metrics::counter!("hearth_notary_origin_fetches_total", "outcome" => "unreachable")
                .increment(1);
            tracing::debug!(%server, error = %e, "origin unreachable");
            from_upstream(state, server, key_ids, minimum_valid_until_ts).await
        }
        Err(e) => {
            metrics::counter!("hearth_notary_origin_fetches_total", "outcome" => "invalid")
                .increment(1);
            tracing::debug!(%server, error = %e, "origin answered with keys that do not verify");
            None
        }
    }
}

/// Asks the upstream notaries in turn; the first verified answer is kept.
async fn from_upstream(
    state: &NotaryState,
    server: &ServerName,
    key_ids: &[String],
    minimum_valid_until_ts: i64,
) -> Option<Arc<ServerKeys>> {
    if state.upstream.is_empty() {
        return None;
    }
    for notary in &state.upstream {
        let found = match notary
            .query(
                state.store.client(),
                server,
                key_ids,
                minimum_valid_until_ts,
            )
            .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(notary = %notary.server_name, error = %e, "upstream notary failed");
                continue;
            }
        };
        let Some(mut keys) = found.into_iter().max_by_key(|k| k.valid_until_ts) else {
            continue;
        };
        if !state.config.keep_upstream_signatures {
            keep_signatures_of(&mut keys.raw, &[server.as_str()]);
        }
        match state.store.insert(keys).await {
            Ok(keys) => {
                metrics::counter!("hearth_notary_upstream_fallbacks_total", "outcome" => "ok")
                    .increment(1);
                return Some(keys);
            }
            Err(e) => tracing::warn!(error = %e, "storing keys from an upstream notary failed"),
        }
    }
    metrics::counter!("hearth_notary_upstream_fallbacks_total", "outcome" => "failed").increment(1);
    None
}

/// Drops every entity's signatures but those of `entities`.
fn keep_signatures_of(object: &mut Value, entities: &[&str]) {
    if let Some(signatures) = object.get_mut("signatures").and_then(Value::as_object_mut) {
        signatures.retain(|entity, _| entities.contains(&entity.as_str()));
    }
}

/// `keys` as served: the origin's signatures kept, any other notary's
/// dropped, ours added. Made once per fetched response and kept.
fn signed(state: &NotaryState, keys: Arc<ServerKeys>) -> Option<Bytes> {
    if let Some(done) = state.memory().signed.get(&keys.server_name)
        && done.keys.fetched_ts == keys.fetched_ts
    {
        return Some(done.json.clone());
    }
    let mut object = keys.raw.clone();
    keep_signatures_of(&mut object, &[keys.server_name.as_str()]);
    for key in &state.keys.current {
        if let Err(e) = sign_json(&mut object, state.server_name.as_str(), key) {
            tracing::warn!(error = %e, "signing keys failed");
            return None;
        }
    }
    let json = match hearth_core::canonical_json::to_string(&object) {
        Ok(json) => Bytes::from(json),
        Err(e) => {
            tracing::warn!(error = %e, "serialising keys failed");
            return None;
        }
    };
    state.memory().signed.put(
        keys.server_name.clone(),
        Arc::new(Signed {
            keys,
            json: json.clone(),
        }),
    );
    Some(json)
}
