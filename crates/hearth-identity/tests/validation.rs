//! 3PID validation (Identity Service API, "Email associations" and "Phone
//! number associations"), then `getValidated3pid` and `bind`
//! ("Establishing associations"), driven through the router in-process on
//! every database backend, with a real SMTP server (aiosmtpd) receiving the
//! mails and a fake homeserver vouching for users.

mod common;

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
    let smtp = SmtpCapture::start().await;
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
