//! The REST calls Element makes to an integration manager
//! (`ScalarAuthClient`), plus MSC1961's register and MSC1957's
//! `.well-known`. Element always appends `v=1.1` and sends the token as
//! `?scalar_token=`; `GET /account` comes from `hearth-auth`.

use crate::{IntegrationsState, assets};
use hearth_auth::{OpenIdCredentials, TermsAccepted};
use hearth_core::http::Query;
use hearth_core::time::now_ms;
use hearth_core::{ErrCode, Json, MatrixError};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Mutex;

/// The API version Element speaks (`imApiVersion`).
const API_VERSION: &str = "1.1";

#[derive(Debug, Deserialize)]
pub(crate) struct Version {
    v: Option<String>,
}

/// Element always sends `v=1.1`; other clients may omit it. A version we
/// do not speak is refused rather than half understood.
fn check_version(version: &Version) -> Result<(), MatrixError> {
    match version.v.as_deref() {
        None | Some(API_VERSION) => Ok(()),
        Some(other) => Err(MatrixError::invalid_param(format!(
            "Unsupported API version {other:?}; this server speaks v={API_VERSION}"
        ))),
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct ScalarToken {
    scalar_token: String,
}

/// `POST {rest}/register?v=1.1`: the homeserver's OpenID object in, a
/// `scalar_token` out (`ScalarAuthClient.exchangeForScalarToken`).
pub(crate) async fn register(
    axum::extract::State(state): axum::extract::State<IntegrationsState>,
    Query(version): Query<Version>,
    Json(credentials): Json<OpenIdCredentials>,
) -> Result<Json<ScalarToken>, MatrixError> {
    check_version(&version)?;
    let (_, token) = state.auth.register(&credentials).await?;
    Ok(Json(ScalarToken {
        scalar_token: token,
    }))
}

#[derive(Debug, Serialize)]
pub(crate) struct Token {
    token: String,
}

/// `POST /_matrix/integrations/v1/account/register` (MSC1961): `{"token"}`.
pub(crate) async fn register_msc1961(
    axum::extract::State(state): axum::extract::State<IntegrationsState>,
    Json(credentials): Json<OpenIdCredentials>,
) -> Result<Json<Token>, MatrixError> {
    let (_, token) = state.auth.register(&credentials).await?;
    Ok(Json(Token { token }))
}

#[derive(Debug, Deserialize)]
pub(crate) struct TitleLookup {
    curl: String,
}

/// Titles looked up recently, so that a UI typing a URL does not refetch
/// it; bounded, and entries expire.
#[derive(Debug, Default)]
pub(crate) struct TitleCache(Mutex<HashMap<String, (Option<String>, i64)>>);

const TITLE_CACHE_ENTRIES: usize = 512;
const TITLE_CACHE_MS: i64 = 3_600_000;

impl TitleCache {
    fn get(&self, url: &str, now: i64) -> Option<(Option<String>, i64)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(url).filter(|(_, expires)| *expires > now).cloned()
    }

    fn put(&self, url: String, title: Option<String>, expires: i64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= TITLE_CACHE_ENTRIES {
            let now = now_ms();
            map.retain(|_, (_, e)| *e > now);
            if map.len() >= TITLE_CACHE_ENTRIES {
                map.clear();
            }
        }
        map.insert(url, (title, expires));
    }
}

/// The URL `curl` stands for. Element encodes it twice
/// (`encodeURIComponent`, then `searchParams.set`), so after the query is
/// decoded it may still be percent-encoded; other clients encode once.
fn page_url(curl: &str) -> Result<url::Url, MatrixError> {
    let parsed = url::Url::parse(curl).ok().or_else(|| {
        let once: String = url::form_urlencoded::parse(format!("u={curl}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())?;
        url::Url::parse(&once).ok()
    });
    parsed
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| MatrixError::invalid_param("curl must be an http or https URL"))
}

/// `GET {rest}/widgets/title_lookup?curl=`: the page's title in Scalar's
/// shape; Element reads `page_title_cache_item.cached_title`.
pub(crate) async fn title_lookup(
    axum::extract::State(state): axum::extract::State<IntegrationsState>,
    _user: TermsAccepted,
    Query(query): Query<TitleLookup>,
) -> Result<Json<Value>, MatrixError> {
    let url = page_url(&query.curl)?;
    let now = now_ms();
    let (title, expires, cached) = match state.titles.get(url.as_str(), now) {
        Some((title, expires)) => (title, expires, true),
        None => {
            let body = state.pages.fetch(&url).await.map_err(|e| {
                if e.is_refused() {
                    MatrixError::forbidden(format!("This URL cannot be looked up: {e}"))
                } else {
                    tracing::info!(error = %e, "title lookup failed");
                    MatrixError::new(
                        StatusCode::BAD_GATEWAY,
                        ErrCode::UNKNOWN,
                        format!("Could not fetch the page: {e}"),
                    )
                }
            })?;
            let title = crate::title::find_title(&body);
            let expires = now + TITLE_CACHE_MS;
            state
                .titles
                .put(url.as_str().to_owned(), title.clone(), expires);
            (title, expires, false)
        }
    };
    Ok(Json(json!({
        "cached_response": cached,
        "page_title_cache_item": {
            "expires": expires,
            "cached_response_err": null,
            "cached_title": title,
        },
        "error": null,
    })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct AssetsState {
    widget_type: String,
    widget_id: String,
    state: String,
}

/// `GET {rest}/widgets/set_assets_state` (a GET because Element sends one):
/// records whether a widget's assets are enabled. Element wants a 2xx with
/// a non-empty body.
pub(crate) async fn set_assets_state(
    axum::extract::State(state): axum::extract::State<IntegrationsState>,
    TermsAccepted(user): TermsAccepted,
    Query(query): Query<AssetsState>,
) -> Result<Json<Value>, MatrixError> {
    if !matches!(query.state.as_str(), "enable" | "disable") {
        return Err(MatrixError::invalid_param(
            "state must be \"enable\" or \"disable\"",
        ));
    }
    if query.widget_type.is_empty() || query.widget_id.is_empty() {
        return Err(MatrixError::invalid_param(
            "widget_type and widget_id must not be empty",
        ));
    }
    assets::set_state(
        &state.db,
        &user.user_id,
        &query.widget_type,
        &query.widget_id,
        &query.state,
    )
    .await?;
    Ok(Json(json!({})))
}

/// `GET /.well-known/matrix/integrations` (MSC1957 domain discovery).
/// Element no longer reads it, but other clients may.
pub(crate) async fn well_known(
    axum::extract::State(state): axum::extract::State<IntegrationsState>,
) -> Json<Value> {
    Json(json!({
        "m.integrations_widget": {
            "url": format!("{}/element", state.public_base_url),
            "data": { "api_url": format!("{}/api", state.public_base_url) },
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ScalarAuthClient.getScalarPageTitle` encodes twice; a plain client once.
    #[test]
    fn curl_is_decoded_once_more_when_element_encoded_it_twice() {
        let once = page_url("https://example.org/a?b=c").unwrap();
        assert_eq!(once.as_str(), "https://example.org/a?b=c");
        let twice = page_url("https%3A%2F%2Fexample.org%2Fa%3Fb%3Dc").unwrap();
        assert_eq!(twice, once);
        assert!(page_url("javascript%3Aalert(1)").is_err());
        assert!(page_url("file:///etc/passwd").is_err());
    }

    #[test]
    fn version_1_1_or_none() {
        assert!(check_version(&Version { v: None }).is_ok());
        assert!(
            check_version(&Version {
                v: Some("1.1".to_owned())
            })
            .is_ok()
        );
        assert!(
            check_version(&Version {
                v: Some("2".to_owned())
            })
            .is_err()
        );
    }
}
