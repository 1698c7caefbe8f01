//! A browser nobody here wrote: headless Chromium (Debian's package) opens
//! two `RTCPeerConnection`s with `iceTransportPolicy: "relay"`, so the
//! only candidates are relayed ones, and sends a data-channel message from
//! one to the other through the server, with TURN REST credentials as
//! Synapse hands them out.
//!
//! The page reports back by loading a URL from a small HTTP listener here.
//! Without Chromium the test notes it and passes, except on CI.

use hearth_core::config::Secret;
use hearth_turn::{Config, Server, rest_credentials};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

const SECRET: &str = "chromium secret";
const MESSAGE: &str = "hello-through-hearth";

/// `HEARTH_TEST_CHROMIUM` (set by `cargo xtask test`), else `PATH`.
fn chromium() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("HEARTH_TEST_CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(path.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| [dir.join("chromium"), dir.join("chromium-browser")])
        .find(|p| p.is_file())
}

fn page(turn: SocketAddr, username: &str, password: &str) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8"><script>
const report = (r) => {{ new Image().src = "/result?" + encodeURIComponent(r); }};
const config = {{
  iceServers: [{{ urls: "turn:{turn}?transport=udp", username: "{username}", credential: "{password}" }}],
  iceTransportPolicy: "relay",
}};
const a = new RTCPeerConnection(config), b = new RTCPeerConnection(config);
const types = [];
a.onicecandidate = (e) => {{ if (e.candidate) {{ types.push(e.candidate.type); b.addIceCandidate(e.candidate); }} }};
b.onicecandidate = (e) => {{ if (e.candidate) a.addIceCandidate(e.candidate); }};
b.ondatachannel = (e) => {{ e.channel.onmessage = (m) => report("got:" + m.data + ":" + types.join(",")); }};
const channel = a.createDataChannel("hearth");
channel.onopen = () => channel.send("{MESSAGE}");
(async () => {{
  await a.setLocalDescription(await a.createOffer());
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(await b.createAnswer());
  await a.setRemoteDescription(b.localDescription);
}})().catch((e) => report("error:" + e));
setTimeout(() => report("timeout:" + a.iceConnectionState + ":" + types.join(",")), 20000);
</script>"#
    )
}

/// Serves the page and returns the first `/result?...` query.
fn serve(listener: TcpListener, html: String, results: mpsc::Sender<String>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            continue;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let (status, body) = if path == "/" {
            ("200 OK", html.clone())
        } else if let Some(query) = path.strip_prefix("/result?") {
            let _ = results.send(query.to_owned());
            ("200 OK", String::new())
        } else {
            ("404 Not Found", String::new())
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

fn unescape(s: &str) -> String {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(Ok(b)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16))
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_data_channel_through_relay_only() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium not found; run the suite with `cargo xtask test`"
        );
        eprintln!("note: chromium not found (Debian's chromium package), skipping");
        return;
    };
    let config = Config {
        realm: Some("chromium.test".into()),
        shared_secret: Some(Secret(SECRET.to_owned().into())),
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp: Vec::new(),
        tls: Vec::new(),
        relay_ip: vec!["127.0.0.1".parse().unwrap()],
        ..Config::default()
    };
    let server = Server::bind(&config).unwrap();
    let turn = server.local_addrs().udp[0];
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let credentials = rest_credentials(
        SECRET,
        "@alice:chromium.test",
        Duration::from_secs(3600),
        SystemTime::now(),
        Vec::new(),
    );
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", http.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    let html = page(turn, &credentials.username, &credentials.password);
    std::thread::spawn(move || serve(http, html, tx));
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let result = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let result = unescape(&result.expect("the page reported within 60 s"));
    // The two peers are both relayed: the own-relay-address rule lets the
    // loopback relay reach the other relay's port.
    assert!(
        result.starts_with(&format!("got:{MESSAGE}:")),
        "page said {result}"
    );
    let types = result.rsplit(':').next().unwrap_or_default();
    assert!(
        !types.is_empty() && types.split(',').all(|t| t == "relay"),
        "candidate types {types}"
    );
}
