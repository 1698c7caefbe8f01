//! `hearth keys`: the signing key file and the retired keys in the database.
//! Retiring a key records it with `expired_ts`, so it is still published in
//! `old_verify_keys` and old signatures stay checkable.

use crate::config::Config;
use crate::serve::open_database;
use anyhow::{Context, bail};
use hearth_core::keys::{OldVerifyKey, SigningKey};
use hearth_core::storage::Database;
use hearth_core::time::now_ms;
use std::io::Write;
use std::path::Path;

/// The current keys, creating a first one when the file does not exist.
pub(crate) fn load_or_create(config: &Config) -> anyhow::Result<(Vec<SigningKey>, bool)> {
    let path = config.signing_key_path();
    if path.exists() {
        return Ok((SigningKey::read_synapse_file(&path)?, false));
    }
    let key = SigningKey::generate();
    SigningKey::write_synapse_file(&path, std::slice::from_ref(&key))
        .with_context(|| format!("writing a new signing key to {}", path.display()))?;
    Ok((vec![key], true))
}

fn current(config: &Config) -> anyhow::Result<Vec<SigningKey>> {
    let path = config.signing_key_path();
    if !path.exists() {
        return Ok(Vec::new());
    }
    Ok(SigningKey::read_synapse_file(&path)?)
}

pub(crate) async fn generate(config: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    let db = open_database(config).await?;
    let old = current(config)?;
    let mut key = SigningKey::generate();
    // A fresh version must not reuse an id that ever named another key.
    let taken = taken_ids(&db, &old).await?;
    while taken.contains(&key.key_id()) {
        key = SigningKey::generate();
    }
    replace(config, &db, &old, vec![key.clone()]).await?;
    writeln!(
        out,
        "new signing key {} {}",
        key.key_id(),
        key.public_key_base64()
    )?;
    writeln!(out, "restart Hearth to start signing with it")?;
    db.close().await;
    Ok(())
}

pub(crate) async fn import(
    config: &Config,
    file: &Path,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    import_keys(config, SigningKey::read_synapse_file(file)?, out).await
}

/// Makes `imported` the current keys, retiring the others.
pub(crate) async fn import_keys(
    config: &Config,
    imported: Vec<SigningKey>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let db = open_database(config).await?;
    let old = current(config)?;
    // One key id must always mean one key (synapse#3121, #4012).
    let known = db.old_verify_keys().await?;
    for key in &imported {
        let clash = old.iter().any(|o| {
            o.key_id() == key.key_id() && o.public_key_base64() != key.public_key_base64()
        }) || known
            .iter()
            .any(|o| o.key_id == key.key_id() && o.key != key.public_key_base64());
        if clash {
            bail!(
                "{} already names a different key here; reusing a key id breaks verification of old signatures",
                key.key_id()
            );
        }
    }
    replace(config, &db, &old, imported.clone()).await?;
    for key in &imported {
        writeln!(out, "imported {} {}", key.key_id(), key.public_key_base64())?;
    }
    db.close().await;
    Ok(())
}

pub(crate) async fn show(config: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    let keys = current(config)?;
    if keys.is_empty() {
        writeln!(
            out,
            "no signing key yet at {} (one is made at first start)",
            config.signing_key_path().display()
        )?;
    }
    for key in &keys {
        writeln!(out, "current {} {}", key.key_id(), key.public_key_base64())?;
    }
    let db = open_database(config).await?;
    for old in db.old_verify_keys().await? {
        writeln!(
            out,
            "old     {} {} expired_ts={}",
            old.key_id, old.key, old.expired_ts
        )?;
    }
    db.close().await;
    Ok(())
}

pub(crate) fn export(config: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    let keys = current(config)?;
    if keys.is_empty() {
        bail!("no signing key at {}", config.signing_key_path().display());
    }
    for key in &keys {
        out.write_all(key.to_synapse_line().as_bytes())?;
    }
    Ok(())
}

async fn taken_ids(db: &Database, current: &[SigningKey]) -> anyhow::Result<Vec<String>> {
    let mut ids: Vec<String> = current.iter().map(SigningKey::key_id).collect();
    ids.extend(db.old_verify_keys().await?.into_iter().map(|k| k.key_id));
    Ok(ids)
}

/// Retires the keys in `old` that `new` does not keep, then writes `new`.
/// Retiring first means a crash in between leaves a key published twice,
/// never a key lost.
async fn replace(
    config: &Config,
    db: &Database,
    old: &[SigningKey],
    new: Vec<SigningKey>,
) -> anyhow::Result<()> {
    let now = now_ms();
    for key in old {
        let kept = new.iter().any(|n| n.key_id() == key.key_id());
        if !kept {
            db.add_old_verify_key(&OldVerifyKey {
                key_id: key.key_id(),
                key: key.public_key_base64(),
                expired_ts: now,
            })
            .await?;
        }
    }
    SigningKey::write_synapse_file(&config.signing_key_path(), &new)?;
    Ok(())
}
