//! A minimal HTTP/1.1 client on one keep-alive connection, reconnecting when
//! the server closes it: what the load generator and the readiness checks
//! need, and no connection pool to hide what is measured.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// No exchange may take longer: a stuck server must fail the bench, not hang
/// it.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct Client {
    addr: SocketAddr,
    token: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub(crate) fn new(addr: SocketAddr, token: &str) -> Self {
        Self {
            addr,
            token: token.to_owned(),
            sender: None,
        }
    }

    /// `GET path`, authenticated; the status and the JSON body.
    pub(crate) async fn get(&mut self, path: &str) -> Result<(StatusCode, Value)> {
        let (status, body) = self.exchange(Method::GET, path, Bytes::new()).await?;
        Ok((status, parse(&body)?))
    }

    /// `POST path` with a JSON body, authenticated; the status and the raw
    /// body, parsed by the caller when it matters.
    pub(crate) async fn post(&mut self, path: &str, body: Bytes) -> Result<(StatusCode, Bytes)> {
        self.exchange(Method::POST, path, body).await
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.to_string())
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let result = tokio::time::timeout(EXCHANGE_TIMEOUT, self.send(request)).await;
        let result = result.unwrap_or_else(|_| bail!("no answer within {EXCHANGE_TIMEOUT:?}"));
        if result.is_err() {
            // The connection is in an unknown state; the next request opens a
            // fresh one.
            self.sender = None;
        }
        result.with_context(|| format!("{path} on {}", self.addr))
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
        let sender = self.connection().await?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// The open connection, or a new one when there is none or the server
    /// closed it.
    async fn connection(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(SendRequest::is_closed) {
            self.sender = Some(connect(self.addr).await?);
        }
        Ok(self.sender.as_mut().expect("connected just now"))
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("could not connect to {addr}"))?;
    // Requests are written whole; Nagle would only add delay to the latency.
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    // The connection's own errors reach the sender as failed requests.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

pub(crate) fn parse(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body).with_context(|| {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        format!("the answer is not JSON: {text:?}")
    })
}
