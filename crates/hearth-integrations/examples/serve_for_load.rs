//! Serves the integration manager for a load test of `GET /api/account`,
//! the call Element makes every time it opens the manager: built through
//! the service contract and wrapped in `public_app` as the binary does, on
//! a fresh SQLite file, with the rate limit off (a load generator is one
//! client). A user is registered (OpenID vouched for by an in-process
//! homeserver on loopback) and accepts the terms; the URL to load is
//! printed, then it serves until interrupted. Used as:
//!
//! ```sh
//! cargo run --release -p hearth-integrations --example serve_for_load &
//! wrk -t2 -c32 -d20s --latency '<printed URL>'
//! ```

use axum::body::Body;
use axum::routing::get;
use hearth_core::config::HttpConfig;
use hearth_core::ids::ServerName;
use hearth_core::keys::{KeyRing, SigningKey};
use hearth_federation::config::ServerOverride;
use hearth_federation::{FederationClient, FederationConfig};
use hearth_service::Service;
use http::Request;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const TERMS_URL: &str = "https://example.org/im-privacy-1.html";

async fn call(app: &axum::Router, method: &str, uri: &str, body: Value) -> Value {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a request");
    let response = app.clone().oneshot(request).await.expect("an answer");
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    serde_json::from_slice(&bytes).expect("a JSON answer")
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("a data directory");
    let db = hearth_core::storage::Database::connect(
        &hearth_core::storage::default_sqlite_url(dir.path()),
        8,
        Duration::from_secs(5),
    )
    .await
    .expect("SQLite opens");
    db.migrate(&hearth_integrations::SCHEMA)
        .await
        .expect("the schema migrates");

    // A homeserver that vouches for `@<token>:hs.load`.
    let homeserver = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let homeserver_url = format!("http://{}", homeserver.local_addr().expect("an address"));
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/_matrix/federation/v1/openid/userinfo",
            get(
                |q: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
                    axum::Json(json!({ "sub": format!("@{}:hs.load", q.0["access_token"]) }))
                },
            ),
        );
        axum::serve(homeserver, app)
            .await
            .expect("the homeserver serves");
    });
    let mut federation = FederationConfig::default();
    federation.overrides.insert(
        "hs.load".to_owned(),
        ServerOverride {
            url: homeserver_url,
        },
    );
    let dns = hearth_federation::connect::SystemDns::new(&[]).expect("the system resolver");
    let federation =
        FederationClient::new(&federation, Arc::new(dns), None).expect("a federation client");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    let mut http = HttpConfig::default();
    http.rate_limit.per_second = 0;
    let config: hearth_integrations::Config = serde_json::from_value(json!({
        "public_base_url": format!("http://{addr}"),
        "auth": {"terms": {"policies": {"privacy_policy": {
            "version": "1",
            "languages": {"en": {"name": "Privacy", "url": TERMS_URL}},
        }}}},
    }))
    .expect("the section parses");
    let ctx = hearth_service::Context::new(
        ServerName::parse(&addr.to_string()).expect("a server name"),
        KeyRing {
            current: vec![SigningKey::generate()],
            old: Vec::new(),
        },
        db,
        federation,
        http.clone(),
        dir.path().to_owned(),
        hearth_service::Shutdown::new().1,
    );
    let parts = config.build(&ctx).await.expect("the service builds");
    let routes = parts.routes.expect("HTTP routes");
    let app = hearth_core::http::public_app([(routes.router, routes.policy)], &http);

    let registered = call(
        &app,
        "POST",
        "/api/register?v=1.1",
        json!({"access_token": "loadtest", "token_type": "Bearer", "matrix_server_name": "hs.load", "expires_in": 3600}),
    )
    .await;
    let token = registered["scalar_token"]
        .as_str()
        .expect("a scalar_token")
        .to_owned();
    let request = Request::post("/_matrix/integrations/v1/terms")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(json!({"user_accepts": [TERMS_URL]}).to_string()))
        .expect("a request");
    let accepted = app.clone().oneshot(request).await.expect("an answer");
    assert!(accepted.status().is_success(), "terms accepted");

    // The URL on stdout, for the load generator; it holds a test token.
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "http://{addr}/api/account?v=1.1&scalar_token={token}"
    )
    .and_then(|()| stdout.flush())
    .expect("writing the URL");
    drop(stdout);
    hearth_core::http::serve(
        hearth_core::http::Listener {
            tcp: listener,
            tls: None,
        },
        app,
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await;
}
