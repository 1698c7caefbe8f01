//! A real SMTP server capturing mail: PyPI's `aiosmtpd` with its Maildir
//! handler, on a free loopback port, without TLS. Killed on drop.

use crate::mail::Mail;
use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long aiosmtpd may take to listen, and mails to arrive.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The Python for peers: `HEARTH_TEST_PYTHON`, else the virtualenv
/// `cargo xtask test` keeps in the workspace's `target/peers/python`.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("HEARTH_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return python.into();
    }
    crate::workspace_root().join("target/peers/python/bin/python")
}

#[derive(Debug)]
pub struct SmtpCapture {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl SmtpCapture {
    /// Starts it and waits until it accepts connections.
    ///
    /// # Panics
    /// In one line saying what to run, when no Python with aiosmtpd exists.
    pub fn start() -> Self {
        let python = python();
        let usable = Command::new(&python)
            .args(["-c", "import aiosmtpd"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            usable,
            "this test needs the SMTP capture (Python with aiosmtpd at {}): run `cargo xtask test`, \
             or set HEARTH_TEST_PYTHON",
            python.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("hearth-smtp-")
            .tempdir()
            .expect("a temporary directory");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = File::create(dir.path().join("aiosmtpd.log")).expect("creating the log");
        let child = Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("maildir"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} -m aiosmtpd: {e}", python.display()));
        let mut capture = Self { port, child, dir };
        let deadline = Instant::now() + TIMEOUT;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Some(status) = capture.child.try_wait().expect("polling aiosmtpd") {
                panic!(
                    "aiosmtpd exited ({status}) before listening: {}",
                    capture.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen: {}",
                capture.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        capture
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("aiosmtpd.log")).unwrap_or_default()
    }

    /// The mails received so far, oldest first.
    pub fn mails(&self) -> Vec<Mail> {
        let Ok(entries) = fs::read_dir(self.dir.path().join("maildir/new")) else {
            return Vec::new();
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter_map(|path| Some((fs::metadata(&path).ok()?.modified().ok()?, path)))
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, path)| fs::read(path).ok())
            .map(|raw| Mail::parse(&String::from_utf8_lossy(&raw)))
            .collect()
    }

    /// The mails received so far whose `To:` holds `to`, oldest first.
    pub fn mails_to(&self, to: &str) -> Vec<Mail> {
        self.mails()
            .into_iter()
            .filter(|mail| mail.header("to").is_some_and(|t| t.contains(to)))
            .collect()
    }

    /// Waits until `count` mails have arrived, without blocking the async
    /// runtime the sender may run on; returns them all.
    pub async fn wait_for(&self, count: usize) -> Vec<Mail> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let mails = self.mails();
            if mails.len() >= count {
                return mails;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} mails arrived; aiosmtpd says: {}",
                mails.len(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most `timeout`, blocking) until more than `seen` mails to
    /// `to` have arrived, and returns the newest: for a sender in another
    /// process.
    pub fn wait_for_mail_to(&self, to: &str, seen: usize, timeout: Duration) -> Mail {
        let deadline = Instant::now() + timeout;
        loop {
            let mut mails = self.mails_to(to);
            if mails.len() > seen {
                return mails.pop().expect("a new mail");
            }
            assert!(
                Instant::now() < deadline,
                "no new mail to {to} within {timeout:?} ({seen} before; {} mails in all); \
                 aiosmtpd says:\n{}",
                self.mails().len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmtpCapture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
