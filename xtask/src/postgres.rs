//! A throwaway PostgreSQL cluster on loopback, so the storage tests that read
//! `HEARTH_TEST_POSTGRES` run against a real server.
//!
//! The cluster lives in `<peers>/postgres` and survives between runs
//! (initdb is the slow part); the server itself only runs while tests do.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{is_root, output};

/// The variable the tests read; set it to use a server of your own instead.
pub(crate) const URL_VAR: &str = "HEARTH_TEST_POSTGRES";
const PORT_VAR: &str = "HEARTH_TEST_PG_PORT";
/// Far from 5432, so a system server on the machine does not get in the way.
const DEFAULT_PORT: u16 = 55432;
const DATABASE: &str = "hearth_test";
const HOST: &str = "127.0.0.1";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Where Debian puts each major version's server binaries. The `PATH`
/// wrappers from postgresql-common refuse some uses as root, so go direct.
const INSTALL_ROOT: &str = "/usr/lib/postgresql";
/// Longest Unix socket path the kernel accepts (`sun_path` less the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The PostgreSQL the tests use: given by the caller, or a local server we
/// started and stop again when this is dropped.
#[derive(Debug)]
pub(crate) struct Postgres {
    url: String,
    /// Held only so that dropping it stops the server; `None` when the caller
    /// provides the server, which is then theirs to manage.
    _local: Option<Cluster>,
}

impl Postgres {
    /// Uses `HEARTH_TEST_POSTGRES` when set, else starts the local cluster.
    pub(crate) fn setup(root: &Path) -> Result<Self> {
        if let Some(url) = env::var(URL_VAR).ok().filter(|url| !url.is_empty()) {
            eprintln!("xtask: using PostgreSQL from {URL_VAR}");
            return Ok(Self { url, _local: None });
        }
        let cluster = Cluster::prepare(root, port()?)?;
        cluster.start()?;
        cluster.create_database()?;
        let url = format!("postgres://postgres@{HOST}:{}/{DATABASE}", cluster.port);
        eprintln!("xtask: PostgreSQL ready, {URL_VAR}={url}");
        Ok(Self {
            url,
            _local: Some(cluster),
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

fn port() -> Result<u16> {
    match env::var(PORT_VAR) {
        Ok(port) => port
            .parse()
            .with_context(|| format!("{PORT_VAR}={port} is not a port number")),
        Err(_) => Ok(DEFAULT_PORT),
    }
}

/// The cluster directory and how to drive its server.
#[derive(Debug)]
struct Cluster {
    /// Server binaries of one major version, e.g. `/usr/lib/postgresql/15/bin`.
    bin: PathBuf,
    /// The major version, as initdb writes it to `PG_VERSION`.
    version: String,
    dir: PathBuf,
    port: u16,
    /// PostgreSQL refuses to run as root, so root drives it as `postgres`.
    as_postgres: bool,
}

impl Cluster {
    /// Finds or installs PostgreSQL, makes sure the cluster exists and that
    /// no server is left running on it.
    fn prepare(root: &Path, port: u16) -> Result<Self> {
        let as_postgres = is_root()?;
        let bin = match find_bin_dir() {
            Some(bin) => bin,
            None => install(as_postgres)?,
        };
        let version = major_version(&bin)?;
        let cluster = Self {
            bin,
            version,
            dir: crate::peers_dir(root).join("postgres"),
            port,
            as_postgres,
        };
        cluster.make_dirs()?;
        cluster.stop_leftover()?;
        cluster.init()?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn make_dirs(&self) -> Result<()> {
        fs::create_dir_all(self.socket_dir())
            .with_context(|| format!("could not create {}", self.dir.display()))?;
        if !self.as_postgres {
            return Ok(());
        }
        output(
            Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(&self.dir),
        )?;
        // A parent without o+x (a home directory, say) only shows up later as
        // an obscure initdb error, so say what is wrong here.
        let reachable = self.server_cmd("test").arg("-w").arg(&self.dir).status();
        if !reachable.is_ok_and(|status| status.success()) {
            bail!(
                "the postgres user cannot write to {}; make its parent directories world-executable",
                self.dir.display()
            );
        }
        Ok(())
    }

    /// A server from a run that was killed still holds the data directory;
    /// restart it so this run's settings (the port, say) apply.
    fn stop_leftover(&self) -> Result<()> {
        if self.is_running() {
            eprintln!("xtask: stopping a PostgreSQL server left by an earlier run");
            self.stop()?;
        }
        Ok(())
    }

    /// Runs initdb unless a usable cluster is already there. One from another
    /// major version, or a half-written one, is thrown away: it holds no data
    /// worth keeping.
    fn init(&self) -> Result<()> {
        let data = self.data();
        let existing = fs::read_to_string(data.join("PG_VERSION")).ok();
        if existing.as_deref().map(str::trim) == Some(self.version.as_str()) {
            eprintln!(
                "xtask: reusing the PostgreSQL cluster in {}",
                data.display()
            );
            return Ok(());
        }
        if data.exists() {
            fs::remove_dir_all(&data)
                .with_context(|| format!("could not remove {}", data.display()))?;
        }
        eprintln!(
            "xtask: creating a PostgreSQL {} cluster in {}",
            self.version,
            data.display()
        );
        output(
            self.server_cmd(self.bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale"])
                // Durability is pointless for a throwaway cluster.
                .arg("--no-sync"),
        )?;
        Ok(())
    }

    fn start(&self) -> Result<()> {
        if self.is_ready() {
            bail!(
                "something already listens on {HOST}:{}; set {PORT_VAR} to a free port",
                self.port
            );
        }
        eprintln!("xtask: starting PostgreSQL on {HOST}:{}", self.port);
        // A fresh log, so the tail shown on failure is about this start.
        let _ = fs::remove_file(self.log());
        let started = output(
            self.pg_ctl("start")
                .args(["-w", "-t", &READY_TIMEOUT.as_secs().to_string()])
                .arg("-l")
                .arg(self.log())
                .arg("-o")
                .arg(self.server_options()),
        );
        if let Err(error) = started {
            bail!("{error:#}\n{}", self.log_tail());
        }
        self.wait_ready()
    }

    /// Options for the server, passed through pg_ctl's shell.
    fn server_options(&self) -> String {
        let socket_dir = self.socket_dir().to_string_lossy().into_owned();
        let socket_path = format!("{socket_dir}/.s.PGSQL.{}", self.port);
        // PostgreSQL will not start with a socket path the kernel rejects, and
        // the tests only use TCP, so a deep checkout just goes without one.
        let socket_dir = if socket_path.len() <= MAX_SOCKET_PATH {
            socket_dir
        } else {
            String::new()
        };
        // fsync and friends: durability is pointless here and slows tests.
        // max_connections: each parallel test process opens its own pool.
        format!(
            "-c listen_addresses={HOST} -p {port} -k {socket_dir} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=200",
            port = self.port,
            socket_dir = shell_quote(&socket_dir),
        )
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.is_ready() {
            if Instant::now() > deadline {
                bail!(
                    "PostgreSQL did not accept connections on {HOST}:{} within {}s\n{}",
                    self.port,
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    fn create_database(&self) -> Result<()> {
        let query = format!("SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'");
        if output(self.psql().arg("-tAc").arg(query))?.trim() == "1" {
            return Ok(());
        }
        eprintln!("xtask: creating database {DATABASE}");
        output(
            self.psql()
                .arg("-c")
                .arg(format!("CREATE DATABASE {DATABASE}")),
        )?;
        Ok(())
    }

    fn stop(&self) -> Result<()> {
        output(self.pg_ctl("stop").args(["-m", "fast", "-w"]))?;
        Ok(())
    }

    fn is_running(&self) -> bool {
        // Exit status 0 means running; 3 not running; 4 no data directory.
        succeeds(&mut self.pg_ctl("status"))
    }

    fn is_ready(&self) -> bool {
        succeeds(
            Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", HOST, "-p"])
                .arg(self.port.to_string()),
        )
    }

    fn pg_ctl(&self, action: &str) -> Command {
        let mut cmd = self.server_cmd(self.bin.join("pg_ctl"));
        cmd.arg(action).arg("-D").arg(self.data());
        cmd
    }

    fn psql(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        // -X: a ~/.psqlrc must not change what the output looks like.
        cmd.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            HOST,
            "-U",
            "postgres",
        ])
        .args(["-d", "postgres", "-p"])
        .arg(self.port.to_string());
        cmd
    }

    /// A command that touches the data directory, run as its owner.
    fn server_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        // The caller's directory may be closed to `postgres`; ours is not.
        cmd.current_dir(&self.dir);
        cmd
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("{} (last lines):\n{tail}", self.log().display())
    }
}

/// Always stop the server we started, whether the tests passed, failed or
/// this process is unwinding from an error.
impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.is_running() {
            return;
        }
        eprintln!("xtask: stopping PostgreSQL");
        if let Err(error) = self.stop() {
            eprintln!("xtask: warning: {error:#}");
        }
    }
}

/// The newest installed server, as `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(INSTALL_ROOT)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = version_key(&entry.file_name().to_string_lossy())?;
            let bin = entry.path().join("bin");
            let complete = bin.join("initdb").is_file() && bin.join("pg_ctl").is_file();
            complete.then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// `"15"` → `[15]`, `"9.6"` → `[9, 6]`, so versions sort numerically.
fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn major_version(bin: &Path) -> Result<String> {
    bin.parent()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .with_context(|| format!("no version in {}", bin.display()))
}

/// Installs Debian's PostgreSQL; only root may, so others get told what to do.
fn install(as_root: bool) -> Result<PathBuf> {
    if !as_root {
        bail!(
            "no PostgreSQL server in {INSTALL_ROOT}; install the postgresql package, \
             or set {URL_VAR} to a server of your own"
        );
    }
    eprintln!("xtask: PostgreSQL not found");
    crate::debian::install("postgresql")?;
    find_bin_dir().with_context(|| format!("apt-get installed no server into {INSTALL_ROOT}"))
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Quotes for `sh`, which pg_ctl hands the server options to.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::{shell_quote, version_key};

    #[test]
    fn versions_sort_numerically() {
        assert!(version_key("10") > version_key("9.6"));
        assert_eq!(version_key("main"), None);
    }

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
