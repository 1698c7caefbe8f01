//! 3PID validation (Identity Service API, "Email associations" and "Phone
//! number associations"), then `getValidated3pid` and `bind`
//! ("Establishing associations"), driven through the router in-process on
//! every database backend, with a real SMTP server (aiosmtpd) receiving the
//! mails and a fake homeserver vouching for users.

mod common;

use common::ConfigureSmtp;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use common::{
    BRAND, Harness, Mail, PUBLIC_BASE_URL, SmtpCapture, TestResponse, backends, query_params,
    test_config,
};
use hearth_core::config::{Duration as ConfigDuration, Secret};
use hearth_core::keys::VerifyKey;
use hearth_core::signed_json::verify_json;
use hearth_identity::SmsSender;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

const LINK_PREFIX: &str = "https://is.test/_matrix/identity/v2/validate/email/submitToken?";

async fn request_email(
    h: &Harness,
    token: &str,
    email: &str,
    client_secret: &str,
    send_attempt: i64,
    next_link: Option<&str>,
) -> TestResponse {
    let mut body = json!({
        "client_secret": client_secret,
        "email": email,
        "send_attempt": send_attempt,
    });
    if let Some(next_link) = next_link {
        body["next_link"] = json!(next_link);
    }
    h.post("/validate/email/requestToken", Some(token), body)
        .await
}

async fn request_msisdn(
    h: &Harness,
    token: &str,
    country: &str,
    phone_number: &str,
    client_secret: &str,
    send_attempt: i64,
) -> TestResponse {
    h.post(
        "/validate/msisdn/requestToken",
        Some(token),
        json!({
            "client_secret": client_secret,
            "country": country,
            "phone_number": phone_number,
            "send_attempt": send_attempt,
        }),
    )
    .await
}

/// The `GET submitToken` link in a validation mail's text part.
fn link_in(mail: &Mail) -> String {
    let text = mail.text();
    let start = text
        .find(LINK_PREFIX)
        .unwrap_or_else(|| panic!("no link in {text}"));
    text[start..].split_whitespace().next().unwrap().to_owned()
}

/// The path and query of a link under `PUBLIC_BASE_URL`, for the router.
fn local(link: &str) -> &str {
    link.strip_prefix(PUBLIC_BASE_URL).unwrap()
}

fn sid_of(response: &TestResponse) -> String {
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    response.json()["sid"].as_str().unwrap().to_owned()
}

async fn smtp_harness(
    db: hearth_core::storage::Database,
    dir: Option<tempfile::TempDir>,
    change: impl FnOnce(&mut hearth_identity::Config),
) -> (Harness, SmtpCapture) {
    let smtp = SmtpCapture::start();
    let mut config = test_config();
    smtp.configure(&mut config);
    change(&mut config);
    (Harness::start(db, dir, config).await, smtp)
}

/// Spec 1.1 "Terms" and "Auth": `requestToken` needs a token (401
/// `M_UNAUTHORIZED`) and accepted terms (403 `M_TERMS_NOT_SIGNED`); after
/// `POST /terms` it answers.
#[tokio::test]
async fn request_token_requires_a_token_and_accepted_terms() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db, dir, |_| {}).await;
        let body = json!({"client_secret": "s", "email": "a@example.org", "send_attempt": 1});
        let anonymous = h
            .post("/validate/email/requestToken", None, body.clone())
            .await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
        assert_eq!(anonymous.errcode(), "M_UNAUTHORIZED");

        let alice = h.register("alice").await;
        for path in [
            "/validate/email/requestToken",
            "/validate/msisdn/requestToken",
            "/validate/email/submitToken",
        ] {
            let refused = h.post(path, Some(&alice), body.clone()).await;
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{path}");
            assert_eq!(refused.errcode(), "M_TERMS_NOT_SIGNED", "{path}");
        }
        assert!(smtp.mails().is_empty());

        h.accept_terms(&alice).await;
        sid_of(&request_email(&h, &alice, "a@example.org", "s", 1, None).await);
        assert_eq!(smtp.wait_for(1).await.len(), 1);
    }
}

/// `POST /validate/email/requestToken`: the address is canonicalised, and
/// a multipart text and HTML mail from `email.from` (with `Message-ID` and
/// `Date`) carries the token and a `GET submitToken` link under
/// `public_base_url` with every parameter percent-encoded.
#[tokio::test]
async fn email_request_token_mails_the_token_and_a_link() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db, dir, |_| {}).await;
        let alice = h.user("alice").await;
        let secret = "Secret=with.dots_-";
        let sid = sid_of(&request_email(&h, &alice, " Alice@Example.ORG ", secret, 1, None).await);

        let mails = smtp.wait_for(1).await;
        let mail = &mails[0];
        assert_eq!(mail.header("X-RcptTo"), Some("alice@example.org"));
        assert!(mail.header("To").unwrap().contains("alice@example.org"));
        assert!(mail.header("From").unwrap().contains("noreply@is.test"));
        assert!(mail.header("Subject").unwrap().contains(BRAND));
        assert!(mail.header("Message-ID").unwrap().ends_with("@is.test>"));
        assert!(mail.header("Date").is_some());
        assert!(
            mail.header("Content-Type")
                .unwrap()
                .starts_with("multipart/alternative")
        );

        let link = link_in(mail);
        assert!(
            link.contains("client_secret=Secret%3Dwith.dots_-"),
            "{link}"
        );
        let params = query_params(&link);
        assert_eq!(params["sid"], sid);
        assert_eq!(params["client_secret"], secret);
        let token = &params["token"];
        assert!(token.len() >= 16);
        // The code on its own line, for apps that ask for it.
        assert!(mail.text().lines().any(|l| l.trim() == token));
        assert!(mail.html().contains(token.as_str()));
        assert!(mail.html().contains(BRAND));
    }
}

/// Spec `send_attempt`: the same attempt again is the same session and
/// sends nothing; a higher one sends again, with the same token.
#[tokio::test]
async fn send_attempt_is_idempotent() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db, dir, |_| {}).await;
        let alice = h.user("alice").await;
        let first = sid_of(&request_email(&h, &alice, "bob@example.org", "s1", 1, None).await);
        let retry = sid_of(&request_email(&h, &alice, "bob@example.org", "s1", 1, None).await);
        assert_eq!(first, retry);
        let again = sid_of(&request_email(&h, &alice, "bob@example.org", "s1", 2, None).await);
        assert_eq!(first, again);
        // Sends finish before the answer: the retry sent nothing.
        let mails = smtp.wait_for(2).await;
        assert_eq!(mails.len(), 2);
        assert_eq!(
            query_params(&link_in(&mails[0]))["token"],
            query_params(&link_in(&mails[1]))["token"]
        );
        // Another client secret is another session.
        let other = sid_of(&request_email(&h, &alice, "bob@example.org", "s2", 1, None).await);
        assert_ne!(other, first);
    }
}

/// `POST /validate/email/submitToken`: the right token gives `{success:
/// true}` (again if repeated); a wrong one 400 `M_TOKEN_INCORRECT`; an
/// unknown sid or another client secret 404 `M_NO_VALID_SESSION`; a
/// malformed sid 400 `M_INVALID_PARAM`. Errors are Matrix errors, not
/// Sydent's 200 with `success: false`.
#[tokio::test]
async fn submit_token_post_checks_the_token_and_session() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db, dir, |_| {}).await;
        let alice = h.user("alice").await;
        let sid = sid_of(&request_email(&h, &alice, "carol@example.org", "sec", 1, None).await);
        let token = query_params(&link_in(&smtp.wait_for(1).await[0]))["token"].clone();
        let submit = |sid: String, secret: &str, token: &str| json!({"sid": sid, "client_secret": secret, "token": token});

        let wrong = h
            .post(
                "/validate/email/submitToken",
                Some(&alice),
                submit(sid.clone(), "sec", "not-the-token"),
            )
            .await;
        assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
        assert_eq!(wrong.errcode(), "M_TOKEN_INCORRECT");
        for (sid, secret) in [("0123456789abcdef", "sec"), (sid.as_str(), "other")] {
            let unknown = h
                .post(
                    "/validate/email/submitToken",
                    Some(&alice),
                    submit(sid.to_owned(), secret, &token),
                )
                .await;
            assert_eq!(unknown.status, StatusCode::NOT_FOUND);
            assert_eq!(unknown.errcode(), "M_NO_VALID_SESSION");
        }
        let malformed = h
            .post(
                "/validate/email/submitToken",
                Some(&alice),
                submit("no spaces".to_owned(), "sec", &token),
            )
            .await;
        assert_eq!(malformed.errcode(), "M_INVALID_PARAM");

        for _ in 0..2 {
            let ok = h
                .post(
                    "/validate/email/submitToken",
                    Some(&alice),
                    submit(sid.clone(), "sec", &token),
                )
                .await;
            assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
            assert_eq!(ok.json(), json!({"success": true}));
        }
    }
}

/// `GET /3pid/getValidated3pid` before validation is 400
/// `M_SESSION_NOT_VALIDATED`; after the mail's link is opened (`GET
/// submitToken`, no auth, no `next_link`: an HTML page that shows no
/// address and is not cached), it is the 3PID with `validated_at`.
#[tokio::test]
async fn link_validates_and_get_validated_3pid_follows() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db, dir, |_| {}).await;
        let alice = h.user("alice").await;
        let sid = sid_of(&request_email(&h, &alice, "Dave@Example.org", "sec", 1, None).await);
        let query = format!("/3pid/getValidated3pid?sid={sid}&client_secret=sec");
        let before = h.get(&query, Some(&alice)).await;
        assert_eq!(before.status, StatusCode::BAD_REQUEST);
        assert_eq!(before.errcode(), "M_SESSION_NOT_VALIDATED");

        let link = link_in(&smtp.wait_for(1).await[0]);
        let page = h.request(Method::GET, local(&link), None, None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        assert!(
            page.header("content-type")
                .unwrap()
                .starts_with("text/html")
        );
        assert_eq!(page.header("cache-control"), Some("no-store"));
        assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
        assert!(
            page.text().contains("email address is confirmed"),
            "{}",
            page.text()
        );
        assert!(!page.text().to_lowercase().contains("dave@example.org"));

        let after = h.get(&query, Some(&alice)).await;
        assert_eq!(after.status, StatusCode::OK, "{}", after.text());
        let body = after.json();
        assert_eq!(body["medium"], "email");
        assert_eq!(body["address"], "dave@example.org");
        assert!(body["validated_at"].as_i64().unwrap() > 0);
    }
}

/// `GET submitToken` redirects (302) to the session's `next_link` on
/// success; a wrong token or an incomplete link is a 400 HTML page saying
/// why, never a stack trace or the address.
#[tokio::test]
async fn link_redirects_to_next_link_and_explains_failures() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db, dir, |_| {}).await;
        let alice = h.user("alice").await;
        let next = "https://app.example/#/validated?step=2";
        sid_of(&request_email(&h, &alice, "erin@example.org", "sec", 1, Some(next)).await);
        let link = link_in(&smtp.wait_for(1).await[0]);

        let wrong = local(&link).replace("token=", "token=x");
        let failed = h.request(Method::GET, &wrong, None, None).await;
        assert_eq!(failed.status, StatusCode::BAD_REQUEST);
        assert!(
            failed
                .header("content-type")
                .unwrap()
                .starts_with("text/html")
        );
        assert!(failed.text().contains("not right"), "{}", failed.text());
        assert!(!failed.text().contains("erin@"));

        let incomplete = h.get("/validate/email/submitToken?sid=abc", None).await;
        assert_eq!(incomplete.status, StatusCode::BAD_REQUEST);
        assert!(incomplete.text().contains("incomplete"));

        let redirect = h.request(Method::GET, local(&link), None, None).await;
        assert_eq!(redirect.status, StatusCode::FOUND);
        assert_eq!(redirect.header("location"), Some(next));
    }
}

/// Malformed requests change nothing and send nothing: an invalid email
/// is 400 `M_INVALID_EMAIL`; a `next_link` that is not http(s) or a
/// malformed `client_secret` is 400 `M_INVALID_PARAM`; a missing field is
/// 400 `M_BAD_JSON`.
#[tokio::test]
async fn invalid_requests_are_rejected() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db, dir, |_| {}).await;
        let alice = h.user("alice").await;
        for bad in [
            "not-an-email",
            "two@@example.org",
            "spaces in@example.org",
            "",
        ] {
            let r = request_email(&h, &alice, bad, "sec", 1, None).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(r.errcode(), "M_INVALID_EMAIL", "{bad}");
        }
        for link in [
            "javascript:alert(1)",
            "element://vector/webapp",
            "/relative",
        ] {
            let r = request_email(&h, &alice, "f@example.org", "sec", 1, Some(link)).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{link}");
            assert_eq!(r.errcode(), "M_INVALID_PARAM", "{link}");
        }
        let r = request_email(&h, &alice, "f@example.org", "not/valid", 1, None).await;
        assert_eq!(r.errcode(), "M_INVALID_PARAM");
        let r = h
            .post(
                "/validate/email/requestToken",
                Some(&alice),
                json!({"client_secret": "sec", "email": "f@example.org"}),
            )
            .await;
        // Spec "Standard error response": a missing parameter.
        assert_eq!(r.errcode(), "M_MISSING_PARAMS");
        // The first mail of this test is the next valid request's.
        sid_of(&request_email(&h, &alice, "f@example.org", "sec", 1, None).await);
        let mails = smtp.wait_for(1).await;
        assert_eq!(mails.len(), 1);
        assert_eq!(mails[0].header("X-RcptTo"), Some("f@example.org"));
    }
}

/// `email.per_address_burst` mails to one address, then one per `per_address_period`,
/// then 429 `M_LIMIT_EXCEEDED` with `retry_after_ms` (also for a retry of
/// the limited attempt); other addresses are not affected.
#[tokio::test]
async fn mails_are_rate_limited_per_address() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db, dir, |c| {
            c.email.per_address_burst = 2;
            c.email.per_address_period = ConfigDuration::secs(3600);
        })
        .await;
        let alice = h.user("alice").await;
        for attempt in 1..=2 {
            sid_of(&request_email(&h, &alice, "grace@example.org", "sec", attempt, None).await);
        }
        for _ in 0..2 {
            let limited = request_email(&h, &alice, "Grace@example.org", "sec", 3, None).await;
            assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(limited.errcode(), "M_LIMIT_EXCEEDED");
            let wait = limited.json()["retry_after_ms"].as_u64().unwrap();
            assert!(wait > 0 && wait <= 3_600_000, "{wait}");
        }
        sid_of(&request_email(&h, &alice, "heidi@example.org", "sec", 1, None).await);
        assert_eq!(smtp.wait_for(3).await.len(), 3);
    }
}

/// An SMTP server that cannot be reached is 400 `M_EMAIL_SEND_ERROR`, as
/// the spec's `requestToken` lists it (Sydent answers 500).
#[tokio::test]
async fn unreachable_smtp_is_an_email_send_error() {
    for (db, dir) in backends().await {
        // `test_config` points at a closed port.
        let h = Harness::start(db, dir, test_config()).await;
        let alice = h.user("alice").await;
        let r = request_email(&h, &alice, "ivan@example.org", "sec", 1, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.errcode(), "M_EMAIL_SEND_ERROR");
    }
}

/// Log lines written while a test runs on this thread.
#[derive(Debug, Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// `POST /validate/msisdn/requestToken` with the `log` sender: `"07700
/// 900123"` in `GB` is stored as `447700900123` (E.164 without `+`) and
/// answered with `msisdn` and `intl_fmt`; the log holds the six-digit code
/// but never the number; the code validates the session through `POST
/// /validate/msisdn/submitToken`, and `getValidated3pid` then shows the
/// msisdn. An impossible number is 400 `M_INVALID_ADDRESS`.
#[tokio::test]
async fn msisdn_request_token_normalises_and_sends_a_code() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config()).await;
        let alice = h.user("alice").await;
        let logs = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        let r = request_msisdn(&h, &alice, "GB", "07700 900123", "sec", 1).await;
        drop(guard);
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let body = r.json();
        assert_eq!(body["msisdn"], "447700900123");
        assert_eq!(body["intl_fmt"], "+44 7700 900123");
        let sid = body["sid"].as_str().unwrap().to_owned();

        let log = logs.text();
        assert!(
            !log.contains("7700900123") && !log.contains("7700 900123"),
            "{log}"
        );
        let line = log
            .lines()
            .find(|l| l.contains("SMS not sent"))
            .unwrap_or_else(|| panic!("no log sender line in {log}"));
        let text = &line[line.find("text=").expect("a text field")..];
        let code: String = text
            .split(|c: char| !c.is_ascii_digit())
            .find(|run| run.len() == 6)
            .unwrap_or_else(|| panic!("no code in {line}"))
            .to_owned();

        let query = format!("/3pid/getValidated3pid?sid={sid}&client_secret=sec");
        assert_eq!(
            h.get(&query, Some(&alice)).await.errcode(),
            "M_SESSION_NOT_VALIDATED"
        );
        let ok = h
            .post(
                "/validate/msisdn/submitToken",
                Some(&alice),
                json!({"sid": sid, "client_secret": "sec", "token": code}),
            )
            .await;
        assert_eq!(ok.json(), json!({"success": true}));
        let validated = h.get(&query, Some(&alice)).await.json();
        assert_eq!(validated["medium"], "msisdn");
        assert_eq!(validated["address"], "447700900123");

        // The same number in international form is the same session.
        let again = request_msisdn(&h, &alice, "FR", "+44 7700 900123", "sec", 1).await;
        assert_eq!(again.json()["sid"], sid);

        for (country, number) in [("GB", "12"), ("GB", "phone"), ("ZZ", "07700 900123")] {
            let bad = request_msisdn(&h, &alice, country, number, "sec", 1).await;
            assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{country} {number}");
            assert_eq!(bad.errcode(), "M_INVALID_ADDRESS", "{country} {number}");
        }
    }
}

/// What a fake SMS gateway received, and the status it answers.
#[derive(Debug, Default)]
struct Gateway {
    received: Mutex<Vec<(HeaderMap, Value)>>,
    status: AtomicU16,
}

async fn gateway_send(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> StatusCode {
    gateway.received.lock().unwrap().push((headers, body.0));
    StatusCode::from_u16(gateway.status.load(Ordering::SeqCst)).unwrap()
}

/// The `http` SMS sender POSTs `{"to": "+<E.164>", "text"}` as JSON with
/// the configured `Authorization` to the operator's gateway (on loopback:
/// the operator's own URL is not subject to the address guard); a gateway
/// error is 500 `M_SEND_ERROR`; `per_number_burst` limits per number.
#[tokio::test]
async fn msisdn_http_gateway_receives_json() {
    for (db, dir) in backends().await {
        let gateway = Arc::new(Gateway {
            status: AtomicU16::new(200),
            ..Gateway::default()
        });
        let app = Router::new()
            .route("/sms/send", post(gateway_send))
            .with_state(gateway.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let mut config = test_config();
        config.sms.sender = SmsSender::Http;
        config.sms.http_url = Some(format!("http://{addr}/sms/send"));
        config.sms.http_authorization = Some(Secret(hearth_core::Redacted::new(
            "Bearer gateway-key".to_owned(),
        )));
        config.sms.per_number_burst = 2;
        // The gateway is on loopback: refused by the address guard until
        // the operator says it is on their own network.
        let guarded = Harness::start(db.clone(), None, config.clone()).await;
        let bob = guarded.user("bob").await;
        let r = request_msisdn(&guarded, &bob, "US", "(650) 253-0001", "sec", 1).await;
        // Spec msisdn `requestToken`: `M_SEND_ERROR` is a 400.
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert_eq!(r.errcode(), "M_SEND_ERROR");
        assert!(gateway.received.lock().unwrap().is_empty());

        config.sms.http_allow_private = true;
        let h = Harness::start(db, dir, config).await;
        let alice = h.user("alice").await;

        let r = request_msisdn(&h, &alice, "US", "(650) 253-0000", "sec", 1).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["msisdn"], "16502530000");
        {
            let received = gateway.received.lock().unwrap();
            assert_eq!(received.len(), 1);
            let (headers, body) = &received[0];
            assert_eq!(headers["authorization"], "Bearer gateway-key");
            assert_eq!(body["to"], "+16502530000");
            let text = body["text"].as_str().unwrap();
            assert!(text.contains(BRAND), "{text}");
            assert!(
                text.split_whitespace()
                    .any(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit())),
                "{text}"
            );
        }

        gateway.status.store(503, Ordering::SeqCst);
        let failed = request_msisdn(&h, &alice, "US", "(650) 253-0000", "sec", 2).await;
        assert_eq!(failed.status, StatusCode::BAD_REQUEST);
        assert_eq!(failed.errcode(), "M_SEND_ERROR");

        gateway.status.store(200, Ordering::SeqCst);
        let limited = request_msisdn(&h, &alice, "US", "(650) 253-0000", "sec", 3).await;
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.errcode(), "M_LIMIT_EXCEEDED");
        assert_eq!(gateway.received.lock().unwrap().len(), 2);
        server.abort();
    }
}

/// `POST /3pid/bind` after validation (spec 1.5): the token's user must
/// be `mxid` (403 `M_UNAUTHORIZED` otherwise), and the answer is the
/// association signed with the key `GET /pubkey/{keyId}` publishes.
#[tokio::test]
async fn bind_after_validation_returns_a_signed_association() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db, dir, |_| {}).await;
        let alice = h.user("alice").await;
        let sid = sid_of(&request_email(&h, &alice, "alice@example.org", "sec", 1, None).await);
        let bind = json!({"sid": sid, "client_secret": "sec", "mxid": "@alice:hs.test"});
        let early = h.post("/3pid/bind", Some(&alice), bind.clone()).await;
        assert_eq!(early.errcode(), "M_SESSION_NOT_VALIDATED");

        let token = query_params(&link_in(&smtp.wait_for(1).await[0]))["token"].clone();
        let ok = h
            .post(
                "/validate/email/submitToken",
                Some(&alice),
                json!({"sid": sid, "client_secret": "sec", "token": token}),
            )
            .await;
        assert_eq!(ok.status, StatusCode::OK);

        let bob = h.user("bob").await;
        let stolen = h.post("/3pid/bind", Some(&bob), bind.clone()).await;
        assert_eq!(stolen.status, StatusCode::FORBIDDEN);
        assert_eq!(stolen.errcode(), "M_UNAUTHORIZED");

        let bound = h.post("/3pid/bind", Some(&alice), bind).await;
        assert_eq!(bound.status, StatusCode::OK, "{}", bound.text());
        let association = bound.json();
        assert_eq!(association["medium"], "email");
        assert_eq!(association["address"], "alice@example.org");
        assert_eq!(association["mxid"], "@alice:hs.test");
        for field in ["ts", "not_before", "not_after"] {
            assert!(association[field].as_i64().is_some(), "{field}");
        }
        let key_id = h.state.signing_key.key_id();
        let published = h.get(&format!("/pubkey/{key_id}"), None).await.json();
        let key = VerifyKey::from_base64(published["public_key"].as_str().unwrap()).unwrap();
        verify_json(&association, "is.test", [(key_id.as_str(), &key)]).unwrap();
        let mut forged = association.clone();
        forged["mxid"] = json!("@mallory:hs.test");
        assert!(verify_json(&forged, "is.test", [(key_id.as_str(), &key)]).is_err());
    }
}

/// A `application/x-www-form-urlencoded` POST, as the spec still allows
/// (deprecated) on `requestToken`, `submitToken` and `/3pid/bind`.
async fn post_form(h: &Harness, path: &str, token: &str, fields: &[(&str, &str)]) -> TestResponse {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    h.send(
        http::Request::post(format!("/_matrix/identity/v2{path}"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(body))
            .unwrap(),
    )
    .await
}

/// Issue 11 items 1 and 9. matrix-js-sdk 43's `requestEmailToken` (Element's
/// Settings → Discovery) sends `"send_attempt": "1"`, a string, which
/// Sydent accepts; and the spec still allows form-urlencoded bodies on
/// `requestToken`, `submitToken` and `/3pid/bind`. The whole flow works
/// both ways, and `send_attempt` keeps its meaning across them.
#[tokio::test]
async fn element_send_attempt_string_and_form_bodies() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db, dir, |_| {}).await;
        let alice = h.user("alice").await;
        let first = h
            .post(
                "/validate/email/requestToken",
                Some(&alice),
                json!({"client_secret": "js1", "email": "dora@example.org", "send_attempt": "1"}),
            )
            .await;
        let sid = sid_of(&first);
        let token = query_params(&link_in(&smtp.wait_for(1).await[0]))["token"].clone();
        // The same attempt, as a form: a retry, nothing sent.
        let retry = post_form(
            &h,
            "/validate/email/requestToken",
            &alice,
            &[
                ("client_secret", "js1"),
                ("email", "dora@example.org"),
                ("send_attempt", "1"),
            ],
        )
        .await;
        assert_eq!(sid_of(&retry), sid);
        let next = post_form(
            &h,
            "/validate/email/requestToken",
            &alice,
            &[
                ("client_secret", "js1"),
                ("email", "dora@example.org"),
                ("send_attempt", "2"),
            ],
        )
        .await;
        assert_eq!(sid_of(&next), sid);
        assert_eq!(smtp.wait_for(2).await.len(), 2);
        let submitted = post_form(
            &h,
            "/validate/email/submitToken",
            &alice,
            &[("sid", &sid), ("client_secret", "js1"), ("token", &token)],
        )
        .await;
        assert_eq!(submitted.json(), json!({"success": true}));
        let bound = post_form(
            &h,
            "/3pid/bind",
            &alice,
            &[
                ("sid", &sid),
                ("client_secret", "js1"),
                ("mxid", "@alice:hs.test"),
            ],
        )
        .await;
        assert_eq!(bound.status, StatusCode::OK, "{}", bound.text());
        assert_eq!(bound.json()["address"], "dora@example.org");
        assert_eq!(smtp.mails().len(), 2, "the retry sent nothing");
    }
}

/// Issue 11 item 2. Element's Discovery page calls `bindMsisdn(null,
/// "+447700900123")`, sending `"country": null` ("Sydent will accept",
/// matrix-doc#2222): a number with its `+` needs no country. Without the
/// `+` and a country, the number is invalid.
#[tokio::test]
async fn a_null_country_is_no_country() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config()).await;
        let alice = h.user("alice").await;
        for body in [
            json!({"client_secret": "s1", "country": null, "phone_number": "+447700900123", "send_attempt": "1"}),
            json!({"client_secret": "s2", "phone_number": "+44 7700 900123", "send_attempt": 1}),
        ] {
            let r = h
                .post("/validate/msisdn/requestToken", Some(&alice), body)
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert_eq!(r.json()["msisdn"], "447700900123");
        }
        let r = h
            .post(
                "/validate/msisdn/requestToken",
                Some(&alice),
                json!({"client_secret": "s3", "country": null, "phone_number": "07700 900123", "send_attempt": 1}),
            )
            .await;
        assert_eq!(r.errcode(), "M_INVALID_ADDRESS");
    }
}

/// Issue 11 item 6, spec `send_attempt`: a retry with the same value sends
/// nothing, so the value may only be recorded once a send worked. After a
/// failed send, the retry of that attempt sends the mail.
#[tokio::test]
async fn a_failed_send_leaves_the_attempt_open() {
    for (db, dir) in backends().await {
        // `test_config` points SMTP at a closed port.
        let down = Harness::start(db.clone(), None, test_config()).await;
        let alice = down.user("alice").await;
        let failed = request_email(&down, &alice, "erin@example.org", "s", 1, None).await;
        assert_eq!(failed.status, StatusCode::BAD_REQUEST, "{}", failed.text());
        assert_eq!(failed.errcode(), "M_EMAIL_SEND_ERROR");

        // The same database, mail working again.
        let (up, smtp) = smtp_harness(db, dir, |_| {}).await;
        let alice = up.user("alice").await;
        sid_of(&request_email(&up, &alice, "erin@example.org", "s", 1, None).await);
        let mails = smtp.wait_for(1).await;
        assert_eq!(mails[0].header("X-RcptTo"), Some("erin@example.org"));
    }
}

/// Issue 11 item 9, spec "Standard error response": a missing required
/// field is `M_MISSING_PARAMS`, one of the wrong type `M_INVALID_PARAM`
/// (the Identity Service API's codes), a body that is no JSON at all
/// `M_NOT_JSON`, on every endpoint that takes a body.
#[tokio::test]
async fn missing_and_mistyped_fields() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config()).await;
        let alice = h.user("alice").await;
        let cases = [
            (
                "/validate/email/requestToken",
                json!({"email": "a@example.org", "send_attempt": 1}),
                "M_MISSING_PARAMS",
            ),
            (
                "/validate/email/requestToken",
                json!({"client_secret": "s", "email": "a@example.org", "send_attempt": [1]}),
                "M_INVALID_PARAM",
            ),
            (
                "/validate/msisdn/requestToken",
                json!({"client_secret": "s", "country": "GB", "send_attempt": 1}),
                "M_MISSING_PARAMS",
            ),
            (
                "/validate/msisdn/requestToken",
                json!({"client_secret": "s", "country": 44, "phone_number": "+447700900123", "send_attempt": 1}),
                "M_INVALID_PARAM",
            ),
            (
                "/validate/email/submitToken",
                json!({"sid": "x", "client_secret": "s"}),
                "M_MISSING_PARAMS",
            ),
            (
                "/validate/msisdn/submitToken",
                json!({"sid": 1, "client_secret": "s", "token": "t"}),
                "M_INVALID_PARAM",
            ),
            (
                "/3pid/bind",
                json!({"sid": "x", "client_secret": "s"}),
                "M_MISSING_PARAMS",
            ),
            (
                "/3pid/bind",
                json!({"sid": "x", "client_secret": "s", "mxid": "not a user"}),
                "M_INVALID_PARAM",
            ),
            (
                "/lookup",
                json!({"algorithm": "sha256", "pepper": "p"}),
                "M_MISSING_PARAMS",
            ),
            (
                "/lookup",
                json!({"algorithm": "sha256", "pepper": "p", "addresses": "x"}),
                "M_INVALID_PARAM",
            ),
            (
                "/store-invite",
                json!({"medium": "email", "address": "a@example.org"}),
                "M_MISSING_PARAMS",
            ),
            (
                "/sign-ed25519",
                json!({"mxid": "@a:hs.test", "token": "t"}),
                "M_MISSING_PARAMS",
            ),
            (
                "/3pid/unbind",
                json!({"mxid": "@a:hs.test"}),
                "M_MISSING_PARAMS",
            ),
            (
                "/3pid/unbind",
                json!({"mxid": "@a:hs.test", "threepid": "a@example.org"}),
                "M_INVALID_PARAM",
            ),
        ];
        h.accept_terms(&alice).await;
        for (path, body, errcode) in cases {
            let r = h.post(path, Some(&alice), body.clone()).await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{path} {body}: {}",
                r.text()
            );
            assert_eq!(r.errcode(), errcode, "{path} {body}: {}", r.text());
        }
        let not_json = h
            .send(
                http::Request::post("/_matrix/identity/v2/3pid/bind")
                    .header("authorization", format!("Bearer {alice}"))
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from("{not json"))
                    .unwrap(),
            )
            .await;
        assert_eq!(not_json.errcode(), "M_NOT_JSON");
    }
}

/// Issue 10 item 2: `submitToken`'s limit of 10 wrong tokens per session
/// holds when 50 guesses arrive at once (each check spends an attempt
/// first, atomically); after them even the right token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_cannot_pass_the_attempt_limit() {
    for (db, dir) in backends().await {
        let (h, smtp) = smtp_harness(db, dir, |_| {}).await;
        let alice = h.user("alice").await;
        let sid = sid_of(&request_email(&h, &alice, "fay@example.org", "g", 1, None).await);
        let token = query_params(&link_in(&smtp.wait_for(1).await[0]))["token"].clone();
        let guesses = (0..50).map(|i| {
            h.post(
                "/validate/email/submitToken",
                Some(&alice),
                json!({"sid": sid, "client_secret": "g", "token": format!("wrong{i}")}),
            )
        });
        let answers = futures_util::future::join_all(guesses).await;
        let checked = answers
            .iter()
            .filter(|r| r.errcode() == "M_TOKEN_INCORRECT")
            .count();
        let refused = answers
            .iter()
            .filter(|r| r.errcode() == "M_SESSION_EXPIRED")
            .count();
        assert_eq!((checked, refused), (10, 40));
        let right = h
            .post(
                "/validate/email/submitToken",
                Some(&alice),
                json!({"sid": sid, "client_secret": "g", "token": token}),
            )
            .await;
        assert_eq!(right.errcode(), "M_SESSION_EXPIRED");
    }
}

/// Issue 11 item 5. Synapse 1.163's `account_threepid_delegates.msisdn`
/// calls exactly `POST /_matrix/identity/api/v1/validate/msisdn/requestToken`,
/// `POST .../submitToken` and `GET /_matrix/identity/api/v1/3pid/getValidated3pid`
/// (`handlers/identity.py`), with no token. With
/// `sms.serve_synapse_delegation` they behave as their v2 twins; without
/// it, and for every other v1 path, nothing answers but 404.
#[tokio::test]
async fn synapse_msisdn_delegation_paths() {
    const V1: &str = "/_matrix/identity/api/v1";
    for (db, dir) in backends().await {
        let off = Harness::start(db.clone(), None, test_config()).await;
        for (method, path) in [
            (Method::POST, "/validate/msisdn/requestToken"),
            (Method::POST, "/validate/msisdn/submitToken"),
            (Method::GET, "/3pid/getValidated3pid"),
        ] {
            let r = off.public_request(method, &format!("{V1}{path}")).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(r.errcode(), "M_UNRECOGNIZED");
        }

        let mut config = test_config();
        config.sms.serve_synapse_delegation = true;
        let h = Harness::start(db, dir, config).await;
        for (method, path) in [
            (Method::POST, "/validate/email/requestToken"),
            (Method::POST, "/lookup"),
            (Method::POST, "/3pid/bind"),
            (Method::GET, "/pubkey/ed25519:0"),
        ] {
            let r = h.public_request(method, &format!("{V1}{path}")).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        }
        let logs = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        // What Synapse's `requestMsisdnToken` sends.
        let r = h
            .request(
                Method::POST,
                &format!("{V1}/validate/msisdn/requestToken"),
                None,
                Some(json!({"country": "GB", "phone_number": "07700 900456", "client_secret": "d1", "send_attempt": 1})),
            )
            .await;
        drop(guard);
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["msisdn"], "447700900456");
        let sid = r.json()["sid"].as_str().unwrap().to_owned();
        let log = logs.text();
        let line = log.lines().find(|l| l.contains("SMS not sent")).unwrap();
        let code = line[line.find("text=").unwrap()..]
            .split(|c: char| !c.is_ascii_digit())
            .find(|run| run.len() == 6)
            .unwrap()
            .to_owned();
        let submit_path = format!("{V1}/validate/msisdn/submitToken");
        let submit = |token: &str| {
            h.request(
                Method::POST,
                &submit_path,
                None,
                Some(json!({"client_secret": "d1", "sid": sid, "token": token})),
            )
        };
        assert_eq!(submit("000000x").await.errcode(), "M_TOKEN_INCORRECT");
        assert_eq!(submit(&code).await.json(), json!({"success": true}));
        let validated = h
            .request(
                Method::GET,
                &format!("{V1}/3pid/getValidated3pid?sid={sid}&client_secret=d1"),
                None,
                None,
            )
            .await;
        assert_eq!(validated.status, StatusCode::OK, "{}", validated.text());
        assert_eq!(validated.json()["medium"], "msisdn");
        assert_eq!(validated.json()["address"], "447700900456");
    }
}
