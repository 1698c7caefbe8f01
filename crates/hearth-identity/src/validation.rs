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
//! Send failures are 500 `M_EMAIL_SEND_ERROR` / `M_SEND_ERROR`, as Sydent
//! answers, though the spec lists the codes under 400: they are the
//! server's fault, and show up where operators watch for 5xx.
//!
//! A limit applies per address (`email.per_address_*`) and per number
//! (`sms.per_number_*`) on what is actually sent; the per-client limit is
//! the HTTP layer's. The limit is checked before the session is touched, so
//! a limited request leaves `send_attempt` as it was and the client's retry
//! of the same attempt sends once the limit allows. (Only two requests
//! racing for the last token can bump a session that then sends nothing.)

use crate::email::Template;
use crate::threepid::{self, EMAIL, MSISDN};
use crate::{IdentityState, sessions};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use hearth_auth::TermsAccepted;
use hearth_core::http::RateLimiter;
use hearth_core::{Json, MatrixError};
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Debug, Deserialize)]
pub(crate) struct EmailRequestToken {
    client_secret: String,
    email: String,
    send_attempt: i64,
    #[serde(default)]
    next_link: Option<String>,
}

/// `POST /validate/email/requestToken`: starts (or resumes) a session and
/// mails its token, as a link and as a code.
pub(crate) async fn email_request_token(
    State(state): State<IdentityState>,
    _: TermsAccepted,
    Json(request): Json<EmailRequestToken>,
) -> Result<Json<Value>, MatrixError> {
    sessions::check_opaque_id("client_secret", &request.client_secret)?;
    let email = threepid::canonical_email(&request.email)?;
    crate::email::parse_address(&email)?;
    let next_link = check_next_link(request.next_link.as_deref())?;
    let started = Start {
        medium: EMAIL,
        address: &email,
        client_secret: &request.client_secret,
        send_attempt: request.send_attempt,
        next_link,
    };
    let (state, email) = (&state, &email);
    let session = start(
        state,
        started,
        state.mailer.per_address(),
        |session, token| {
            let link = submit_link(state, EMAIL, session, &token);
            let context = json!({ "token": token, "link": link });
            async move {
                state
                    .mailer
                    .send(Template::Validation, email, context)
                    .await?;
                tracing::info!("validation mail sent");
                Ok(())
            }
        },
    )
    .await?;
    Ok(Json(json!({ "sid": session.sid })))
}

/// What a `requestToken` asks for, once checked.
struct Start<'a> {
    medium: &'static str,
    address: &'a str,
    client_secret: &'a str,
    send_attempt: i64,
    next_link: Option<&'a str>,
}

/// What both media share: the address's limit, the session, and sending
/// (through `send`, given the session and its token) only when
/// `send_attempt` is new.
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
    ready(limiter, request.address)?;
    let requested = sessions::request(
        &state.db,
        request.medium,
        request.address,
        request.client_secret,
        request.send_attempt,
        request.next_link,
        state.config.session_lifetime.as_millis_i64(),
    )
    .await?;
    let session = requested.session;
    if requested.send {
        take(limiter, request.address)?;
        let token = sessions::token(&state.signing_key, &session);
        send(&session, token).await?;
    }
    Ok(session)
}

#[derive(Debug, Deserialize)]
pub(crate) struct MsisdnRequestToken {
    client_secret: String,
    country: String,
    phone_number: String,
    send_attempt: i64,
    #[serde(default)]
    next_link: Option<String>,
}

/// `POST /validate/msisdn/requestToken`: as for email, with a six-digit
/// code by SMS. Answers `sid` plus, as Sydent does, the number as stored
/// (`msisdn`) and as people write it (`intl_fmt`).
pub(crate) async fn msisdn_request_token(
    State(state): State<IdentityState>,
    _: TermsAccepted,
    Json(request): Json<MsisdnRequestToken>,
) -> Result<Json<Value>, MatrixError> {
    sessions::check_opaque_id("client_secret", &request.client_secret)?;
    let number = threepid::canonical_msisdn(&request.country, &request.phone_number)?;
    let next_link = check_next_link(request.next_link.as_deref())?;
    let started = Start {
        medium: MSISDN,
        address: &number.msisdn,
        client_secret: &request.client_secret,
        send_attempt: request.send_attempt,
        next_link,
    };
    let session = start(&state, started, state.sms.per_number(), |_, token| {
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
    Ok(Json(json!({
        "sid": session.sid,
        "msisdn": number.msisdn,
        "intl_fmt": number.intl_fmt,
    })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct SubmitToken {
    sid: String,
    client_secret: String,
    token: String,
}

/// `POST /validate/{email,msisdn}/submitToken`: the client relays the code
/// the user typed. The session's own medium applies, whichever path.
pub(crate) async fn submit_token_post(
    State(state): State<IdentityState>,
    _: TermsAccepted,
    Json(request): Json<SubmitToken>,
) -> Result<Json<Value>, MatrixError> {
    let session = submit(&state, &request).await?;
    tracing::info!(sid = %session.sid, medium = %session.medium, "3PID validated");
    Ok(Json(json!({ "success": true })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct SubmitTokenQuery {
    sid: Option<String>,
    client_secret: Option<String>,
    token: Option<String>,
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
            let (status, reason) = match e.errcode.0 {
                "M_TOKEN_INCORRECT" => (
                    StatusCode::BAD_REQUEST,
                    "The code in the link is not right. Open the link from the most recent message.",
                ),
                "M_SESSION_EXPIRED" => (
                    StatusCode::BAD_REQUEST,
                    "The link has expired. Go back to your app and ask for a new one.",
                ),
                "M_NO_VALID_SESSION" | "M_INVALID_PARAM" => (
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
    sessions::check_opaque_id("client_secret", &request.client_secret)?;
    sessions::submit(
        &state.db,
        &state.signing_key,
        &request.sid,
        &request.client_secret,
        &request.token,
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
    token: &str,
) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sid", &session.sid)
        .append_pair("client_secret", &session.client_secret)
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
