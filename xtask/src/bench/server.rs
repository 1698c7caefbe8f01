//! A server process under test: started with its output in a log file,
//! measured through `/proc`, and stopped when dropped, on every path out of
//! the bench (success, error, or unwinding).

use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::describe;

/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub(crate) struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
    started: Instant,
}

impl Server {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub(crate) fn start(name: &'static str, mut cmd: Command, log: &Path) -> Result<Self> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("could not open {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("could not start {}", describe(&cmd)))?;
        eprintln!("xtask: started {name} (pid {})", child.id());
        Ok(Self {
            name,
            child,
            log: log.to_path_buf(),
            started: Instant::now(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The time since the server was started.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Fails, with the end of the log, when the process has exited: a
    /// server that died must not look like a slow one.
    pub(crate) fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status})\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// Waits until the server accepts TCP connections on `addr`.
    pub(crate) fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        self.wait_for(timeout, &format!("listener on {addr}"), |_| {
            TcpStream::connect_timeout(&addr, POLL).is_ok()
        })?;
        Ok(())
    }

    /// Polls `done` until it holds, failing when the server exits first or
    /// `timeout` passes; the time from the server's start until it held.
    pub(crate) fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return Ok(self.started.elapsed());
            }
            self.ensure_running()?;
            if Instant::now() > deadline {
                bail!(
                    "{} showed no {what} within {}s\n{}",
                    self.name,
                    timeout.as_secs(),
                    self.log_tail()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Whether the log holds `needle` yet.
    pub(crate) fn logged(&self, needle: &str) -> bool {
        fs::read_to_string(&self.log).is_ok_and(|log| log.contains(needle))
    }

    /// Resident memory now and at its peak, from `/proc/<pid>/status`.
    pub(crate) fn memory(&self) -> Result<Memory> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
        Memory::parse(&status).with_context(|| format!("no VmRSS/VmHWM in {path}"))
    }

    /// SIGTERM, so the server shuts down as it would in production; SIGKILL
    /// when it takes too long.
    pub(crate) fn stop(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        eprintln!("xtask: stopping {}", self.name);
        // std can only SIGKILL, and unsafe code is forbidden: use kill(1).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(POLL);
        }
        eprintln!(
            "xtask: {} ignored SIGTERM for {}s, killing it",
            self.name,
            STOP_TIMEOUT.as_secs()
        );
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    pub(crate) fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("{} (last lines):\n{tail}", self.log.display())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("xtask: warning: stopping {}: {error:#}", self.name);
        }
    }
}

/// Resident set sizes in KiB, as the kernel reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Memory {
    /// `VmRSS`: resident now.
    pub(crate) rss_kib: u64,
    /// `VmHWM`: the most that was ever resident.
    pub(crate) peak_kib: u64,
}

impl Memory {
    fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(':')?;
                value.trim().strip_suffix("kB")?.trim().parse().ok()
            })
        };
        Some(Self {
            rss_kib: field("VmRSS")?,
            peak_kib: field("VmHWM")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Memory;

    #[test]
    fn memory_is_read_from_proc_status() {
        let status = "Name:\thearth\nVmHWM:\t  81234 kB\nVmRSS:\t   70000 kB\nThreads:\t3\n";
        assert_eq!(
            Memory::parse(status),
            Some(Memory {
                rss_kib: 70_000,
                peak_kib: 81_234
            })
        );
        assert_eq!(Memory::parse("Name:\tzombie\n"), None);
    }
}
