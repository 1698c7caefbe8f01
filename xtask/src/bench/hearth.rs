//! Hearth as an operator runs it: the release binary, configured through
//! `HEARTH_*` variables, its database migrated by `hearth migrate` and then
//! seeded while it is stopped.

use std::env;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

use super::data::{BOUND_PREFIX, DOMAIN, MEDIUM, token_hash};
use super::server::Server;
use super::{BENCH_USER, fresh_dir, loopback, seed};
use crate::output;

/// What Hearth logs when the lookup index for a new pepper is built.
pub(crate) const INDEX_BUILT: &str = "built the lookup index for the current pepper";
/// The service the bench token belongs to (`hearth_identity::SERVICE`).
const SERVICE: &str = "identity";

/// One Hearth installation: its directory and listeners.
#[derive(Debug)]
pub(crate) struct HearthSite {
    bin: PathBuf,
    dir: PathBuf,
    pub(crate) addr: SocketAddr,
    admin: SocketAddr,
}

impl HearthSite {
    /// A fresh Hearth in `dir` holding `associations` and a service token
    /// `token`. Seeding goes through `python` (with its sqlite3 module), as
    /// Sydent's does.
    pub(crate) fn prepare(
        bin: &Path,
        dir: &Path,
        python: &Path,
        associations: usize,
        token: &str,
    ) -> Result<Self> {
        fresh_dir(dir)?;
        let site = Self {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            addr: loopback()?,
            admin: loopback()?,
        };
        output(&mut site.command("migrate"))?;
        let database = site.dir.join("data/hearth.db");
        if !database.is_file() {
            bail!(
                "`hearth migrate` made no database at {}",
                database.display()
            );
        }
        eprintln!("xtask: seeding Hearth with {associations} associations");
        seed(
            python,
            &[
                "hearth",
                &database.to_string_lossy(),
                &associations.to_string(),
                BOUND_PREFIX,
                DOMAIN,
                MEDIUM,
                BENCH_USER,
                &token_hash(token),
                SERVICE,
            ],
        )?;
        Ok(site)
    }

    pub(crate) fn start(&self) -> Result<Server> {
        Server::start(
            "Hearth",
            self.command("serve"),
            &self.dir.join("hearth.log"),
        )
    }

    pub(crate) fn version(&self) -> Result<String> {
        Ok(output(&mut self.command("--version"))?.trim().to_owned())
    }

    /// `hearth <subcommand>` with the embedded defaults, except for what the
    /// bench must set; inherited `HEARTH_*` variables are removed, so the
    /// caller's shell cannot change what is measured.
    fn command(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(subcommand).current_dir(&self.dir);
        for (key, _) in env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("HEARTH_") || name == "RUST_LOG" {
                cmd.env_remove(&key);
            }
        }
        cmd.env("NO_COLOR", "1")
            .env("HEARTH_DATA_DIR", self.dir.join("data"))
            .env("HEARTH_HTTP__BIND", format!("[\"{}\"]", self.addr))
            .env("HEARTH_ADMIN__BIND", self.admin.to_string())
            // All load comes from one address; the per-address limit would
            // otherwise be what is measured.
            .env("HEARTH_HTTP__RATE_LIMIT__PER_SECOND", "0")
            // Rotation is by calendar epoch: with the default of a day, a run
            // crossing midnight UTC would see its pepper refused mid-run.
            // The first rotation, at start, still builds the index.
            .env("HEARTH_IDENTITY__PEPPER_ROTATION", "36500d");
        cmd
    }
}
