//! `report.md`: the numbers, and everything needed to judge them (what was
//! sent, how, on which machine, with which versions).

use std::fmt::Write as _;
use std::fs;
use std::time::Duration;

use super::cpu::Usage;
use super::load::Outcome;
use super::options::Options;
use super::server::Memory;

/// The goals.
const GOAL_RATIO: f64 = 100.0;
const GOAL_P99: Duration = Duration::from_millis(10);

/// One server measured with one data set.
#[derive(Debug)]
pub(crate) struct Run {
    /// Name and version, e.g. "Hearth 0.1.0".
    pub(crate) server: String,
    pub(crate) associations: usize,
    pub(crate) outcome: Outcome,
    pub(crate) memory: Memory,
    /// From start until the server answered a lookup correctly.
    pub(crate) ready: Duration,
    /// Hearth: from start until it logged that the lookup index was built.
    pub(crate) index_built: Option<Duration>,
    /// Cores used while under load (warm-up included).
    pub(crate) cpu: Usage,
}

/// Facts about this machine, read when the bench starts.
#[derive(Debug)]
pub(crate) struct Machine {
    pub(crate) cpus: usize,
    pub(crate) model: String,
    pub(crate) memory: String,
    pub(crate) kernel: String,
}

impl Machine {
    pub(crate) fn probe() -> Self {
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            model: field(&cpuinfo, "model name")
                .unwrap_or("unknown")
                .to_owned(),
            memory: field(&meminfo, "MemTotal")
                .and_then(|kb| kb.trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or_else(|| "unknown".to_owned(), |kib| gib(kib * 1024)),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        }
    }
}

fn read(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// The value of the first `name : value` line.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

/// Versions of what was measured.
#[derive(Debug)]
pub(crate) struct Versions {
    pub(crate) hearth: String,
    pub(crate) sydent: String,
}

/// Everything the report shows.
#[derive(Debug)]
pub(crate) struct Report<'a> {
    pub(crate) date: String,
    pub(crate) options: &'a Options,
    pub(crate) machine: &'a Machine,
    pub(crate) versions: Versions,
    pub(crate) hearth: &'a Run,
    pub(crate) sydent: &'a Run,
    pub(crate) large: Option<&'a Run>,
}

impl Report<'_> {
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        self.comparison(&mut out);
        self.large_scenario(&mut out);
        self.parameters(&mut out);
        self.environment(&mut out);
        out
    }

    fn comparison(&self, out: &mut String) {
        let o = self.options;
        let ratio = self.hearth.outcome.per_second() / self.sydent.outcome.per_second();
        let p99 = self.hearth.outcome.percentile(0.99);
        let _ = writeln!(
            out,
            "# Hashed lookups: Hearth against Sydent\n\n\
             Measured by `cargo xtask bench{quick}` on {date}.{quick_note}\n\n\
             ## {assoc} associations, batches of {batch} addresses\n",
            quick = if o.quick { " --quick" } else { "" },
            quick_note = if o.quick {
                " A `--quick` run: smaller and shorter than the issue asks; for trying things only."
            } else {
                ""
            },
            date = self.date,
            assoc = thousands(o.associations),
            batch = thousands(o.batch),
        );
        let _ = writeln!(
            out,
            "| server | lookups/s | p50 | p99 | server CPU per lookup | requests | RSS after | peak RSS |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for run in [self.hearth, self.sydent] {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {} | {} | {} | {} | {} | {} |",
                run.server,
                run.outcome.per_second(),
                millis(run.outcome.percentile(0.5)),
                millis(run.outcome.percentile(0.99)),
                micros(cpu_per_lookup(run)),
                thousands(run.outcome.requests),
                mib(run.memory.rss_kib),
                mib(run.memory.peak_kib),
            );
        }
        let _ = writeln!(
            out,
            "\n**Throughput ratio Hearth/Sydent: {ratio:.1}×** (goal: at least {GOAL_RATIO:.0}×: {}).  \n\
             **Hearth p99: {}** (goal: under {} ms: {}).\n\n\
             For scale, the issue quotes Sydent 2.6.1 at about 5 lookups/s and 194 ms p50 \
             with 100,000 associations on this kind of machine.\n\n\
             Every answer, warm-up included, had status 200 and mapped exactly the bound \
             addresses of its batch, each to its user.\n",
            verdict(ratio >= GOAL_RATIO),
            millis(p99),
            GOAL_P99.as_millis(),
            verdict(p99.is_some_and(|p99| p99 < GOAL_P99)),
        );
        let _ = writeln!(
            out,
            "*Server CPU per lookup*: the server's CPU time (user and system, all its \
             threads) over the run, divided by the lookups it answered: the cost of one \
             request of {batch} addresses, whatever the machine's spare cores.{goal}\n",
            batch = thousands(o.batch),
            goal = match cpu_goal(o.batch) {
                Some(goal) => format!(
                    " Goal for Hearth at this batch size: under {}: {}.",
                    micros(Some(goal)),
                    verdict(cpu_per_lookup(self.hearth).is_some_and(|cpu| cpu < goal))
                ),
                None => String::new(),
            },
        );
    }

    fn large_scenario(&self, out: &mut String) {
        let Some(run) = self.large else {
            return;
        };
        let _ = writeln!(
            out,
            "## Hearth alone, {} associations\n\n\
             | lookups/s | p50 | p99 | requests | RSS after | peak RSS | index built | first lookup |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|\n\
             | {:.1} | {} | {} | {} | {} | {} | {} | {} |\n\n\
             *Index built*: from process start until Hearth logged `built the lookup index \
             for the current pepper` (at start, every association is hashed into the \
             in-memory lookup index). *First lookup*: until a lookup of a bound address \
             answered correctly.\n",
            thousands(run.associations),
            run.outcome.per_second(),
            millis(run.outcome.percentile(0.5)),
            millis(run.outcome.percentile(0.99)),
            thousands(run.outcome.requests),
            mib(run.memory.rss_kib),
            mib(run.memory.peak_kib),
            seconds(run.index_built),
            seconds(Some(run.ready)),
        );
    }

    fn parameters(&self, out: &mut String) {
        let o = self.options;
        let half = o.batch.div_ceil(2);
        let _ = writeln!(
            out,
            "## Parameters\n\n\
             - Data: {assoc} email associations, the same in both servers (Hearth's \
             `identity_associations`; Sydent's `local_` and `global_threepid_associations`, \
             with the `lookup_hash` Sydent computes at bind time).{large}\n\
             - Requests: `POST /_matrix/identity/v2/lookup`, algorithm `sha256`, \
             {batch} addresses each: {half} bound and {absent} bound nowhere, drawn at random \
             for every request. Fixed seeds: every server gets the same sequence of addresses. \
             Hashes are computed before the load starts.\n\
             - Load: {conc} keep-alive HTTP/1.1 connections on loopback, each with one request \
             in flight (a closed loop); {warmup} s of warm-up, then {dur} s measured. Only \
             requests answered inside the measured window count.\n\
             - Latency: at the client, from sending a request to having read its whole answer. \
             With {conc} requests in flight it includes time spent queued in the server: \
             Sydent serves one request at a time, so its latency is about \
             {conc} ÷ its throughput; Hearth's includes waiting for a core.\n\
             - Hearth: the release binary, `hearth serve`, \
             SQLite in a fresh data directory, its defaults except \
             `http.rate_limit.per_second = 0` (all load comes from one address) and \
             `identity.pepper_rotation = \"36500d\"` (no rotation can land mid-run; \
             the rotation at start still builds the index).\n\
             - Sydent: `python -m sydent.sydent`, SQLite, its defaults (log level INFO, \
             no terms) except the listener on 127.0.0.1.\n\
             - Memory: `VmRSS` (RSS after) and `VmHWM` (peak RSS) from `/proc/<pid>/status` \
             right after measuring.\n\
             - One server at a time: each is stopped before the next starts.\n",
            assoc = thousands(o.associations),
            large = if o.large > 0 {
                format!(
                    " The large scenario: {} associations in Hearth only.",
                    thousands(o.large)
                )
            } else {
                String::new()
            },
            batch = thousands(o.batch),
            absent = o.batch - half,
            conc = o.concurrency,
            warmup = o.warmup.as_secs_f64(),
            dur = o.duration.as_secs_f64(),
        );
    }

    fn environment(&self, out: &mut String) {
        let m = self.machine;
        let _ = writeln!(
            out,
            "## Machine\n\n\
             - CPU: {model}, {cpus} cores (nproc); memory {memory}; Linux {kernel}.\n\
             - The load generator shares the machine with the server under test. It runs on \
             one thread (a current-thread tokio runtime) and hashes every address before \
             the load starts, but on {cpus} cores client and server still compete: the \
             server's numbers are lower than on a machine of its own. Where the CPU time \
             went while under load (average cores; \"everything else\" is other processes \
             and the kernel, and shows whether other work ran at the same time):\n\n\
             | run | server | load generator | everything else |\n\
             |---|---:|---:|---:|",
            model = m.model,
            cpus = m.cpus,
            memory = m.memory,
            kernel = m.kernel,
        );
        for run in self.runs() {
            let _ = writeln!(
                out,
                "| {}, {} associations | {:.2} | {:.2} | {:.2} |",
                run.server,
                thousands(run.associations),
                run.cpu.server,
                run.cpu.client,
                run.cpu.other,
            );
        }
        let _ = writeln!(
            out,
            "\n## Versions\n\n\
             - {}\n\
             - {}\n\
             - Load generator: `cargo xtask bench`, a release build (hyper 1 HTTP/1.1 \
             client, tokio).",
            self.versions.hearth, self.versions.sydent,
        );
    }

    fn runs(&self) -> impl Iterator<Item = &Run> {
        [self.hearth, self.sydent].into_iter().chain(self.large)
    }
}

/// Issue 10's goals for server CPU per lookup: 1 address, 1,000 addresses.
fn cpu_goal(batch: usize) -> Option<Duration> {
    match batch {
        1 => Some(Duration::from_micros(50)),
        1000 => Some(Duration::from_micros(500)),
        _ => None,
    }
}

/// The server's CPU time per lookup answered. The CPU is sampled over
/// warm-up and measurement alike, at the same load, so its average rate
/// over the measured throughput is the time per request.
fn cpu_per_lookup(run: &Run) -> Option<Duration> {
    let per_second = run.outcome.per_second();
    (per_second > 0.0).then(|| Duration::from_secs_f64(run.cpu.server / per_second))
}

fn micros(duration: Option<Duration>) -> String {
    let Some(duration) = duration else {
        return "n/a".to_owned();
    };
    let us = duration.as_secs_f64() * 1e6;
    if us < 10_000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "not met" }
}

/// Milliseconds with about three significant digits.
fn millis(duration: Option<Duration>) -> String {
    let Some(duration) = duration else {
        return "n/a".to_owned();
    };
    let ms = duration.as_secs_f64() * 1000.0;
    match ms {
        ms if ms < 10.0 => format!("{ms:.2} ms"),
        ms if ms < 100.0 => format!("{ms:.1} ms"),
        ms => format!("{ms:.0} ms"),
    }
}

fn seconds(duration: Option<Duration>) -> String {
    duration.map_or_else(|| "n/a".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1024.0 * 1024.0 * 1024.0))
}

/// `1000000` → `1,000,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{field, millis, thousands};
    use std::time::Duration;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(millis(Some(Duration::from_micros(2_346))), "2.35 ms");
        assert_eq!(millis(Some(Duration::from_micros(23_456))), "23.5 ms");
        assert_eq!(millis(Some(Duration::from_millis(194))), "194 ms");
        assert_eq!(millis(None), "n/a");
    }

    #[test]
    fn proc_fields_are_found_by_name() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t: sse\n";
        assert_eq!(field(cpuinfo, "model name"), Some("AMD EPYC"));
        assert_eq!(field(cpuinfo, "MemTotal"), None);
    }
}
