//! `hearth keys`: the signing key file and the retired keys in the database,
//! through `hearth_core::keys::KeyRing`, which holds the retirement and
//! key-id rules.

use crate::config::Config;
use crate::serve::open_database;
use anyhow::bail;
use hearth_core::keys::{KeyRing, SigningKey};
use std::io::Write;
use std::path::Path;

pub(crate) async fn generate(config: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    let (db, _) = open_database(config).await?;
    let key = KeyRing::generate(&config.signing_key_path(), &db).await?;
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
    let (db, _) = open_database(config).await?;
    KeyRing::import(&config.signing_key_path(), &db, imported.clone()).await?;
    for key in &imported {
        writeln!(out, "imported {} {}", key.key_id(), key.public_key_base64())?;
    }
    db.close().await;
    Ok(())
}

pub(crate) async fn show(config: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    let (db, _) = open_database(config).await?;
    let ring = KeyRing::load(&config.signing_key_path(), &db).await?;
    db.close().await;
    if ring.current.is_empty() {
        writeln!(
            out,
            "no signing key yet at {} (one is made at first start)",
            config.signing_key_path().display()
        )?;
    }
    for key in &ring.current {
        writeln!(out, "current {} {}", key.key_id(), key.public_key_base64())?;
    }
    for old in &ring.old {
        writeln!(
            out,
            "old     {} {} expired_ts={}",
            old.key_id, old.key, old.expired_ts
        )?;
    }
    Ok(())
}

pub(crate) fn export(config: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    let path = config.signing_key_path();
    if !path.exists() {
        bail!("no signing key at {}", path.display());
    }
    for key in SigningKey::read_synapse_file(&path)? {
        out.write_all(key.to_synapse_line().as_bytes())?;
    }
    Ok(())
}
