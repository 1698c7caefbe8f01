//! The identity service against a real Synapse (PyPI `matrix-synapse`) and a
//! real SMTP capture server (PyPI `aiosmtpd`), each step as a user's client
//! and their homeserver take it:
//!
//! 1. OpenID from Synapse, `POST /account/register` with Hearth, refused
//!    with 403 `M_TERMS_NOT_SIGNED` until the terms are accepted;
//! 2. email validation with the token from the captured mail, then a bind
//!    through Synapse's `/account/3pid/bind` (Synapse calls Hearth's
//!    `/3pid/bind` with the user's identity token);
//! 3. another user finds the address by a sha256 lookup;
//! 4. an unbind through Synapse's `/account/3pid/unbind`: Synapse signs it
//!    with X-Matrix (`destination_is`), Hearth fetches Synapse's keys,
//!    verifies and removes the binding, and the lookup finds nothing;
//! 5. a third-party invite through Synapse: `store-invite` mails the
//!    invitee; once they bind the address through Synapse, Hearth's
//!    `onbind` reaches Synapse and the invitee holds the room invite; an
//!    invite to the address once bound is found by Synapse's own lookup and
//!    becomes a plain invite.
//!
//! Synapse reaches identity servers only over HTTPS (`https://<id_server>`),
//! so Hearth serves TLS with a test certificate for `localhost`, and its
//! `server_name` is the `id_server` Synapse is given, `localhost:<port>`, as
//! X-Matrix `destination_is` verification needs. Hearth reaches the
//! plain-HTTP Synapse through a federation override.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hearth_core::http::percent_encode as url_encode;
use hearth_e2e::{
    Hearth, HttpClient, HttpResponse, Mail, Site, SmtpCapture, Synapse, TestCertificate,
    sha256_lookup_hash, wait_until,
};
use serde_json::{Value, json};

const TERMS_URL: &str = "https://example.org/privacy-1.0.html";
const PASSWORD: &str = "correct horse battery staple";
/// How long a mail, an onbind callback or an invite may take to arrive.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything one test runs against. Fields drop in order: Hearth first,
/// then its directory, Synapse and the SMTP server, each process killed (and
/// its log printed when the test is failing).
struct World {
    hearth: Hearth,
    /// HTTPS to Hearth, trusting the test CA.
    is: HttpClient,
    /// The `id_server` Synapse is given: Hearth's `server_name`.
    id_server: String,
    _site: Site,
    /// The test CA, for clients other than `is`.
    ca: PathBuf,
    _certs: tempfile::TempDir,
    synapse: Synapse,
    smtp: SmtpCapture,
}

/// What a test adds to the common setup.
#[derive(Default)]
struct Setup {
    /// Synapse config, given Hearth's base URL (`https://localhost:<port>`).
    synapse: Option<fn(&str) -> Value>,
    /// TOML appended to Hearth's config: whole sections.
    hearth: &'static str,
}

impl World {
    fn start() -> Self {
        Self::start_with(Setup::default())
    }

    fn start_with(setup: Setup) -> Self {
        let started = Instant::now();
        let smtp = SmtpCapture::start();
        // Hearth's port is picked when it is about to listen, so no other
        // process takes it meanwhile; only a Synapse that must be told
        // Hearth's URL needs it earlier.
        let early_site = setup.synapse.is_some().then(Site::new);
        let mut synapse_config = json!({
            // The IS client skips certificate checks; federation is untouched.
            "use_insecure_ssl_client_just_for_testing_do_not_use": true,
            // Identity server calls go through the IP blocklist, which blocks
            // loopback by default.
            "ip_range_whitelist": ["127.0.0.1", "::1"],
            "enable_3pid_lookup": true,
            "trusted_key_servers": [],
            "suppress_key_server_warning": true,
            "rc_login": {
                "address": {"per_second": 1000, "burst_count": 1000},
                "account": {"per_second": 1000, "burst_count": 1000},
                "failed_attempts": {"per_second": 1000, "burst_count": 1000},
            },
            "rc_message": {"per_second": 1000, "burst_count": 1000},
            "rc_third_party_invite": {"per_second": 1000, "burst_count": 1000},
            "rc_invites": {
                "per_room": {"per_second": 1000, "burst_count": 1000},
                "per_user": {"per_second": 1000, "burst_count": 1000},
                "per_issuer": {"per_second": 1000, "burst_count": 1000},
            },
            "rc_3pid_validation": {"per_second": 1000, "burst_count": 1000},
        });
        if let (Some(extra), Some(config), Some(site)) =
            (setup.synapse, synapse_config.as_object_mut(), &early_site)
            && let Value::Object(extra) =
                extra(&format!("https://localhost:{}", site.public_addr().port()))
        {
            config.extend(extra);
        }
        let synapse = Synapse::start(&synapse_config);
        eprintln!(
            "Synapse {} ready after {:?}",
            synapse.server_name(),
            started.elapsed()
        );

        let site = early_site.unwrap_or_else(Site::new);
        let id_server = format!("localhost:{}", site.public_addr().port());
        let certs = tempfile::tempdir().expect("a directory for certificates");
        let cert = TestCertificate::localhost(certs.path());
        let mut config = format!(
            r#"server_name = "{id_server}"

[http]
tls_certificate = "{certificate}"
tls_private_key = "{private_key}"

[federation.overrides."{synapse_name}"]
url = "{synapse_url}"

[identity.auth.terms.policies.privacy_policy]
version = "1.0"
[identity.auth.terms.policies.privacy_policy.languages.en]
name = "Privacy Policy"
url = "{TERMS_URL}"

[identity.email]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
smtp_tls = "none"
from = "Hearth Test <noreply@localhost>"
brand = "Hearth Test"
"#,
            certificate = cert.certificate.display(),
            private_key = cert.private_key.display(),
            synapse_name = synapse.server_name(),
            synapse_url = synapse.url(),
            smtp_port = smtp.port(),
        );
        config.push_str(setup.hearth);
        let path = site.write_file("hearth.toml", &config);
        let hearth = site.start(&["--config", path.to_str().expect("a UTF-8 path"), "serve"]);
        let is = HttpClient::https(site.public_addr(), "localhost", cert.client_config());
        eprintln!("Hearth {id_server} ready after {:?}", started.elapsed());
        Self {
            hearth,
            is,
            id_server,
            _site: site,
            ca: cert.ca.clone(),
            _certs: certs,
            synapse,
            smtp,
        }
    }

    /// Both sides' logs, for failure messages.
    fn logs(&self) -> String {
        format!(
            "--- Hearth log ---\n{}\n{}",
            self.hearth.log(),
            self.synapse.logs()
        )
    }

    /// Fails with `what`, the response and both logs unless `response` has
    /// `status`.
    fn expect(&self, response: &HttpResponse, status: u16, what: &str) {
        assert_eq!(
            response.status,
            status,
            "{what}: {}\n{}",
            response.text(),
            self.logs()
        );
    }

    /// A new Synapse user: `(user ID, Synapse access token)`.
    fn synapse_user(&self, localpart: &str) -> (String, String) {
        let token = self.synapse.user(localpart, PASSWORD);
        (self.synapse.user_id(localpart), token)
    }

    /// OpenID credentials from Synapse, exchanged at Hearth's
    /// `/account/register` for an identity token.
    fn register_with_hearth(&self, user_id: &str, hs_token: &str) -> String {
        let openid = self.synapse.client().post(
            &format!(
                "/_matrix/client/v3/user/{}/openid/request_token",
                url_encode(user_id)
            ),
            Some(hs_token),
            &json!({}),
        );
        self.expect(&openid, 200, "Synapse /openid/request_token");
        let openid = openid.json();
        assert_eq!(openid["matrix_server_name"], self.synapse.server_name());
        let registered = self
            .is
            .post("/_matrix/identity/v2/account/register", None, &openid);
        self.expect(&registered, 200, "Hearth /account/register");
        registered.json()["token"]
            .as_str()
            .expect("a token from /account/register")
            .to_owned()
    }

    /// `GET /terms`, then `POST /terms` accepting every document listed.
    fn accept_terms(&self, token: &str) {
        let terms = self.is.get("/_matrix/identity/v2/terms", None);
        self.expect(&terms, 200, "GET /terms");
        let terms = terms.json();
        let urls: Vec<Value> = terms["policies"]
            .as_object()
            .expect("policies")
            .values()
            .flat_map(|policy| policy.as_object().expect("a policy").values())
            .filter_map(|language| language.get("url").cloned())
            .collect();
        assert_eq!(urls, [json!(TERMS_URL)], "{terms}");
        let accepted = self.is.post(
            "/_matrix/identity/v2/terms",
            Some(token),
            &json!({ "user_accepts": urls }),
        );
        self.expect(&accepted, 200, "POST /terms");
    }

    /// A Synapse user registered with Hearth who accepted the terms:
    /// `(user ID, Synapse token, identity token)`.
    fn identity_user(&self, localpart: &str) -> (String, String, String) {
        let (user_id, hs_token) = self.synapse_user(localpart);
        let is_token = self.register_with_hearth(&user_id, &hs_token);
        self.accept_terms(&is_token);
        (user_id, hs_token, is_token)
    }

    /// Validates `address`: `requestToken`, the token from the captured
    /// mail, `submitToken`. The session's `(sid, client_secret)`.
    fn validate_email(
        &self,
        is_token: &str,
        address: &str,
        client_secret: &str,
    ) -> (String, String) {
        let seen = self.smtp.mails_to(address).len();
        let requested = self.is.post(
            "/_matrix/identity/v2/validate/email/requestToken",
            Some(is_token),
            &json!({"client_secret": client_secret, "email": address, "send_attempt": 1}),
        );
        self.expect(&requested, 200, "requestToken");
        let sid = requested.json()["sid"].as_str().expect("a sid").to_owned();
        let mail = self.smtp.wait_for_mail_to(address, seen, ARRIVAL_TIMEOUT);
        let token = validation_token(&mail);
        let submitted = self.is.post(
            "/_matrix/identity/v2/validate/email/submitToken",
            Some(is_token),
            &json!({"sid": sid, "client_secret": client_secret, "token": token}),
        );
        self.expect(&submitted, 200, "submitToken with the mailed token");
        assert_eq!(submitted.json()["success"], true, "{}", submitted.text());
        (sid, client_secret.to_owned())
    }

    /// `POST /_matrix/client/v3/account/3pid/bind` on Synapse, which calls
    /// Hearth's `/3pid/bind` with the identity token.
    fn bind_through_synapse(&self, hs_token: &str, is_token: &str, sid: &str, client_secret: &str) {
        let bound = self.synapse.client().post(
            "/_matrix/client/v3/account/3pid/bind",
            Some(hs_token),
            &json!({
                "id_server": self.id_server,
                "id_access_token": is_token,
                "sid": sid,
                "client_secret": client_secret,
            }),
        );
        self.expect(&bound, 200, "Synapse /account/3pid/bind");
    }

    /// `/hash_details`, then a sha256 `/lookup` of `address`: the mxid
    /// Hearth maps it to, if any.
    fn lookup(&self, is_token: &str, address: &str) -> Option<String> {
        let details = self
            .is
            .get("/_matrix/identity/v2/hash_details", Some(is_token));
        self.expect(&details, 200, "GET /hash_details");
        let details = details.json();
        assert!(
            details["algorithms"]
                .as_array()
                .is_some_and(|a| a.contains(&json!("sha256"))),
            "{details}"
        );
        let pepper = details["lookup_pepper"].as_str().expect("a lookup_pepper");
        let hash = sha256_lookup_hash(address, "email", pepper);
        let found = self.is.post(
            "/_matrix/identity/v2/lookup",
            Some(is_token),
            &json!({"algorithm": "sha256", "pepper": pepper, "addresses": [hash]}),
        );
        self.expect(&found, 200, "POST /lookup");
        let found = found.json();
        found["mappings"][&hash].as_str().map(str::to_owned)
    }
}

/// The token a validation mail carries: the `token` parameter of its
/// `submitToken` link.
fn validation_token(mail: &Mail) -> String {
    let text = mail.text();
    let link = text
        .split_whitespace()
        .find(|word| word.contains("/validate/email/submitToken?"))
        .unwrap_or_else(|| panic!("no submitToken link in the mail:\n{text}"));
    let token = link
        .split(['?', '&'])
        .find_map(|param| param.strip_prefix("token="))
        .unwrap_or_else(|| panic!("no token in {link}"));
    assert!(
        text.lines().any(|line| line.trim() == token),
        "the mail shows the token as a code too:\n{text}"
    );
    token.to_owned()
}

/// Steps 1 to 4: register (refused until the terms are accepted), validate
/// by mail, bind through Synapse, found by another user's sha256 lookup,
/// unbound through Synapse's X-Matrix-signed request, then not found.
#[test]
fn register_bind_lookup_unbind_through_synapse() {
    let world = World::start();
    let address = "alice@example.org";

    // 1. Alice registers with Hearth using OpenID credentials from Synapse;
    // Hearth checks them with Synapse's userinfo.
    let (alice, alice_hs, alice_is) = {
        let (user_id, hs_token) = world.synapse_user("alice");
        let is_token = world.register_with_hearth(&user_id, &hs_token);
        (user_id, hs_token, is_token)
    };
    let refused = world
        .is
        .get("/_matrix/identity/v2/account", Some(&alice_is));
    world.expect(&refused, 403, "GET /account before the terms");
    assert_eq!(refused.json()["errcode"], "M_TERMS_NOT_SIGNED");
    world.accept_terms(&alice_is);
    let account = world
        .is
        .get("/_matrix/identity/v2/account", Some(&alice_is));
    world.expect(&account, 200, "GET /account after the terms");
    assert_eq!(account.json()["user_id"], alice.as_str());

    // 2. Alice validates her address with the mailed token and binds it
    // through Synapse.
    let (sid, secret) = world.validate_email(&alice_is, address, "alice-secret-1");
    world.bind_through_synapse(&alice_hs, &alice_is, &sid, &secret);

    // 3. Bob finds her by a sha256 lookup.
    let (_bob, _bob_hs, bob_is) = world.identity_user("bob");
    assert_eq!(
        world.lookup(&bob_is, address).as_deref(),
        Some(alice.as_str()),
        "bob's lookup of the bound address\n{}",
        world.logs()
    );

    // 4. Alice removes the binding through Synapse: Synapse signs the
    // unbind with X-Matrix; Hearth fetches Synapse's keys and verifies it.
    let unbound = world.synapse.client().post(
        "/_matrix/client/v3/account/3pid/unbind",
        Some(&alice_hs),
        &json!({"id_server": world.id_server, "medium": "email", "address": address}),
    );
    world.expect(&unbound, 200, "Synapse /account/3pid/unbind");
    assert_eq!(
        unbound.json()["id_server_unbind_result"],
        "success",
        "Synapse reports that Hearth applied the unbind\n{}",
        world.logs()
    );
    assert!(
        world.hearth.log().contains("3PID unbound"),
        "Hearth removed the binding on Synapse's signed request\n{}",
        world.logs()
    );
    assert_eq!(
        world.lookup(&bob_is, address),
        None,
        "the lookup after the unbind\n{}",
        world.logs()
    );
}

/// Step 5: Bob invites an address through Synapse; Hearth stores the
/// invite and mails it; Synapse records the `m.room.third_party_invite`.
/// When Carol validates that address and binds it through Synapse, Hearth
/// sends `onbind`, Synapse turns the invite into a membership, and Carol
/// holds the invite.
#[test]
fn third_party_invite_reaches_the_invitee_after_bind() {
    let world = World::start();
    let address = "carol@example.org";
    let (bob, bob_hs, bob_is) = world.identity_user("bob");
    let (carol, carol_hs, carol_is) = world.identity_user("carol");
    let synapse = world.synapse.client();

    let created = synapse.post(
        "/_matrix/client/v3/createRoom",
        Some(&bob_hs),
        &json!({"name": "Hearth Test Room", "preset": "private_chat"}),
    );
    world.expect(&created, 200, "createRoom");
    let room_id = created.json()["room_id"]
        .as_str()
        .expect("a room_id")
        .to_owned();

    // Synapse looks the address up (no match), then calls store-invite.
    let invited = synapse.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", url_encode(&room_id)),
        Some(&bob_hs),
        &json!({
            "id_server": world.id_server,
            "id_access_token": bob_is,
            "medium": "email",
            "address": address,
        }),
    );
    world.expect(&invited, 200, "third-party invite through Synapse");

    let mail = world.smtp.wait_for_mail_to(address, 0, ARRIVAL_TIMEOUT);
    let text = mail.text();
    assert!(
        text.contains("Hearth Test Room") && text.contains(&bob),
        "the invite mail names the room and the inviter:\n{}",
        mail.raw
    );

    let state = synapse.get(
        &format!("/_matrix/client/v3/rooms/{}/state", url_encode(&room_id)),
        Some(&bob_hs),
    );
    world.expect(&state, 200, "room state");
    let state = state.json();
    let third_party_invite = state
        .as_array()
        .expect("a state list")
        .iter()
        .find(|event| event["type"] == "m.room.third_party_invite")
        .unwrap_or_else(|| panic!("no m.room.third_party_invite in {state}"));
    assert_eq!(
        third_party_invite["content"]["display_name"], "car...@exa...",
        "{third_party_invite}"
    );

    // Carol validates the invited address and binds it through Synapse.
    let (sid, secret) = world.validate_email(&carol_is, address, "carol-secret-1");
    world.bind_through_synapse(&carol_hs, &carol_is, &sid, &secret);

    // Hearth's onbind reaches Synapse, which turns the third-party invite
    // into Carol's invite membership.
    let member_path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        url_encode(&room_id),
        url_encode(&carol)
    );
    let mut member = None;
    wait_until(ARRIVAL_TIMEOUT, || {
        let response = synapse.get(&member_path, Some(&bob_hs));
        member = (response.status == 200).then(|| response.json());
        member.is_some()
    });
    let member = member.unwrap_or_else(|| {
        panic!(
            "Carol has no membership in the room {ARRIVAL_TIMEOUT:?} after the bind\n{}",
            world.logs()
        )
    });
    assert_eq!(member["membership"], "invite", "{member}");
    assert_eq!(
        member["third_party_invite"]["signed"]["mxid"],
        carol.as_str(),
        "{member}"
    );
    // Synapse answers the callback once the membership is persisted, so
    // Hearth may record the delivery a moment after the state shows it.
    assert!(
        wait_until(ARRIVAL_TIMEOUT, || world
            .hearth
            .log()
            .contains("onbind callback delivered")),
        "Hearth did not record the onbind delivery\n{}",
        world.logs()
    );

    let sync = synapse.get("/_matrix/client/v3/sync?timeout=0", Some(&carol_hs));
    world.expect(&sync, 200, "Carol's /sync");
    let sync = sync.json();
    assert!(
        sync["rooms"]["invite"].get(&room_id).is_some(),
        "Carol's /sync lists the invite to {room_id}: {sync}"
    );

    // Now that the address is bound, Synapse's own lookup (`/hash_details`
    // with the token in the query, then `/lookup`) finds Carol, and an
    // invite by address becomes a plain invite: no mail, no store-invite.
    let mails_before = world.smtp.mails_to(address).len();
    let second = synapse.post(
        "/_matrix/client/v3/createRoom",
        Some(&bob_hs),
        &json!({"name": "Second Room", "preset": "private_chat"}),
    );
    world.expect(&second, 200, "createRoom (second)");
    let second_id = second.json()["room_id"]
        .as_str()
        .expect("a room_id")
        .to_owned();
    let invited = synapse.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", url_encode(&second_id)),
        Some(&bob_hs),
        &json!({
            "id_server": world.id_server,
            "id_access_token": bob_is,
            "medium": "email",
            "address": address,
        }),
    );
    world.expect(&invited, 200, "invite of a bound address through Synapse");
    let member = synapse.get(
        &format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            url_encode(&second_id),
            url_encode(&carol)
        ),
        Some(&bob_hs),
    );
    world.expect(&member, 200, "Carol's membership in the second room");
    let member = member.json();
    assert_eq!(member["membership"], "invite", "{member}");
    assert!(member.get("third_party_invite").is_none(), "{member}");
    assert_eq!(
        world.smtp.mails_to(address).len(),
        mails_before,
        "no invite mail for an address already bound"
    );
}

impl World {
    /// The six-digit code of the latest SMS Hearth's `log` sender wrote
    /// (its INFO line holds the text, never the number).
    fn sms_code(&self, seen: usize) -> String {
        let mut code = None;
        wait_until(ARRIVAL_TIMEOUT, || {
            let log = self.hearth.log();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("SMS not sent")).collect();
            code = lines.get(seen).and_then(|line| {
                line.split("text=")
                    .nth(1)?
                    .split(|c: char| !c.is_ascii_digit())
                    .find(|run| run.len() == 6)
                    .map(str::to_owned)
            });
            code.is_some()
        });
        code.unwrap_or_else(|| panic!("no SMS code in Hearth's log\n{}", self.logs()))
    }
}

/// The first word of `mail`'s text part that contains `needle`.
fn word_with(mail: &Mail, needle: &str) -> String {
    mail.text()
        .split_whitespace()
        .find(|word| word.contains(needle))
        .unwrap_or_else(|| panic!("no {needle} in the mail:\n{}", mail.raw))
        .to_owned()
}

/// `%XX` sequences decoded (query values of the links in mails).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], s.get(i + 1..i + 3)) {
            (b'%', Some(hex)) if u8::from_str_radix(hex, 16).is_ok() => {
                out.push(u8::from_str_radix(hex, 16).unwrap_or_default());
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Issue 11 item 5. Synapse 1.163 with `account_threepid_delegates.msisdn`
/// pointing at Hearth adds a phone number to an account through the three
/// v1 paths it calls (`handlers/identity.py`): `requestToken`, then the
/// code through Synapse's `add_threepid/msisdn/submit_token` proxy, then
/// `/account/3pid/add`, where Synapse asks `getValidated3pid`.
#[test]
fn synapse_msisdn_delegation_adds_a_phone_number() {
    let world = World::start_with(Setup {
        synapse: Some(|is_url| json!({"account_threepid_delegates": {"msisdn": is_url}})),
        hearth: "\n[identity.sms]\nserve_synapse_delegation = true\n",
    });
    let synapse = world.synapse.client();
    let (_dave, dave_hs) = world.synapse_user("dave");
    let secret = "dave-secret-1";
    let requested = synapse.post(
        "/_matrix/client/v3/account/3pid/msisdn/requestToken",
        Some(&dave_hs),
        &json!({"client_secret": secret, "country": "GB", "phone_number": "07700 900789", "send_attempt": 1}),
    );
    world.expect(&requested, 200, "Synapse msisdn requestToken");
    let requested = requested.json();
    let sid = requested["sid"].as_str().expect("a sid").to_owned();
    assert_eq!(requested["msisdn"], "447700900789", "{requested}");
    assert!(requested["submit_url"].is_string(), "{requested}");

    let code = world.sms_code(0);
    let submitted = synapse.post(
        "/_matrix/client/unstable/add_threepid/msisdn/submit_token",
        Some(&dave_hs),
        &json!({"sid": sid, "client_secret": secret, "token": code}),
    );
    world.expect(&submitted, 200, "Synapse's submit_token proxy");
    assert_eq!(submitted.json()["success"], true, "{}", submitted.text());

    // User-interactive auth: the first call names the session.
    let add = json!({"sid": sid, "client_secret": secret});
    let challenge = synapse.post("/_matrix/client/v3/account/3pid/add", Some(&dave_hs), &add);
    world.expect(&challenge, 401, "/account/3pid/add without auth");
    let session = challenge.json()["session"]
        .as_str()
        .expect("a UIA session")
        .to_owned();
    let mut with_auth = add.clone();
    with_auth["auth"] = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "dave"},
        "password": PASSWORD,
        "session": session,
    });
    let added = synapse.post(
        "/_matrix/client/v3/account/3pid/add",
        Some(&dave_hs),
        &with_auth,
    );
    world.expect(&added, 200, "/account/3pid/add");
    let threepids = synapse.get("/_matrix/client/v3/account/3pid", Some(&dave_hs));
    world.expect(&threepids, 200, "/account/3pid");
    let threepids = threepids.json();
    assert!(
        threepids["threepids"].as_array().is_some_and(|list| list
            .iter()
            .any(|t| t["medium"] == "msisdn" && t["address"] == "447700900789")),
        "{threepids}\n{}",
        world.logs()
    );
}

/// Issue 11's proof: Element's own calls, made with matrix-js-sdk 43.0.0
/// from npm (`tests/js/element.mjs`), against this Synapse and Hearth:
/// the `IdentityAuthClient` flow (OpenID registration, terms through
/// `getTerms`/`agreeToTerms`), Settings → Discovery for an email and a
/// phone number, `identityHashedLookup` by another user (a mixed-case,
/// non-ASCII address), `inviteByEmail` and the invitee's `joinRoom` with
/// the mailed `signurl`, and `unbindThreePid`. This test reads the mails
/// and the SMS code for the script, as a person would.
#[test]
fn element_flows_through_matrix_js_sdk() {
    let js = hearth_testkit::workspace_root().join("tests/js");
    assert!(
        js.join("node_modules/matrix-js-sdk/package.json").is_file(),
        "matrix-js-sdk is not installed in {}: run `cargo xtask test`, or `npm ci` there",
        js.display()
    );
    let world = World::start_with(Setup {
        synapse: None,
        hearth: "\n[identity.invites]\nweb_client_location = \"https://element.example\"\n",
    });
    let invitee_email = "carol.invited@example.org";
    let mut node = Command::new("node");
    node.arg(js.join("element.mjs"))
        .current_dir(&js)
        .env("HS_URL", world.synapse.url())
        .env("IS_URL", format!("https://{}", world.id_server))
        .env("NODE_EXTRA_CA_CERTS", &world.ca)
        .env("NODE_OPTIONS", "--dns-result-order=ipv4first")
        .env("ALICE_EMAIL", "Strauß.Alice@Example.org")
        .env("ALICE_EMAIL_CANONICAL", "strauss.alice@example.org")
        .env("ALICE_PHONE", "+447700900123")
        .env("INVITEE_EMAIL", invitee_email);
    let mut carol = String::new();
    for name in ["alice", "bob", "carol"] {
        let (user_id, token) = world.synapse_user(name);
        let upper = name.to_ascii_uppercase();
        node.env(format!("{upper}_USER_ID"), &user_id)
            .env(format!("{upper}_TOKEN"), token);
        if name == "carol" {
            carol = user_id;
        }
    }
    let stderr_dir = tempfile::tempdir().expect("a directory for node's output");
    let stderr_path = stderr_dir.path().join("node.log");
    let stderr = std::fs::File::create(&stderr_path).expect("node's log");
    let mut child = node
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("starting node (Debian's nodejs)");
    let node_log = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let mut stdin = child.stdin.take().expect("node's stdin");
    let stdout = child.stdout.take().expect("node's stdout");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut sms_seen = 0;
    let room_id = loop {
        let line = match lines.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(line)) => line,
            other => {
                let _ = child.kill();
                panic!(
                    "the script stopped ({other:?}):\n{}\n{}",
                    node_log(),
                    world.logs()
                );
            }
        };
        // Other lines are the SDK's own logging.
        let Some(line) = line.strip_prefix("HEARTH-E2E ") else {
            continue;
        };
        let message: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("node printed {line:?}: {e}\n{}", node_log()));
        if let Some(room_id) = message.get("done") {
            break room_id.as_str().expect("a room ID").to_owned();
        }
        let address = message["address"].as_str().unwrap_or_default();
        let value = match message["need"].as_str() {
            Some("email_link") => {
                let mail = world.smtp.wait_for_mail_to(address, 0, ARRIVAL_TIMEOUT);
                word_with(&mail, "/validate/email/submitToken?")
            }
            Some("sms_code") => {
                sms_seen += 1;
                world.sms_code(sms_seen - 1)
            }
            Some("signurl") => {
                let mail = world.smtp.wait_for_mail_to(address, 0, ARRIVAL_TIMEOUT);
                let link = word_with(&mail, "signurl=");
                let query = link.split_once('?').map_or("", |(_, q)| q);
                let signurl = query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("signurl="))
                    .unwrap_or_else(|| panic!("no signurl in {link}"));
                percent_decode(signurl)
            }
            other => panic!("node asked for {other:?}"),
        };
        writeln!(stdin, "{}", json!({ "value": value })).expect("answering node");
    };
    let status = child.wait().expect("node exits");
    eprintln!("{}", node_log());
    assert!(
        status.success(),
        "node: {status}\n{}\n{}",
        node_log(),
        world.logs()
    );

    // Synapse agrees: Carol joined through the third-party invite.
    let bob_hs = world.synapse.login("bob", PASSWORD);
    let member = world.synapse.client().get(
        &format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            url_encode(&room_id),
            url_encode(&carol)
        ),
        Some(&bob_hs),
    );
    world.expect(&member, 200, "Carol's membership");
    assert_eq!(member.json()["membership"], "join", "{}", member.text());
    assert!(
        world.hearth.log().contains("3PID unbound"),
        "Hearth applied Synapse's unbind\n{}",
        world.logs()
    );
}
