//! Interop with clients nobody here wrote: coturn's `turnutils_uclient`
//! over UDP, TCP and TLS with TURN REST credentials (`-W`), every message
//! echoed back by a `turnutils_peer` through the relay, and
//! `turnutils_stunclient`.
//!
//! The tools come from Debian's `coturn` package, which `cargo xtask test`
//! installs. Without them these tests note it and pass, except on CI or
//! under xtask (`HEARTH_TEST_COTURN`), where skipping would hide a gap.

use hearth_core::config::Secret;
use hearth_turn::{Config, Server};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "interop secret";

fn tool(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn tools_present() -> bool {
    let missing: Vec<_> = [
        "turnutils_uclient",
        "turnutils_peer",
        "turnutils_stunclient",
    ]
    .into_iter()
    .filter(|t| tool(t).is_none())
    .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none() && std::env::var_os("HEARTH_TEST_COTURN").is_none(),
        "{missing:?} not found; run the suite with `cargo xtask test`, which installs coturn"
    );
    eprintln!("note: {missing:?} not found (Debian's coturn package), skipping");
    false
}

struct Running {
    udp: SocketAddr,
    tcp: SocketAddr,
    tls: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let local = "127.0.0.1:0".parse::<SocketAddr>().unwrap();
    let config = Config {
        realm: Some("interop.test".into()),
        shared_secret: Some(Secret(SECRET.to_owned().into())),
        udp: vec![local],
        tcp: vec![local],
        tls: vec![local],
        tls_cert_file: Some(cert_file),
        tls_key_file: Some(key_file),
        relay_ip: vec!["127.0.0.1".parse().unwrap()],
        // The echo peer is on loopback, which the default policy refuses.
        allowed_peer_ips: vec!["127.0.0.1".parse().unwrap()],
        ..Config::default()
    };
    let server = Server::bind(&config).unwrap();
    let addrs = server.local_addrs();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        udp: addrs.udp[0],
        tcp: addrs.tcp[0],
        tls: addrs.tls[0],
        _stop: stop,
        _dir: dir,
    }
}

/// A `turnutils_peer` echoing on a free loopback port; killed on drop.
struct Peer {
    child: Child,
    port: u16,
}

impl Peer {
    fn start() -> Self {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("turnutils_peer")
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // It prints nothing when ready; a short pause lets it bind.
        std::thread::sleep(Duration::from_millis(300));
        Self { child, port }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a tool to completion off the runtime, killing it after `limit`.
async fn run(mut cmd: Command, limit: Duration) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + limit;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

/// uclient's closing totals: messages sent and received, and lost.
fn totals(out: &Output) -> (u64, u64, u64) {
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let number_after = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let mut sent = None;
    let mut received = None;
    let mut lost = None;
    for line in text.lines() {
        // The run's totals line has no per-client `msz=` prefix.
        if line.contains("start_mclient: tot_send_msgs=") {
            sent = number_after(line, "tot_send_msgs=");
            received = number_after(line, "tot_recv_msgs=");
        }
        if line.contains("Total lost packets ") {
            lost = number_after(line, "Total lost packets ");
        }
    }
    match (sent, received, lost) {
        (Some(s), Some(r), Some(l)) => (s, r, l),
        _ => panic!("no totals in turnutils_uclient's output:\n{text}"),
    }
}

async fn uclient(server: SocketAddr, peer: &Peer, extra: &[&str]) -> (u64, u64, u64) {
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(["-e", "127.0.0.1", "-r", &peer.port.to_string()])
        .args(["-p", &server.port().to_string()])
        .args(["-W", SECRET, "-u", "@alice:interop.test"])
        .args(["-n", "50", "-m", "4", "-l", "120", "-z", "5", "-c", "-X"])
        .args(extra)
        .arg("127.0.0.1");
    totals(&run(cmd, Duration::from_secs(60)).await)
}

/// Channels (uclient's default data path) over UDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_udp_channels() {
    if !tools_present() {
        return;
    }
    let server = start();
    let peer = Peer::start();
    assert_eq!(uclient(server.udp, &peer, &[]).await, (200, 200, 0));
}

/// Send and Data indications (`-s`) over UDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_udp_send_indications() {
    if !tools_present() {
        return;
    }
    let server = start();
    let peer = Peer::start();
    assert_eq!(uclient(server.udp, &peer, &["-s"]).await, (200, 200, 0));
}

/// TURN over TCP (`-t`): STUN and padded ChannelData on one stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_tcp() {
    if !tools_present() {
        return;
    }
    let server = start();
    let peer = Peer::start();
    assert_eq!(uclient(server.tcp, &peer, &["-t"]).await, (200, 200, 0));
}

/// TURN over TLS (`-t -S`). uclient reads one frame per TLS record, so
/// the server must not coalesce frames into one record (coturn 4.6.1 loses
/// a few echoes this way: 4 of 200 in the same run shape).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_tls() {
    if !tools_present() {
        return;
    }
    let server = start();
    let peer = Peer::start();
    assert_eq!(
        uclient(server.tls, &peer, &["-t", "-S"]).await,
        (200, 200, 0)
    );
}

/// uclient's RTP/RTCP pair (no `-c`): EVEN-PORT with the R bit, then an
/// Allocate redeeming the RESERVATION-TOKEN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_udp_with_rtcp_pairs() {
    if !tools_present() {
        return;
    }
    let server = start();
    let peer = Peer::start();
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(["-e", "127.0.0.1", "-r", &peer.port.to_string()])
        .args(["-p", &server.udp.port().to_string()])
        .args(["-W", SECRET, "-u", "@alice:interop.test"])
        .args(["-n", "20", "-m", "2", "-l", "120", "-z", "5", "-X"])
        .arg("127.0.0.1");
    let (sent, received, lost) = totals(&run(cmd, Duration::from_secs(60)).await);
    assert_eq!((sent, received, lost), (40, 40, 0));
}

/// `turnutils_stunclient`: a Binding request answered with the client's
/// reflexive address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stunclient_binding() {
    if !tools_present() {
        return;
    }
    let server = start();
    let mut cmd = Command::new("turnutils_stunclient");
    cmd.args(["-p", &server.udp.port().to_string(), "127.0.0.1"]);
    let out = run(cmd, Duration::from_secs(20)).await;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("UDP reflexive addr: 127.0.0.1:"), "{text}");
}
