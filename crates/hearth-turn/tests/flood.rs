//! Stateless nonces (RFC 8489 §9.2 lets a server derive them): one
//! million unauthenticated Allocate requests from thousands of source
//! addresses leave the server's memory within 20 MB of where it started.
//! Each test here runs in its own process under nextest, so the resident
//! set measured is the server's plus this small driver's.

use hearth_core::config::Secret;
use hearth_turn::{Config, Server};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

const REQUESTS: usize = 1_000_000;
const SOURCES: usize = 200;
/// Requests in flight per source before waiting for the 401s.
const WINDOW: usize = 25;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// An Allocate request with REQUESTED-TRANSPORT and no credentials.
fn allocate(n: u64) -> [u8; 28] {
    let mut m = [0u8; 28];
    m[..4].copy_from_slice(&[0x00, 0x03, 0x00, 0x08]);
    m[4..8].copy_from_slice(&0x2112_a442u32.to_be_bytes());
    m[12..20].copy_from_slice(&n.to_be_bytes());
    m[20..24].copy_from_slice(&[0x00, 0x19, 0x00, 0x04]);
    m[24] = 17;
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_unauthenticated_requests_leave_memory_flat() {
    let config = Config {
        shared_secret: Some(Secret("flood".to_owned().into())),
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp: Vec::new(),
        tls: Vec::new(),
        relay_ip: vec!["127.0.0.1".parse().unwrap()],
        ..Config::default()
    };
    let server = Server::bind(&config).unwrap();
    let target = server.local_addrs().udp[0];
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let answered = tokio::task::spawn_blocking(move || {
        // Sources across 127.0.0.0/8, each its own address and port, as
        // spoofed packets would appear.
        let sources: Vec<UdpSocket> = (0..SOURCES)
            .map(|i| {
                let ip = Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
                let s = UdpSocket::bind(SocketAddr::from((ip, 0))).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                s
            })
            .collect();
        let mut buf = [0u8; 1500];
        let mut sent = 0usize;
        let mut answered = 0usize;
        let mut baseline = None;
        while sent < REQUESTS {
            for s in &sources {
                for _ in 0..WINDOW {
                    s.send_to(&allocate(sent as u64), target).unwrap();
                    sent += 1;
                }
            }
            for s in &sources {
                for _ in 0..WINDOW {
                    match s.recv(&mut buf) {
                        Ok(_) => answered += 1,
                        Err(_) => break,
                    }
                }
            }
            // Measure from after the first round, once buffers and the
            // runtime's threads exist.
            baseline.get_or_insert_with(rss_bytes);
        }
        (answered, baseline.unwrap(), rss_bytes())
    })
    .await
    .unwrap();
    let (answered, before, after) = answered;
    // Loopback can drop a few under load; nearly all must be answered
    // (401 challenges), or the test would not be testing anything.
    assert!(answered >= REQUESTS * 95 / 100, "only {answered} answered");
    let growth = after.saturating_sub(before);
    assert!(
        growth < 20 << 20,
        "resident memory grew by {} MiB",
        growth >> 20
    );
    eprintln!(
        "{answered} requests answered; RSS {} MiB → {} MiB",
        before >> 20,
        after >> 20
    );
}
