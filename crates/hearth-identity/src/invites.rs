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
use crate::params::Body;
use crate::threepid::{self, EMAIL};
use crate::{IdentityState, outbox};
use axum::extract::State;
use hearth_auth::TermsAccepted;
use hearth_core::http::{Query, percent_encode};
use hearth_core::ids::UserId;
use hearth_core::keys::{KeyVersion, SigningKey};
use hearth_core::signed_json::sign_json;
use hearth_core::storage::Backend;
use hearth_core::time::now_ms;
use hearth_core::{ErrCode, Json, MatrixError, Redacted};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::Row;

/// Characters of each half of the address `display_name` reveals (Sydent's
/// `third_party_invite_{username,domain}_obfuscate_characters`).
const REVEALED_CHARACTERS: usize = 3;
/// Sydent signs with ephemeral keys under this key id.
const EPHEMERAL_KEY_VERSION: &str = "0";
/// Where the mailed `signurl` points (decision 0006): matrix-js-sdk's
/// `joinRoom(room, {inviteSignUrl})` POSTs it with `mxid` added to the
/// query, no body and no token, so it cannot be v2 `/sign-ed25519`.
pub(crate) const MAILED_SIGN_PATH: &str = "/_hearth/identity/v1/sign-ed25519";

/// `POST /store-invite` (spec "Invitation storage"). Every field, extra
/// keys included, reaches the invite mail's template.
#[derive(Debug, Deserialize)]
pub(crate) struct StoreInviteRequest {
    medium: String,
    address: Redacted<String>,
    room_id: String,
    sender: String,
    room_alias: Option<String>,
    room_avatar_url: Option<String>,
    room_join_rules: Option<String>,
    room_name: Option<String>,
    room_type: Option<String>,
    sender_display_name: Option<String>,
    sender_avatar_url: Option<String>,
    /// Synapse's `email.invite_client_location`.
    #[serde(rename = "org.matrix.web_client_location")]
    web_client_location: Option<String>,
    /// "Arbitrary extra keys allowed (for templating)".
    #[serde(flatten)]
    extra: Redacted<Map<String, Value>>,
}

#[derive(Serialize)]
pub(crate) struct StoreInviteResponse {
    token: String,
    public_keys: Vec<PublicKey>,
    /// Synapse falls back to this (with `/pubkey/isvalid`) when
    /// `public_keys` is absent; Sydent still sends it.
    public_key: String,
    display_name: String,
}

#[derive(Serialize)]
struct PublicKey {
    public_key: String,
    key_validity_url: String,
}

/// `POST /store-invite`.
pub(crate) async fn store_invite(
    State(state): State<IdentityState>,
    TermsAccepted(user): TermsAccepted,
    Body(request): Body<StoreInviteRequest>,
) -> Result<Json<StoreInviteResponse>, MatrixError> {
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
    let email = threepid::email(request.address.expose())?;
    let address = email.canonical;
    // Bindings made before addresses were case-folded are stored
    // lower-cased; either form is the same person.
    let bound = sqlx::query(
        "SELECT mxid FROM identity_associations
         WHERE medium = $1 AND (address = $2 OR address = $3)",
    )
    .bind(EMAIL)
    .bind(&address)
    .bind(email.lower.as_deref().unwrap_or(&address))
    .fetch_optional(state.db.pool())
    .await?;
    if let Some(row) = bound {
        let mxid: String = row.try_get("mxid")?;
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrCode::THREEPID_IN_USE,
            "Binding already known",
        )
        .with("mxid", mxid));
    }

    let token = hearth_core::random::token::<48>();
    let seed = hearth_core::random::bytes::<32>();
    let ephemeral = ephemeral_key(seed);
    let ephemeral_public = ephemeral.public_key_base64();
    store(&state, &request, &address, &token, &ephemeral_public).await?;

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
    Ok(Json(StoreInviteResponse {
        token,
        public_keys: vec![
            PublicKey {
                public_key: long_term.clone(),
                key_validity_url: format!("{base}/pubkey/isvalid"),
            },
            PublicKey {
                public_key: ephemeral_public,
                key_validity_url: format!("{base}/pubkey/ephemeral/isvalid"),
            },
        ],
        public_key: long_term,
        display_name: redact_address(&address),
    }))
}

/// Checks the sender's and the recipient's limits and stores the invite,
/// as one step: the count and the insert happen under a lock on the
/// invites (SQLite's write lock, a PostgreSQL table lock), so concurrent
/// requests cannot all pass the same count. Counted in the database, so
/// every instance sharing it agrees.
async fn store(
    state: &IdentityState,
    request: &StoreInviteRequest,
    address: &str,
    token: &str,
    ephemeral_public: &str,
) -> Result<(), MatrixError> {
    let invites = &state.config.invites;
    let now = now_ms();
    let mut tx = match state.db.backend() {
        Backend::Sqlite => state.db.pool().begin_with("BEGIN IMMEDIATE").await?,
        Backend::Postgres => {
            let mut tx = state.db.pool().begin().await?;
            sqlx::query("LOCK TABLE identity_invites IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            tx
        }
    };
    for (column, value, limit, period) in [
        (
            "sender",
            request.sender.as_str(),
            invites.per_sender_limit,
            invites.per_sender_period,
        ),
        (
            "address",
            address,
            invites.per_recipient_limit,
            invites.per_recipient_period,
        ),
    ] {
        if limit == 0 {
            continue;
        }
        let window = period.as_millis_i64().max(1);
        let since = now - window;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n, MIN(created_ts) AS oldest FROM identity_invites
             WHERE {column} = $1 AND created_ts > $2"
        )))
        .bind(value)
        .bind(since)
        .fetch_one(&mut *tx)
        .await?;
        let count: i64 = row.try_get("n")?;
        if count >= i64::from(limit) {
            let oldest: Option<i64> = row.try_get("oldest")?;
            let wait = oldest.map_or(window, |t| t - since).max(1);
            tracing::info!(limit = column, "third-party invite refused: over the limit");
            return Err(MatrixError::limit_exceeded(
                u64::try_from(wait).unwrap_or(1),
            ));
        }
    }
    sqlx::query(
        "INSERT INTO identity_invites
         (token, medium, address, room_id, sender, created_ts, ephemeral_public_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(token)
    .bind(EMAIL)
    .bind(address)
    .bind(&request.room_id)
    .bind(&request.sender)
    .bind(now)
    .bind(ephemeral_public)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO identity_ephemeral_keys (public_key, created_ts) VALUES ($1, $2)")
        .bind(ephemeral_public)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// What the invite mail is written from (see `crate::email`): every field
/// of the request as sent (also whole, as `request`, for keys that are not
/// names, such as `org.matrix.web_client_location`), the spec's names for
/// some of them (`inviter_name`, `room_avatar`), and what only the invitee
/// receives: the `token`, the `ephemeral_private_key`, the `sign_url` that
/// uses both, and the `invite_link` to the web client.
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
    let private_key = hearth_core::base64::encode_url_safe(seed);
    let sign_url = format!(
        "{}{MAILED_SIGN_PATH}?token={}&private_key={}",
        state.public_base_url.trim_end_matches('/'),
        percent_encode(token),
        percent_encode(&private_key),
    );
    let invite_link = location
        .as_deref()
        .map(|location| invite_link(location, request, address, &sign_url));
    let mut fields = request.extra.expose().clone();
    for (name, value) in [
        ("medium", Some(request.medium.as_str())),
        ("address", Some(address)),
        ("room_id", Some(request.room_id.as_str())),
        ("sender", Some(request.sender.as_str())),
        ("room_alias", request.room_alias.as_deref()),
        ("room_avatar_url", request.room_avatar_url.as_deref()),
        ("room_join_rules", request.room_join_rules.as_deref()),
        ("room_name", request.room_name.as_deref()),
        ("room_type", request.room_type.as_deref()),
        (
            "sender_display_name",
            request.sender_display_name.as_deref(),
        ),
        ("sender_avatar_url", request.sender_avatar_url.as_deref()),
        (
            "org.matrix.web_client_location",
            request.web_client_location.as_deref(),
        ),
    ] {
        fields.insert(name.to_owned(), value.map_or(Value::Null, Value::from));
    }
    let mut context = fields.clone();
    context.insert("request".to_owned(), Value::Object(fields));
    for (name, value) in [
        (
            "inviter_name",
            Some(
                request
                    .sender_display_name
                    .as_deref()
                    .unwrap_or(&request.sender),
            ),
        ),
        ("room_avatar", request.room_avatar_url.as_deref()),
        ("token", Some(token)),
        ("ephemeral_private_key", Some(private_key.as_str())),
        ("sign_url", Some(sign_url.as_str())),
        ("web_client_location", location.as_deref()),
        ("invite_link", invite_link.as_deref()),
    ] {
        context.insert(name.to_owned(), value.map_or(Value::Null, Value::from));
    }
    Value::Object(context)
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

#[derive(Debug, Deserialize)]
pub(crate) struct SignRequest {
    mxid: UserId,
    token: Redacted<String>,
    private_key: Redacted<String>,
}

/// `{mxid, sender, token}` signed with the ephemeral key.
#[derive(Serialize)]
pub(crate) struct SignedInvite {
    mxid: UserId,
    sender: String,
    token: String,
    signatures: Value,
}

/// `POST /sign-ed25519` (spec "Ephemeral invitation signing"): signs
/// `{mxid, sender, token}` with the ephemeral private key the invitee
/// received, as the spec has it: a token, accepted terms, a JSON body.
pub(crate) async fn sign_ed25519(
    State(state): State<IdentityState>,
    _: TermsAccepted,
    Body(request): Body<SignRequest>,
) -> Result<Json<SignedInvite>, MatrixError> {
    sign(&state, request, false).await.map(Json)
}

/// The mailed `signurl` (decision 0006): `token` and `private_key` in its
/// query, `mxid` added by matrix-js-sdk's `joinRoom`, which POSTs it with
/// no body and no token. Holding both halves of the mail is the
/// credential: the private key must be the one handed out with this
/// invite. A body, if any, is ignored.
pub(crate) async fn sign_mailed(
    State(state): State<IdentityState>,
    Query(request): Query<SignRequest>,
) -> Result<Json<SignedInvite>, MatrixError> {
    sign(&state, request, true).await.map(Json)
}

async fn sign(
    state: &IdentityState,
    request: SignRequest,
    own_key_only: bool,
) -> Result<SignedInvite, MatrixError> {
    let key = decode_private_key(request.private_key.expose()).ok_or_else(|| {
        MatrixError::invalid_param("private_key is not an unpadded base64 ed25519 key")
    })?;
    let unknown = || {
        MatrixError::new(
            StatusCode::NOT_FOUND,
            ErrCode::UNRECOGNIZED,
            "Didn't recognize token",
        )
    };
    let row =
        sqlx::query("SELECT sender, ephemeral_public_key FROM identity_invites WHERE token = $1")
            .bind(request.token.expose())
            .fetch_optional(state.db.pool())
            .await?
            .ok_or_else(unknown)?;
    let sender: String = row.try_get("sender")?;
    if own_key_only {
        // Invites imported from Sydent have no key on record: any key
        // this service handed out will do for them.
        let expected: Option<String> = row.try_get("ephemeral_public_key")?;
        let public = key.public_key_base64();
        let handed_out = match expected {
            Some(expected) => crate::pubkey::normalise_key(&expected) == public,
            None => {
                sqlx::query("SELECT public_key FROM identity_ephemeral_keys WHERE public_key = $1")
                    .bind(&public)
                    .fetch_optional(state.db.pool())
                    .await?
                    .is_some()
            }
        };
        if !handed_out {
            return Err(unknown());
        }
    }
    let mut invite = SignedInvite {
        mxid: request.mxid,
        sender,
        token: request.token.into_inner(),
        signatures: Value::Null,
    };
    let mut signed = serde_json::to_value(&invite).map_err(MatrixError::internal)?;
    if let Some(fields) = signed.as_object_mut() {
        fields.remove("signatures");
    }
    sign_json(&mut signed, state.server_name.as_str(), &key).map_err(MatrixError::internal)?;
    invite.signatures = signed["signatures"].take();
    Ok(invite)
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
        let signed = signed_value(
            state,
            &Signed {
                mxid,
                token: &token,
            },
        )?;
        entries.push(OnbindInvite {
            medium: invite.try_get("medium")?,
            address: invite.try_get("address")?,
            mxid,
            room_id: invite.try_get("room_id")?,
            sender: invite.try_get("sender")?,
            token,
            signed,
        });
    }
    // What Sydent posts: the association, `invites` included, signed whole.
    let body = signed_value(
        state,
        &Onbind {
            medium,
            address,
            mxid,
            ts,
            not_before,
            not_after,
            invites: entries,
        },
    )?;
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

/// The `onbind` body (Server-Server API "Third-party invites"), as Sydent
/// sends it: the association with its pending invites.
#[derive(Serialize)]
struct Onbind<'a> {
    medium: &'a str,
    address: &'a str,
    mxid: &'a UserId,
    ts: i64,
    not_before: i64,
    not_after: i64,
    invites: Vec<OnbindInvite<'a>>,
}

#[derive(Serialize)]
struct OnbindInvite<'a> {
    medium: String,
    address: String,
    mxid: &'a UserId,
    room_id: String,
    sender: String,
    token: String,
    /// A signed [`Signed`].
    signed: Value,
}

/// What the homeserver puts in `third_party_invite.signed`.
#[derive(Serialize)]
struct Signed<'a> {
    mxid: &'a UserId,
    token: &'a str,
}

/// `value` as JSON, signed with the long-term key.
fn signed_value(state: &IdentityState, value: &impl Serialize) -> Result<Value, MatrixError> {
    let mut json = serde_json::to_value(value).map_err(MatrixError::internal)?;
    sign_json(&mut json, state.server_name.as_str(), &state.signing_key)
        .map_err(MatrixError::internal)?;
    Ok(json)
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

    /// Issue 6 item 8: the invitee's address, extra keys, the token and
    /// the ephemeral private key never show in `Debug`.
    #[test]
    fn requests_redact_secrets_and_3pids() {
        let store: StoreInviteRequest = crate::params::parse(serde_json::json!({
            "medium": "email", "address": "invitee@example.org", "room_id": "!r:hs.test",
            "sender": "@a:hs.test", "custom": "private-extra",
        }))
        .unwrap();
        let sign: SignRequest = crate::params::parse(serde_json::json!({
            "mxid": "@a:hs.test", "token": "invite-t0ken", "private_key": "priv-k3y",
        }))
        .unwrap();
        let shown = format!("{store:?} {sign:?}");
        for secret in [
            "invitee@example.org",
            "private-extra",
            "invite-t0ken",
            "priv-k3y",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

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
