//! Sydent, the reference identity server, from PyPI: the peer Hearth's
//! lookups are measured against.
//!
//! The virtualenv lives in `target/peers/sydent` and survives between runs,
//! like the test peers'; each bench run gets a fresh data directory.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::data::{BOUND_PREFIX, DOMAIN, MEDIUM};
use super::server::Server;
use super::{BENCH_USER, READY_TIMEOUT, fresh_dir, loopback, seed};
use crate::python::ensure_venv_module;
use crate::{output, run_visible};

/// Pinned, so a new release cannot change what Hearth is compared with.
const REQUIREMENTS: &[(&str, &str)] = &[
    // The last Apache-2.0 release.
    ("matrix-sydent", "2.6.1"),
    // Only an optional extra upstream ("prometheus"), yet `sydent.sydent`
    // imports it unconditionally: without it Sydent does not start.
    ("prometheus-client", "0.26.0"),
    // Sydent asks only for twisted>=18.4.0; this one starts it on Python
    // 3.11, and a future one might not.
    ("Twisted", "26.10.0"),
];
const BASE_PYTHON: &str = "python3";
/// Sydent's own name, also the domain of the bench user's ID.
const SERVER_NAME: &str = "localhost";

/// An installed Sydent.
#[derive(Debug)]
pub(crate) struct Sydent {
    python: PathBuf,
}

impl Sydent {
    /// Makes sure the virtualenv holds exactly the pinned versions.
    pub(crate) fn setup(root: &Path) -> Result<Self> {
        let dir = root.join("target/peers/sydent");
        let sydent = Self {
            python: dir.join("bin/python"),
        };
        if sydent.is_current() {
            eprintln!("xtask: reusing the Sydent virtualenv in {}", dir.display());
        } else {
            sydent.create(&dir)?;
        }
        Ok(sydent)
    }

    /// The virtualenv's interpreter, which also seeds the databases: it has
    /// Sydent's own hash function at hand.
    pub(crate) fn python(&self) -> &Path {
        &self.python
    }

    pub(crate) fn version(&self) -> &'static str {
        REQUIREMENTS[0].1
    }

    /// What was measured: the pinned distributions and the interpreter.
    pub(crate) fn description(&self) -> Result<String> {
        let python = output(Command::new(&self.python).arg("--version"))?;
        let pins: Vec<String> = REQUIREMENTS
            .iter()
            .map(|(name, version)| format!("{name} {version}"))
            .collect();
        Ok(format!(
            "Sydent {} ({}) on {}",
            self.version(),
            pins.join(", "),
            python.trim()
        ))
    }

    fn is_current(&self) -> bool {
        if !self.python.is_file() {
            return false;
        }
        let installed = output(
            Command::new(&self.python)
                .arg("-c")
                .arg(VERSIONS_SCRIPT)
                .args(REQUIREMENTS.iter().map(|(name, _)| *name)),
        );
        installed.is_ok_and(|text| text.lines().eq(REQUIREMENTS.iter().map(|(_, v)| *v)))
    }

    fn create(&self, dir: &Path) -> Result<()> {
        ensure_venv_module()?;
        eprintln!("xtask: creating the Sydent virtualenv in {}", dir.display());
        if dir.exists() {
            fs::remove_dir_all(dir)
                .with_context(|| format!("could not remove {}", dir.display()))?;
        }
        output(Command::new(BASE_PYTHON).args(["-m", "venv"]).arg(dir))?;
        let pins: Vec<String> = REQUIREMENTS
            .iter()
            .map(|(name, version)| format!("{name}=={version}"))
            .collect();
        eprintln!("xtask: installing {} from PyPI", pins.join(" "));
        run_visible(
            Command::new(&self.python)
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                .args(&pins),
        )?;
        if !self.is_current() {
            bail!(
                "the virtualenv in {} still lacks {}",
                dir.display(),
                pins.join(" ")
            );
        }
        Ok(())
    }
}

/// Prints the installed version of each distribution named in argv, one per
/// line, after checking that Sydent imports.
const VERSIONS_SCRIPT: &str = "\
import importlib.metadata, sys
import sydent.sydent
for name in sys.argv[1:]:
    print(importlib.metadata.version(name))
";

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
            python: sydent.python.clone(),
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
