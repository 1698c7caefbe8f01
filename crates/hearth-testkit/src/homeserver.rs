//! The least of a homeserver the identity service and the integration
//! manager need: OpenID `userinfo` vouching for anyone, and a record of
//! every other request (an `onbind` callback, say). It runs on a thread of
//! its own, so synchronous end-to-end tests and async service tests use it
//! alike.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{any, get};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request [`FakeHomeserver`] received (other than `userinfo`).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    /// The body as JSON (`Null` when empty or not JSON).
    pub body: Value,
}

/// A homeserver on 127.0.0.1 over plain HTTP (reach it through a
/// `federation.overrides` entry). `GET
/// /_matrix/federation/v1/openid/userinfo?access_token=<localpart>` answers
/// `{"sub": "@<localpart>:<server name>"}` for a localpart of letters and
/// digits not starting with `bad`, else 401 `M_UNKNOWN_TOKEN`; every other
/// request is recorded and answered 200 `{}`. Stops when dropped.
#[derive(Debug)]
pub struct FakeHomeserver {
    addr: SocketAddr,
    server_name: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct Shared {
    server_name: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeHomeserver {
    pub fn start(server_name: &str) -> Self {
        let listener =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding a loopback port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking socket");
        let addr = listener.local_addr().expect("the listener's address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/_matrix/federation/v1/openid/userinfo", get(userinfo))
            .fallback(any(record))
            .with_state(Shared {
                server_name: server_name.to_owned(),
                requests: requests.clone(),
            });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            addr,
            server_name: server_name.to_owned(),
            requests,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// Its plain-HTTP URL, for a federation override.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `@<localpart>:<server name>`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name)
    }

    /// What a client's `/openid/request_token` would have returned for
    /// `localpart`: the body of a service's `register`.
    pub fn openid_credentials(&self, localpart: &str) -> Value {
        json!({
            "access_token": localpart,
            "token_type": "Bearer",
            "matrix_server_name": self.server_name,
            "expires_in": 3600,
        })
    }

    /// The requests received so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("not poisoned").clone()
    }

    /// Waits (at most `timeout`, blocking) for a request whose path starts
    /// with `path`; the first one.
    pub fn wait_for_request(&self, path: &str, timeout: Duration) -> Recorded {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self
                .requests()
                .into_iter()
                .find(|r| r.path.starts_with(path))
            {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no request to {path} within {timeout:?}; received: {:?}",
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FakeHomeserver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn userinfo(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, axum::Json<Value>) {
    match query.get("access_token") {
        Some(token)
            if !token.is_empty()
                && !token.starts_with("bad")
                && token.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            (
                StatusCode::OK,
                axum::Json(json!({ "sub": format!("@{token}:{}", shared.server_name) })),
            )
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"errcode": "M_UNKNOWN_TOKEN", "error": "Access token unknown"})),
        ),
    }
}

async fn record(
    State(shared): State<Shared>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    shared
        .requests
        .lock()
        .expect("not poisoned")
        .push(Recorded {
            method: method.to_string(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
    axum::Json(json!({}))
}
