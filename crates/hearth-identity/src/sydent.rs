//! Moving a Sydent deployment to Hearth: bindings, pending invites and the
//! ephemeral invite keys from `sydent.db`, and the signing key from
//! `sydent.conf` (which the binary makes Hearth's key, so signatures Sydent
//! made stay valid).

use crate::lookup;
use crate::threepid::canonical;
use hearth_core::keys::{KeyError, SigningKey};
use hearth_core::storage::Database;
use hearth_core::time::now_ms;
use sqlx::Row;
use sqlx::any::AnyPoolOptions;
use std::path::Path;

/// What an import brought over.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SydentImport {
    pub associations: u64,
    pub invites: u64,
    pub ephemeral_keys: u64,
    /// Rows that could not be used (an invalid address or Matrix ID).
    pub skipped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SydentError {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("writing Hearth's database: {0}")]
    Write(#[source] sqlx::Error),
    #[error("updating the lookup change log: {0}")]
    Lookup(String),
    #[error("reading Sydent's config {path}: {source}")]
    Config {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no [crypto] ed25519.signingkey")]
    NoSigningKey(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Sydent's signing key, from `[crypto] ed25519.signingkey` in its config,
/// in the same `ed25519 <version> <seed>` form as Synapse's key file. The
/// config is Python's INI dialect: `=` or `:` between key and value, keys
/// in any case.
pub fn sydent_signing_key(conf: &Path) -> Result<Vec<SigningKey>, SydentError> {
    let path = conf.display().to_string();
    let text = std::fs::read_to_string(conf).map_err(|source| SydentError::Config {
        path: path.clone(),
        source,
    })?;
    let mut section = "";
    let mut value = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim();
        } else if section.eq_ignore_ascii_case("crypto")
            && let Some((key, v)) = line.split_once(['=', ':'])
            && key.trim().eq_ignore_ascii_case("ed25519.signingkey")
        {
            value = Some(v.trim());
        }
    }
    let value = value.ok_or_else(|| SydentError::NoSigningKey(path.clone()))?;
    Ok(SigningKey::parse_synapse(value, &path)?)
}

/// Copies Sydent's local bindings, its invites for addresses that are not
/// bound yet and still valid, and its ephemeral keys. A Hearth binding of
/// the same 3PID is replaced only by a newer Sydent one, so running the
/// import again does no harm; but a binding removed in Hearth since would
/// come back, so import once, when switching over.
pub async fn import_sydent(db: &Database, sydent_db: &Path) -> Result<SydentImport, SydentError> {
    let path = sydent_db.display().to_string();
    if !sydent_db.is_file() {
        return Err(SydentError::NotFound(path));
    }
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}?mode=ro", sydent_db.display());
    let sydent = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .map_err(|source| SydentError::Read {
            path: path.clone(),
            source,
        })?;
    let read = |source| SydentError::Read {
        path: path.clone(),
        source,
    };
    let write = SydentError::Write;
    let mut report = SydentImport::default();

    // Deleted bindings are rows with a NULL mxid in older Sydent schemas.
    let bindings = sqlx::query(
        "SELECT medium, address, mxid, ts, notBefore, notAfter FROM local_threepid_associations
         WHERE mxid IS NOT NULL ORDER BY ts",
    )
    .fetch_all(&sydent)
    .await
    .map_err(read)?;
    let mut tx = db.pool().begin().await.map_err(write)?;
    for row in &bindings {
        let medium: String = row.try_get("medium").map_err(read)?;
        let address: String = row.try_get("address").map_err(read)?;
        let mxid: String = row.try_get("mxid").map_err(read)?;
        let (Ok(address), Ok(_)) = (
            canonical(&medium, &address),
            hearth_core::ids::UserId::parse(&mxid),
        ) else {
            report.skipped += 1;
            continue;
        };
        let ts: i64 = row.try_get("ts").map_err(read)?;
        let not_before: i64 = row.try_get("notBefore").map_err(read)?;
        let not_after: i64 = row.try_get("notAfter").map_err(read)?;
        // A binding made in Hearth since an earlier import is newer: keep it.
        let written = sqlx::query(
            "INSERT INTO identity_associations (medium, address, mxid, ts, not_before, not_after)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (medium, address) DO UPDATE SET mxid = $3, ts = $4, not_before = $5, not_after = $6
             WHERE identity_associations.ts < $4",
        )
        .bind(&medium)
        .bind(&address)
        .bind(&mxid)
        .bind(ts)
        .bind(not_before)
        .bind(not_after)
        .execute(&mut *tx)
        .await
        .map_err(write)?;
        if written.rows_affected() == 0 {
            continue;
        }
        lookup::record_change(&mut tx, &medium, &address, None, Some(&mxid))
            .await
            .map_err(|e| SydentError::Lookup(e.error))?;
        report.associations += 1;
    }

    // `valid_until_ts` exists only in some Sydent forks (schema v8 of the
    // `dinsic` branch); PyPI's Sydent (schema v5) has no invite deadline.
    let has_deadline = sqlx::query(
        "SELECT 1 AS found FROM pragma_table_info('invite_tokens') WHERE name = 'valid_until_ts'",
    )
    .fetch_optional(&sydent)
    .await
    .map_err(read)?
    .is_some();
    let invites = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT medium, address, room_id, sender, token, received_ts, {} AS valid_until_ts FROM invite_tokens",
        if has_deadline { "valid_until_ts" } else { "NULL" }
    )))
    .fetch_all(&sydent)
    .await
    .map_err(read)?;
    let now = now_ms();
    for row in &invites {
        let medium: String = row.try_get("medium").map_err(read)?;
        let address: String = row.try_get("address").map_err(read)?;
        let valid_until: Option<i64> = row.try_get("valid_until_ts").map_err(read)?;
        if valid_until.is_some_and(|t| t < now) {
            continue;
        }
        let Ok(address) = canonical(&medium, &address) else {
            report.skipped += 1;
            continue;
        };
        let bound = sqlx::query(
            "SELECT 1 AS found FROM identity_associations WHERE medium = $1 AND address = $2",
        )
        .bind(&medium)
        .bind(&address)
        .fetch_optional(&mut *tx)
        .await
        .map_err(write)?;
        if bound.is_some() {
            // Sydent keeps delivered invites unless told not to; a bound
            // address has had its invites delivered already.
            continue;
        }
        let received: Option<i64> = row.try_get("received_ts").map_err(read)?;
        let received = received.map(sydent_ms);
        let done = sqlx::query(
            "INSERT INTO identity_invites (token, medium, address, room_id, sender, created_ts)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (token) DO NOTHING",
        )
        .bind(row.try_get::<String, _>("token").map_err(read)?)
        .bind(&medium)
        .bind(&address)
        .bind(row.try_get::<String, _>("room_id").map_err(read)?)
        .bind(row.try_get::<String, _>("sender").map_err(read)?)
        .bind(received.unwrap_or(now))
        .execute(&mut *tx)
        .await
        .map_err(write)?;
        report.invites += done.rows_affected();
    }

    let keys = sqlx::query("SELECT public_key, persistence_ts FROM ephemeral_public_keys")
        .fetch_all(&sydent)
        .await
        .map_err(read)?;
    for row in &keys {
        let key: String = row.try_get("public_key").map_err(read)?;
        let ts: Option<i64> = row.try_get("persistence_ts").map_err(read)?;
        let done = sqlx::query(
            "INSERT INTO identity_ephemeral_keys (public_key, created_ts) VALUES ($1, $2)
             ON CONFLICT (public_key) DO NOTHING",
        )
        .bind(crate::pubkey::normalise_key(&key))
        .bind(ts.map_or(now, sydent_ms))
        .execute(&mut *tx)
        .await
        .map_err(write)?;
        report.ephemeral_keys += done.rows_affected();
    }
    tx.commit().await.map_err(write)?;
    sydent.close().await;
    Ok(report)
}

/// Sydent writes `invite_tokens.received_ts` and
/// `ephemeral_public_keys.persistence_ts` with `int(time.time())`: seconds,
/// where Hearth keeps milliseconds. Values too small to be milliseconds
/// since 1973 are taken as seconds.
fn sydent_ms(ts: i64) -> i64 {
    if ts < 100_000_000_000 {
        ts.saturating_mul(1000)
    } else {
        ts
    }
}
