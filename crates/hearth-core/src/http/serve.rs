//! The server loop: HTTP/1.1 over TCP, or TLS (`crate::tls`), with a header
//! read timeout against slow clients and graceful shutdown that lets
//! in-flight requests finish. The responses hyper writes itself, for
//! requests it cannot parse, get Matrix error bodies like every other.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::tls::ServerCert;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS acceptor offering HTTP/1.1 with `cert`, which a reload may
/// replace while the listener runs.
pub fn tls_acceptor(cert: &Arc<ServerCert>) -> TlsAcceptor {
    TlsAcceptor::from(cert.server_config(&[b"http/1.1"]))
}

/// A bound listener, optionally speaking TLS.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<TlsAcceptor>,
}

/// Serves `app` until `shutdown` resolves, then waits for open connections
/// to finish their current request (for at most a few seconds).
pub async fn serve(listener: Listener, app: Router, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.tcp.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone().map_request(move |mut req: http::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            req
        });
        let service = TowerToHyperService::new(app);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = listener.tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let conn =
                        builder.serve_connection(TokioIo::new(ErrorBodies::new(stream)), service);
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    let Ok(Ok(stream)) = handshake else {
                        tracing::debug!("TLS handshake failed or timed out");
                        return;
                    };
                    let conn =
                        builder.serve_connection(TokioIo::new(ErrorBodies::new(stream)), service);
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open after the drain timeout");
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.tcp.local_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The address a listener is bound to, for logs and tests.
impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Hyper answers a request it cannot parse by itself, before the app sees
/// it: 400 for malformed HTTP, 414 for a URI over 64 KiB, 431 for too many
/// or too large headers, each with an empty body. Clients expect a Matrix
/// error body on every error, so this sits between hyper and the socket
/// and gives such a response one.
///
/// Hyper writes that response last on the connection, as a bare head with
/// `content-length: 0`, and the app never answers 400, 414 or 431 without a
/// body (every error is a `MatrixError`), so a write ending in such a head
/// is hyper's. Reporting no vectored writes makes hyper hand over one flat
/// buffer, in which the head is found.
struct ErrorBodies<S> {
    inner: S,
    /// The response written in place of hyper's, how much of it is sent,
    /// and the length of hyper's buffer, reported written once it is.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl<S> ErrorBodies<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            replacing: None,
        }
    }
}

/// Where in `buf` hyper's bodiless 400, 414 or 431 head starts, and the
/// Matrix response to send instead.
fn automatic_error(buf: &[u8]) -> Option<(usize, Vec<u8>)> {
    // Almost every write ends with a body: one comparison and done.
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let head_end = buf.len() - 4;
    // Its status line is the last one: header lines never hold "HTTP/1.".
    let start = buf[..head_end].windows(7).rposition(|w| w == b"HTTP/1.")?;
    let head = std::str::from_utf8(&buf[start..head_end]).ok()?;
    if head.contains("\r\n\r\n") {
        return None;
    }
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let version = status_line.get(..9).filter(|v| v.starts_with("HTTP/1."))?;
    let status = http::StatusCode::from_bytes(status_line.get(9..12)?.as_bytes()).ok()?;
    let bodiless = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("content-length") && value.trim() == "0"
        })
    });
    let (errcode, error) = match status.as_u16() {
        400 => (crate::ErrCode::UNKNOWN, "Malformed HTTP request"),
        414 => (crate::ErrCode::TOO_LARGE, "The request URI is too long"),
        431 => (
            crate::ErrCode::TOO_LARGE,
            "The request headers are too large",
        ),
        _ => return None,
    };
    if !bodiless {
        return None;
    }
    let body = crate::MatrixError::new(status, errcode, error)
        .body()
        .to_string();
    let response = format!(
        "{version}{} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         access-control-allow-origin: *\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len(),
    );
    Some((start, response.into_bytes()))
}

impl<S: AsyncRead + Unpin> AsyncRead for ErrorBodies<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ErrorBodies<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none() {
            match automatic_error(buf) {
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
                // What precedes it goes first, as it is.
                Some((start, _)) if start > 0 => {
                    return Pin::new(&mut this.inner).poll_write(cx, &buf[..start]);
                }
                Some((_, response)) => this.replacing = Some((response, 0, buf.len())),
            }
        }
        // Hyper calls again with the same buffer until told it is written.
        let Some((response, sent, claimed)) = &mut this.replacing else {
            return Poll::Ready(Ok(0));
        };
        while *sent < response.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &response[*sent..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *sent += n,
                other => return other,
            }
        }
        let claimed = *claimed;
        this.replacing = None;
        Poll::Ready(Ok(claimed))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::automatic_error;

    #[test]
    fn only_bodiless_400_414_and_431_heads_are_replaced() {
        let hyper_431 =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let (start, response) = automatic_error(hyper_431).unwrap();
        assert_eq!(start, 0);
        let response = String::from_utf8(response).unwrap();
        assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
        assert!(
            response.contains(r#""errcode":"M_TOO_LARGE""#),
            "{response}"
        );
        // After a previous response in the same buffer.
        let mut both = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec();
        let at = both.len();
        both.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(automatic_error(&both).unwrap().0, at);
        // A head the app wrote, with a body to come or of another status.
        for own in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 57\r\n\r\n"[..],
            b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
        ] {
            assert!(automatic_error(own).is_none());
        }
    }
}
