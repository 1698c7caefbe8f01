//! UDP sockets as the relay reads them: by a UDP worker's epoll loop
//! ([`crate::worker`]), a batch at a time with `recvmmsg` or one datagram
//! at a time, or, for a TCP or TLS client's relay socket, by a task that
//! registers it with the runtime for reading only.
//!
//! Sends go straight to the socket and a full buffer drops the datagram,
//! as the network would; so nothing ever waits for writability, and
//! registering for it would only make every send raise an epoll event
//! (the kernel signals write space as each sent datagram is freed) that
//! would wake the reader for nothing.
//!
//! Under load a batch saves calls. At ordinary call rates each read finds
//! one datagram, and a batch that comes back short shows the queue is
//! empty, so the socket is taken as drained without a read that would only
//! return `EAGAIN`; that read is cheap, and sparing it alone measured no
//! saving (decision 0005).

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};

/// A relay socket registered with the runtime for reading only.
pub(crate) type AsyncUdpSocket = AsyncFd<Arc<UdpSocket>>;

/// Registers `socket` (non-blocking) with the current runtime.
pub(crate) fn register(socket: Arc<UdpSocket>) -> io::Result<AsyncUdpSocket> {
    // Deprecated as unsound for inner types whose descriptor can change
    // while registered (tokio#8587). A std socket's cannot, and this crate
    // never takes `get_mut`; the sound replacement is `unsafe`, which the
    // workspace forbids.
    #[allow(deprecated)]
    AsyncFd::with_interest(socket, Interest::READABLE)
}

/// Datagrams per `recvmmsg`.
pub(crate) const BATCH: usize = 16;
/// The largest UDP payload, so nothing is truncated.
const MAX_DATAGRAM: usize = 65_535;
/// Room in front of each datagram for a ChannelData header.
pub(crate) const HEADROOM: usize = 4;
/// Room behind it for ChannelData padding over streams.
const TAILROOM: usize = 3;

/// Buffers and headers for one batch. Large (a megabyte), so each worker
/// and each runtime thread keeps one for every socket it reads.
pub(crate) struct Batch {
    headers: MultiHeaders<SockaddrStorage>,
    buffers: [Box<[u8]>; BATCH],
    received: [(usize, Option<SocketAddr>); BATCH],
}

thread_local! {
    static BATCH_TL: std::cell::RefCell<Batch> = std::cell::RefCell::new(Batch::new());
}

/// Runs `f` with this runtime thread's batch. `f` must not await, so no
/// batch is held across a suspension point.
pub(crate) fn with_batch<R>(f: impl FnOnce(&mut Batch) -> R) -> R {
    BATCH_TL.with_borrow_mut(f)
}

impl Batch {
    pub(crate) fn new() -> Self {
        Self {
            headers: MultiHeaders::preallocate(BATCH, None),
            buffers: std::array::from_fn(|_| {
                vec![0u8; HEADROOM + MAX_DATAGRAM + TAILROOM].into_boxed_slice()
            }),
            received: [(0, None); BATCH],
        }
    }

    /// Reads what the socket `ready` guards has queued, up to one batch,
    /// and calls `each` with each datagram ([`Batch::datagram`]). When the
    /// batch comes back short, the socket's readiness is cleared, so the
    /// caller next awaits `readable()`.
    ///
    /// Clearing on a short batch is safe with tokio's edge-triggered
    /// readiness: a datagram that arrives after the read raises a new edge
    /// (a new readiness tick), which the clearing cannot erase.
    pub(crate) fn drain(
        &mut self,
        ready: &mut AsyncFdReadyGuard<'_, Arc<UdpSocket>>,
        mut each: impl FnMut(&mut [u8], usize, Option<SocketAddr>),
    ) {
        // An error other than WouldBlock (an ICMP unreachable queued on a
        // connected socket) is reported once by the read, and what follows
        // it is still queued: readiness stays, and the next read gets it.
        let _ = ready.try_io(|socket| {
            let count = self.receive(socket.get_ref())?;
            for i in 0..count {
                let (buf, len, from) = self.datagram(i);
                each(buf, len, from);
            }
            if count < BATCH {
                // Short: the queue is empty now.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
    }

    /// The `i`th datagram of the last [`Batch::receive`]: its buffer (the
    /// datagram at `HEADROOM..HEADROOM + len`, with room around it to
    /// frame it in place), its length and its source.
    pub(crate) fn datagram(&mut self, i: usize) -> (&mut [u8], usize, Option<SocketAddr>) {
        let (len, from) = self.received[i];
        (&mut self.buffers[i], len, from)
    }

    /// One datagram, with a plain `recvfrom`: where one is all a socket
    /// usually holds, `recvmmsg` costs more (1.18 µs against 0.77 µs for
    /// one datagram on this VM, measured in C), and more than the read
    /// that would only return `EAGAIN` (together 1.04 µs).
    pub(crate) fn receive_one(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let (len, from) =
            socket.recv_from(&mut self.buffers[0][HEADROOM..HEADROOM + MAX_DATAGRAM])?;
        self.received[0] = (len, Some(from));
        Ok(1)
    }

    /// One `recvmmsg`; returns how many datagrams arrived, at most
    /// [`BATCH`]: fewer means the socket's queue is empty.
    pub(crate) fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let mut slices = self
            .buffers
            .each_mut()
            .map(|b| [IoSliceMut::new(&mut b[HEADROOM..HEADROOM + MAX_DATAGRAM])]);
        let results = recvmmsg(
            socket.as_raw_fd(),
            &mut self.headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        let mut count = 0;
        for (slot, message) in self.received.iter_mut().zip(results) {
            *slot = (message.bytes, message.address.and_then(socket_addr));
            count += 1;
        }
        Ok(count)
    }
}

fn socket_addr(address: SockaddrStorage) -> Option<SocketAddr> {
    match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
        (Some(v4), _) => Some(SocketAddr::V4((*v4).into())),
        (_, Some(v6)) => Some(SocketAddr::V6((*v6).into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair() -> (AsyncUdpSocket, UdpSocket, SocketAddr) {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let to = server.local_addr().unwrap();
        let server = register(Arc::new(server)).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        (server, client, to)
    }

    /// Reads one ready batch, as the relay loops do.
    async fn read(server: &AsyncUdpSocket) -> Vec<(u8, usize, Option<SocketAddr>)> {
        let mut seen = Vec::new();
        let mut ready = tokio::time::timeout(Duration::from_secs(5), server.readable())
            .await
            .expect("readable")
            .unwrap();
        with_batch(|b| {
            b.drain(&mut ready, |buf, len, from| {
                seen.push((buf[HEADROOM], len, from));
            });
        });
        seen
    }

    /// A short batch clears readiness, and a datagram sent after that
    /// raises it again: the relay loops never sleep on queued data.
    #[tokio::test]
    async fn drains_then_wakes_on_the_next_datagram() {
        let (server, client, to) = pair();
        for i in 0..3u8 {
            client.send_to(&[i; 10], to).unwrap();
        }
        let from = Some(client.local_addr().unwrap());
        assert_eq!(
            read(&server).await,
            [(0, 10, from), (1, 10, from), (2, 10, from)]
        );
        let cleared = tokio::time::timeout(Duration::from_millis(50), server.readable()).await;
        assert!(cleared.is_err(), "readiness cleared by the short batch");

        client.send_to(&[7; 5], to).unwrap();
        assert_eq!(read(&server).await, [(7, 5, from)]);
    }

    /// More than a batch queued: the first read leaves the socket ready,
    /// and the rest comes with the next.
    #[tokio::test]
    async fn a_full_batch_stays_ready() {
        let (server, client, to) = pair();
        for i in 0..BATCH + 2 {
            client.send_to(&[i as u8], to).unwrap();
        }
        assert_eq!(read(&server).await.len(), BATCH);
        assert_eq!(read(&server).await.len(), 2);
    }
}
