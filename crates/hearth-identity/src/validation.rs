//! Spec "Email associations" and "Phone number associations": the
//! `requestToken` and `submitToken` endpoints of both media. Sessions live in
//! `sessions`; mails in `email`, SMS in `sms`.
//!
//! Departures from Sydent, on purpose:
//! - `POST submitToken` failures are Matrix errors with their status
//!   (`M_TOKEN_INCORRECT` and `M_SESSION_EXPIRED` 400, `M_NO_VALID_SESSION`
//!   404), not 200 with `success: false`;
//! - an invalid number is `M_INVALID_ADDRESS` (the spec's code), and a
//!   limit is 429 `M_LIMIT_EXCEEDED` with `retry_after_ms`.
//!
//! Send failures are 400 `M_EMAIL_SEND_ERROR` / `M_SEND_ERROR`, as the
//! spec lists them (Sydent answers 500). `send_attempt` is recorded only
//! once a send succeeded, so a retry of a failed attempt sends again.
//!
//! A limit applies per address (`email.per_address_*`) and per number
//! (`sms.per_number_*`) on what is actually sent; the per-client limit is
//! the HTTP layer's. The limit is checked before the session is touched, so
//! a limited request leaves `send_attempt` as it was and the client's retry
//! of the same attempt sends once the limit allows.
//!
//! Synapse's `account_threepid_delegates.msisdn` calls three v1 paths
//! without a token (`requestMsisdnToken`, `proxy_msisdn_submit_token`,
//! `threepid_from_creds` in Synapse's `handlers/identity.py`); with
//! `sms.serve_synapse_delegation` they are served by the v2 handlers below,
//! minus the token and terms, and no other v1 path is.

use crate::email::Template;
use crate::params::{self, FormOrJson};
use crate::threepid::{self, EMAIL, MSISDN};
use crate::{IdentityState, sessions};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use hearth_auth::TermsAccepted;
use hearth_core::http::RateLimiter;
use hearth_core::{ErrCode, Json, MatrixError, Redacted};
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

#[derive(Debug, Deserialize)]
pub(crate) struct EmailRequestToken {
    client_secret: Redacted<String>,
    email: Redacted<String>,
    #[serde(deserialize_with = "params::send_attempt")]
    send_attempt: i64,
    #[serde(default)]
    next_link: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct EmailRequestTokenResponse {
    sid: String,
}

/// `POST /validate/email/requestToken`: starts (or resumes) a session and
/// mails its token, as a link and as a code.
pub(crate) async fn email_request_token(
    State(state): State<IdentityState>,
    _: TermsAccepted,
    FormOrJson(request): FormOrJson<EmailRequestToken>,
) -> Result<Json<EmailRequestTokenResponse>, MatrixError> {
    let client_secret = request.client_secret.expose();
    sessions::check_opaque_id("client_secret", client_secret)?;
    let email = threepid::email(request.email.expose())?;
    crate::email::parse_address(&email.canonical)?;
    let next_link = check_next_link(request.next_link.as_deref())?;
    let started = Start {
        threepid: sessions::ThreePid {
            medium: EMAIL,
            address: &email.canonical,
            lookup_alias: email.lower.as_deref(),
        },
        client_secret,
        send_attempt: request.send_attempt,
        next_link,
    };
    let (state, to) = (&state, &email.canonical);
    let session = start(
        state,
        started,
        state.mailer.per_address(),
        |session, token| {
            let link = submit_link(state, EMAIL, session, client_secret, &token);
            let context = json!({ "token": token, "link": link });
            async move {
                state.mailer.send(Template::Validation, to, context).await?;
                tracing::info!("validation mail sent");
                Ok(())
            }
        },
    )
    .await?;
    Ok(Json(EmailRequestTokenResponse { sid: session.sid }))
}

/// What a `requestToken` asks for, once checked.
struct Start<'a> {
    threepid: sessions::ThreePid<'a>,
    client_secret: &'a str,
    send_attempt: i64,
    next_link: Option<&'a str>,
}

/// What both media share: the address's limit, the session, and sending
/// (through `send`, given the session and its token) only when
/// `send_attempt` is new; the attempt is recorded once `send` succeeded.
async fn start<'a, F, Fut>(
    state: &IdentityState,
    request: Start<'a>,
    limiter: &RateLimiter<String>,
    send: F,
) -> Result<sessions::Session, MatrixError>
where
    F: FnOnce(&sessions::Session, String) -> Fut,
    Fut: Future<Output = Result<(), MatrixError>>,
{
    let address = request.threepid.address;
    ready(limiter, address)?;
    let requested = sessions::request(
        &state.db,
        request.threepid,
        request.client_secret,
        request.send_attempt,
        request.next_link,
        state.config.session_lifetime.as_millis_i64(),
    )
    .await?;
    let session = requested.session;
    if requested.send {
        take(limiter, address)?;
        let token = sessions::token(&state.signing_key, &session);
        send(&session, token).await?;
        sessions::record_sent(
            &state.db,
            &session.sid,
            request.send_attempt,
            request.next_link,
        )
        .await?;
    }
    Ok(session)
}

#[derive(Debug, Deserialize)]
pub(crate) struct MsisdnRequestToken {
    client_secret: Redacted<String>,
    /// Element sends `null` (matrix-doc#2222); a number with its `+` then
    /// stands alone.
    #[serde(default)]
    country: Option<String>,
    phone_number: Redacted<String>,
    #[serde(deserialize_with = "params::send_attempt")]
    send_attempt: i64,
    #[serde(default)]
    next_link: Option<String>,
}

/// `sid` plus, as Sydent answers, the number as stored (`msisdn`) and as
/// people write it (`intl_fmt`).
#[derive(Serialize)]
pub(crate) struct MsisdnRequestTokenResponse {
    sid: String,
    msisdn: String,
    intl_fmt: String,
}

/// `POST /validate/msisdn/requestToken`: as for email, with a six-digit
/// code by SMS.
pub(crate) async fn msisdn_request_token(
    State(state): State<IdentityState>,
    _: TermsAccepted,
    FormOrJson(request): FormOrJson<MsisdnRequestToken>,
) -> Result<Json<MsisdnRequestTokenResponse>, MatrixError> {
    msisdn_start(&state, request).await.map(Json)
}

/// `POST /_matrix/identity/api/v1/validate/msisdn/requestToken`, for
/// Synapse's msisdn delegation, which sends no token.
pub(crate) async fn v1_msisdn_request_token(
    State(state): State<IdentityState>,
    FormOrJson(request): FormOrJson<MsisdnRequestToken>,
) -> Result<Json<MsisdnRequestTokenResponse>, MatrixError> {
    msisdn_start(&state, request).await.map(Json)
}

async fn msisdn_start(
    state: &IdentityState,
    request: MsisdnRequestToken,
) -> Result<MsisdnRequestTokenResponse, MatrixError> {
    let client_secret = request.client_secret.expose();
    sessions::check_opaque_id("client_secret", client_secret)?;
    let number =
        threepid::canonical_msisdn(request.country.as_deref(), request.phone_number.expose())?;
    let next_link = check_next_link(request.next_link.as_deref())?;
    let started = Start {
        threepid: sessions::ThreePid {
            medium: MSISDN,
            address: &number.msisdn,
            lookup_alias: None,
        },
        client_secret,
        send_attempt: request.send_attempt,
        next_link,
    };
    let session = start(state, started, state.sms.per_number(), |_, token| {
        let text = state
            .mailer
            .templates()
            .render("validation_sms.txt", &json!({ "token": token }));
        async {
            state
                .sms
                .send(&state.outbound, &number.msisdn, text?.trim())
                .await?;
            tracing::info!("validation SMS sent");
            Ok(())
        }
    })
    .await?;
    Ok(MsisdnRequestTokenResponse {
        sid: session.sid,
        msisdn: number.msisdn,
        intl_fmt: number.intl_fmt,
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct SubmitToken {
    sid: String,
    client_secret: Redacted<String>,
    token: Redacted<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct SubmitTokenResponse {
    success: bool,
}

/// `POST /validate/{email,msisdn}/submitToken`: the client relays the code
/// the user typed. The session's own medium applies, whichever path.
pub(crate) async fn submit_token_post(
    State(state): State<IdentityState>,
    _: TermsAccepted,
    FormOrJson(request): FormOrJson<SubmitToken>,
) -> Result<Json<SubmitTokenResponse>, MatrixError> {
    v1_submit_token(State(state), FormOrJson(request)).await
}

/// `POST /_matrix/identity/api/v1/validate/msisdn/submitToken`, for
/// Synapse's msisdn delegation (no token), and the v2 handler's body.
pub(crate) async fn v1_submit_token(
    State(state): State<IdentityState>,
    FormOrJson(request): FormOrJson<SubmitToken>,
) -> Result<Json<SubmitTokenResponse>, MatrixError> {
    let session = submit(&state, &request).await?;
    tracing::info!(sid = %session.sid, medium = %session.medium, "3PID validated");
    Ok(Json(SubmitTokenResponse { success: true }))
}

#[derive(Debug, Deserialize)]
pub(crate) struct SubmitTokenQuery {
    sid: Option<String>,
    client_secret: Option<Redacted<String>>,
    token: Option<Redacted<String>>,
}

/// `GET /validate/{email,msisdn}/submitToken`: the link in the mail, opened
/// by a person in a browser, so no token is asked for. Success redirects to
/// the session's `next_link` when it is http(s), else shows a page; failure
/// shows why, never the address. Pages are the `validated.html` and
/// `validation_failed.html` templates.
pub(crate) async fn submit_token_get(
    State(state): State<IdentityState>,
    query: Result<Query<SubmitTokenQuery>, QueryRejection>,
) -> Response {
    let request = match query {
        Ok(Query(SubmitTokenQuery {
            sid: Some(sid),
            client_secret: Some(client_secret),
            token: Some(token),
        })) => SubmitToken {
            sid,
            client_secret,
            token,
        },
        _ => {
            return failure_page(
                &state,
                StatusCode::BAD_REQUEST,
                "The link is incomplete. Open the whole link from the message, or copy it into your browser.",
            );
        }
    };
    let session = match submit(&state, &request).await {
        Ok(session) => session,
        Err(e) => {
            let (status, reason) = match e.errcode {
                ErrCode::TOKEN_INCORRECT => (
                    StatusCode::BAD_REQUEST,
                    "The code in the link is not right. Open the link from the most recent message.",
                ),
                ErrCode::SESSION_EXPIRED => (
                    StatusCode::BAD_REQUEST,
                    "The link has expired. Go back to your app and ask for a new one.",
                ),
                ErrCode::NO_VALID_SESSION | ErrCode::INVALID_PARAM => (
                    StatusCode::BAD_REQUEST,
                    "The link is not valid. Open the link from the most recent message, or ask your app for a new one.",
                ),
                _ => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong on our side. Try the link again later.",
                ),
            };
            return failure_page(&state, status, reason);
        }
    };
    tracing::info!(sid = %session.sid, medium = %session.medium, "3PID validated by link");
    if let Some(next_link) = session
        .next_link
        .as_deref()
        .and_then(|l| check_next_link(Some(l)).ok().flatten())
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        return with_page_headers(
            (StatusCode::FOUND, [(header::LOCATION, next_link)]).into_response(),
        );
    }
    match state
        .mailer
        .templates()
        .render("validated.html", &json!({ "medium": session.medium }))
    {
        Ok(html) => html_page(StatusCode::OK, html),
        Err(_) => failure_page(
            &state,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Your address is confirmed, but this page could not be shown.",
        ),
    }
}

async fn submit(
    state: &IdentityState,
    request: &SubmitToken,
) -> Result<sessions::Session, MatrixError> {
    sessions::check_opaque_id("sid", &request.sid)?;
    sessions::check_opaque_id("client_secret", request.client_secret.expose())?;
    sessions::submit(
        &state.db,
        &state.signing_key,
        &request.sid,
        request.client_secret.expose(),
        request.token.expose(),
        state.config.session_lifetime.as_millis_i64(),
    )
    .await
}

/// `next_link` must be an http or https URL (else 400 `M_INVALID_PARAM`):
/// it becomes a redirect, and other schemes (`javascript:`, custom app
/// schemes) have no place there.
fn check_next_link(next_link: Option<&str>) -> Result<Option<&str>, MatrixError> {
    let Some(link) = next_link.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    match url::Url::parse(link) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(Some(link))
        }
        _ => Err(MatrixError::invalid_param(
            "next_link must be an http or https URL",
        )),
    }
}

/// The `GET submitToken` link of a session, under `public_base_url`.
fn submit_link(
    state: &IdentityState,
    medium: &str,
    session: &sessions::Session,
    client_secret: &str,
    token: &str,
) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sid", &session.sid)
        .append_pair("client_secret", client_secret)
        .append_pair("token", token)
        .finish();
    format!(
        "{}/_matrix/identity/v2/validate/{medium}/submitToken?{query}",
        state.public_base_url.trim_end_matches('/')
    )
}

fn failure_page(state: &IdentityState, status: StatusCode, reason: &str) -> Response {
    match state
        .mailer
        .templates()
        .render("validation_failed.html", &json!({ "reason": reason }))
    {
        Ok(html) => html_page(status, html),
        // A broken override: say it plainly rather than nothing.
        Err(_) => with_page_headers(
            (
                status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                reason.to_owned(),
            )
                .into_response(),
        ),
    }
}

fn html_page(status: StatusCode, html: String) -> Response {
    with_page_headers(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
    )
}

/// The page's URL holds the token: keep it out of caches and `Referer`,
/// and let the page run nothing and be framed by nobody.
fn with_page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    response
}

/// 429 `M_LIMIT_EXCEEDED` when `key` is over its limit; takes nothing.
fn ready(limiter: &RateLimiter<String>, key: &str) -> Result<(), MatrixError> {
    limiter.ready(&key.to_owned()).map_err(limit_exceeded)
}

/// Spends one of `key`'s sends.
fn take(limiter: &RateLimiter<String>, key: &str) -> Result<(), MatrixError> {
    limiter.check(&key.to_owned()).map_err(limit_exceeded)
}

fn limit_exceeded(wait: Duration) -> MatrixError {
    MatrixError::limit_exceeded(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::ErrCode;

    /// Over the limit, the error is 429 `M_LIMIT_EXCEEDED` with the wait.
    #[test]
    fn limit_errors_carry_the_wait() {
        let limiter = RateLimiter::<String>::per_period(1, Duration::from_secs(300));
        ready(&limiter, "a").unwrap();
        take(&limiter, "a").unwrap();
        let e = ready(&limiter, "a").unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.errcode, ErrCode::LIMIT_EXCEEDED);
        let wait = e.extra["retry_after_ms"].as_u64().unwrap();
        assert!((299_000..=300_000).contains(&wait), "{wait}");
        take(&limiter, "b").unwrap();
    }

    /// Issue 6 item 8: secrets and 3PIDs in requests never show in
    /// `Debug` (and so in any log field).
    #[test]
    fn requests_redact_secrets_and_3pids() {
        let email: EmailRequestToken = crate::params::parse(json!({
            "client_secret": "s3cret-cs", "email": "who@example.org", "send_attempt": "1",
        }))
        .unwrap();
        let msisdn: MsisdnRequestToken = crate::params::parse(json!({
            "client_secret": "s3cret-cs", "country": null, "phone_number": "+447700900123",
            "send_attempt": 1,
        }))
        .unwrap();
        let submit: SubmitToken = crate::params::parse(json!({
            "sid": "1", "client_secret": "s3cret-cs", "token": "t0ken-value",
        }))
        .unwrap();
        let shown = format!("{email:?} {msisdn:?} {submit:?}");
        for secret in ["s3cret-cs", "who@example.org", "7700900123", "t0ken-value"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn next_link_must_be_http_or_https() {
        assert_eq!(check_next_link(None).unwrap(), None);
        assert_eq!(check_next_link(Some("")).unwrap(), None);
        assert!(check_next_link(Some("https://app.example/#/done")).is_ok());
        assert!(check_next_link(Some("http://localhost:8080/")).is_ok());
        for bad in [
            "javascript:alert(1)",
            "element://done",
            "/relative",
            "https://",
        ] {
            assert!(check_next_link(Some(bad)).is_err(), "{bad}");
        }
    }
}
