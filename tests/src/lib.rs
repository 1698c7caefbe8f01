//! The end-to-end harness: the real `hearth` binary, started as an operator
//! would start it, and the peers it is checked against.
//!
//! - [`hearth_bin`] finds the binary: `HEARTH_BIN` (set by `cargo xtask
//!   test`), else `hearth` beside the test executable's `deps` directory.
//! - A [`Site`] is one installation: a fresh working directory (so embedded
//!   defaults put `./data` there), free loopback ports for the public and
//!   admin listeners, and the environment every command runs with.
//!   [`Site::start`] runs a long-lived command such as `serve` and waits until
//!   the admin `/health` answers; [`Site::run`] runs a command to completion.
//! - [`http_get`] is a minimal HTTP/1.1 client, enough for JSON and headers.
//! - [`python`] is an interpreter with PyPI's `signedjson`, Synapse's own
//!   key-file and signing library (`HEARTH_TEST_PYTHON`).
//! - [`postgres_url`] is the PostgreSQL the suite may use
//!   (`HEARTH_TEST_POSTGRES`).
//! - [`TestCertificate`] is a throwaway CA with a `localhost` certificate,
//!   for Hearth's HTTPS listener; [`HttpClient`] speaks HTTP/1.1 with JSON
//!   bodies and Bearer tokens, plain or over TLS.
//! - [`SmtpCapture`] is PyPI's `aiosmtpd` (in the [`python`] peer) writing
//!   each mail into a Maildir, read back as [`Mail`].
//! - [`Synapse`] is a real homeserver from PyPI's `matrix-synapse`
//!   (`HEARTH_TEST_SYNAPSE_PYTHON`, else `target/peers/synapse`).
//! - [`Sydent`] is a real identity server from PyPI's `matrix-sydent`
//!   (`HEARTH_TEST_SYDENT_PYTHON`, else `target/peers/sydent`), the source
//!   of databases for `hearth identity import-sydent`.
//! - [`FakeHomeserver`] is the least of a homeserver the identity service
//!   needs, without a Synapse: it vouches for OpenID tokens and records
//!   what Hearth sends it (`onbind` callbacks).
//!   [`sha256_lookup_hash`] hashes a 3PID for `/lookup`.
//!
//! Inherited `HEARTH_*` variables are removed from every command's
//! environment, so a developer's shell (or the harness's own `HEARTH_BIN`)
//! never leaks into the config under test.

pub use hearth_testkit::{FakeHomeserver, Mail, Recorded, SmtpCapture, python, sha256_lookup_hash};
use std::cell::Cell;
use std::env;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long a started Hearth may take to answer `/health`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a one-shot command (`keys show`, `migrate`, a Python peer) may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one HTTP exchange may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the harness looks again while it waits for something.
const POLL: Duration = Duration::from_millis(25);

/// Environment variables the harness itself reads, never passed on.
pub const BIN_VAR: &str = "HEARTH_BIN";
pub const PYTHON_VAR: &str = "HEARTH_TEST_PYTHON";
pub const POSTGRES_VAR: &str = "HEARTH_TEST_POSTGRES";

/// The `hearth` binary under test.
///
/// # Panics
/// When it does not exist, saying how to build it.
pub fn hearth_bin() -> PathBuf {
    let bin = match env::var_os(BIN_VAR).filter(|bin| !bin.is_empty()) {
        Some(bin) => PathBuf::from(bin),
        None => {
            // The test runs as target/<profile>/deps/<test>-<hash>; cargo puts
            // the binaries of that profile in target/<profile>.
            let exe = env::current_exe().expect("the test executable's path");
            exe.parent()
                .and_then(Path::parent)
                .expect("the test executable lies in target/<profile>/deps")
                .join(format!("hearth{}", env::consts::EXE_SUFFIX))
        }
    };
    assert!(
        bin.is_file(),
        "no hearth binary at {}: run `cargo build -p hearth` first, or run the suite \
         with `cargo xtask test`, which builds it (or set {BIN_VAR})",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1: bound, read, released. Another process
/// could take it in between, but the kernel hands out ports in turn, so that
/// would take a very busy machine.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("binding a free port on 127.0.0.1")
        .port()
}

/// Polls `done` until it holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------
// Sites and processes.

/// One Hearth installation: a working directory of its own, the ports its
/// listeners use, and the environment its commands run with.
#[derive(Debug)]
pub struct Site {
    dir: TempDir,
    public: SocketAddr,
    admin: SocketAddr,
    env: Vec<(String, OsString)>,
    /// Numbers the log files of processes started here.
    started: Cell<usize>,
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

impl Site {
    /// A fresh empty directory, with the public listener on
    /// `HEARTH_HTTP__BIND` and the admin listener on `HEARTH_ADMIN__BIND`,
    /// both on free loopback ports.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hearth-e2e-")
            .tempdir()
            .expect("creating a temporary directory");
        let public = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut site = Self {
            dir,
            public,
            admin,
            env: Vec::new(),
            started: Cell::new(0),
        };
        site.set_env("HEARTH_HTTP__BIND", format!("[\"{public}\"]"));
        site.set_env("HEARTH_ADMIN__BIND", admin.to_string());
        site
    }

    /// Adds (or replaces) an environment variable for every later command.
    pub fn with_env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.set_env(key, value);
        self
    }

    pub fn set_env(&mut self, key: &str, value: impl Into<OsString>) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.into()));
    }

    /// The working directory, where embedded defaults keep `./data`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    /// Writes `text` to `name` in the working directory; its full path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `hearth <args>` in the working directory, with a clean environment:
    /// inherited `HEARTH_*` and `RUST_LOG` removed, this site's added.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(hearth_bin());
        cmd.args(args).current_dir(self.path()).stdin(Stdio::null());
        for (key, _) in env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("HEARTH_") || name == "RUST_LOG" {
                cmd.env_remove(&key);
            }
        }
        // Plain log lines, whatever the terminal the tests run in.
        cmd.env("NO_COLOR", "1");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `hearth <args>` to completion (at most [`COMMAND_TIMEOUT`]).
    pub fn run(&self, args: &[&str]) -> Output {
        run(self.command(args), None)
    }

    /// Runs `hearth <args>` and insists that it succeeds.
    pub fn run_ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(out.status.success(), "hearth {}: {out}", args.join(" "));
        out
    }

    /// Starts `hearth <args>` and waits until its admin `/health` answers
    /// 200, failing with its log if it does not within [`READY_TIMEOUT`].
    pub fn start(&self, args: &[&str]) -> Hearth {
        let mut hearth = self.spawn(args);
        hearth.wait_healthy(READY_TIMEOUT);
        hearth
    }

    /// Starts `hearth <args>` without waiting for anything.
    pub fn spawn(&self, args: &[&str]) -> Hearth {
        let n = self.started.get() + 1;
        self.started.set(n);
        let log = self.path().join(format!("hearth-{n}.log"));
        let file = File::create(&log).expect("creating the log file");
        let child = self
            .command(args)
            .stdout(file.try_clone().expect("duplicating the log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting hearth {}: {e}", args.join(" ")));
        Hearth {
            child,
            command: format!("hearth {}", args.join(" ")),
            log,
            public: self.public,
            admin: self.admin,
        }
    }
}

/// A running `hearth`. Dropping it kills the process (and prints its log
/// when the test is failing).
#[derive(Debug)]
pub struct Hearth {
    child: Child,
    command: String,
    log: PathBuf,
    public: SocketAddr,
    admin: SocketAddr,
}

impl Hearth {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/health` on the admin listener answers 200.
    ///
    /// # Panics
    /// When the process exits first or `timeout` passes, with its log.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the child") {
                panic!(
                    "{} exited ({status}) before it was healthy; log:\n{}",
                    self.command,
                    self.log()
                );
            }
            if http_get(self.admin, "/health").is_ok_and(|r| r.status == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: /health on {} did not answer 200 within {timeout:?}; log:\n{}",
                self.command,
                self.admin,
                self.log()
            );
            thread::sleep(POLL);
        }
    }

    /// GET `path` on the public listener.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.public, path)
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}; log:\n{}", self.public, self.log()))
    }

    /// GET `path` on the admin listener.
    pub fn admin_get(&self, path: &str) -> HttpResponse {
        http_get(self.admin, path)
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}; log:\n{}", self.admin, self.log()))
    }

    /// Sends SIGTERM, as systemd and container runtimes stop services.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends SIGHUP, as `systemctl reload` and `docker kill -s HUP` do.
    pub fn hangup(&self) {
        self.signal("HUP");
    }

    /// Sends `SIG<name>` with `kill`.
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(
            status.success(),
            "kill -{name} {} failed: {status}",
            self.pid()
        );
    }

    /// Waits for the process to exit; `None` when it is still running after
    /// `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().expect("polling the child");
            status.is_some()
        });
        status
    }

    /// SIGTERM, then the exit status, which must come within `timeout`.
    /// The log stays readable afterwards.
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        self.terminate();
        self.wait_exit(timeout).unwrap_or_else(|| {
            panic!(
                "{} (pid {}) still runs {timeout:?} after SIGTERM; log:\n{}",
                self.command,
                self.pid(),
                self.log()
            )
        })
    }
}

impl Drop for Hearth {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- log of {} (pid {}) ---\n{}",
                self.command,
                self.pid(),
                self.log()
            );
        }
        // Already exited is fine: killing then just fails.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a finished command did.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with `stdin`, capturing its output in files (no pipe can fill
/// up), and kills it if it outlives [`COMMAND_TIMEOUT`].
pub fn run(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    if let Some(input) = stdin {
        let path = dir.path().join("stdin");
        fs::write(&path, input).expect("writing stdin");
        cmd.stdin(File::open(&path).expect("opening stdin"));
    }
    let program = format!("{cmd:?}");
    let mut child = cmd
        .stdout(File::create(&out_path).expect("creating stdout"))
        .stderr(File::create(&err_path).expect("creating stderr"))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    let mut status = None;
    wait_until(COMMAND_TIMEOUT, || {
        status = child.try_wait().expect("polling the child");
        status.is_some()
    });
    let read =
        |path: &Path| String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{program} still runs after {COMMAND_TIMEOUT:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            read(&out_path),
            read(&err_path)
        );
    };
    Output {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

// ---------------------------------------------------------------------------
// HTTP.

/// A whole HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// When it is not JSON, showing what it is.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// `GET path` over HTTP/1.1 on a fresh connection (`Connection: close`),
/// read to the end. Understands `Content-Length`, chunked bodies, and bodies
/// that end with the connection.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[head_end + 4..];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        dechunk(rest).ok_or_else(|| bad("malformed chunked body"))?
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        rest.get(..len)
            .ok_or_else(|| bad("body shorter than content-length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_field.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------
// Peers.

/// Runs a Python program (`python -c script args...`) with `stdin`.
pub fn run_python(script: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(script).args(args);
    run(cmd, Some(stdin))
}

/// Runs a Python program and insists that it succeeds; its stdout.
pub fn python_ok(script: &str, args: &[&str], stdin: &[u8]) -> String {
    let out = run_python(script, args, stdin);
    assert!(out.status.success(), "python peer failed: {out}");
    out.stdout
}

/// The PostgreSQL server the suite may use, from `HEARTH_TEST_POSTGRES`.
/// `None` (with a note) when it is unset outside CI.
///
/// # Panics
/// When it is unset on CI (`CI` set), where skipping would hide a gap.
pub fn postgres_url() -> Option<String> {
    match env::var(POSTGRES_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                env::var_os("CI").is_none(),
                "{POSTGRES_VAR} is not set on CI; run the suite with `cargo xtask test`"
            );
            eprintln!("note: {POSTGRES_VAR} is not set, skipping the PostgreSQL part");
            None
        }
    }
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A fresh database of the suite's own on the server at `url`, made anew
/// through `psql` (so a schema left by an older build cannot interfere);
/// its URL. The suite keeps out of the shared test database, whose schemas
/// belong to the service tests.
///
/// # Panics
/// When there is no `psql` or it cannot create the database.
pub fn own_database(url: &str, database: &str) -> String {
    let psql = find_psql().expect("psql is needed to create the end-to-end test database");
    let mut cmd = Command::new(psql);
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url])
        .arg("-c")
        .arg(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .arg("-c")
        .arg(format!("CREATE DATABASE {database}"));
    let out = run(cmd, None);
    assert!(out.status.success(), "creating database {database}: {out}");
    with_database(url, database)
}

/// `psql` from `PATH`, else from Debian's per-version directories.
fn find_psql() -> Option<PathBuf> {
    let in_path = env::var_os("PATH").and_then(|path| {
        env::split_paths(&path)
            .map(|dir| dir.join("psql"))
            .find(|p| p.is_file())
    });
    in_path.or_else(|| {
        let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|entry| entry.path().join("bin/psql"))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:55432/hearth_test", "e2e"),
            "postgres://postgres@127.0.0.1:55432/e2e"
        );
        assert_eq!(
            with_database("postgres://u:p@db/x?sslmode=disable", "e2e"),
            "postgres://u:p@db/e2e?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://db:5432", "e2e"),
            "postgres://db:5432/e2e"
        );
    }

    #[test]
    fn responses_are_parsed_with_either_framing() {
        let plain =
            parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}")
                .unwrap();
        assert_eq!((plain.status, plain.body.as_slice()), (404, &b"{}"[..]));
        assert_eq!(plain.header("x-a"), Some("b"));
        let chunked =
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!(chunked.text(), "abcde");
    }
}

// ---------------------------------------------------------------------------
// TLS and HTTP with bodies.

/// A throwaway CA and a certificate for `localhost` signed by it, written as
/// PEM files (CA, certificate chain, private key) into a directory.
#[derive(Debug)]
pub struct TestCertificate {
    pub ca: PathBuf,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    ca_der: Vec<u8>,
}

impl TestCertificate {
    /// Makes the CA and the `localhost` certificate in `dir`.
    pub fn localhost(dir: &Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Hearth e2e CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("a CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("a self-signed CA");
        let issuer = Issuer::new(ca, ca_key);

        let leaf_key = KeyPair::generate().expect("a leaf key");
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf parameters");
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf_cert = leaf
            .signed_by(&leaf_key, &issuer)
            .expect("a CA-signed leaf");

        let this = Self {
            ca: dir.join("ca.pem"),
            certificate: dir.join("cert.pem"),
            private_key: dir.join("key.pem"),
            ca_der: ca_cert.der().to_vec(),
        };
        fs::write(&this.ca, ca_cert.pem()).expect("writing ca.pem");
        fs::write(&this.certificate, leaf_cert.pem()).expect("writing cert.pem");
        fs::write(&this.private_key, leaf_key.serialize_pem()).expect("writing key.pem");
        this
    }

    /// A TLS client config that trusts this CA alone.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.ca_der.clone()))
            .expect("the test CA is a valid root");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Arc::new(config)
    }
}

/// A minimal HTTP/1.1 client for one server, over plain TCP or TLS: one
/// fresh connection per request (`Connection: close`), JSON bodies, and a
/// Bearer token when given. Requests that fail to get any answer panic with
/// what was asked, so tests read as the steps they take.
#[derive(Debug, Clone)]
pub struct HttpClient {
    addr: SocketAddr,
    /// The `Host` header, and the name the TLS certificate must match.
    host: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl HttpClient {
    /// Plain HTTP to `addr`.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            tls: None,
        }
    }

    /// HTTPS to `addr`, checking the certificate against `tls`'s roots for
    /// `host` (a DNS name, e.g. `localhost`).
    pub fn https(addr: SocketAddr, host: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            addr,
            host: host.to_owned(),
            tls: Some(tls),
        }
    }

    /// `method path` with an optional Bearer `token` and JSON `body`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> HttpResponse {
        self.try_request(method, path, token, body)
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.addr))
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> HttpResponse {
        self.request("GET", path, token, None)
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: &Value) -> HttpResponse {
        self.request("POST", path, token, Some(body))
    }

    pub fn put(&self, path: &str, token: Option<&str>, body: &Value) -> HttpResponse {
        self.request("PUT", path, token, Some(body))
    }

    /// As [`HttpClient::request`], returning connection errors.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> io::Result<HttpResponse> {
        let body = body.map(|b| serde_json::to_vec(b).expect("JSON serialises"));
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: */*\r\nConnection: close\r\n",
            self.host
        );
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(body) = &body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body.as_deref().unwrap_or_default());

        let tcp = TcpStream::connect_timeout(&self.addr, HTTP_TIMEOUT)?;
        tcp.set_read_timeout(Some(HTTP_TIMEOUT))?;
        tcp.set_write_timeout(Some(HTTP_TIMEOUT))?;
        let raw = match &self.tls {
            None => exchange(tcp, &request)?,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let connection = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(io::Error::other)?;
                exchange(rustls::StreamOwned::new(connection, tcp), &request)?
            }
        };
        parse_response(&raw)
    }
}

/// Writes `request` and reads to the end. A TLS peer that closes without
/// `close_notify` ends the response too, once some of it has arrived.
fn exchange(mut stream: impl Read + Write, request: &[u8]) -> io::Result<Vec<u8>> {
    stream.write_all(request)?;
    stream.flush()?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => Ok(raw),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(e) => Err(e),
    }
}

/// The last `lines` lines of `text`, for logs in failure messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// Synapse.

/// The variable naming the Python that runs Synapse.
pub const SYNAPSE_PYTHON_VAR: &str = "HEARTH_TEST_SYNAPSE_PYTHON";
/// How long Synapse may take to start answering.
pub const SYNAPSE_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A Python with PyPI's `matrix-synapse`: `HEARTH_TEST_SYNAPSE_PYTHON`, else
/// the virtualenv `cargo xtask test` keeps in `target/peers/synapse`.
///
/// # Panics
/// When neither exists, saying how to get one.
pub fn synapse_python() -> PathBuf {
    if let Some(python) = env::var_os(SYNAPSE_PYTHON_VAR).filter(|p| !p.is_empty()) {
        return python.into();
    }
    let venv = hearth_testkit::workspace_root().join("target/peers/synapse/bin/python");
    assert!(
        venv.is_file(),
        "{SYNAPSE_PYTHON_VAR} is not set and there is no virtualenv at {}: run the suite with \
         `cargo xtask test`, which makes one with matrix-synapse, or point \
         {SYNAPSE_PYTHON_VAR} at a Python that can `import synapse`",
        venv.display()
    );
    venv
}

/// Verifies the signed JSON on stdin for server argv[1] with the verify key
/// of every key in the Synapse key file argv[2], via Synapse's own library
/// (`signedjson.sign.verify_signed_json`); then checks that a tampered copy
/// is rejected, so a pass means something.
pub const PY_VERIFY_SIGNED_JSON: &str = "\
import copy, json, sys
from signedjson.key import read_signing_keys, get_verify_key
from signedjson.sign import verify_signed_json, SignatureVerifyException
obj = json.load(sys.stdin)
with open(sys.argv[2]) as f:
    keys = read_signing_keys(f)
for key in keys:
    verify_signed_json(obj, sys.argv[1], get_verify_key(key))
    tampered = copy.deepcopy(obj)
    tampered['valid_until_ts'] += 1
    try:
        verify_signed_json(tampered, sys.argv[1], get_verify_key(key))
    except SignatureVerifyException:
        pass
    else:
        sys.exit('a tampered object verified')
print('verified %d' % len(keys))
";

/// Merges the JSON object argv[2] into the top level of the YAML file
/// argv[1] (Synapse's PyYAML).
const PY_MERGE_YAML: &str = "\
import json, sys, yaml
with open(sys.argv[1]) as f:
    config = yaml.safe_load(f)
config.update(json.loads(sys.argv[2]))
with open(sys.argv[1], 'w') as f:
    yaml.safe_dump(config, f)
";

/// A real Synapse from PyPI, as testing-with-synapse.md sets it up: a
/// generated config (SQLite, a registration shared secret) for server name
/// `localhost:<port>`, one plain-HTTP listener on 127.0.0.1 serving the
/// client and federation resources, plus the caller's overrides. Killed on
/// drop, which prints its logs when the test is failing.
#[derive(Debug)]
pub struct Synapse {
    dir: TempDir,
    addr: SocketAddr,
    server_name: String,
    child: Child,
    python: PathBuf,
    /// Set when its listener speaks TLS (`start_tls`): the client config
    /// and the CA file.
    tls: Option<(Arc<rustls::ClientConfig>, PathBuf)>,
}

impl Synapse {
    /// Generates the config, merges `overrides` (a JSON object of top-level
    /// keys) into it, starts Synapse and waits until
    /// `/_matrix/client/versions` answers.
    pub fn start(overrides: &Value) -> Self {
        Self::launch(overrides, None)
    }

    /// Like [`Synapse::start`], with its listener speaking TLS under `cert`
    /// (a `localhost` certificate), so other servers can reach its
    /// federation resource as the spec requires.
    pub fn start_tls(overrides: &Value, cert: &TestCertificate) -> Self {
        Self::launch(overrides, Some(cert))
    }

    fn launch(overrides: &Value, cert: Option<&TestCertificate>) -> Self {
        let python = synapse_python();
        let dir = tempfile::Builder::new()
            .prefix("hearth-synapse-")
            .tempdir()
            .expect("creating a temporary directory");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let server_name = format!("localhost:{}", addr.port());

        let mut generate = Command::new(&python);
        generate
            .args(["-m", "synapse.app.homeserver", "--server-name"])
            .arg(&server_name)
            .args([
                "--config-path",
                "homeserver.yaml",
                "--generate-config",
                "--report-stats=no",
            ])
            .current_dir(dir.path());
        let out = run(generate, None);
        assert!(out.status.success(), "generating Synapse's config: {out}");

        let mut config = serde_json::json!({
            "listeners": [{
                "port": addr.port(),
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": cert.is_some(),
                "x_forwarded": false,
                "resources": [{"names": ["client", "federation"], "compress": false}],
            }],
        });
        if let (Some(cert), Some(config)) = (cert, config.as_object_mut()) {
            config.insert(
                "tls_certificate_path".to_owned(),
                cert.certificate.display().to_string().into(),
            );
            config.insert(
                "tls_private_key_path".to_owned(),
                cert.private_key.display().to_string().into(),
            );
        }
        if let (Some(config), Some(extra)) = (config.as_object_mut(), overrides.as_object()) {
            config.extend(extra.clone());
        }
        let mut merge = Command::new(&python);
        merge
            .arg("-c")
            .arg(PY_MERGE_YAML)
            .arg(dir.path().join("homeserver.yaml"))
            .arg(config.to_string());
        let out = run(merge, None);
        assert!(out.status.success(), "editing homeserver.yaml: {out}");

        let log = File::create(dir.path().join("stdout.log")).expect("creating the log");
        let child = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "-c", "homeserver.yaml"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting Synapse with {}: {e}", python.display()));
        let mut synapse = Self {
            dir,
            addr,
            server_name,
            child,
            python,
            tls: cert.map(|c| (c.client_config(), c.ca.clone())),
        };
        synapse.wait_ready();
        synapse
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + SYNAPSE_READY_TIMEOUT;
        let client = self.client();
        loop {
            if let Some(status) = self.child.try_wait().expect("polling Synapse") {
                panic!(
                    "Synapse exited ({status}) before it answered; logs:\n{}",
                    self.logs()
                );
            }
            if client
                .try_request("GET", "/_matrix/client/versions", None, None)
                .is_ok_and(|r| r.status == 200)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Synapse did not answer /_matrix/client/versions within \
                 {SYNAPSE_READY_TIMEOUT:?}; logs:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its server name, `localhost:<port>`.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its URL, for a federation override; under TLS, by the name its
    /// certificate holds.
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }

    pub fn client(&self) -> HttpClient {
        match &self.tls {
            Some((tls, _)) => HttpClient::https(self.addr, "localhost", tls.clone()),
            None => HttpClient::plain(self.addr),
        }
    }

    /// Its signing key file, in the format `signedjson` reads.
    pub fn signing_key_path(&self) -> PathBuf {
        self.path()
            .join(format!("{}.signing.key", self.server_name))
    }

    /// `@<localpart>:<server name>`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name)
    }

    /// Registers a user with the shared secret (`register_new_matrix_user`).
    pub fn register_user(&self, localpart: &str, password: &str) {
        let mut cmd = Command::new(&self.python);
        cmd.args([
            "-m",
            "synapse._scripts.register_new_matrix_user",
            "-c",
            "homeserver.yaml",
            "-u",
            localpart,
            "-p",
            password,
            "--no-admin",
        ])
        .arg(self.url())
        .current_dir(self.path());
        if let Some((_, ca)) = &self.tls {
            cmd.env("REQUESTS_CA_BUNDLE", ca);
        }
        let out = run(cmd, None);
        assert!(
            out.status.success(),
            "registering {localpart} on Synapse: {out}\n{}",
            self.logs()
        );
    }

    /// Logs in with a password; the access token.
    pub fn login(&self, localpart: &str, password: &str) -> String {
        let response = self.client().post(
            "/_matrix/client/v3/login",
            None,
            &serde_json::json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart},
                "password": password,
            }),
        );
        assert_eq!(
            response.status,
            200,
            "logging {localpart} in to Synapse: {}",
            response.text()
        );
        response.json()["access_token"]
            .as_str()
            .expect("an access_token")
            .to_owned()
    }

    /// Registers `localpart` and logs in: the access token.
    pub fn user(&self, localpart: &str, password: &str) -> String {
        self.register_user(localpart, password);
        self.login(localpart, password)
    }

    /// Its working directory: config, keys, database, logs.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `homeserver.log` (its log config's file), then its stdout and stderr.
    pub fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.path().join(name)).unwrap_or_default();
        format!(
            "--- Synapse homeserver.log (last 300 lines) ---\n{}\n--- Synapse stdout/stderr ---\n{}",
            tail(&read("homeserver.log"), 300),
            tail(&read("stdout.log"), 100)
        )
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Sydent.

/// The variable naming the Python that runs Sydent.
pub const SYDENT_PYTHON_VAR: &str = "HEARTH_TEST_SYDENT_PYTHON";
/// How long Sydent may take to start answering, or to exit after SIGTERM.
pub const SYDENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A Python with PyPI's `matrix-sydent`: `HEARTH_TEST_SYDENT_PYTHON`, else
/// the virtualenv `cargo xtask test` (and `cargo xtask bench`) keeps in
/// `target/peers/sydent`.
///
/// # Panics
/// When neither exists, saying how to get one.
pub fn sydent_python() -> PathBuf {
    if let Some(python) = env::var_os(SYDENT_PYTHON_VAR).filter(|p| !p.is_empty()) {
        return python.into();
    }
    let venv = hearth_testkit::workspace_root().join("target/peers/sydent/bin/python");
    assert!(
        venv.is_file(),
        "{SYDENT_PYTHON_VAR} is not set and there is no virtualenv at {}: run the suite with \
         `cargo xtask test`, which makes one with matrix-sydent, or point \
         {SYDENT_PYTHON_VAR} at a Python that can `import sydent.sydent`",
        venv.display()
    );
    venv
}

/// The invite mail Sydent sends, as a template of its own kind (Python
/// `%` substitution; the PyPI package ships no templates).
const SYDENT_INVITE_TEMPLATE: &str = "\
Date: %(date)s
From: %(from)s
To: %(to)s
Message-ID: %(messageid)s
Subject: %(subject_header_value)s
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8

You are invited to %(room_id)s by %(sender)s.
Invite token: %(token)s
";

/// A real Sydent from PyPI (`python -m sydent.sydent`) in a directory of
/// its own: a config written here (its `server.name`, SQLite `sydent.db`,
/// the client API and the internal API on free loopback ports, invite mails
/// to an SMTP server when given one) to which Sydent adds the signing key it
/// generates at first start. Killed on drop, which prints its log when the
/// test is failing.
#[derive(Debug)]
pub struct Sydent {
    dir: TempDir,
    client: SocketAddr,
    internal: SocketAddr,
    child: Child,
}

impl Sydent {
    /// Writes the config, starts Sydent and waits until both APIs answer.
    pub fn start(server_name: &str, smtp_port: Option<u16>) -> Self {
        let python = sydent_python();
        let dir = tempfile::Builder::new()
            .prefix("hearth-sydent-")
            .tempdir()
            .expect("creating a temporary directory");
        let client = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let internal = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let templates = dir.path().join("templates");
        fs::create_dir_all(templates.join("matrix-org")).expect("creating the templates");
        fs::write(
            templates.join("matrix-org/invite_template.eml"),
            SYDENT_INVITE_TEMPLATE,
        )
        .expect("writing the invite template");
        let smtp = smtp_port.map_or_else(String::new, |port| {
            format!(
                "email.smtphost = 127.0.0.1\n\
                 email.smtpport = {port}\n\
                 email.tlsmode = 0\n"
            )
        });
        let config = format!(
            "[general]\n\
             server.name = {server_name}\n\
             pidfile.path = {pidfile}\n\
             templates.path = {templates}\n\
             brand.default = matrix-org\n\
             \n\
             [db]\n\
             db.file = {database}\n\
             \n\
             [http]\n\
             clientapi.http.bind_address = {client_ip}\n\
             clientapi.http.port = {client_port}\n\
             internalapi.http.bind_address = {internal_ip}\n\
             internalapi.http.port = {internal_port}\n\
             \n\
             [email]\n\
             email.from = Sydent <noreply@{server_name}>\n\
             email.hostname = {server_name}\n\
             {smtp}\
             \n\
             [sms]\n\
             \n\
             [crypto]\n",
            pidfile = dir.path().join("sydent.pid").display(),
            templates = templates.display(),
            database = dir.path().join("sydent.db").display(),
            client_ip = client.ip(),
            client_port = client.port(),
            internal_ip = internal.ip(),
            internal_port = internal.port(),
        );
        fs::write(dir.path().join("sydent.conf"), config).expect("writing sydent.conf");

        let log = File::create(dir.path().join("sydent.log")).expect("creating the log");
        let child = Command::new(&python)
            .args(["-m", "sydent.sydent"])
            .env("SYDENT_CONF", dir.path().join("sydent.conf"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting Sydent with {}: {e}", python.display()));
        let mut sydent = Self {
            dir,
            client,
            internal,
            child,
        };
        sydent.wait_ready();
        sydent
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + SYDENT_TIMEOUT;
        let client = self.client();
        loop {
            if let Some(status) = self.child.try_wait().expect("polling Sydent") {
                panic!(
                    "Sydent exited ({status}) before it answered; log:\n{}",
                    self.log()
                );
            }
            if client
                .try_request("GET", "/_matrix/identity/versions", None, None)
                .is_ok_and(|r| r.status == 200)
                && TcpStream::connect_timeout(&self.internal, HTTP_TIMEOUT).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Sydent did not answer /_matrix/identity/versions within {SYDENT_TIMEOUT:?}; \
                 log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The client API (`/_matrix/identity/...`), plain HTTP.
    pub fn client(&self) -> HttpClient {
        HttpClient::plain(self.client)
    }

    /// The internal API (`/_matrix/identity/internal/bind|unbind`), which
    /// trusts its caller: no validation session, no token.
    pub fn internal(&self) -> HttpClient {
        HttpClient::plain(self.internal)
    }

    /// Its working directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("sydent.conf")
    }

    pub fn database_path(&self) -> PathBuf {
        self.path().join("sydent.db")
    }

    /// Its stdout and stderr, where it logs.
    pub fn log(&self) -> String {
        tail(
            &fs::read_to_string(self.path().join("sydent.log")).unwrap_or_default(),
            300,
        )
    }

    /// SIGTERM, as an operator stops it before moving, then waits (at most
    /// [`SYDENT_TIMEOUT`]) for it to exit; its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM Sydent failed: {status}");
        let mut exited = None;
        wait_until(SYDENT_TIMEOUT, || {
            exited = self.child.try_wait().expect("polling Sydent");
            exited.is_some()
        });
        exited.unwrap_or_else(|| {
            panic!(
                "Sydent still runs {SYDENT_TIMEOUT:?} after SIGTERM; log:\n{}",
                self.log()
            )
        })
    }
}

impl Drop for Sydent {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- Sydent log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
