//! The REST API as Element's `ScalarAuthClient` and matrix-js-sdk's terms
//! calls use it (registration, account, MSC2140 terms, widget helpers), the
//! MSC1961 routes, and CORS on each, on every database backend.

mod common;

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::get;
use common::{HOMESERVER, Harness, TERMS_URL, openid, serve, small_lookups, test_config};
use http::{Method, StatusCode};
use serde_json::json;

const ALICE: &str = "@alice:hs.test";

/// `registerForToken` then `getAccountName`: the scalar_token, then
/// `M_TERMS_NOT_SIGNED` (Element starts its terms flow on that errcode),
/// terms accepted at the host root with the token as Bearer, then
/// `{"user_id"}` from `GET {rest}/account?scalar_token=&v=1.1`.
#[tokio::test]
async fn element_registers_accepts_terms_and_reads_its_account() {
    for h in Harness::all().await {
        let response = h.post("/api/register?v=1.1", None, openid("alice")).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        let body = response.json();
        let token = body["scalar_token"].as_str().unwrap().to_owned();
        assert_eq!(body, json!({ "scalar_token": token }));

        let account = format!("/api/account?scalar_token={token}&v=1.1");
        h.get(&account)
            .await
            .assert_error(StatusCode::FORBIDDEN, "M_TERMS_NOT_SIGNED");

        let terms = h.get("/_matrix/integrations/v1/terms").await;
        assert_eq!(terms.status, StatusCode::OK);
        assert_eq!(
            terms.json(),
            json!({"policies": {"privacy_policy": {
                "version": "1",
                "en": {"name": "Integration manager privacy", "url": TERMS_URL},
            }}})
        );
        // js-sdk sends every URL in m.accepted_terms, other services' too.
        let accepted = h
            .post(
                "/_matrix/integrations/v1/terms",
                Some(&token),
                json!({"user_accepts": ["https://is.example/other-terms.html", TERMS_URL]}),
            )
            .await;
        assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text());

        let response = h.get(&account).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(response.json(), json!({ "user_id": ALICE }));

        // Dimension's REST path answers the same.
        let response = h
            .get(&format!(
                "/api/v1/scalar/account?scalar_token={token}&v=1.1"
            ))
            .await;
        assert_eq!(response.json(), json!({ "user_id": ALICE }));
    }
}

/// Element re-registers after any `/account` failure: unknown tokens and
/// missing ones are 401 `M_UNAUTHORIZED`.
#[tokio::test]
async fn account_refuses_unknown_and_missing_tokens() {
    for h in Harness::all().await {
        h.get("/api/account?scalar_token=nonsense&v=1.1")
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
        h.get("/api/account?v=1.1")
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
    }
}

/// OpenID checked with the homeserver (`/openid/userinfo`); bodies that are
/// not the OpenID object, and API versions other than Element's 1.1, fail.
#[tokio::test]
async fn register_checks_openid_version_and_body() {
    for h in Harness::all().await {
        h.post("/api/register?v=1.1", None, openid("bad-token"))
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
        h.post("/api/register?v=2", None, openid("alice"))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
        h.request(
            Method::POST,
            "/api/register?v=1.1",
            None,
            Some(Body::from("{not json")),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "M_NOT_JSON");
        h.post(
            "/api/register?v=1.1",
            None,
            json!({"access_token": "alice"}),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "M_BAD_JSON");
    }
}

/// MSC1961: register answers `{"token"}`; `GET /account` takes the Bearer
/// token; logout answers `{}` and the token stops working.
#[tokio::test]
async fn msc1961_register_account_and_logout() {
    for h in Harness::all().await {
        let response = h
            .post(
                "/_matrix/integrations/v1/account/register",
                None,
                openid("bob"),
            )
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        let token = response.json()["token"].as_str().unwrap().to_owned();
        assert_eq!(response.json(), json!({ "token": token }));

        h.request(
            Method::GET,
            "/_matrix/integrations/v1/account",
            Some(&token),
            None,
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "M_TERMS_NOT_SIGNED");
        h.accept_terms(&token).await;
        let account = h
            .request(
                Method::GET,
                "/_matrix/integrations/v1/account",
                Some(&token),
                None,
            )
            .await;
        assert_eq!(
            account.json(),
            json!({"user_id": format!("@bob:{HOMESERVER}")})
        );
        // MSC1961: or as `?access_token=`.
        let account = h
            .get(&format!(
                "/_matrix/integrations/v1/account?access_token={token}"
            ))
            .await;
        assert_eq!(
            account.json(),
            json!({"user_id": format!("@bob:{HOMESERVER}")})
        );

        let logout = h
            .post(
                "/_matrix/integrations/v1/account/logout",
                Some(&token),
                json!({}),
            )
            .await;
        assert_eq!(logout.status, StatusCode::OK, "{}", logout.text());
        assert_eq!(logout.json(), json!({}));
        h.request(
            Method::GET,
            "/_matrix/integrations/v1/account",
            Some(&token),
            None,
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
        h.post(
            "/_matrix/integrations/v1/account/logout",
            Some(&token),
            json!({}),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    }
}

/// MSC2140: `POST /terms` needs a token; without one it is 401.
#[tokio::test]
async fn accepting_terms_needs_a_token() {
    for h in Harness::all().await {
        h.post(
            "/_matrix/integrations/v1/terms",
            None,
            json!({"user_accepts": [TERMS_URL]}),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
    }
}

/// Element's calls are browser fetches from its own origin: preflights are
/// answered, and answers carry `Access-Control-Allow-Origin`, on every
/// route Element calls.
#[tokio::test]
async fn cors_on_every_route_element_calls() {
    let h = Harness::all().await.remove(0);
    for path in [
        "/api/register?v=1.1",
        "/api/account?v=1.1",
        "/api/widgets/title_lookup",
        "/api/widgets/set_assets_state",
        "/_matrix/integrations/v1/terms",
        "/_matrix/integrations/v1/account",
    ] {
        let preflight = h.request(Method::OPTIONS, path, None, None).await;
        assert_eq!(preflight.status, StatusCode::OK, "{path}");
        assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
        let allowed = preflight.header("access-control-allow-headers").unwrap();
        assert!(allowed.contains("Authorization") && allowed.contains("Content-Type"));
        let answer = h.get(path).await;
        assert_eq!(
            answer.header("access-control-allow-origin"),
            Some("*"),
            "{path}: {}",
            answer.status
        );
    }
}

/// A page server for `title_lookup`: `/page` has a title, `/moved`
/// redirects there, `/big` is larger than the test bound, `/gone` is 404.
async fn pages() -> (String, tokio::task::JoinHandle<()>) {
    let app = Router::new()
        .route(
            "/page",
            get(|| async {
                axum::response::Html("<html><head><title>The &amp; Page</title></head></html>")
            }),
        )
        .route(
            "/moved",
            get(|| async { axum::response::Redirect::temporary("/page") }),
        )
        .route(
            "/big",
            get(|| async { format!("<title>big</title>{}", "x".repeat(10_000)) }),
        )
        .route(
            "/gone",
            get(|| async { StatusCode::NOT_FOUND.into_response() }),
        );
    serve(app).await
}

/// Element's `getScalarPageTitle`: `curl` encoded twice, the title at
/// `page_title_cache_item.cached_title`; redirects followed, the second
/// lookup served from the cache.
#[tokio::test]
async fn title_lookup_returns_the_title_where_element_reads_it() {
    let (loopback, _task) = pages().await;
    // Reached by name: the harness lets names resolve to loopback, as
    // `federation.allow_private_addresses` would.
    let pages = loopback.replace("127.0.0.1", common::PAGES_HOST);
    for (db, dir) in common::backends().await {
        let mut config = test_config();
        config.title_lookup = small_lookups();
        let h = Harness::start(db, dir, config, true).await;
        let token = h.user("alice").await;
        let curl = hearth_core::http::percent_encode(&hearth_core::http::percent_encode(&format!(
            "{pages}/moved"
        )));
        let uri = format!("/api/widgets/title_lookup?scalar_token={token}&curl={curl}");
        let response = h.get(&uri).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        let body = response.json();
        assert_eq!(body["page_title_cache_item"]["cached_title"], "The & Page");
        assert_eq!(body["cached_response"], false);
        assert!(body["page_title_cache_item"]["expires"].as_i64().unwrap() > 0);
        let again = h.get(&uri).await.json();
        assert_eq!(again["cached_response"], true);
        assert_eq!(again["page_title_cache_item"]["cached_title"], "The & Page");

        for (path, status) in [
            ("/big", StatusCode::BAD_GATEWAY),
            ("/gone", StatusCode::BAD_GATEWAY),
        ] {
            let curl = hearth_core::http::percent_encode(&format!("{pages}{path}"));
            h.get(&format!(
                "/api/widgets/title_lookup?scalar_token={token}&curl={curl}"
            ))
            .await
            .assert_error(status, "M_UNKNOWN");
        }

        // Even so, a URL naming a private address outright is refused.
        let curl = hearth_core::http::percent_encode(&format!("{loopback}/page"));
        h.get(&format!(
            "/api/widgets/title_lookup?scalar_token={token}&curl={curl}"
        ))
        .await
        .assert_error(StatusCode::FORBIDDEN, "M_FORBIDDEN");
    }
}

/// Private addresses are refused before any connection; other schemes are
/// not URLs to look up; the route needs a token and accepted terms.
#[tokio::test]
async fn title_lookup_is_guarded() {
    let (pages, _task) = pages().await;
    for h in Harness::all().await {
        let token = h.user("alice").await;
        let lookup = |curl: &str| {
            format!(
                "/api/widgets/title_lookup?scalar_token={token}&curl={}",
                hearth_core::http::percent_encode(curl)
            )
        };
        for private in [
            format!("{pages}/page"),
            // A name that resolves to loopback, refused when dialled.
            format!("{}/page", pages.replace("127.0.0.1", common::PAGES_HOST)),
            "http://[::1]/".to_owned(),
            "http://169.254.169.254/latest/meta-data".to_owned(),
            "http://10.0.0.1/".to_owned(),
        ] {
            h.get(&lookup(&private))
                .await
                .assert_error(StatusCode::FORBIDDEN, "M_FORBIDDEN");
        }
        for bad in ["file:///etc/passwd", "javascript:alert(1)", "not a url"] {
            h.get(&lookup(bad))
                .await
                .assert_error(StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
        }
        h.get(&format!("/api/widgets/title_lookup?scalar_token={token}"))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "M_MISSING_PARAMS");
        h.get("/api/widgets/title_lookup?curl=https%3A%2F%2Fexample.org")
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
        let unsigned = h.register("carol").await;
        h.get(&format!(
            "/api/widgets/title_lookup?scalar_token={unsigned}&curl=https%3A%2F%2Fexample.org"
        ))
        .await
        .assert_error(StatusCode::FORBIDDEN, "M_TERMS_NOT_SIGNED");
    }
}

/// Element's `disableWidgetAssets` when the sticker picker is removed: a
/// GET with `widget_type=m.stickerpicker&widget_id=&state=disable`, wanting
/// a 2xx with a non-empty body. The state is really recorded, per user.
#[tokio::test]
async fn set_assets_state_records_the_sticker_pickers_state() {
    for h in Harness::all().await {
        let token = h.user("alice").await;
        let alice = hearth_core::ids::UserId::parse(ALICE).unwrap();
        let set = |state: &str| {
            format!(
                "/api/widgets/set_assets_state?scalar_token={token}&widget_type=m.stickerpicker&widget_id=stickers_1&state={state}"
            )
        };
        let response = h.get(&set("disable")).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert!(!response.body.is_empty());
        let recorded =
            hearth_integrations::asset_state(&h.state.db, &alice, "m.stickerpicker", "stickers_1")
                .await
                .unwrap();
        assert_eq!(recorded.as_deref(), Some("disable"));
        assert_eq!(h.get(&set("enable")).await.status, StatusCode::OK);
        let recorded =
            hearth_integrations::asset_state(&h.state.db, &alice, "m.stickerpicker", "stickers_1")
                .await
                .unwrap();
        assert_eq!(recorded.as_deref(), Some("enable"));
        let bob = hearth_core::ids::UserId::parse("@bob:hs.test").unwrap();
        assert_eq!(
            hearth_integrations::asset_state(&h.state.db, &bob, "m.stickerpicker", "stickers_1")
                .await
                .unwrap(),
            None
        );

        h.get(&set("maybe"))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
        h.get(&format!(
            "/api/widgets/set_assets_state?scalar_token={token}&widget_type=m.stickerpicker"
        ))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "M_MISSING_PARAMS");
        h.get("/api/widgets/set_assets_state?widget_type=a&widget_id=b&state=disable")
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
    }
}

/// MSC1957 domain discovery: the UI URL and the REST URL.
#[tokio::test]
async fn well_known_names_the_ui_and_rest_urls() {
    let h = Harness::all().await.remove(0);
    let response = h.get("/.well-known/matrix/integrations").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        response.json(),
        json!({"m.integrations_widget": {
            "url": "https://im.test/element",
            "data": {"api_url": "https://im.test/api"},
        }})
    );
    assert_eq!(response.header("access-control-allow-origin"), Some("*"));
}

/// Unknown paths and wrong methods get the spec's fallbacks.
#[tokio::test]
async fn unknown_routes_are_matrix_errors() {
    let h = Harness::all().await.remove(0);
    h.get("/api/nothing")
        .await
        .assert_error(StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
    h.get("/api/register")
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED");
}

/// A policy the operator gives as a file is served by Hearth under the
/// integration manager's own namespace (`/_hearth/terms/integrations/…`),
/// beside identity's, and that URL is what `GET /terms` lists.
#[tokio::test]
async fn file_policies_are_served_under_the_integrations_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tos.html");
    std::fs::write(&file, "<p>Integration terms</p>").unwrap();
    for (db, db_dir) in common::backends().await {
        let mut config = test_config();
        let policy = config
            .auth
            .terms
            .policies
            .get_mut("privacy_policy")
            .unwrap();
        let en = policy.languages.get_mut("en").unwrap();
        en.url = None;
        en.file = Some(file.clone());
        let h = Harness::start(db, db_dir, config, false).await;
        let url = "https://im.test/_hearth/terms/integrations/privacy_policy/1/en";
        let terms = h.get("/_matrix/integrations/v1/terms").await.json();
        assert_eq!(terms["policies"]["privacy_policy"]["en"]["url"], url);
        let document = h
            .get("/_hearth/terms/integrations/privacy_policy/1/en")
            .await;
        assert_eq!(document.status, StatusCode::OK);
        assert_eq!(document.text(), "<p>Integration terms</p>");
        h.get("/_hearth/terms/identity/privacy_policy/1/en")
            .await
            .assert_error(StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
    }
}

/// A user's data on request: tokens, accepted terms and asset states are
/// exported, then erased; other users' stay.
#[tokio::test]
async fn export_and_forget_a_user() {
    for h in Harness::all().await {
        let alice_token = h.user("alice").await;
        let bob_token = h.user("bob").await;
        for token in [&alice_token, &bob_token] {
            let response = h
                .get(&format!(
                    "/api/widgets/set_assets_state?scalar_token={token}&widget_type=m.stickerpicker&widget_id=s1&state=disable"
                ))
                .await;
            assert_eq!(response.status, StatusCode::OK);
        }
        let alice = hearth_core::ids::UserId::parse(ALICE).unwrap();
        let data = hearth_integrations::export(&h.state, &alice).await.unwrap();
        assert_eq!(data["user_id"], ALICE);
        assert_eq!(data["account"]["active_tokens"], 1);
        assert_eq!(data["account"]["accepted_terms"], json!([TERMS_URL]));
        let assets = &data["widget_assets"];
        assert_eq!(assets.as_array().unwrap().len(), 1);
        assert_eq!(assets[0]["widget_type"], "m.stickerpicker");
        assert_eq!(assets[0]["widget_id"], "s1");
        assert_eq!(assets[0]["state"], "disable");

        hearth_integrations::forget(&h.state, &alice).await.unwrap();
        let data = hearth_integrations::export(&h.state, &alice).await.unwrap();
        assert_eq!(data["account"]["active_tokens"], 0);
        assert_eq!(data["account"]["accepted_terms"], json!([]));
        assert_eq!(data["widget_assets"], json!([]));
        h.get(&format!("/api/account?scalar_token={alice_token}&v=1.1"))
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
        let bob = h
            .get(&format!("/api/account?scalar_token={bob_token}&v=1.1"))
            .await;
        assert_eq!(bob.json(), json!({"user_id": "@bob:hs.test"}));
    }
}
