//! Tokens never reach the logs: Element puts the `scalar_token` in query
//! strings (the UI URL, `/account`, the widget helpers), so every request
//! here carries one while everything down to TRACE is captured.

mod common;

use common::{Harness, backends, test_config};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// A writer that keeps everything written, for a subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_token_is_ever_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The test runtime is single-threaded: every handler runs under it.
    let _guard = tracing::subscriber::set_default(subscriber);

    let (db, dir) = backends().await.remove(0);
    let h = Harness::start(db, dir, test_config(), false).await;
    let token = h.register("alice").await;
    h.get(&format!("/api/account?scalar_token={token}&v=1.1"))
        .await;
    h.accept_terms(&token).await;
    for uri in [
        format!("/api/account?scalar_token={token}&v=1.1"),
        format!("/element?scalar_token={token}&room_id=%21r%3Ahs.test&room_name=R&theme=light"),
        format!("/api/widgets/title_lookup?scalar_token={token}&curl=http%3A%2F%2F127.0.0.1%2F"),
        format!(
            "/api/widgets/set_assets_state?scalar_token={token}&widget_type=m.stickerpicker&widget_id=s&state=disable"
        ),
    ] {
        h.get(&uri).await;
    }
    h.post(
        "/_matrix/integrations/v1/account/logout",
        Some(&token),
        serde_json::json!({}),
    )
    .await;
    // An OpenID token the homeserver refuses is not logged either.
    h.post(
        "/api/register?v=1.1",
        None,
        common::openid("bad-secret-openid"),
    )
    .await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("account registered") && logs.contains("/api/account"),
        "the requests were logged: {logs}"
    );
    assert!(
        !logs.contains(&token),
        "a scalar_token leaked into the logs"
    );
    assert!(
        !logs.contains("bad-secret-openid"),
        "an OpenID token leaked into the logs"
    );
}
