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
//!
//! Inherited `HEARTH_*` variables are removed from every command's
//! environment, so a developer's shell (or the harness's own `HEARTH_BIN`)
//! never leaks into the config under test.

use std::cell::Cell;
use std::env;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(
            status.success(),
            "kill -TERM {} failed: {status}",
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

/// A Python interpreter that can `import signedjson`: `HEARTH_TEST_PYTHON`,
/// else the virtualenv `cargo xtask test` keeps in `target/peers/python`.
///
/// # Panics
/// When neither exists, saying how to get one.
pub fn python() -> PathBuf {
    if let Some(python) = env::var_os(PYTHON_VAR).filter(|p| !p.is_empty()) {
        return python.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies in the workspace root")
        .join("target/peers/python/bin/python");
    assert!(
        venv.is_file(),
        "{PYTHON_VAR} is not set and there is no virtualenv at {}: run the suite with \
         `cargo xtask test`, which makes one with signedjson, or point {PYTHON_VAR} at a \
         Python that can `import signedjson`",
        venv.display()
    );
    venv
}

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

/// A database of the suite's own on the server at `url`, created through
/// `psql` unless it exists; its URL. Other tests drop tables in the shared
/// test database, so the suite keeps out of it.
///
/// # Panics
/// When there is no `psql` or it cannot create the database.
pub fn own_database(url: &str, database: &str) -> String {
    let psql = find_psql().expect("psql is needed to create the end-to-end test database");
    let mut cmd = Command::new(psql);
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c"])
        .arg(format!("CREATE DATABASE {database}"));
    let out = run(cmd, None);
    assert!(
        out.status.success() || out.stderr.contains("already exists"),
        "creating database {database}: {out}"
    );
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
