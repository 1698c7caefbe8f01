//! The integration manager in a real browser, against a real homeserver:
//! headless Chromium from Debian (driven through playwright-core, never a
//! downloaded browser) loads a harness page that plays Element's side of
//! the protocol (`tests/browser/harness.js`: ScalarAuthClient's register
//! and account calls, ScalarMessaging's listener with its origin check,
//! echoed responses and room scoping), with the IM UI in an iframe on
//! another origin. Synapse (PyPI) gives the real OpenID token and takes
//! every change through its client API. The driver
//! (`tests/browser/drive.mjs`) stops after each step so this test can read
//! Synapse's state:
//!
//! 1. register, `/account` answers `M_TERMS_NOT_SIGNED`, terms accepted in
//!    the UI's own flow;
//! 2. a Jitsi widget added (by keyboard), its state content checked byte
//!    for byte against what Element writes; Element's "Edit" entry
//!    (`screen=type_jitsi&integ_id=`) opens its editor; then edited and
//!    removed;
//! 3. a bot invited and kicked, its membership read from Synapse; an
//!    Etherpad and a video added through their editors;
//! 4. `close_scalar`; a member without power is told so, and a reply
//!    that never comes is shown as an error; the Jitsi and video wrappers
//!    as a client renders them; dark theme;
//! 5. the first load's transfer size and request count, from a fresh
//!    browser.
//!
//! The service is built through the service contract (`Service::build`
//! on a `Context`, then `public_app`), as the binary does, and served
//! in-process. Screenshots go to `target/test-artifacts/integrations-browser`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use hearth_e2e::{Synapse, free_port};
use hearth_service::Service;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
const ROOM_NAME: &str = "Hearth widgets";
/// How long one driver step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
const HARNESS_HTML: &str = include_str!("../browser/harness.html");
const HARNESS_JS: &str = include_str!("../browser/harness.js");

fn workspace_root() -> PathBuf {
    hearth_testkit::workspace_root()
}

/// Debian's Chromium (`HEARTH_TEST_CHROMIUM` to use another) and
/// playwright-core from npm in `target/peers/browser`, as `cargo xtask
/// test` installs them.
fn browser_tools() -> (PathBuf, PathBuf) {
    let chromium = std::env::var_os("HEARTH_TEST_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let playwright = std::env::var_os("HEARTH_TEST_PLAYWRIGHT")
        .filter(|p| !p.is_empty())
        .map_or_else(
            || workspace_root().join("target/peers/browser/node_modules"),
            PathBuf::from,
        );
    assert!(
        chromium.is_file() && playwright.join("playwright-core").is_dir(),
        "the browser test needs Debian's chromium ({}) and playwright-core in {}: run it with \
         `cargo xtask test`, which installs both",
        chromium.display(),
        playwright.display()
    );
    (chromium, playwright)
}

/// Synapse's client API as one user.
struct Client<'a> {
    synapse: &'a Synapse,
    token: String,
}

impl Client<'_> {
    fn post(&self, path: &str, body: &Value) -> Value {
        let response = self.synapse.client().post(path, Some(&self.token), body);
        assert_eq!(response.status, 200, "POST {path}: {}", response.text());
        response.json()
    }

    /// The raw body of a state event's content, as Synapse serves it.
    fn state_bytes(&self, room: &str, event_type: &str, key: &str) -> (u16, String) {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/{}/{}",
            enc(room),
            enc(event_type),
            enc(key)
        );
        let response = self.synapse.client().get(&path, Some(&self.token));
        (response.status, response.text())
    }
}

fn enc(s: &str) -> String {
    hearth_core::http::percent_encode(s)
}

/// A JSON string literal, as `JSON.stringify` writes it for these values.
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// The room widget content Element writes for a Jitsi widget: the key
/// order of `WidgetUtils.setRoomWidget` (type, url, name, data) and of
/// `addJitsiWidget`'s data (conferenceId, roomName, isAudioOnly,
/// isVideoChannel, domain), compact as `JSON.stringify` makes it.
fn element_jitsi_content(url: &str, name: &str, conference: &str, audio_only: bool) -> String {
    format!(
        r#"{{"type":"jitsi","url":{},"name":{},"data":{{"conferenceId":{},"roomName":{},"isAudioOnly":{audio_only},"isVideoChannel":false,"domain":"meet.example.org"}}}}"#,
        js(url),
        js(name),
        js(conference),
        js(ROOM_NAME),
    )
}

/// Element's Jitsi widget URL (`getLocalJitsiWrapperUrl`, then `confId` set
/// in the query), on Hearth's wrapper.
fn element_jitsi_url(base: &str, conference: &str) -> String {
    format!(
        "{base}/widgets/jitsi?confId={conference}#conferenceDomain=$domain&conferenceId=$conferenceId\
         &isAudioOnly=$isAudioOnly&isVideoChannel=$isVideoChannel&displayName=$matrix_display_name\
         &avatarUrl=$matrix_avatar_url&userId=$matrix_user_id&roomId=$matrix_room_id&theme=$theme\
         &roomName=$roomName&supportsScreensharing=true&language=$org.matrix.msc2873.client_language"
    )
}

/// Synapse serves event content as canonical JSON (keys sorted), so the
/// state read back must be, byte for byte, the canonical form of what
/// Element wrote.
fn assert_stored(client: &Client<'_>, room: &str, widget_id: &str, written: &str) {
    let (status, stored) = client.state_bytes(room, "im.vector.modular.widgets", widget_id);
    assert_eq!(status, 200, "{stored}");
    let canonical = hearth_core::canonical_json::to_string(
        &serde_json::from_str(written).expect("Element's content is JSON"),
    )
    .expect("canonical JSON");
    assert_eq!(stored, canonical, "the room state, byte for byte");
}

/// Serves the integration manager (through the service contract) and the
/// harness page, each on its own loopback origin.
fn serve_hearth(
    runtime: &tokio::runtime::Runtime,
    synapse: &Synapse,
    hearth_port: u16,
    harness_port: u16,
    data: &Path,
) {
    let public_base_url = format!("http://localhost:{hearth_port}");
    let config: hearth_integrations::Config = serde_json::from_value(json!({
        "public_base_url": public_base_url,
        "auth": {"terms": {"policies": {"privacy_policy": {
            "version": "1",
            "languages": {"en": {"name": "Integration manager privacy", "url": "https://example.org/im-privacy-1.html"}},
        }}}},
        "widgets": {"jitsi_domain": "meet.example.org", "etherpad_url": "https://pad.example.org/p/"},
        "bots": [{
            "user_id": synapse.user_id("echo"),
            "name": "Echo",
            "description": "Repeats what you say",
        }],
    }))
    .expect("the integrations section parses");
    let mut federation = hearth_federation::FederationConfig::default();
    federation.overrides.insert(
        synapse.server_name().to_owned(),
        hearth_federation::config::ServerOverride { url: synapse.url() },
    );
    let data = data.to_owned();
    runtime.block_on(async move {
        let db = hearth_core::storage::Database::connect(
            &hearth_core::storage::default_sqlite_url(&data),
            4,
            Duration::from_secs(5),
        )
        .await
        .expect("SQLite opens");
        db.migrate(&hearth_integrations::SCHEMA)
            .await
            .expect("the integrations schema migrates");
        let dns = hearth_federation::connect::SystemDns::new(&[]).expect("the system resolver");
        let federation = hearth_federation::FederationClient::new(&federation, Arc::new(dns), None)
            .expect("a federation client");
        let http = hearth_core::config::HttpConfig::default();
        let ctx = hearth_service::Context::new(
            hearth_core::ids::ServerName::parse(&format!("localhost:{hearth_port}")).unwrap(),
            hearth_core::keys::KeyRing {
                current: vec![hearth_core::keys::SigningKey::generate()],
                old: Vec::new(),
            },
            db,
            federation,
            http.clone(),
            data,
            hearth_service::Shutdown::new().1,
        );
        let parts = config
            .build(&ctx)
            .await
            .unwrap_or_else(|e| panic!("the integration manager builds: {e}"));
        let routes = parts.routes.expect("the integration manager serves HTTP");
        let app = hearth_core::http::public_app([(routes.router, routes.policy)], &http);
        let harness = axum::Router::new()
            .route(
                "/harness.html",
                axum::routing::get(|| async { axum::response::Html(HARNESS_HTML) }),
            )
            .route(
                "/harness.js",
                axum::routing::get(|| async {
                    (
                        [(axum::http::header::CONTENT_TYPE, "text/javascript")],
                        HARNESS_JS,
                    )
                }),
            );
        for (port, app) in [(hearth_port, app), (harness_port, harness)] {
            let tcp = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("binding a loopback port");
            tokio::spawn(hearth_core::http::serve(
                hearth_core::http::Listener { tcp, tls: None },
                app,
                std::future::pending(),
            ));
        }
    });
}

/// The driver on the other end of a pipe: steps in, `ok` out.
struct Driver {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Driver {
    /// The next step, which must be `name`; its data.
    fn expect(&mut self, name: &str) -> Value {
        loop {
            let line = self.lines.recv_timeout(STEP_TIMEOUT).unwrap_or_else(|_| {
                panic!(
                    "the browser driver sent no {name} step: {}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                )
            });
            if let Some(error) = line.strip_prefix("ERROR ") {
                panic!("the browser driver failed before {name}: {error}");
            }
            if let Some(rest) = line.strip_prefix("STEP ") {
                let (step, data) = rest.split_once(' ').unwrap_or((rest, "{}"));
                assert_eq!(step, name, "the driver's steps came out of order");
                return serde_json::from_str(data).expect("step data is JSON");
            }
            eprintln!("driver: {line}");
        }
    }

    fn proceed(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("the driver's stdin");
        stdin.write_all(b"ok\n").expect("writing to the driver");
        stdin.flush().expect("flushing the driver's stdin");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn element_adds_edits_and_removes_widgets_and_bots_through_the_ui() {
    let (chromium, playwright) = browser_tools();
    let synapse = Synapse::start(&json!({
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
        "rc_login": {
            "address": {"per_second": 1000, "burst_count": 1000},
            "account": {"per_second": 1000, "burst_count": 1000},
            "failed_attempts": {"per_second": 1000, "burst_count": 1000},
        },
        "rc_message": {"per_second": 1000, "burst_count": 1000},
        "rc_invites": {
            "per_room": {"per_second": 1000, "burst_count": 1000},
            "per_user": {"per_second": 1000, "burst_count": 1000},
            "per_issuer": {"per_second": 1000, "burst_count": 1000},
        },
    }));
    let alice = Client {
        token: synapse.user("alice", PASSWORD),
        synapse: &synapse,
    };
    let bob = Client {
        token: synapse.user("bob", PASSWORD),
        synapse: &synapse,
    };
    synapse.register_user("echo", PASSWORD);
    let echo = synapse.user_id("echo");
    let room = alice.post(
        "/_matrix/client/v3/createRoom",
        &json!({"name": ROOM_NAME, "preset": "private_chat", "invite": [synapse.user_id("bob")]}),
    )["room_id"]
        .as_str()
        .expect("a room id")
        .to_owned();
    bob.post(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        &json!({}),
    );

    let data = tempfile::tempdir().expect("a data directory");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (hearth_port, harness_port) = (free_port(), free_port());
    serve_hearth(&runtime, &synapse, hearth_port, harness_port, data.path());
    let base = format!("http://localhost:{hearth_port}");

    let artifacts = workspace_root().join("target/test-artifacts/integrations-browser");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).expect("the artifacts directory");
    let user = |client: &Client<'_>, localpart: &str| {
        json!({
            "synapse": synapse.url(),
            "access_token": client.token,
            "user_id": synapse.user_id(localpart),
            "room_id": room,
            "room_name": ROOM_NAME,
            "rest": format!("{base}/api"),
            "ui": format!("{base}/element"),
            "theme": "light",
        })
    };
    let settings = data.path().join("driver.json");
    std::fs::write(
        &settings,
        json!({
            "playwright_dir": playwright,
            "chromium": chromium,
            "harness": format!("http://127.0.0.1:{harness_port}/harness.html"),
            "artifacts": artifacts,
            "alice": user(&alice, "alice"),
            "bob": user(&bob, "bob"),
        })
        .to_string(),
    )
    .expect("writing the driver's settings");

    let stderr = data.path().join("driver.log");
    let mut child = Command::new("node")
        .arg(workspace_root().join("tests/browser/drive.mjs"))
        .arg(&settings)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).expect("the driver's log"))
        .spawn()
        .expect("starting node: is Node.js installed?");
    let stdout = child.stdout.take().expect("the driver's stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut driver = Driver {
        child,
        lines,
        stderr,
    };

    // 1. ScalarAuthClient: the token works, but the terms are not signed.
    let connected = driver.expect("connected");
    assert_eq!(connected["accountBefore"]["errcode"], "M_TERMS_NOT_SIGNED");
    driver.proceed();

    // 2. The Jitsi widget, as Element writes it.
    let added = driver.expect("added");
    let request = &added["request"];
    assert_eq!(request["action"], "set_widget");
    assert_eq!(request["room_id"], room.as_str());
    assert_eq!(request["type"], "jitsi");
    assert_eq!(request["response"], json!({"success": true}));
    assert!(request.get("api").is_none(), "no `api` field: {request}");
    assert!(
        request["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    let widget_id = request["widget_id"]
        .as_str()
        .expect("a widget id")
        .to_owned();
    assert!(
        widget_id.len() == 24 && widget_id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "Element's randomString(24): {widget_id}"
    );
    let conference = request["data"]["conferenceId"]
        .as_str()
        .expect("a conference")
        .to_owned();
    assert!(
        conference.len() == 29
            && conference.starts_with("Jitsi")
            && conference.as_bytes()[5].is_ascii_uppercase()
            && conference[6..].bytes().all(|b| b.is_ascii_lowercase()),
        "Element's conference id form: {conference}"
    );
    let url = element_jitsi_url(&base, &conference);
    let expected = element_jitsi_content(&url, "Jitsi", &conference, false);
    assert_eq!(added["write"]["body"], expected.as_str());
    assert_stored(&alice, &room, &widget_id, &expected);
    driver.proceed();

    let entry = driver.expect("edit-entry");
    assert_eq!(entry["heading"], "Edit jitsi conference");
    assert_eq!(entry["name"], "Jitsi");
    assert_eq!(entry["focused"], "name", "the editor takes the focus");
    driver.proceed();

    let edited = driver.expect("edited");
    assert_eq!(edited["request"]["widget_id"], widget_id.as_str());
    let expected = element_jitsi_content(&url, "Team call", &conference, true);
    assert_eq!(edited["write"]["body"], expected.as_str());
    assert_stored(&alice, &room, &widget_id, &expected);
    driver.proceed();

    let removed = driver.expect("removed");
    assert_eq!(removed["request"]["url"], Value::Null);
    assert_eq!(removed["write"]["body"], "{}");
    let (status, stored) = alice.state_bytes(&room, "im.vector.modular.widgets", &widget_id);
    assert_eq!(
        (status, stored.as_str()),
        (200, "{}"),
        "Element removes with {{}}"
    );
    driver.proceed();

    // 3. The bot.
    driver.expect("invited");
    let (_, member) = alice.state_bytes(&room, "m.room.member", &echo);
    assert_eq!(
        serde_json::from_str::<Value>(&member).unwrap()["membership"],
        "invite"
    );
    driver.proceed();
    driver.expect("kicked");
    let (_, member) = alice.state_bytes(&room, "m.room.member", &echo);
    assert_eq!(
        serde_json::from_str::<Value>(&member).unwrap()["membership"],
        "leave"
    );
    driver.proceed();

    // The other catalog entries: Hearth's wrapper URL with the page in
    // `data.url`, under the legacy types Scalar wrote.
    let catalog = driver.expect("catalog");
    for (write, expected) in [
        (
            &catalog["pad"],
            format!(
                r#"{{"type":"etherpad","url":"{base}/widgets/generic?url=https%3A%2F%2Fpad.example.org%2Fp%2Fteam-notes","name":"Etherpad","data":{{"url":"https://pad.example.org/p/team-notes"}}}}"#
            ),
        ),
        (
            &catalog["video"],
            format!(
                r#"{{"type":"youtube","url":"{base}/widgets/video?url=https%3A%2F%2Fyoutu.be%2FdQw4w9WgXcQ","name":"Video","data":{{"url":"https://youtu.be/dQw4w9WgXcQ"}}}}"#
            ),
        ),
    ] {
        assert_eq!(write["body"], expected.as_str());
        let id = write["widget_id"].as_str().expect("a widget id");
        assert_stored(&alice, &room, id, &expected);
    }
    driver.proceed();

    // 4. Closing, the wire format of every request, and no script errors.
    let closed = driver.expect("closed");
    assert_eq!(closed["close"]["action"], "close_scalar");
    assert_eq!(closed["close"]["response"], Value::Null);
    let requests = closed["requests"].as_array().expect("the requests");
    for action in [
        "can_send_event",
        "get_widgets",
        "membership_state",
        "set_widget",
        "invite",
        "kick",
    ] {
        assert!(
            requests.iter().any(|r| r["action"] == action),
            "{action} was used"
        );
    }
    for r in requests {
        assert_eq!(r["has_api"], false, "{r}");
        assert!(r["request_id"].as_str().is_some(), "{r}");
    }
    assert_eq!(closed["consoleErrors"], json!([]));
    driver.proceed();

    let weak = driver.expect("no-power");
    let text = weak["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("You cannot add, change or remove widgets here")
            && text.contains("You do not have permission to do that in this room."),
        "{text}"
    );
    assert_eq!(weak["addDisabled"], true);
    // A reply that never comes ends in a visible error, not a spinner.
    assert_eq!(
        weak["timeout"],
        "Unknown: Your client did not answer (membership_state) within 10 seconds."
    );
    driver.proceed();

    // The wrappers: Jitsi framed on the configured host only, with the
    // user's name and voice-only mode from Element's template variables;
    // the video through YouTube's no-cookie player.
    let wrappers = driver.expect("wrappers");
    assert_eq!(
        wrappers["jitsiFrame"],
        "https://meet.example.org/JitsiQabcdefghijklmnopqrstuvw#userInfo.displayName=%22Alice%20A.%22&config.startAudioOnly=true&config.startWithVideoMuted=true"
    );
    assert_eq!(
        wrappers["jitsiTitle"],
        "Jitsi Meet conference JitsiQabcdefghijklmnopqrstuvw"
    );
    assert!(
        wrappers["otherHost"]
            .as_str()
            .is_some_and(|t| t.contains("another Jitsi server")),
        "{wrappers}"
    );
    assert_eq!(
        wrappers["videoFrame"],
        "https://www.youtube-nocookie.com/embed/dQw4w9WgXcQ"
    );
    driver.proceed();

    // 5. The first load, from an empty cache.
    let measured = driver.expect("measured");
    let first_load = measured["firstLoad"].as_array().expect("the requests");
    let bytes: u64 = first_load.iter().filter_map(|r| r["bytes"].as_u64()).sum();
    eprintln!(
        "first load of the UI: {} requests, {bytes} bytes: {first_load:?}",
        first_load.len()
    );
    let paths: Vec<&str> = first_load
        .iter()
        .filter_map(|r| r["url"].as_str())
        .collect();
    assert!(
        paths.contains(&"/element")
            && paths.contains(&"/element/app.js")
            && paths.contains(&"/element/app.css"),
        "{paths:?}"
    );
    assert_eq!(first_load.len(), 3, "page, script, stylesheet: {paths:?}");
    assert!(bytes < 50 * 1024, "the first load transfers {bytes} bytes");
    driver.proceed();

    let status = driver.child.wait().expect("the driver exits");
    assert!(status.success(), "the driver failed: {status}");
    drop(runtime);
}
