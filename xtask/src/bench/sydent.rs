//! A Sydent installation to measure Hearth's lookups against: a fresh data
//! directory per bench run, seeded while Sydent is stopped. Sydent itself
//! (the pinned virtualenv in `<peers>/sydent`) comes from
//! `crate::sydent`, shared with the end-to-end suite.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use super::data::{BOUND_PREFIX, DOMAIN, MEDIUM};
use super::server::Server;
use super::{BENCH_USER, READY_TIMEOUT, fresh_dir, loopback, seed};
use crate::sydent::Sydent;

/// Sydent's own name, also the domain of the bench user's ID.
const SERVER_NAME: &str = "localhost";

/// One Sydent installation: its directory, config, database and port.
#[derive(Debug)]
pub(crate) struct SydentSite {
    python: PathBuf,
    dir: PathBuf,
    pub(crate) addr: SocketAddr,
}

impl SydentSite {
    /// A fresh Sydent in `dir` holding `associations` and an account whose
    /// token is `token`. Sydent makes its schema and its pepper at its first
    /// start, so it is started once, stopped, then seeded.
    pub(crate) fn prepare(
        sydent: &Sydent,
        dir: &Path,
        associations: usize,
        token: &str,
    ) -> Result<Self> {
        fresh_dir(dir)?;
        let site = Self {
            python: sydent.python().to_path_buf(),
            dir: dir.to_path_buf(),
            addr: loopback()?,
        };
        fs::write(site.config_path(), site.config())?;
        eprintln!("xtask: starting Sydent once, to create its schema and pepper");
        let mut server = site.start()?;
        server.wait_for_port(site.addr, READY_TIMEOUT)?;
        server.stop()?;
        drop(server);
        eprintln!("xtask: seeding Sydent with {associations} associations");
        let database = site.database();
        let count = associations.to_string();
        seed(
            &site.python,
            &[
                "sydent",
                &database.to_string_lossy(),
                &count,
                BOUND_PREFIX,
                DOMAIN,
                MEDIUM,
                BENCH_USER,
                token,
            ],
        )?;
        Ok(site)
    }

    pub(crate) fn start(&self) -> Result<Server> {
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "sydent.sydent"])
            .env("SYDENT_CONF", self.config_path())
            .current_dir(&self.dir);
        Server::start("Sydent", cmd, &self.dir.join("sydent.log"))
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("sydent.conf")
    }

    fn database(&self) -> PathBuf {
        self.dir.join("sydent.db")
    }

    /// Sydent's defaults except where it must listen and keep its files;
    /// no terms, so tokens work without accepting any. It adds its signing
    /// key to this file at first start.
    fn config(&self) -> String {
        format!(
            "[general]\n\
             server.name = {SERVER_NAME}\n\
             pidfile.path = {pidfile}\n\
             \n\
             [db]\n\
             db.file = {database}\n\
             \n\
             [http]\n\
             clientapi.http.bind_address = {ip}\n\
             clientapi.http.port = {port}\n\
             \n\
             [email]\n\
             \n\
             [sms]\n\
             \n\
             [crypto]\n",
            pidfile = self.dir.join("sydent.pid").display(),
            database = self.database().display(),
            ip = self.addr.ip(),
            port = self.addr.port(),
        )
    }
}
