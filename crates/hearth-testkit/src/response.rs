//! A router's answer, read whole, for service tests that drive routers
//! in-process.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    /// Reads `response`, body included.
    pub async fn read(response: axum::response::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a readable body");
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// An HTML page's text, with the slashes minijinja escapes in
    /// attribute values (`&#x2f;`) read back as a browser reads them.
    pub fn page(&self) -> String {
        self.text().replace("&#x2f;", "/")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `errcode` of a Matrix error.
    pub fn errcode(&self) -> String {
        self.json()["errcode"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, errcode: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.errcode(), errcode, "{}", self.text());
    }
}
