//! The shared HTTP layers of `hearth_core::http::public_app`, driven
//! in-process with `tower::ServiceExt::oneshot`, and the server loop of
//! `hearth_core::http::serve` over a real socket.

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path};
use axum::routing::{get, post};
use bytes::Bytes;
use hearth_core::MatrixError;
use hearth_core::config::{HttpConfig, RateLimitConfig};
use hearth_core::http::{ClientIp, HttpPolicy, Json, Listener, public_app, serve};
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tower::ServiceExt;

#[derive(Debug, Serialize, Deserialize)]
struct Greeting {
    name: String,
    count: u32,
}

async fn echo(Json(greeting): Json<Greeting>) -> Json<Greeting> {
    Json(greeting)
}

async fn panics() -> &'static str {
    panic!("handler bug");
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(30)).await;
    "too late"
}

async fn forbidden_with_extras() -> MatrixError {
    MatrixError::forbidden("Not yours")
        .with("mxid", "@alice:example.org")
        .with("soft_logout", true)
        .with("errcode", "X_SHOULD_NOT_WIN")
}

/// The routes a service would hand to `public_app`.
fn routes() -> Router {
    Router::new()
        .route("/ok", get(|| async { axum::Json(json!({"ok": true})) }))
        .route("/echo", post(echo))
        .route("/panic", get(panics))
        .route("/slow", get(slow))
        .route("/forbidden", get(forbidden_with_extras))
}

/// `public_app`, after the test binary's tracing subscriber is in place.
fn public(routes: Router, config: &HttpConfig) -> Router {
    init_tracing();
    public_app([(routes, HttpPolicy::from_http(config))], config)
}

fn app(config: &HttpConfig) -> Router {
    public(routes(), config)
}

fn request(method: Method, uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(body.into())
        .unwrap()
}

fn get_req(uri: &str) -> Request<Body> {
    request(Method::GET, uri, Body::empty())
}

fn post_json(uri: &str, body: &'static str) -> Request<Body> {
    request(Method::POST, uri, body)
}

/// A request as `serve` hands it to the app: with the peer address.
fn from_peer(mut request: Request<Body>, peer: &str) -> Request<Body> {
    let peer: SocketAddr = peer.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{status}: body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn assert_matrix_error(reply: &Reply, status: StatusCode, errcode: &str) {
    assert_eq!(reply.status, status, "body: {}", reply.body);
    assert_eq!(reply.body["errcode"], errcode, "body: {}", reply.body);
    assert!(
        reply.body["error"].is_string(),
        "the spec requires `error` beside `errcode`: {}",
        reply.body
    );
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/json",
        "spec, API Standards: JSON responses carry Content-Type application/json"
    );
}

/// The CORS headers of the Identity Service API's "Web browser clients"
/// section (the Client-Server API's v1.1+ list drops `Origin` and `Accept`,
/// which are safelisted by the Fetch standard anyway).
fn assert_cors(headers: &HeaderMap) {
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_METHODS],
        "GET, POST, PUT, DELETE, OPTIONS"
    );
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_HEADERS],
        "Origin, X-Requested-With, Content-Type, Accept, Authorization"
    );
}

/// Server-Server API "Unsupported endpoints" (and the Identity Service API's
/// `M_UNRECOGNIZED`): an unknown endpoint gives 404 `M_UNRECOGNIZED`.
#[tokio::test]
async fn unknown_path_is_404_unrecognized() {
    let app = app(&HttpConfig::default());
    for uri in ["/nope", "/_matrix/identity/v2/nope", "/ok/extra", "/"] {
        let reply = send(&app, get_req(uri)).await;
        assert_matrix_error(&reply, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
    }
}

/// Server-Server API "Unsupported endpoints": a known endpoint with the wrong
/// method gives 405 `M_UNRECOGNIZED` (and RFC 9110 wants `Allow` on a 405).
#[tokio::test]
async fn known_path_wrong_method_is_405_unrecognized() {
    let app = app(&HttpConfig::default());
    let reply = send(&app, request(Method::POST, "/ok", "{}")).await;
    assert_matrix_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED");
    let allow = reply.headers[header::ALLOW].to_str().unwrap();
    assert!(allow.contains("GET"), "Allow: {allow}");

    let reply = send(&app, request(Method::DELETE, "/echo", Body::empty())).await;
    assert_matrix_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED");
}

/// Identity Service API "Web browser clients": the CORS headers come on all
/// requests, successful ones included.
#[tokio::test]
async fn cors_headers_on_a_normal_response() {
    let app = app(&HttpConfig::default());
    let reply = send(&app, get_req("/ok")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, json!({"ok": true}));
    assert_cors(&reply.headers);
}

/// Identity Service API "Web browser clients": "on all requests" includes
/// errors, from the fallbacks and from handlers alike.
#[tokio::test]
async fn cors_headers_on_error_responses() {
    let app = app(&HttpConfig::default());
    let reply = send(&app, get_req("/nope")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_cors(&reply.headers);

    let reply = send(&app, request(Method::PUT, "/ok", Body::empty())).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_cors(&reply.headers);

    let reply = send(&app, get_req("/forbidden")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_cors(&reply.headers);

    let reply = send(&app, post_json("/echo", "not json")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_cors(&reply.headers);
}

/// Identity Service API "Web browser clients": "on all requests" includes the
/// 500 that replaces a panicking handler, or a browser client sees a CORS
/// failure instead of the error.
#[tokio::test]
async fn cors_headers_on_a_panic_response() {
    let app = app(&HttpConfig::default());
    let reply = send(&app, get_req("/panic")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_cors(&reply.headers);
}

/// Identity Service API "Web browser clients" and Client-Server API "Web
/// Browser Clients": a pre-flight `OPTIONS` gets 200 with the CORS headers
/// on a known path and on an unknown one, and the server "MUST NOT perform
/// any logic defined for the endpoints".
#[tokio::test]
async fn options_preflight_is_answered_without_running_the_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = {
        let calls = calls.clone();
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!({"ran": true}))
        }
    };
    let app = public(
        Router::new().route("/counted", post(counted)),
        &HttpConfig::default(),
    );
    for uri in ["/counted", "/nope", "/_matrix/identity/v2/unknown"] {
        let preflight = Request::builder()
            .method(Method::OPTIONS)
            .uri(uri)
            .header(header::ORIGIN, "https://app.element.io")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization,content-type",
            )
            .body(Body::empty())
            .unwrap();
        let reply = send(&app, preflight).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.body);
        assert_cors(&reply.headers);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "OPTIONS ran the handler");

    // The handler itself is reachable, so the count above means something.
    let reply = send(&app, request(Method::POST, "/counted", Body::empty())).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Client-Server API "Common error codes": `M_NOT_JSON` is for a body that is
/// not valid JSON.
#[tokio::test]
async fn json_extractor_rejects_invalid_json_with_not_json() {
    let app = app(&HttpConfig::default());
    for body in [
        "{\"name\": ",
        "not json at all",
        "",
        "{'name': 'single quotes'}",
    ] {
        let reply = send(&app, post_json("/echo", body)).await;
        assert_matrix_error(&reply, StatusCode::BAD_REQUEST, "M_NOT_JSON");
    }
}

/// Client-Server API "Common error codes": `M_BAD_JSON` is for valid JSON
/// that is "malformed in some way, e.g. missing required keys, invalid values
/// for keys" -- 400, where axum's own extractor would say 422.
#[tokio::test]
async fn json_extractor_rejects_wrong_shape_with_bad_json() {
    let app = app(&HttpConfig::default());
    for body in [
        r#"{"name": "alice"}"#,
        r#"{"name": "alice", "count": "three"}"#,
        r#"{"name": 7, "count": 3}"#,
        r#"{"name": "alice", "count": -1}"#,
        r#"["alice", 3, 4]"#,
        "null",
    ] {
        let reply = send(&app, post_json("/echo", body)).await;
        assert_matrix_error(&reply, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    }
}

/// Client-Server API "Other error codes": `M_TOO_LARGE` for a request that is
/// too large, as 413, whether the length is declared or the body is chunked.
#[tokio::test]
async fn json_extractor_rejects_bodies_over_the_limit_with_too_large() {
    let config = HttpConfig {
        max_body_size: "64".parse().unwrap(),
        ..HttpConfig::default()
    };
    let app = app(&config);
    let big = format!(r#"{{"name": "{}", "count": 1}}"#, "a".repeat(100));

    let reply = send(&app, request(Method::POST, "/echo", big.clone())).await;
    assert_matrix_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");

    // No declared length: the limit must hold while streaming.
    let chunks: Vec<Result<Bytes, std::io::Error>> = big
        .as_bytes()
        .chunks(16)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let streamed = Body::from_stream(futures_util::stream::iter(chunks));
    let reply = send(&app, request(Method::POST, "/echo", streamed)).await;
    assert_matrix_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");

    // Just under the limit still passes.
    let small = r#"{"name": "alice", "count": 1}"#;
    assert!(small.len() <= 64);
    let reply = send(&app, request(Method::POST, "/echo", small)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

/// Each service's routes run under its own policy: one service's body
/// limit does not bind another's, and unknown paths keep the spec's 404.
#[tokio::test]
async fn each_service_has_its_own_body_limit() {
    init_tracing();
    let config = HttpConfig::default();
    let strict = HttpPolicy {
        max_body_size: "32".parse().unwrap(),
        ..HttpPolicy::from_http(&config)
    };
    let app = public_app(
        [
            (Router::new().route("/strict/echo", post(echo)), strict),
            (
                Router::new().route("/loose/echo", post(echo)),
                HttpPolicy::from_http(&config),
            ),
        ],
        &config,
    );
    let body = format!(r#"{{"name": "{}", "count": 1}}"#, "a".repeat(40));
    let reply = send(&app, request(Method::POST, "/strict/echo", body.clone())).await;
    assert_matrix_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    let reply = send(&app, request(Method::POST, "/loose/echo", body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = send(&app, request(Method::GET, "/nowhere", Body::empty())).await;
    assert_matrix_error(&reply, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
    let reply = send(&app, request(Method::GET, "/loose/echo", Body::empty())).await;
    assert_matrix_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED");
}

/// The happy path of `hearth_core::http::Json`: a valid body reaches the
/// handler, unknown fields are ignored, and no Content-Type is required
/// (Client-Server API "API Standards": clients "should", not "must", send it).
#[tokio::test]
async fn json_extractor_passes_a_valid_body() {
    let app = app(&HttpConfig::default());
    let with_type = Request::builder()
        .method(Method::POST)
        .uri("/echo")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"name": "alice", "count": 3}"#))
        .unwrap();
    let reply = send(&app, with_type).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, json!({"name": "alice", "count": 3}));
    assert_cors(&reply.headers);

    let untyped = r#"{"count": 4, "name": "bob", "extra": [1, 2]}"#;
    let reply = send(&app, request(Method::POST, "/echo", untyped)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, json!({"name": "bob", "count": 4}));
}

fn limited(trusted_proxies: Vec<IpAddr>) -> Router {
    app(&HttpConfig {
        rate_limit: RateLimitConfig {
            per_second: 1,
            burst: 2,
        },
        trusted_proxies,
        ..HttpConfig::default()
    })
}

fn assert_limited(reply: &Reply) {
    assert_matrix_error(reply, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED");
    let ms = reply.body["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("retry_after_ms is not an integer: {}", reply.body));
    assert!(ms > 0 && ms <= 1000, "retry_after_ms = {ms}");
    let retry_after: u64 = reply.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1, "Retry-After is whole seconds, rounded up");
    assert_cors(&reply.headers);
}

/// Client-Server API "Rate limiting": 429 `M_LIMIT_EXCEEDED` with the integer
/// `retry_after_ms` and a `Retry-After` header. Buckets are per client
/// address, whatever its port.
#[tokio::test]
async fn rate_limit_is_per_client_address() {
    let app = limited(Vec::new());
    for port in [1000, 1001] {
        let reply = send(
            &app,
            from_peer(get_req("/ok"), &format!("203.0.113.5:{port}")),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let reply = send(&app, from_peer(get_req("/ok"), "203.0.113.5:1002")).await;
    assert_limited(&reply);
    // Unknown paths count too: scanning is not free.
    let reply = send(&app, from_peer(get_req("/nope"), "203.0.113.5:1003")).await;
    assert_limited(&reply);

    let reply = send(&app, from_peer(get_req("/ok"), "198.51.100.7:1000")).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "another address has its own bucket"
    );
    // IPv4-mapped IPv6 is the same client as its IPv4 form.
    let reply = send(&app, from_peer(get_req("/ok"), "[::ffff:203.0.113.5]:1004")).await;
    assert_limited(&reply);
}

/// In-process calls carry no peer address and are not limited (documented on
/// `rate_limit`), so service tests are not throttled.
#[tokio::test]
async fn requests_without_a_peer_address_are_not_limited() {
    let app = limited(Vec::new());
    for _ in 0..5 {
        assert_eq!(send(&app, get_req("/ok")).await.status, StatusCode::OK);
    }
}

/// Behind a trusted reverse proxy clients are told apart by the
/// `X-Forwarded-For` entry the proxy appended (as Synapse's and Sydent's
/// `x_forwarded` support does).
#[tokio::test]
async fn rate_limit_behind_a_trusted_proxy_keys_on_forwarded_for() {
    let proxy = "10.0.0.1";
    let app = limited(vec![proxy.parse().unwrap()]);
    let via_proxy = |client: &str| {
        let mut req = from_peer(get_req("/ok"), &format!("{proxy}:40000"));
        req.headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        req
    };
    assert_eq!(
        send(&app, via_proxy("203.0.113.1")).await.status,
        StatusCode::OK
    );
    // A client-supplied entry left of the proxy's own is not what counts.
    assert_eq!(
        send(&app, via_proxy("192.0.2.99, 203.0.113.1"))
            .await
            .status,
        StatusCode::OK
    );
    assert_limited(&send(&app, via_proxy("203.0.113.1")).await);
    assert_eq!(
        send(&app, via_proxy("203.0.113.2")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, via_proxy("203.0.113.2")).await.status,
        StatusCode::OK
    );
    assert_limited(&send(&app, via_proxy("203.0.113.2")).await);
}

/// `X-Forwarded-For` from a peer that is not a trusted proxy is ignored, so a
/// client cannot escape its limit by inventing addresses.
#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = limited(vec!["10.0.0.1".parse().unwrap()]);
    let spoofed = |n: u8| {
        let mut req = from_peer(get_req("/ok"), "198.51.100.9:5000");
        req.headers_mut()
            .insert("x-forwarded-for", format!("192.0.2.{n}").parse().unwrap());
        req
    };
    assert_eq!(send(&app, spoofed(1)).await.status, StatusCode::OK);
    assert_eq!(send(&app, spoofed(2)).await.status, StatusCode::OK);
    assert_limited(&send(&app, spoofed(3)).await);
}

/// A panicking handler gives the standard error response, 500 `M_UNKNOWN`
/// (never the panic message), and the app keeps serving.
#[tokio::test]
async fn a_panicking_handler_gives_500_unknown_and_the_app_survives() {
    let app = app(&HttpConfig::default());
    let reply = send(&app, get_req("/panic")).await;
    assert_matrix_error(&reply, StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN");
    assert!(
        !reply.body.to_string().contains("handler bug"),
        "panic message leaked: {}",
        reply.body
    );
    let reply = send(&app, get_req("/ok")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, json!({"ok": true}));
}

/// A handler slower than `request_timeout` is cut off with 504 and a standard
/// error response, instead of holding the connection.
#[tokio::test]
async fn a_slow_handler_gives_504_after_the_request_timeout() {
    let config = HttpConfig {
        request_timeout: "100ms".parse().unwrap(),
        ..HttpConfig::default()
    };
    let app = app(&config);
    let start = Instant::now();
    let reply = send(&app, get_req("/slow")).await;
    let took = start.elapsed();
    assert_matrix_error(&reply, StatusCode::GATEWAY_TIMEOUT, "M_UNKNOWN");
    assert_cors(&reply.headers);
    assert!(
        took >= Duration::from_millis(100),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
}

/// Client-Server API "Standard error response": "Some errcodes define
/// additional keys which should be present in the error response object" --
/// at top level, beside `errcode` and `error`, which extras cannot replace.
#[tokio::test]
async fn matrix_error_extra_fields_are_top_level() {
    let app = app(&HttpConfig::default());
    let reply = send(&app, get_req("/forbidden")).await;
    assert_matrix_error(&reply, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(
        reply.body,
        json!({
            "errcode": "M_FORBIDDEN",
            "error": "Not yours",
            "mxid": "@alice:example.org",
            "soft_logout": true,
        })
    );

    let limited = MatrixError::limit_exceeded(2500);
    assert_eq!(
        limited.body(),
        json!({"errcode": "M_LIMIT_EXCEEDED", "error": "Too many requests", "retry_after_ms": 2500})
    );
    let response = axum::response::IntoResponse::into_response(limited);
    assert_eq!(response.headers()[header::RETRY_AFTER], "3");
}

thread_local! {
    /// Where this thread's log lines go, while a test captures them.
    static CAPTURE: RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { RefCell::new(None) };
}

/// Writes a log line into the capture buffer of the current thread, if any.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|capture| {
            if let Some(buffer) = &*capture.borrow() {
                buffer.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One global DEBUG-level subscriber for the whole test binary, installed
/// before any app is built. Thread-scoped subscribers (`set_default`) race
/// with tests on other threads over tracing's cached callsite interest, and
/// then lose events; a single global dispatcher cannot. Each
/// `#[tokio::test]` runs its app on its own thread, so lines are routed to
/// the capturing test by thread.
fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
            .with_writer(|| ThreadWriter)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
    });
}

/// The log lines written on this thread while it lives.
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn start() -> Self {
        init_tracing();
        let buffer = Arc::new(Mutex::new(Vec::new()));
        CAPTURE.with(|capture| *capture.borrow_mut() = Some(buffer.clone()));
        Self(buffer)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        CAPTURE.with(|capture| capture.borrow_mut().take());
    }
}

/// docs/architecture.md invariant: request spans record the route template,
/// never the raw URI, so access tokens in query strings (Client-Server API
/// "Using access tokens") and 3PIDs in paths stay out of logs at DEBUG;
/// client addresses too, unless `log_client_ips` is set.
#[tokio::test]
async fn request_spans_do_not_leak_tokens_or_3pids() {
    let capture = Capture::start();
    let routes = Router::new()
        .route(
            "/_matrix/identity/v2/account",
            get(|| async { axum::Json(json!({"user_id": "@alice:example.org"})) }),
        )
        .route(
            "/x/{address}",
            get(|Path(address): Path<String>| async move { address.len().to_string() }),
        );
    let app = public(routes, &HttpConfig::default());

    let uri = "/_matrix/identity/v2/account?access_token=SECRETTOKEN";
    let response = app
        .clone()
        .oneshot(from_peer(get_req(uri), "203.0.113.77:1234"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .clone()
        .oneshot(from_peer(
            get_req("/x/alice@example.org"),
            "203.0.113.77:1235",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"17", "the handler did see the raw segment");
    let response = app
        .clone()
        .oneshot(get_req("/unknown/bob@example.org?access_token=OTHERSECRET"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let log = capture.text();
    assert!(
        log.contains("route=/_matrix/identity/v2/account"),
        "no route template in: {log}"
    );
    assert!(
        log.contains("route=/x/{address}"),
        "no route template in: {log}"
    );
    assert!(
        log.contains("route=unmatched"),
        "no fallback route in: {log}"
    );
    for secret in [
        "SECRETTOKEN",
        "OTHERSECRET",
        "access_token",
        "alice@example.org",
        "bob@example.org",
        "203.0.113.77",
    ] {
        assert!(!log.contains(secret), "{secret} leaked into: {log}");
    }
}

/// `[http] log_client_ips = true` (config/hearth.example.toml: "Write client
/// IP addresses into request logs"; docs/architecture.md): the request span
/// then records the resolved client address, the `X-Forwarded-For` one
/// behind a trusted proxy.
#[tokio::test]
async fn log_client_ips_records_the_client_address_in_the_request_span() {
    let capture = Capture::start();
    let app = app(&HttpConfig {
        log_client_ips: true,
        trusted_proxies: vec!["10.0.0.1".parse().unwrap()],
        ..HttpConfig::default()
    });
    let reply = send(&app, from_peer(get_req("/ok"), "203.0.113.78:1234")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut proxied = from_peer(get_req("/ok"), "10.0.0.1:1234");
    proxied
        .headers_mut()
        .insert("x-forwarded-for", "198.51.100.23".parse().unwrap());
    assert_eq!(send(&app, proxied).await.status, StatusCode::OK);

    let log = capture.text();
    assert!(
        log.contains("client_ip=203.0.113.78"),
        "no client_ip in: {log}"
    );
    assert!(
        log.contains("client_ip=198.51.100.23"),
        "no client_ip in: {log}"
    );
}

/// Reads an HTTP/1.1 response the server ends by closing the connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("response not finished within 5s")
        .unwrap();
    String::from_utf8(raw).unwrap()
}

async fn raw_request(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(&mut stream).await
}

/// `serve` end to end over TCP: real HTTP/1.1, the peer address reaching the
/// app (as `ConnectInfo`, so `ClientIp` and rate limits work), and graceful
/// shutdown: no new connections, but an in-flight request completes and
/// `serve` returns once it has.
#[tokio::test]
async fn serve_over_tcp_with_graceful_shutdown() {
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let slow = {
        let (started, release) = (started.clone(), release.clone());
        move || async move {
            started.notify_one();
            release.notified().await;
            "slow done"
        }
    };
    let routes = Router::new()
        .route("/ok", get(|| async { axum::Json(json!({"ok": true})) }))
        .route(
            "/whoami",
            get(|ClientIp(ip): ClientIp| async move { format!("{ip:?}") }),
        )
        .route("/slow", get(slow));
    let app = public(routes, &HttpConfig::default());

    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = Listener { tcp, tls: None };
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app, async {
        let _ = stopped.await;
    }));

    let ok = raw_request(addr, "/ok").await;
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(
        ok.to_ascii_lowercase()
            .contains("access-control-allow-origin: *"),
        "{ok}"
    );
    assert!(ok.ends_with(r#"{"ok":true}"#), "{ok}");

    let unknown = raw_request(addr, "/nope").await;
    assert!(
        unknown.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{unknown}"
    );
    assert!(unknown.contains("M_UNRECOGNIZED"), "{unknown}");

    let whoami = raw_request(addr, "/whoami").await;
    assert!(whoami.ends_with("Some(127.0.0.1)"), "{whoami}");

    // A request in flight (keep-alive, so only shutdown closes it).
    let mut in_flight = TcpStream::connect(addr).await.unwrap();
    in_flight
        .write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the slow handler never started");

    stop.send(()).unwrap();
    // New connections are refused once the listener is dropped.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(addr).await {
            Err(_) => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(_) => panic!("still accepting connections 5s after shutdown"),
        }
    }
    assert!(
        !server.is_finished(),
        "serve returned while a request was still in flight"
    );

    release.notify_one();
    let slow = read_response(&mut in_flight).await;
    assert!(slow.starts_with("HTTP/1.1 200 OK\r\n"), "{slow}");
    assert!(slow.ends_with("slow done"), "{slow}");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve did not return within 5s of its last request")
        .unwrap();
}
