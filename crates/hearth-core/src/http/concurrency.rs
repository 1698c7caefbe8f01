//! A cap on the requests one client address has in progress at once. The
//! rate limit counts requests as they start; a client sending its bodies
//! slowly starts few and holds many (339 at once from one address), each a
//! connection and a task. Past the cap, 503 at once, before any body is
//! read.

use super::ClientIp;
use crate::{ErrCode, MatrixError};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Requests in progress per client address; addresses with none are not
/// held, so the map is as large as the requests in progress.
#[derive(Debug)]
pub(super) struct InFlight {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One request's place; given back when the response is done.
struct Slot<'a> {
    in_flight: &'a InFlight,
    ip: IpAddr,
}

impl InFlight {
    /// `max = 0` turns the cap off.
    pub(super) fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max: usize::try_from(max).unwrap_or(usize::MAX),
            counts: Mutex::new(HashMap::new()),
        })
    }

    fn enter(&self, ip: IpAddr) -> Option<Slot<'_>> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            in_flight: self,
            ip,
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut counts = self
            .in_flight
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Middleware capping each client address's requests in progress.
/// Requests without a known address (in-process calls) are not counted.
pub(super) async fn limit(
    State(in_flight): State<Arc<InFlight>>,
    request: Request,
    next: Next,
) -> Response {
    let ip = request.extensions().get::<ClientIp>().and_then(|c| c.0);
    let Some(ip) = ip.filter(|_| in_flight.max > 0) else {
        return next.run(request).await;
    };
    let Some(_slot) = in_flight.enter(ip) else {
        return MatrixError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrCode::LIMIT_EXCEEDED,
            "Too many requests in progress from this address",
        )
        .into_response();
    };
    next.run(request).await
}
