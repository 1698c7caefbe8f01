//! Where the machine's CPU time went during a run: the server, the load
//! generator (this process), and everything else. On two cores the load
//! generator competes with the server, and other work would too; the report
//! says how much of each there was rather than assume none.
//!
//! All counts are in the kernel's clock ticks, as `/proc/stat` and
//! `/proc/<pid>/stat` give them; dividing by the machine-wide total turns
//! them into cores without knowing the tick rate.

use std::fs;

use anyhow::{Context, Result};

/// Cumulative CPU counters at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// Every tick of every CPU, idle or not.
    all: u64,
    /// Ticks some CPU spent not idle.
    busy: u64,
    server: u64,
    client: u64,
}

impl Sample {
    pub(crate) fn take(server_pid: u32) -> Result<Self> {
        let (all, busy) =
            machine_ticks(&read("/proc/stat")?).context("no cpu line in /proc/stat")?;
        let server_stat = format!("/proc/{server_pid}/stat");
        Ok(Self {
            all,
            busy,
            server: process_ticks(&read(&server_stat)?)
                .with_context(|| format!("unreadable {server_stat}"))?,
            client: process_ticks(&read("/proc/self/stat")?)
                .context("unreadable /proc/self/stat")?,
        })
    }
}

/// Average cores used between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Usage {
    pub(crate) server: f64,
    pub(crate) client: f64,
    /// Everything else: other processes, the kernel's own work.
    pub(crate) other: f64,
}

impl Usage {
    pub(crate) fn between(start: Sample, end: Sample, cpus: usize) -> Self {
        let all = end.all.saturating_sub(start.all).max(1) as f64;
        let cores = |ticks: u64| ticks as f64 * cpus as f64 / all;
        let server = end.server.saturating_sub(start.server);
        let client = end.client.saturating_sub(start.client);
        let busy = end.busy.saturating_sub(start.busy);
        Self {
            server: cores(server),
            client: cores(client),
            // The counters are read at slightly different moments, so this
            // can come out a little below zero.
            other: cores(busy.saturating_sub(server + client)),
        }
    }
}

fn read(path: &str) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("could not read {path}"))
}

/// `(all, busy)` from the aggregate `cpu` line: user nice system idle iowait
/// irq softirq steal (guest time is already counted in user).
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks.try_into().ok()?;
    let busy = user + nice + system + irq + softirq + steal;
    Some((busy + idle + iowait, busy))
}

/// utime + stime of a process, all its threads, from `/proc/<pid>/stat`.
/// The command name may hold spaces and parentheses, so fields are counted
/// from the last `)`: state is field 3, utime 14 and stime 15.
fn process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::{Sample, Usage, machine_ticks, process_ticks};

    #[test]
    fn proc_stat_lines_are_read() {
        let stat = "cpu  100 5 50 800 10 3 2 0 7 0\ncpu0 50 2 25 400 5 1 1 0 0 0\n";
        assert_eq!(machine_ticks(stat), Some((970, 160)));
        let process = "4242 (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 31 9 0 0 20 0 3";
        assert_eq!(process_ticks(process), Some(40));
    }

    #[test]
    fn usage_is_in_cores() {
        let start = Sample {
            all: 0,
            busy: 0,
            server: 0,
            client: 0,
        };
        // Two cores for 100 ticks each: 200 ticks, 150 busy.
        let end = Sample {
            all: 200,
            busy: 150,
            server: 100,
            client: 30,
        };
        let usage = Usage::between(start, end, 2);
        assert!((usage.server - 1.0).abs() < 1e-9);
        assert!((usage.client - 0.3).abs() < 1e-9);
        assert!((usage.other - 0.2).abs() < 1e-9);
    }
}
