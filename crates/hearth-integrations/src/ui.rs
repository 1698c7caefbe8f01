//! The pages: the integration manager UI Element opens at
//! `integrations_ui_url` (`/element`), and the widget wrappers
//! (`/widgets/generic`, `/widgets/video`, `/widgets/jitsi`). HTML is
//! rendered here from compiled-in templates; each page loads at most one
//! small script and one stylesheet from this server, and nothing from any
//! other host (the wrappers frame only the widget itself).

use crate::IntegrationsState;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hearth_auth::TermsAccepted;
use hearth_core::http::Query;
use hearth_core::templates::Templates;
use hearth_core::{ErrCode, MatrixError};
use hearth_service::ServiceError;
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::json;

const UI_TEMPLATE: &str = include_str!("../templates/ui.html");
const FRAME_TEMPLATE: &str = include_str!("../templates/frame.html");
const JITSI_TEMPLATE: &str = include_str!("../templates/jitsi.html");
const APP_JS: &str = include_str!("../static/app.js");
const APP_CSS: &str = include_str!("../static/app.css");
const JITSI_JS: &str = include_str!("../static/jitsi.js");
const WIDGET_CSS: &str = include_str!("../static/widget.css");

/// The UI talks only to this server and is framed by Element, whose origin
/// the operator may host anywhere. `data:` images: the empty favicon that
/// spares a request.
const UI_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors *";

/// The page templates, built in and overridable from `templates_dir`.
#[derive(Debug)]
pub(crate) struct Pages(Templates);

impl Pages {
    pub(crate) fn new(dir: Option<&std::path::Path>) -> Result<Self, ServiceError> {
        static BUILT_IN: [(&str, &str); 3] = [
            ("ui.html", UI_TEMPLATE),
            ("frame.html", FRAME_TEMPLATE),
            ("jitsi.html", JITSI_TEMPLATE),
        ];
        Templates::load(
            &BUILT_IN,
            dir,
            "integrations.templates_dir",
            serde_json::Map::new(),
        )
        .map(Self)
        .map_err(|e| ServiceError::Config(e.to_string()))
    }

    fn render(&self, name: &str, context: &serde_json::Value) -> Result<String, MatrixError> {
        self.0.render(name, context)
    }
}

pub(crate) fn routes() -> Router<IntegrationsState> {
    Router::new()
        .route("/element", get(manager))
        // Dimension answered at /riot too; its users' configs may say so.
        .route("/riot", get(manager))
        .route(
            "/element/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route(
            "/element/app.css",
            get(|| async { asset("text/css", APP_CSS) }),
        )
        .route("/element/bots/{index}/avatar", get(bot_avatar))
        .route("/widgets/generic", get(generic))
        .route("/widgets/video", get(video))
        .route("/widgets/jitsi", get(jitsi))
        .route(
            "/widgets/jitsi.js",
            get(|| async { asset("text/javascript", JITSI_JS) }),
        )
        .route(
            "/widgets/widget.css",
            get(|| async { asset("text/css", WIDGET_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Compiled in: they change only with the binary.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// An HTML page with its CSP. `no-referrer`: the UI's own URL carries the
/// user's token, and a wrapper's carries Element's `parentUrl`.
fn page(status: StatusCode, csp: &str, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(csp) = HeaderValue::from_str(csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What Element puts in the UI URL (`getScalarInterfaceUrlForRoom`); the
/// token itself is read by the `TermsAccepted` extractor.
#[derive(Debug, Deserialize)]
pub(crate) struct Opening {
    room_name: Option<String>,
    theme: Option<String>,
    screen: Option<String>,
}

/// One entry of the "Add a widget" catalog.
#[derive(Debug, Serialize)]
struct Kind {
    kind: &'static str,
    title: &'static str,
    blurb: &'static str,
    default_name: &'static str,
}

/// The editor a `screen=type_<widget type>` opens: Element's and the
/// draft spec's names, and the legacy ones Dimension documents.
fn editor_for_screen(screen: &str) -> Option<&'static str> {
    Some(match screen.strip_prefix("type_")? {
        "jitsi" | "m.jitsi" => "jitsi",
        "etherpad" | "m.etherpad" => "etherpad",
        "grafana" | "m.grafana" => "dashboard",
        "youtube" | "m.video" | "video" | "twitch" => "video",
        "customwidget" | "m.custom" | "googledocs" | "m.googledoc" => "custom",
        _ => return None,
    })
}

#[derive(Debug, Serialize)]
struct PolicyLink {
    name: String,
    url: String,
}

/// The policies to accept: one document per policy, English first.
fn policy_links(terms: &serde_json::Value) -> Vec<PolicyLink> {
    let Some(policies) = terms["policies"].as_object() else {
        return Vec::new();
    };
    policies
        .values()
        .filter_map(|policy| {
            let languages = policy.as_object()?;
            let doc = languages.get("en").or_else(|| {
                languages
                    .iter()
                    .find(|(k, v)| *k != "version" && v.is_object())
                    .map(|(_, v)| v)
            })?;
            Some(PolicyLink {
                name: doc["name"].as_str()?.to_owned(),
                url: doc["url"].as_str()?.to_owned(),
            })
        })
        .collect()
}

/// `GET /element`: the manager, or the terms to accept first, or a note
/// that Element's token is not (or no longer) valid.
async fn manager(
    State(state): State<IntegrationsState>,
    user: Result<TermsAccepted, MatrixError>,
    Query(opening): Query<Opening>,
) -> Result<Response, MatrixError> {
    let theme = if opening.theme.as_deref().is_some_and(|t| t.contains("dark")) {
        "dark"
    } else {
        "light"
    };
    let catalog = state.catalog.load_full();
    let catalog = &catalog.ui;
    let mut kinds = Vec::new();
    if catalog.jitsi_domain.is_some() {
        kinds.push(Kind {
            kind: "jitsi",
            title: "Jitsi conference",
            blurb: "Video and voice calls on this server's Jitsi",
            default_name: "Jitsi",
        });
    }
    if catalog.etherpad_url.is_some() {
        kinds.push(Kind {
            kind: "etherpad",
            title: "Etherpad",
            blurb: "A shared document everyone can edit",
            default_name: "Etherpad",
        });
    }
    if catalog.custom {
        kinds.push(Kind {
            kind: "custom",
            title: "Web page",
            blurb: "Any https page, shown in the room",
            default_name: "",
        });
    }
    if catalog.dashboard {
        kinds.push(Kind {
            kind: "dashboard",
            title: "Dashboard",
            blurb: "Grafana or another dashboard, full size",
            default_name: "Dashboard",
        });
    }
    if catalog.video {
        kinds.push(Kind {
            kind: "video",
            title: "Video",
            blurb: "A YouTube or Vimeo video, without tracking cookies",
            default_name: "Video",
        });
    }
    let open = opening
        .screen
        .as_deref()
        .and_then(editor_for_screen)
        .filter(|k| kinds.iter().any(|kind| kind.kind == *k));
    let (view, status, user_id, policies) = match user {
        Ok(TermsAccepted(user)) => ("manager", StatusCode::OK, Some(user.user_id), Vec::new()),
        Err(e) if e.errcode == ErrCode::TERMS_NOT_SIGNED => (
            "terms",
            StatusCode::OK,
            None,
            policy_links(&state.auth.terms().to_json()),
        ),
        Err(e) if e.status.is_server_error() => return Err(e),
        Err(_) => ("signed_out", StatusCode::UNAUTHORIZED, None, Vec::new()),
    };
    let terms_urls: Vec<String> = policies.iter().map(|p| p.url.clone()).collect();
    // For the script, in an attribute: escaped like any value, and no
    // inline script for the CSP to allow.
    let script_config = json!({
        "widgets_base": catalog.widgets_base,
        "jitsi_domain": catalog.jitsi_domain,
        "etherpad_url": catalog.etherpad_url,
        "terms_urls": terms_urls,
    })
    .to_string();
    let body = state.ui.render(
        "ui.html",
        &json!({
            "view": view,
            "theme": theme,
            "room_name": opening.room_name,
            "user_id": user_id.as_ref().map(|u| u.as_str()),
            "policies": policies,
            "kinds": kinds,
            "open": open,
            "bots": catalog.bots,
            "config": script_config,
        }),
    )?;
    Ok(page(status, UI_CSP, body))
}

async fn bot_avatar(
    State(state): State<IntegrationsState>,
    Path(index): Path<usize>,
) -> Result<Response, MatrixError> {
    let catalog = state.catalog.load_full();
    let avatar = catalog
        .avatars
        .get(index)
        .and_then(Option::as_ref)
        .ok_or_else(|| MatrixError::not_found("No such avatar"))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(avatar.content_type),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            // An SVG opened directly must not run anything.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
            ),
        ],
        avatar.bytes.clone(),
    )
        .into_response())
}

/// A wrapper's query: the page to show and, optionally, its title.
#[derive(Debug, Deserialize)]
pub(crate) struct Wrapped {
    url: Option<String>,
    title: Option<String>,
}

fn frame_csp(frame_src: &str) -> String {
    format!(
        "default-src 'none'; style-src 'self'; frame-src {frame_src}; base-uri 'none'; \
         form-action 'none'; frame-ancestors *"
    )
}

fn frame_page(
    state: &IntegrationsState,
    target: Option<url::Url>,
    title: Option<String>,
    frame_src: &str,
    problem: &str,
) -> Result<Response, MatrixError> {
    let status = if target.is_some() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let body = state.ui.render(
        "frame.html",
        &json!({
            "src": target.as_ref().map(url::Url::as_str),
            "title": title.filter(|t| !t.is_empty()).unwrap_or_else(|| "Widget".to_owned()),
            "problem": problem,
        }),
    )?;
    Ok(page(status, &frame_csp(frame_src), body))
}

/// `GET /widgets/generic?url=`: any https page, framed full size (custom
/// pages, Etherpad, dashboards).
async fn generic(
    State(state): State<IntegrationsState>,
    Query(query): Query<Wrapped>,
) -> Result<Response, MatrixError> {
    let target = query
        .url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        .filter(|u| u.scheme() == "https" && u.host_str().is_some());
    frame_page(
        &state,
        target,
        query.title,
        "https:",
        "This widget needs an https URL.",
    )
}

/// `GET /widgets/video?url=<YouTube or Vimeo page>`: the video through
/// the configured privacy-preserving player.
async fn video(
    State(state): State<IntegrationsState>,
    Query(query): Query<Wrapped>,
) -> Result<Response, MatrixError> {
    let catalog = state.catalog.load_full();
    let target = query.url.as_deref().and_then(|u| catalog.video_embed(u));
    frame_page(
        &state,
        target,
        query.title,
        &catalog.video_hosts(),
        "This is not a YouTube or Vimeo video address.",
    )
}

/// `GET /widgets/jitsi`: Element's Jitsi widget URL form, with the
/// conference in the fragment (`conferenceDomain=$domain&…`) and the legacy
/// `confId` in the query. The script frames the operator's Jitsi only.
async fn jitsi(State(state): State<IntegrationsState>) -> Result<Response, MatrixError> {
    let catalog = state.catalog.load_full();
    let Some(domain) = &catalog.ui.jitsi_domain else {
        return Err(MatrixError::new(
            StatusCode::NOT_FOUND,
            ErrCode::NOT_FOUND,
            "No Jitsi server is configured",
        ));
    };
    let body = state
        .ui
        .render("jitsi.html", &json!({ "domain": domain }))?;
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; frame-src https://{domain}; \
         base-uri 'none'; form-action 'none'; frame-ancestors *"
    );
    Ok(page(StatusCode::OK, &csp, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screens_open_the_matching_editor() {
        assert_eq!(editor_for_screen("type_jitsi"), Some("jitsi"));
        assert_eq!(editor_for_screen("type_m.jitsi"), Some("jitsi"));
        assert_eq!(editor_for_screen("type_grafana"), Some("dashboard"));
        assert_eq!(editor_for_screen("type_youtube"), Some("video"));
        assert_eq!(editor_for_screen("type_customwidget"), Some("custom"));
        assert_eq!(editor_for_screen("type_m.stickerpicker"), None);
        assert_eq!(editor_for_screen("jitsi"), None);
    }

    #[test]
    fn templates_compile() {
        Pages::new(None).unwrap();
    }
}
