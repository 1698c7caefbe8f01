//! Moving a real Sydent deployment (PyPI `matrix-sydent`) to Hearth with
//! `hearth identity import-sydent`, the way an operator would:
//!
//! 1. Sydent runs with a config written here (`server.name` `sydent.test`,
//!    a fresh `sydent.db`, the client API and the internal API on loopback)
//!    and generates its signing key itself: at first start it writes
//!    `[crypto] ed25519.signingkey = ed25519 0 <seed>` into that config.
//! 2. Bindings are made through Sydent's own internal API (`POST
//!    /_matrix/identity/internal/bind`, which trusts its caller, so no
//!    validation session or homeserver is needed), including one moved to
//!    another user and one removed again (`/internal/unbind`); each signed
//!    association Sydent returns is kept. A pending invite and its ephemeral
//!    key come from Sydent's own v1 `store-invite`, which needs no account
//!    (v1 access is on by default), its mail captured by an SMTP server. So
//!    every row the import reads was written by Sydent's code; no SQL here.
//! 3. Sydent is stopped. Hearth, started once before (so it has the signing
//!    key it generated at first start), runs `hearth identity import-sydent
//!    <sydent.db> --sydent-config <sydent.conf>`.
//! 4. The restarted Hearth publishes Sydent's key as `ed25519:0` on the
//!    identity API and on `/_matrix/key/v2/server` (its own earlier key
//!    under `old_verify_keys`), every association Sydent signed verifies
//!    against it, sha256 lookups find the moved bindings (and not the
//!    removed one), and `/pubkey/isvalid` and `/pubkey/ephemeral/isvalid`
//!    accept the keys Sydent handed out with its invite.
//! 5. The invite Sydent stored is delivered by Hearth: when the invitee
//!    binds the address here, the `onbind` callback reaches their
//!    homeserver with Sydent's invite token, signed with the key Sydent
//!    gave the homeserver when the invite was made.
//!
//! The homeserver `hs.test` of every user here is the harness's
//! [`FakeHomeserver`], reached through a federation override: it vouches
//! for OpenID tokens (registration) and records the `onbind` callback.

use std::fs;
use std::time::{Duration, Instant};

use hearth_core::http::percent_encode;
use hearth_core::ids::ServerName;
use hearth_core::keys::{KeyVersion, SigningKey, VerifyKey};
use hearth_core::signed_json::verify_json;
use hearth_core::time::now_ms;
use hearth_e2e::{
    FakeHomeserver, Hearth, HttpClient, HttpResponse, Mail, Site, SmtpCapture, Sydent,
    sha256_lookup_hash,
};
use hearth_federation::keys::verify_server_keys;
use serde_json::{Value, json};

/// Sydent's `server.name`, and Hearth's after the move: the name Sydent's
/// signatures are made under.
const SERVER_NAME: &str = "sydent.test";
/// The homeserver of every user here.
const HOMESERVER: &str = "hs.test";
const KEYS: &str = "/_matrix/key/v2/server";
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a mail or a callback may take to arrive.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);
/// The address Sydent's invite went to, as the inviter typed it.
const INVITEE: &str = "Invitee@Example.org";
const INVITE_ROOM: &str = "!room:hs.test";

/// One binding made through Sydent's internal API.
struct Bind {
    medium: &'static str,
    /// As the caller gave it; Sydent stores email addresses case-folded.
    address: &'static str,
    localpart: &'static str,
}

const BINDS: &[Bind] = &[
    Bind {
        medium: "email",
        address: "alice@example.org",
        localpart: "alice",
    },
    Bind {
        medium: "email",
        address: "Bob@Example.ORG",
        localpart: "bob",
    },
    Bind {
        medium: "msisdn",
        address: "447700900123",
        localpart: "carol",
    },
    // Moved to another user by the next bind.
    Bind {
        medium: "email",
        address: "moved@example.org",
        localpart: "erin",
    },
    Bind {
        medium: "email",
        address: "moved@example.org",
        localpart: "frank",
    },
    // Removed again through `/internal/unbind` below.
    Bind {
        medium: "email",
        address: "dave@example.org",
        localpart: "dave",
    },
];

fn user_id(localpart: &str) -> String {
    format!("@{localpart}:{HOMESERVER}")
}

/// Fails with `what`, the response and `log` unless `response` is 200.
fn expect_ok(response: &HttpResponse, what: &str, log: &dyn Fn() -> String) {
    assert_eq!(
        response.status,
        200,
        "{what}: {}\n{}",
        response.text(),
        log()
    );
}

/// What Sydent left behind: its files, its public key, the associations it
/// signed, and the invite it stored.
struct Moved {
    /// Keeps Sydent's directory (config and database) until the end.
    sydent: Sydent,
    public_key: String,
    signed: Vec<Value>,
    invite_token: String,
    ephemeral_key: String,
    /// When Sydent stored the invite, in milliseconds: between these two.
    invited_between: (i64, i64),
}

/// Steps 1 and 2: a real Sydent makes the data, then stops.
fn run_sydent(smtp: &SmtpCapture) -> Moved {
    let started = Instant::now();
    let mut sydent = Sydent::start(SERVER_NAME, Some(smtp.port()));
    eprintln!("Sydent ready after {:?}", started.elapsed());
    let log = || sydent.log();

    // Sydent generated its key and saved it into its config.
    let config = fs::read_to_string(sydent.config_path()).expect("reading sydent.conf");
    assert!(
        config
            .lines()
            .any(|l| l.starts_with("ed25519.signingkey = ed25519 0 ")),
        "Sydent did not save a signing key into its config:\n{config}"
    );
    let pubkey = sydent
        .client()
        .get("/_matrix/identity/v2/pubkey/ed25519:0", None);
    expect_ok(&pubkey, "Sydent's /pubkey/ed25519:0", &log);
    let public_key = pubkey.json()["public_key"]
        .as_str()
        .expect("a public_key")
        .to_owned();

    let mut signed = Vec::new();
    for bind in BINDS {
        let response = sydent.internal().post(
            "/_matrix/identity/internal/bind",
            None,
            &json!({
                "medium": bind.medium,
                "address": bind.address,
                "mxid": user_id(bind.localpart),
            }),
        );
        expect_ok(&response, "Sydent's /internal/bind", &log);
        let association = response.json();
        assert_eq!(
            association["mxid"],
            user_id(bind.localpart),
            "{association}"
        );
        assert!(
            association["signatures"][SERVER_NAME]["ed25519:0"].is_string(),
            "Sydent signs associations with ed25519:0: {association}"
        );
        signed.push(association);
    }
    let unbind = sydent.internal().post(
        "/_matrix/identity/internal/unbind",
        None,
        &json!({"medium": "email", "address": "dave@example.org", "mxid": user_id("dave")}),
    );
    expect_ok(&unbind, "Sydent's /internal/unbind", &log);

    // A third-party invite as a homeserver stores it (v1: no account).
    let before = now_ms();
    let invite = sydent.client().post(
        "/_matrix/identity/api/v1/store-invite",
        None,
        &json!({
            "medium": "email",
            "address": INVITEE,
            "room_id": INVITE_ROOM,
            "sender": user_id("alice"),
        }),
    );
    let invited_between = (before, now_ms());
    expect_ok(&invite, "Sydent's store-invite", &log);
    let invite = invite.json();
    assert_eq!(invite["public_key"], public_key.as_str(), "{invite}");
    let ephemeral_key = invite["public_keys"][1]["public_key"]
        .as_str()
        .unwrap_or_else(|| panic!("an ephemeral key in {invite}"))
        .to_owned();
    let invite_token = invite["token"]
        .as_str()
        .expect("an invite token")
        .to_owned();
    let mail = smtp.wait_for_mail_to(&INVITEE.to_lowercase(), 0, ARRIVAL_TIMEOUT);
    assert!(mail.text().contains(&invite_token), "{}", mail.raw);

    let status = sydent.stop();
    eprintln!(
        "Sydent made {} associations and an invite, stopped ({status}) after {:?}",
        signed.len(),
        started.elapsed()
    );
    Moved {
        sydent,
        public_key,
        signed,
        invite_token,
        ephemeral_key,
        invited_between,
    }
}

/// A user of the moved server, talking to it over plain HTTP.
struct Client<'a> {
    hearth: &'a Hearth,
    http: HttpClient,
    token: String,
}

impl<'a> Client<'a> {
    /// Registers `localpart` of the fake homeserver (no terms are
    /// configured, so none need accepting).
    fn register(hearth: &'a Hearth, homeserver: &FakeHomeserver, localpart: &str) -> Self {
        let http = HttpClient::plain(hearth.public_addr());
        let registered = http.post(
            "/_matrix/identity/v2/account/register",
            None,
            &homeserver.openid_credentials(localpart),
        );
        expect_ok(&registered, "/account/register", &|| hearth.log());
        let token = registered.json()["token"]
            .as_str()
            .expect("a token")
            .to_owned();
        Self {
            hearth,
            http,
            token,
        }
    }

    fn post(&self, path: &str, body: &Value) -> Value {
        let response = self.http.post(path, Some(&self.token), body);
        expect_ok(&response, path, &|| self.hearth.log());
        response.json()
    }

    /// `/hash_details`, then one sha256 `/lookup` of every `(address,
    /// medium)`: the Matrix ID each maps to, if any.
    fn lookup(&self, threepids: &[(&str, &str)]) -> Vec<Option<String>> {
        let details = self
            .http
            .get("/_matrix/identity/v2/hash_details", Some(&self.token));
        expect_ok(&details, "/hash_details", &|| self.hearth.log());
        let details = details.json();
        let pepper = details["lookup_pepper"].as_str().expect("a lookup_pepper");
        let hashes: Vec<String> = threepids
            .iter()
            .map(|(address, medium)| sha256_lookup_hash(address, medium, pepper))
            .collect();
        let found = self.post(
            "/_matrix/identity/v2/lookup",
            &json!({"algorithm": "sha256", "pepper": pepper, "addresses": hashes}),
        );
        hashes
            .iter()
            .map(|hash| found["mappings"][hash].as_str().map(str::to_owned))
            .collect()
    }

    /// Validates `address` by mail (`requestToken`, the token from the
    /// captured mail, `submitToken`) and binds it: the signed association.
    fn bind_email(&self, smtp: &SmtpCapture, address: &str, mxid: &str) -> Value {
        let client_secret = "moved-from-sydent";
        let seen = smtp.mails_to(address).len();
        let requested = self.post(
            "/_matrix/identity/v2/validate/email/requestToken",
            &json!({"client_secret": client_secret, "email": address, "send_attempt": 1}),
        );
        let sid = requested["sid"].as_str().expect("a sid").to_owned();
        let mail = smtp.wait_for_mail_to(address, seen, ARRIVAL_TIMEOUT);
        let submitted = self.post(
            "/_matrix/identity/v2/validate/email/submitToken",
            &json!({"sid": sid, "client_secret": client_secret, "token": validation_token(&mail)}),
        );
        assert_eq!(submitted["success"], true, "{submitted}");
        self.post(
            "/_matrix/identity/v2/3pid/bind",
            &json!({"sid": sid, "client_secret": client_secret, "mxid": mxid}),
        )
    }
}

/// The `token` parameter of the `submitToken` link in a validation mail.
fn validation_token(mail: &Mail) -> String {
    mail.text()
        .split_whitespace()
        .filter(|word| word.contains("/validate/email/submitToken?"))
        .flat_map(|link| link.split(['?', '&']))
        .find_map(|param| param.strip_prefix("token="))
        .unwrap_or_else(|| panic!("no submitToken link in the mail:\n{}", mail.raw))
        .to_owned()
}

/// `GET /pubkey/<what>?public_key=<key>`: its `valid`.
fn is_valid(hearth: &Hearth, what: &str, key: &str) -> bool {
    let response = hearth.get(&format!(
        "/_matrix/identity/v2/pubkey/{what}?public_key={}",
        percent_encode(key)
    ));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["valid"]
        .as_bool()
        .unwrap_or_else(|| panic!("no valid flag in {}", response.text()))
}

/// Checks that `entity` signed `value` with `ed25519:0` = `key`, and that a
/// tampered copy fails, so a pass means something.
fn assert_signed(value: &Value, entity: &str, key: &VerifyKey) {
    verify_json(value, entity, [("ed25519:0", key)])
        .unwrap_or_else(|e| panic!("{value} does not verify: {e}"));
    let mut tampered = value.clone();
    tampered["mxid"] = json!(user_id("mallory"));
    assert!(
        verify_json(&tampered, entity, [("ed25519:0", key)]).is_err(),
        "a tampered copy of {value} verified"
    );
}

#[test]
fn a_real_sydent_deployment_moves_to_hearth() {
    let started = Instant::now();
    let smtp = SmtpCapture::start();
    let moved = run_sydent(&smtp);

    // Hearth as installed before the move: it made a key at first start.
    let homeserver = FakeHomeserver::start(HOMESERVER);
    let site = Site::new();
    let config = site.write_file(
        "hearth.toml",
        &format!(
            r#"server_name = "{SERVER_NAME}"

[federation.overrides."{HOMESERVER}"]
url = "{homeserver}"

[identity.email]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
smtp_tls = "none"
from = "Hearth Test <noreply@{SERVER_NAME}>"
"#,
            homeserver = homeserver.url(),
            smtp_port = smtp.port(),
        ),
    );
    let config = config.to_str().expect("a UTF-8 path");
    let mut first = site.start(&["--config", config, "serve"]);
    let before = first.get(KEYS).json();
    let own_keys = before["verify_keys"].as_object().expect("verify_keys");
    assert_eq!(own_keys.len(), 1, "{before}");
    let (own_id, own_key) = own_keys.iter().next().expect("one key");
    let (own_id, own_key) = (own_id.clone(), own_key["key"].clone());
    assert_ne!(own_id, "ed25519:0");
    first.stop(STOP_TIMEOUT);
    drop(first);

    // 3. The import.
    let import_started = Instant::now();
    let out = site.run_ok(&[
        "--config",
        config,
        "identity",
        "import-sydent",
        moved.sydent.database_path().to_str().expect("a UTF-8 path"),
        "--sydent-config",
        moved.sydent.config_path().to_str().expect("a UTF-8 path"),
    ]);
    eprintln!(
        "import-sydent took {:?}:\n{}",
        import_started.elapsed(),
        out.stdout
    );
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        [
            format!("imported ed25519:0 {}", moved.public_key),
            // alice, bob, carol, and moved@ (to frank); dave's was removed.
            "imported 4 bindings, 1 pending invites, 1 ephemeral keys (0 rows skipped)".to_owned(),
        ],
        "{out}"
    );

    // 4. Sydent's key is Hearth's `ed25519:0`, and what Sydent signed with
    // it verifies against what Hearth publishes.
    let hearth = site.start(&["--config", config, "serve"]);
    let pubkey = hearth.get("/_matrix/identity/v2/pubkey/ed25519:0");
    assert_eq!(pubkey.status, 200, "{}", pubkey.text());
    let published = pubkey.json()["public_key"]
        .as_str()
        .expect("a public_key")
        .to_owned();
    assert_eq!(published, moved.public_key);
    let key = VerifyKey::from_base64(&published).expect("an ed25519 key");
    for association in &moved.signed {
        assert_signed(association, SERVER_NAME, &key);
    }

    // The key server: Sydent's key now, Hearth's first one retired.
    let keys = hearth.get(KEYS);
    assert_eq!(keys.status, 200, "{}", keys.text());
    let keys = keys.json();
    assert_eq!(
        keys["verify_keys"],
        json!({"ed25519:0": {"key": moved.public_key}}),
        "{keys}"
    );
    let old = &keys["old_verify_keys"][&own_id];
    assert_eq!(old["key"], own_key, "{keys}");
    let expired = old["expired_ts"].as_i64().expect("an expired_ts");
    assert!(
        (moved.invited_between.1..=now_ms()).contains(&expired),
        "{keys}"
    );
    verify_server_keys(
        keys.clone(),
        &ServerName::parse(SERVER_NAME).expect("a server name"),
        now_ms(),
    )
    .unwrap_or_else(|e| panic!("{e}: {keys}"));

    // A user of the moved server finds the bindings Sydent made.
    let zoe = Client::register(&hearth, &homeserver, "zoe");
    assert_eq!(
        zoe.lookup(&[
            ("alice@example.org", "email"),
            ("bob@example.org", "email"),
            ("447700900123", "msisdn"),
            ("moved@example.org", "email"),
            ("dave@example.org", "email"),
            ("Bob@Example.ORG", "email"),
        ]),
        [
            Some(user_id("alice")),
            Some(user_id("bob")),
            Some(user_id("carol")),
            Some(user_id("frank")),
            None,
            None,
        ]
    );

    // The keys Sydent handed out with its invite stay valid where their
    // `key_validity_url`s point, now that the name points here.
    assert!(is_valid(&hearth, "isvalid", &moved.public_key));
    assert!(is_valid(&hearth, "ephemeral/isvalid", &moved.ephemeral_key));
    assert!(!is_valid(&hearth, "ephemeral/isvalid", &moved.public_key));

    // The invite is held for its sender, from when Sydent received it, and
    // the sender's binding keeps the time Sydent signed.
    let exported = site.run_ok(&["--config", config, "identity", "export", &user_id("alice")]);
    let exported: Value = serde_json::from_str(&exported.stdout).expect("JSON from export");
    let invites = exported["pending_invites_sent"]
        .as_array()
        .expect("pending_invites_sent");
    assert_eq!(invites.len(), 1, "{exported}");
    assert_eq!(invites[0]["medium"], "email");
    assert_eq!(invites[0]["address"], INVITEE.to_lowercase());
    assert_eq!(invites[0]["room_id"], INVITE_ROOM);
    let created = invites[0]["created_ts"].as_i64().expect("a created_ts");
    // Sydent keeps whole seconds.
    let (from, to) = moved.invited_between;
    assert!(
        (from - 1000..=to).contains(&created),
        "the invite was stored between {from} and {to} (ms), not at {created}: {exported}"
    );
    assert_eq!(
        exported["associations"],
        json!([{
            "medium": "email",
            "address": "alice@example.org",
            "bound_ts": moved.signed[0]["ts"],
        }])
    );

    // 5. The invitee binds the address here; Hearth delivers Sydent's invite
    // to their homeserver, signed with the key Sydent named for it.
    let invitee = user_id("invitee");
    let invitee_client = Client::register(&hearth, &homeserver, "invitee");
    let association = invitee_client.bind_email(&smtp, &INVITEE.to_lowercase(), &invitee);
    assert_signed(&association, SERVER_NAME, &key);
    let onbind = homeserver.wait_for_request("/_matrix/federation/v1/3pid/onbind", ARRIVAL_TIMEOUT);
    assert_eq!(onbind.method, "POST");
    let body = &onbind.body;
    assert_signed(body, SERVER_NAME, &key);
    assert_eq!(body["mxid"], invitee.as_str(), "{body}");
    assert_eq!(body["address"], INVITEE.to_lowercase(), "{body}");
    let delivered = body["invites"].as_array().expect("invites in the onbind");
    assert_eq!(delivered.len(), 1, "{body}");
    assert_eq!(delivered[0]["token"], moved.invite_token.as_str(), "{body}");
    assert_eq!(delivered[0]["room_id"], INVITE_ROOM, "{body}");
    assert_eq!(delivered[0]["sender"], user_id("alice"), "{body}");
    assert_eq!(delivered[0]["mxid"], invitee.as_str(), "{body}");
    assert_eq!(delivered[0]["signed"]["token"], moved.invite_token.as_str());
    assert_signed(&delivered[0]["signed"], SERVER_NAME, &key);
    assert!(
        zoe.lookup(&[(&INVITEE.to_lowercase(), "email")])[0].as_deref() == Some(&invitee),
        "the invitee's new binding is found"
    );

    eprintln!("moved and checked in {:?}", started.elapsed());
}

/// An import that fails (here: a file that is not Sydent's database)
/// changes nothing: Hearth keeps signing with its own key, so the operator
/// can fix the cause and run the import again.
#[test]
fn a_failed_import_keeps_hearths_own_key() {
    let site = Site::new();
    site.run_ok(&["keys", "generate"]);
    let before = site.run_ok(&["keys", "show"]).stdout;
    let sydent_key = SigningKey::from_seed(KeyVersion::parse("0").expect("a version"), [7; 32]);
    let conf = site.write_file(
        "sydent.conf",
        &format!(
            "[crypto]\ned25519.signingkey = {}\n",
            sydent_key.to_synapse_line().trim()
        ),
    );
    let database = site.write_file("sydent.db", "");
    let out = site.run(&[
        "identity",
        "import-sydent",
        database.to_str().expect("a UTF-8 path"),
        "--sydent-config",
        conf.to_str().expect("a UTF-8 path"),
    ]);
    assert!(!out.status.success(), "{out}");
    assert!(out.stderr.contains("sydent.db"), "{out}");
    assert_eq!(site.run_ok(&["keys", "show"]).stdout, before);
}
