//! Spec "Invitation storage" and "Ephemeral invitation signing":
//! `POST /store-invite`, `POST /sign-ed25519`, and what a bind does for the
//! invites waiting on its address (the `onbind` callback, queued in the
//! outbox that [`crate::outbox`] delivers).
//!
//! The flow, as Sydent and Synapse run it:
//! 1. The inviter's homeserver calls `store-invite`. We keep the token, the
//!    room and the sender, hand out our long-term key and a fresh ephemeral
//!    public key, and mail the invitee. The ephemeral *private* key is never
//!    stored: it travels only in the mail's link (as Sydent's `signurl`),
//!    so whoever holds the mail can later ask `sign-ed25519` to sign with
//!    it, proving possession without crypto in the client.
//! 2. When the invitee binds the address, [`on_bound`] signs `{mxid, token}`
//!    with our long-term key for each pending invite and queues the
//!    `onbind` body for the invitee's homeserver, in the bind's transaction.

use crate::email::Template;
use crate::threepid::{EMAIL, canonical_email};
use crate::{IdentityState, outbox};
use axum::extract::{Query, State};
use hearth_auth::TermsAccepted;
use hearth_core::http::percent_encode;
use hearth_core::ids::UserId;
use hearth_core::keys::{KeyVersion, SigningKey};
use hearth_core::signed_json::sign_json;
use hearth_core::time::now_ms;
use hearth_core::{ErrCode, Json, MatrixError};
use http::{StatusCode, Uri};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

/// Invites one sender may store per [`RATE_WINDOW_MS`].
const INVITES_PER_WINDOW: i64 = 10;
const RATE_WINDOW_MS: i64 = 3600 * 1000;
/// Characters of each half of the address `display_name` reveals (Sydent's
/// `third_party_invite_{username,domain}_obfuscate_characters`).
const REVEALED_CHARACTERS: usize = 3;
/// Sydent signs with ephemeral keys under this key id.
const EPHEMERAL_KEY_VERSION: &str = "0";

#[derive(Debug, Deserialize)]
pub(crate) struct StoreInviteRequest {
    medium: String,
    address: String,
    room_id: String,
    sender: String,
    room_alias: Option<String>,
    room_avatar_url: Option<String>,
    room_name: Option<String>,
    sender_display_name: Option<String>,
    room_type: Option<String>,
    #[serde(rename = "org.matrix.web_client_location")]
    web_client_location: Option<String>,
    // `room_join_rules`, `sender_avatar_url` and any other key are accepted
    // and not used.
}

/// `POST /store-invite`.
pub(crate) async fn store_invite(
    State(state): State<IdentityState>,
    TermsAccepted(user): TermsAccepted,
    Json(request): Json<StoreInviteRequest>,
) -> Result<Json<Value>, MatrixError> {
    // Sydent v2: only the token's user may invite in their own name.
    if request.sender != user.user_id.as_str() {
        return Err(MatrixError::new(
            StatusCode::FORBIDDEN,
            ErrCode::UNAUTHORIZED,
            "The token's user and sender differ",
        ));
    }
    if request.medium != EMAIL {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrCode::UNRECOGNIZED,
            format!("Didn't understand medium {:?}", request.medium),
        ));
    }
    if !request.room_id.starts_with('!') || request.room_id.len() > 255 {
        return Err(MatrixError::invalid_param("room_id is not a room ID"));
    }
    let address = canonical_email(&request.address)?;
    let bound =
        sqlx::query("SELECT mxid FROM identity_associations WHERE medium = $1 AND address = $2")
            .bind(EMAIL)
            .bind(&address)
            .fetch_optional(state.db.pool())
            .await?;
    if let Some(row) = bound {
        let mxid: String = row.try_get("mxid")?;
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrCode("M_THREEPID_IN_USE"),
            "Binding already known",
        )
        .with("mxid", mxid));
    }
    check_rate(&state, &request.sender).await?;

    let token = hearth_core::random::token::<48>();
    let seed = hearth_core::random::bytes::<32>();
    let ephemeral = ephemeral_key(seed);
    let ephemeral_public = ephemeral.public_key_base64();
    let now = now_ms();
    let mut tx = state.db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO identity_invites (token, medium, address, room_id, sender, created_ts)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&token)
    .bind(EMAIL)
    .bind(&address)
    .bind(&request.room_id)
    .bind(&request.sender)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO identity_ephemeral_keys (public_key, created_ts) VALUES ($1, $2)")
        .bind(&ephemeral_public)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    // The mail goes out after the commit, so no transaction is held open
    // while SMTP talks; if it fails, the invite is taken back.
    let context = mail_context(&state, &request, &address, &token, &seed);
    if let Err(e) = state.mailer.send(Template::Invite, &address, context).await {
        let mut tx = state.db.pool().begin().await?;
        sqlx::query("DELETE FROM identity_invites WHERE token = $1")
            .bind(&token)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM identity_ephemeral_keys WHERE public_key = $1")
            .bind(&ephemeral_public)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Err(e);
    }
    tracing::info!(room_id = %request.room_id, "third-party invite stored");

    let base = format!(
        "{}/_matrix/identity/v2",
        state.public_base_url.trim_end_matches('/')
    );
    let long_term = state.signing_key.public_key_base64();
    Ok(Json(json!({
        "token": token,
        "public_keys": [
            {"public_key": long_term, "key_validity_url": format!("{base}/pubkey/isvalid")},
            {"public_key": ephemeral_public, "key_validity_url": format!("{base}/pubkey/ephemeral/isvalid")},
        ],
        // Synapse falls back to this (with `/pubkey/isvalid`) when
        // `public_keys` is absent; Sydent still sends it.
        "public_key": long_term,
        "display_name": redact_address(&address),
    })))
}

/// At most [`INVITES_PER_WINDOW`] pending invites per sender in the last
/// window. Counted in the database, so every instance sharing it agrees.
async fn check_rate(state: &IdentityState, sender: &str) -> Result<(), MatrixError> {
    let since = now_ms() - RATE_WINDOW_MS;
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, MIN(created_ts) AS oldest FROM identity_invites
         WHERE sender = $1 AND created_ts > $2",
    )
    .bind(sender)
    .bind(since)
    .fetch_one(state.db.pool())
    .await?;
    let count: i64 = row.try_get("n")?;
    if count >= INVITES_PER_WINDOW {
        let oldest: Option<i64> = row.try_get("oldest")?;
        let wait = oldest.map_or(RATE_WINDOW_MS, |t| t - since).max(1);
        return Err(MatrixError::limit_exceeded(
            u64::try_from(wait).unwrap_or(1),
        ));
    }
    Ok(())
}

/// What the invite mail is written from (see `crate::email`).
fn mail_context(
    state: &IdentityState,
    request: &StoreInviteRequest,
    address: &str,
    token: &str,
    seed: &[u8; 32],
) -> Value {
    let location = web_client_location(
        state.config.invites.web_client_location.as_deref(),
        request.web_client_location.as_deref(),
    );
    let invite_link = location.as_deref().map(|location| {
        let sign_url = format!(
            "{}/_matrix/identity/v2/sign-ed25519?token={}&private_key={}",
            state.public_base_url.trim_end_matches('/'),
            percent_encode(token),
            percent_encode(&hearth_core::base64::encode_url_safe(seed)),
        );
        invite_link(location, request, address, &sign_url)
    });
    json!({
        "sender_display_name": request.sender_display_name,
        "sender": request.sender,
        "room_name": request.room_name,
        "room_alias": request.room_alias,
        "room_id": request.room_id,
        "room_type": request.room_type,
        "web_client_location": location,
        "invite_link": invite_link,
    })
}

/// The web client the mail links to: the configured one, or the request's
/// (Synapse's `email.invite_client_location`) when it lies under the
/// configured one. Never a host the operator did not choose.
fn web_client_location(configured: Option<&str>, requested: Option<&str>) -> Option<String> {
    let configured = configured?.trim_end_matches('/');
    if configured.is_empty() {
        return None;
    }
    let chosen = requested
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| {
            *r == configured
                || r.strip_prefix(configured)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
        .unwrap_or(configured);
    Some(chosen.to_owned())
}

/// A link Element understands as a third-party invite: the room, plus the
/// parameters of its `ThreepidInviteStore` (`email`, `signurl`, room and
/// inviter details).
fn invite_link(
    location: &str,
    request: &StoreInviteRequest,
    address: &str,
    sign_url: &str,
) -> String {
    let room = request.room_alias.as_deref().unwrap_or(&request.room_id);
    let mut link = format!(
        "{location}/#/room/{}?email={}&signurl={}",
        percent_encode(room),
        percent_encode(address),
        percent_encode(sign_url)
    );
    for (name, value) in [
        ("room_name", &request.room_name),
        ("room_avatar_url", &request.room_avatar_url),
        ("inviter_name", &request.sender_display_name),
        ("room_type", &request.room_type),
    ] {
        if let Some(value) = value {
            link.push_str(&format!("&{name}={}", percent_encode(value)));
        }
    }
    link
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct SignRequest {
    mxid: Option<String>,
    token: Option<String>,
    private_key: Option<String>,
}

/// `POST /sign-ed25519`: signs `{mxid, sender, token}` with the ephemeral
/// private key the invitee received by mail (spec "Ephemeral invitation
/// signing"). The parameters come from the JSON body, as the spec has them;
/// any missing there are taken from the query string, where the mail's
/// `signurl` carries `token` and `private_key`.
pub(crate) async fn sign_ed25519(
    State(state): State<IdentityState>,
    _: TermsAccepted,
    uri: Uri,
    Json(body): Json<SignRequest>,
) -> Result<Json<Value>, MatrixError> {
    // A query string that does not parse only means nothing comes from it.
    let query =
        Query::<SignRequest>::try_from_uri(&uri).map_or_else(|_| SignRequest::default(), |q| q.0);
    let missing = |name: &str| {
        MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrCode("M_MISSING_PARAMS"),
            format!("Missing parameter: {name}"),
        )
    };
    let mxid = body.mxid.or(query.mxid).ok_or_else(|| missing("mxid"))?;
    let token = body.token.or(query.token).ok_or_else(|| missing("token"))?;
    let private_key = body
        .private_key
        .or(query.private_key)
        .ok_or_else(|| missing("private_key"))?;
    let mxid =
        UserId::parse(&mxid).map_err(|_| MatrixError::invalid_param("mxid is not a user ID"))?;
    let key = decode_private_key(&private_key).ok_or_else(|| {
        MatrixError::invalid_param("private_key is not an unpadded base64 ed25519 key")
    })?;
    let row = sqlx::query("SELECT sender FROM identity_invites WHERE token = $1")
        .bind(&token)
        .fetch_optional(state.db.pool())
        .await?
        .ok_or_else(|| {
            MatrixError::new(
                StatusCode::NOT_FOUND,
                ErrCode::UNRECOGNIZED,
                "Didn't recognize token",
            )
        })?;
    let sender: String = row.try_get("sender")?;
    let mut signed = json!({ "mxid": mxid, "sender": sender, "token": token });
    sign_json(&mut signed, state.server_name.as_str(), &key).map_err(MatrixError::internal)?;
    Ok(Json(signed))
}

/// The 32-byte seed in either base64 alphabet, padded or not; a 64-byte
/// libsodium secret key (seed then public key) is accepted too.
fn decode_private_key(text: &str) -> Option<SigningKey> {
    let bytes = hearth_core::base64::decode(&crate::pubkey::normalise_key(text)).ok()?;
    if bytes.len() != 32 && bytes.len() != 64 {
        return None;
    }
    let seed: [u8; 32] = bytes[..32].try_into().ok()?;
    let key = ephemeral_key(seed);
    if bytes.len() == 64 && hearth_core::base64::encode(&bytes[32..]) != key.public_key_base64() {
        return None;
    }
    Some(key)
}

/// Called by `bind` inside its transaction, after the association row is
/// written: signs each invite pending on this 3PID for `mxid`, queues one
/// `onbind` callback to the invitee's homeserver and deletes the invites.
/// All in `tx`: a crash loses no invite and sends nothing for a binding
/// that did not commit.
pub(crate) async fn on_bound(
    state: &IdentityState,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    medium: &str,
    address: &str,
    mxid: &UserId,
) -> Result<(), MatrixError> {
    let invites = sqlx::query(
        "SELECT token, medium, address, room_id, sender FROM identity_invites
         WHERE medium = $1 AND address = $2 ORDER BY created_ts, token",
    )
    .bind(medium)
    .bind(address)
    .fetch_all(&mut **tx)
    .await?;
    if invites.is_empty() {
        return Ok(());
    }
    let association = sqlx::query(
        "SELECT ts, not_before, not_after FROM identity_associations
         WHERE medium = $1 AND address = $2",
    )
    .bind(medium)
    .bind(address)
    .fetch_one(&mut **tx)
    .await?;
    let ts: i64 = association.try_get("ts")?;
    let not_before: i64 = association.try_get("not_before")?;
    let not_after: i64 = association.try_get("not_after")?;

    let mut entries = Vec::with_capacity(invites.len());
    for invite in &invites {
        let token: String = invite.try_get("token")?;
        let mut signed = json!({ "mxid": mxid, "token": token });
        sign_json(&mut signed, state.server_name.as_str(), &state.signing_key)
            .map_err(MatrixError::internal)?;
        entries.push(json!({
            "medium": invite.try_get::<String, _>("medium")?,
            "address": invite.try_get::<String, _>("address")?,
            "mxid": mxid,
            "room_id": invite.try_get::<String, _>("room_id")?,
            "sender": invite.try_get::<String, _>("sender")?,
            "token": token,
            "signed": signed,
        }));
    }
    // What Sydent posts: the association, `invites` included, signed whole.
    let mut body = json!({
        "medium": medium,
        "address": address,
        "mxid": mxid,
        "ts": ts,
        "not_before": not_before,
        "not_after": not_after,
        "invites": entries,
    });
    sign_json(&mut body, state.server_name.as_str(), &state.signing_key)
        .map_err(MatrixError::internal)?;
    outbox::enqueue(tx, mxid.server_name(), &body).await?;
    sqlx::query("DELETE FROM identity_invites WHERE medium = $1 AND address = $2")
        .bind(medium)
        .bind(address)
        .execute(&mut **tx)
        .await?;
    tracing::info!(
        invites = invites.len(),
        destination = %mxid.server_name(),
        "onbind callback queued"
    );
    Ok(())
}

fn ephemeral_key(seed: [u8; 32]) -> SigningKey {
    let version = KeyVersion::parse(EPHEMERAL_KEY_VERSION).expect("a valid key version");
    SigningKey::from_seed(version, seed)
}

/// The address as the room sees it until the invitee joins: each side of
/// the `@` cut to its first characters, as Sydent does (`f...@b...`).
pub(crate) fn redact_address(address: &str) -> String {
    fn redact(part: &str) -> String {
        let count = part.chars().count();
        let keep = if count > REVEALED_CHARACTERS {
            REVEALED_CHARACTERS
        } else if count > 1 {
            1
        } else {
            0
        };
        let kept: String = part.chars().take(keep).collect();
        format!("{kept}...")
    }
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{}@{}", redact(local), redact(domain)),
        None => redact(address),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_redacted_like_sydent() {
        assert_eq!(redact_address("foo@bar.com"), "f...@bar...");
        assert_eq!(redact_address("alice@example.org"), "ali...@exa...");
        assert_eq!(redact_address("a@b.c"), "...@b...");
        assert_eq!(redact_address("émilie@exemple.fr"), "émi...@exe...");
    }

    #[test]
    fn only_configured_web_clients_are_linked() {
        let configured = Some("https://chat.example.org/");
        assert_eq!(web_client_location(None, Some("https://evil.test")), None);
        assert_eq!(
            web_client_location(configured, None).as_deref(),
            Some("https://chat.example.org")
        );
        assert_eq!(
            web_client_location(configured, Some("https://chat.example.org/beta/")).as_deref(),
            Some("https://chat.example.org/beta")
        );
        for other in [
            "https://evil.test",
            "https://chat.example.org.evil.test",
            "https://chat.example.orgx/",
        ] {
            assert_eq!(
                web_client_location(configured, Some(other)).as_deref(),
                Some("https://chat.example.org"),
                "{other}"
            );
        }
    }

    #[test]
    fn private_keys_decode_in_either_alphabet() {
        let seed = [0xfbu8; 32];
        let key = ephemeral_key(seed);
        let standard = hearth_core::base64::encode(seed);
        assert!(standard.contains('+') || standard.contains('/'));
        for text in [
            standard.clone(),
            standard.replace('+', "-").replace('/', "_"),
            format!("{standard}="),
        ] {
            let decoded = decode_private_key(&text).expect("decodes");
            assert_eq!(decoded.public_key_base64(), key.public_key_base64());
        }
        let mut libsodium = seed.to_vec();
        libsodium.extend(hearth_core::base64::decode(&key.public_key_base64()).unwrap());
        assert!(decode_private_key(&hearth_core::base64::encode(&libsodium)).is_some());
        libsodium[40] ^= 1;
        assert!(decode_private_key(&hearth_core::base64::encode(&libsodium)).is_none());
        assert!(decode_private_key("c2hvcnQ").is_none());
    }
}
