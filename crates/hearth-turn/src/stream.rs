//! TURN over TCP and TLS (RFC 8656 §5, §12.5): STUN messages and
//! ChannelData framed back to back on one stream, ChannelData padded to a
//! multiple of four. The allocation lives as long as the connection.

use crate::TurnError;
use crate::alloc::{Allocation, ClientLink, FiveTuple, Transport};
use crate::handler::{self, Outcome};
use crate::server::{Shared, forward_to_client, relay_channel_data, send_now};
use crate::stats::{self, Relayed};
use crate::stun;
use crate::udp::{AsyncUdpSocket, register, with_batch};
use hearth_core::tls::{ServerCert, TlsFiles};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// A connection that has no allocation and sends nothing for this long is
/// closed, so idle sockets cannot pile up.
const IDLE_WITHOUT_ALLOCATION: Duration = Duration::from_secs(60);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued toward one client before relayed data is dropped.
const QUEUE: usize = 512;

/// Loads the certificate chain and key, as a certificate a reload can
/// replace.
pub(crate) fn load_tls(cert: &Path, key: &Path) -> Result<Arc<ServerCert>, TurnError> {
    ServerCert::load(&tls_files(cert, key)).map_err(TurnError::Tls)
}

pub(crate) fn tls_files(cert: &Path, key: &Path) -> TlsFiles {
    TlsFiles {
        certificate: cert.to_owned(),
        private_key: key.to_owned(),
    }
}

/// No ALPN is offered: TURN clients rarely send one, and a server list
/// would refuse those that send another.
pub(crate) fn tls_acceptor(cert: &Arc<ServerCert>) -> TlsAcceptor {
    TlsAcceptor::from(cert.server_config(&[]))
}

/// Accepts connections until aborted; dropping the set aborts them all.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, client) = match accepted {
                    Ok(c) => c,
                    Err(_) => {
                        // Out of descriptors, most likely: back off.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(local) = tcp.local_addr() else { continue };
                let _ = tcp.set_nodelay(true);
                let shared = shared.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let mut five = FiveTuple { transport: Transport::Tcp, client, server: local };
                    match tls {
                        None => serve(&shared, tcp, five).await,
                        Some(acceptor) => {
                            five.transport = Transport::Tls;
                            if let Ok(Ok(stream)) =
                                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                            {
                                serve(&shared, stream, five).await;
                            }
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Send>(shared: &Arc<Shared>, stream: S, five: FiveTuple) {
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let link = ClientLink::Stream(tx.clone());
    tokio::select! {
        () = read_frames(shared, rd, five, &link, &tx) => {}
        () = write_frames(wr, rx, five.transport == Transport::Tls) => {}
    }
    // RFC 8656 §5: the allocation ends with its connection.
    if shared.table.remove(&five) {
        stats::set_allocations(shared.table.len());
    }
}

async fn write_frames<W: AsyncWrite>(wr: W, mut rx: mpsc::Receiver<Vec<u8>>, one_per_record: bool) {
    let mut wr = std::pin::pin!(BufWriter::new(wr));
    while let Some(frame) = rx.recv().await {
        if wr.write_all(&frame).await.is_err() {
            return;
        }
        // Over TCP, coalesce whatever else is queued into the same write.
        // Over TLS each frame gets its own record: some clients
        // (turnutils_uclient among them) read one frame per record and
        // lose the rest.
        while !one_per_record && let Ok(frame) = rx.try_recv() {
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
        if wr.flush().await.is_err() {
            return;
        }
    }
}

/// The length of the frame starting with `header`, or `None` when the
/// stream does not start with STUN or ChannelData (and so cannot be
/// resynchronised).
pub(crate) fn frame_len(header: [u8; 4]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    match header[0] & 0xc0 {
        0x00 => Some(stun::HEADER_LEN + len),
        0x40 => Some(4 + stun::padded(len)),
        _ => None,
    }
}

async fn read_frames<R: AsyncRead>(
    shared: &Arc<Shared>,
    rd: R,
    five: FiveTuple,
    link: &ClientLink,
    tx: &mpsc::Sender<Vec<u8>>,
) {
    let mut rd = std::pin::pin!(BufReader::with_capacity(16 << 10, rd));
    let relayed = Relayed::to_peer();
    let mut allocation: Option<Arc<Allocation>> = None;
    let mut frame = Vec::with_capacity(2048);
    loop {
        let mut header = [0u8; 4];
        if allocation.as_ref().is_some_and(|a| a.is_alive()) {
            if rd.read_exact(&mut header).await.is_err() {
                return;
            }
        } else {
            match tokio::time::timeout(IDLE_WITHOUT_ALLOCATION, rd.read_exact(&mut header)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
        }
        let Some(len) = frame_len(header) else {
            stats::dropped(stats::Drop::Garbage);
            return;
        };
        frame.clear();
        frame.extend_from_slice(&header);
        frame.resize(len, 0);
        if rd.read_exact(&mut frame[4..]).await.is_err() {
            // A truncated stream: nothing to answer.
            return;
        }
        if stun::is_channel_data(header[0]) {
            let current = shared.table.current(&mut allocation, &five);
            if let Some(bytes) = relay_channel_data(shared, current, &frame) {
                relayed.add(bytes);
            }
            continue;
        }
        match handler::handle(shared, &frame, five, link) {
            Outcome::Reply(reply) => {
                if tx.send(reply).await.is_err() {
                    return;
                }
            }
            Outcome::Allocated {
                reply,
                allocation: a,
            } => {
                if let Err(e) = start_relay(shared, &a) {
                    shared.abandon(&a, &e);
                    continue;
                }
                shared.publish(a.clone());
                allocation = Some(a);
                if tx.send(reply).await.is_err() {
                    return;
                }
            }
            Outcome::Relay {
                allocation: a,
                peer,
                data,
            } => {
                if send_now(&a.relay, data, peer) {
                    relayed.add(data.len());
                }
            }
            Outcome::Nothing => {}
        }
    }
}

/// Starts the task that reads a stream allocation's relay socket; it ends
/// with the allocation.
fn start_relay(shared: &Arc<Shared>, allocation: &Arc<Allocation>) -> std::io::Result<()> {
    let socket = register(allocation.relay.clone())?;
    let task = tokio::spawn(relay_to_client(shared.clone(), allocation.clone(), socket));
    allocation.add_task(task.abort_handle());
    Ok(())
}

async fn relay_to_client(shared: Arc<Shared>, allocation: Arc<Allocation>, socket: AsyncUdpSocket) {
    let relayed = Relayed::to_client();
    loop {
        let Ok(mut ready) = socket.readable().await else {
            return;
        };
        with_batch(|batch| {
            batch.drain(&mut ready, |buf, n, peer| {
                if let Some(peer) = peer
                    && forward_to_client(&shared, &allocation, buf, n, peer)
                {
                    relayed.add(n);
                }
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::frame_len;

    /// RFC 8656 §12.5: over a stream, ChannelData is padded to 4 bytes
    /// and the length field does not count the padding.
    #[test]
    fn frames_are_sized_by_kind() {
        assert_eq!(frame_len([0x40, 0x00, 0x00, 0x05]), Some(12));
        assert_eq!(frame_len([0x40, 0x00, 0x00, 0x08]), Some(12));
        assert_eq!(frame_len([0x4f, 0xff, 0x00, 0x00]), Some(4));
        assert_eq!(frame_len([0x00, 0x01, 0x00, 0x08]), Some(28));
        assert_eq!(frame_len([0x80, 0, 0, 0]), None);
        assert_eq!(frame_len([0xc0, 0, 0, 0]), None);
    }
}
