//! `cargo xtask bench`: Hearth's hashed lookups against Sydent's, on this
//! machine, in one run.
//!
//! 1. Build the release `hearth`; set up Sydent from PyPI (`crate::sydent`).
//! 2. For each server in turn: a fresh data directory seeded with the same
//!    associations while the server is stopped, then start it, wait until
//!    it answers a lookup correctly, put it under load (`load`), read its
//!    memory, stop it (`server`).
//! 3. Hearth alone again with a larger data set, timing its index build.
//! 4. Write `report.md` (`report`) and print it.
//!
//! Every server is stopped when its handle drops, so a failure anywhere
//! leaves nothing running.

mod client;
mod cpu;
mod data;
mod hearth;
mod load;
mod notary;
mod options;
mod report;
mod server;
mod sydent;
mod turn;

use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::StatusCode;
use serde_json::json;
use tokio::runtime::Runtime;

use self::client::{Client, parse};
use self::cpu::Usage;
use self::data::{Hashes, MEDIUM, bound_address, lookup_hash, mxid};
use self::hearth::{HearthSite, INDEX_BUILT};
use self::load::{LOOKUP, Plan, Target};
use self::options::Options;
use self::report::{Machine, Report, Run, Versions};
use self::server::Server;
use self::sydent::SydentSite;
use crate::sydent::Sydent;
use crate::{
    HEARTH_BIN_VAR, cargo_command, describe, exit_code, output, run_visible, target_dir,
    workspace_root,
};

pub(crate) use self::options::USAGE;

/// The account both servers know the bench token for.
const BENCH_USER: &str = "@bench:localhost";
/// Not a secret: it opens servers on loopback holding made-up data, thrown
/// away with their directories.
const BENCH_TOKEN: &str = "xtask-bench-token";
const HASH_DETAILS: &str = "/_matrix/identity/v2/hash_details";
/// How long a started server may take to answer its first lookup.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long Hearth may take to build the lookup index for the large set.
const INDEX_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const RETRY: Duration = Duration::from_millis(200);
/// Cores other processes may use during a run before the bench warns.
const BUSY_ELSEWHERE: f64 = 0.2;
const SEED_SCRIPT: &str = include_str!("seed.py");

pub(crate) fn bench(args: &[String]) -> Result<ExitCode> {
    // The TURN load comes from coturn's uclient, not from this process, so
    // it needs no optimized rerun.
    if args.first().is_some_and(|arg| arg == "turn") {
        turn::bench(&args[1..])?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(options) = Options::parse(args)? else {
        eprintln!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    };
    let root = workspace_root();
    if cfg!(debug_assertions) {
        return rerun_optimized(&root, args);
    }
    let out = target_dir(&root).join("bench");
    let report = run(&root, &out, &options)?;
    let path = out.join("report.md");
    fs::write(&path, &report).with_context(|| format!("could not write {}", path.display()))?;
    std::io::stdout().write_all(report.as_bytes())?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Every measurement, one server at a time, each in a directory under
/// `out`; the report.
fn run(root: &Path, out: &Path, options: &Options) -> Result<String> {
    let machine = Machine::probe();
    let bin = build_hearth(root)?;
    let mut rendered = String::new();
    if options.runs("lookups") {
        let sydent = Sydent::install(root)?;
        let bench = Bench::new(&machine, options)?;
        let python = sydent.python();
        let hearth = bench.hearth(&bin, python, &out.join("hearth"), options.associations)?;
        let sydent_run = bench.sydent(&sydent, &out.join("sydent"), options.associations)?;
        let large = match options.large {
            0 => None,
            n => Some(bench.hearth(&bin, python, &out.join("hearth-large"), n)?),
        };
        let report = Report {
            date: utc_now(),
            options,
            machine: &machine,
            versions: Versions {
                hearth: format!("{}{}", hearth.server, provenance(root)),
                sydent: sydent.description()?,
            },
            hearth: &hearth,
            sydent: &sydent_run,
            large: large.as_ref(),
        };
        rendered.push_str(&report.render());
    }
    if options.runs("notary") {
        let synapse = crate::synapse::Synapse::setup(root)?;
        let notary = notary::run(
            &bin,
            synapse.interpreter(),
            &out.join("notary"),
            options.duration,
            machine.cpus,
        )?;
        notary.render(&mut rendered);
    }
    Ok(rendered)
}

/// The load generator shares the machine's cores with the server it loads.
/// Unoptimized, as `cargo xtask` builds it, it spends several times the CPU
/// per request it needs, taken from the server; so a debug build hands the
/// whole bench over to a release build of itself.
fn rerun_optimized(root: &Path, args: &[String]) -> Result<ExitCode> {
    let mut cmd = cargo_command();
    cmd.args([
        "run",
        "--release",
        "--quiet",
        "--package",
        "xtask",
        "--",
        "bench",
    ])
    .args(args)
    .current_dir(root);
    eprintln!(
        "xtask: running an optimized build of xtask ({})",
        describe(&cmd)
    );
    let status = cmd.status().context("could not start cargo")?;
    Ok(exit_code(status))
}

/// `HEARTH_BIN` when the caller set it (a binary built elsewhere, or from
/// another checkout), else the release binary, built now (quick when fresh).
fn build_hearth(root: &Path) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os(HEARTH_BIN_VAR).filter(|bin| !bin.is_empty()) {
        eprintln!("xtask: using the hearth binary from {HEARTH_BIN_VAR}");
        return Ok(bin.into());
    }
    let mut cmd = cargo_command();
    cmd.args(["build", "--release", "--package", "hearth"])
        .current_dir(root);
    eprintln!("xtask: building the hearth binary ({})", describe(&cmd));
    run_visible(&mut cmd)?;
    let bin = target_dir(root)
        .join("release")
        .join(format!("hearth{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!("cargo built no binary at {}", bin.display());
    }
    Ok(bin)
}

/// What every measurement shares.
#[derive(Debug)]
struct Bench {
    /// One thread for the load generator and the probes: the servers keep
    /// the other core.
    rt: Runtime,
    cpus: usize,
    plan: Plan,
}

impl Bench {
    fn new(machine: &Machine, options: &Options) -> Result<Self> {
        Ok(Self {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            cpus: machine.cpus,
            plan: Plan {
                concurrency: options.concurrency,
                batch: options.batch,
                warmup: options.warmup,
                measure: options.duration,
            },
        })
    }

    fn hearth(&self, bin: &Path, python: &Path, dir: &Path, associations: usize) -> Result<Run> {
        let site = HearthSite::prepare(bin, dir, python, associations, BENCH_TOKEN)?;
        let name = capitalized(&site.version()?);
        let mut server = site.start()?;
        eprintln!("xtask: waiting for Hearth to build its lookup index");
        // Probing before the index is built would start a second build from
        // the request path and distort the timing.
        let index_built =
            server.wait_for(INDEX_TIMEOUT, "lookup index", |s| s.logged(INDEX_BUILT))?;
        let mut run = self.measure(&mut server, site.addr, name, associations)?;
        run.index_built = Some(index_built);
        Ok(run)
    }

    fn sydent(&self, sydent: &Sydent, dir: &Path, associations: usize) -> Result<Run> {
        let site = SydentSite::prepare(sydent, dir, associations, BENCH_TOKEN)?;
        let mut server = site.start()?;
        server.wait_for_port(site.addr, READY_TIMEOUT)?;
        self.measure(
            &mut server,
            site.addr,
            format!("Sydent {}", sydent.version()),
            associations,
        )
    }

    /// Loads a started server holding `associations`, then stops it.
    fn measure(
        &self,
        server: &mut Server,
        addr: SocketAddr,
        name: String,
        associations: usize,
    ) -> Result<Run> {
        let (pepper, ready) = self.rt.block_on(first_lookup(server, addr))?;
        let target = Target {
            addr,
            token: BENCH_TOKEN.to_owned(),
            pepper,
        };
        let hashes = Arc::new(Hashes::new(&target.pepper, associations));
        eprintln!(
            "xtask: measuring {name}: {} connections, {:?} warm-up, {:?} measured",
            self.plan.concurrency, self.plan.warmup, self.plan.measure
        );
        let before = cpu::Sample::take(server.pid())?;
        let outcome = self
            .rt
            .block_on(load::run(&target, hashes, self.plan))
            .with_context(|| format!("{name} under load"))?;
        server.ensure_running()?;
        let cpu = Usage::between(before, cpu::Sample::take(server.pid())?, self.cpus);
        let memory = server.memory()?;
        server.stop()?;
        log_run(&name, &outcome, memory, cpu);
        Ok(Run {
            server: name,
            associations,
            outcome,
            memory,
            ready,
            index_built: None,
            cpu,
        })
    }
}

/// The run's numbers on the terminal, with a warning when other work took
/// CPU time from it.
fn log_run(name: &str, outcome: &load::Outcome, memory: server::Memory, cpu: Usage) {
    eprintln!(
        "xtask: {name}: {:.1} lookups/s, p50 {:?}, p99 {:?}, RSS {} KiB, \
         cores: server {:.2}, load generator {:.2}, everything else {:.2}",
        outcome.per_second(),
        outcome.percentile(0.5).unwrap_or_default(),
        outcome.percentile(0.99).unwrap_or_default(),
        memory.rss_kib,
        cpu.server,
        cpu.client,
        cpu.other,
    );
    if cpu.other > BUSY_ELSEWHERE {
        eprintln!(
            "xtask: warning: other work used {:.2} cores during the run; \
             the numbers are lower than on a quiet machine",
            cpu.other
        );
    }
}

/// Waits until the server answers a lookup of a bound address correctly;
/// its pepper, and how long after its start that was.
async fn first_lookup(server: &mut Server, addr: SocketAddr) -> Result<(String, Duration)> {
    let mut client = Client::new(addr, BENCH_TOKEN);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match probe(&mut client).await {
            Ok(pepper) => return Ok((pepper, server.uptime())),
            Err(error) if Instant::now() > deadline => {
                return Err(error.context(format!(
                    "no correct lookup answer within {}s\n{}",
                    READY_TIMEOUT.as_secs(),
                    server.log_tail()
                )));
            }
            Err(_) => {
                server.ensure_running()?;
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// `/hash_details`, then a lookup of association 0; the pepper.
async fn probe(client: &mut Client) -> Result<String> {
    let (status, details) = client.get(HASH_DETAILS).await?;
    ensure!(status == StatusCode::OK, "hash_details: {status} {details}");
    let pepper = details["lookup_pepper"]
        .as_str()
        .context("hash_details gave no lookup_pepper")?
        .to_owned();
    let hash = lookup_hash(&bound_address(0), MEDIUM, &pepper);
    let request = json!({ "algorithm": "sha256", "pepper": pepper, "addresses": [hash] });
    let (status, body) = client
        .post(LOOKUP, Bytes::from(request.to_string()))
        .await?;
    let answer = parse(&body)?;
    ensure!(
        status == StatusCode::OK && answer["mappings"][&hash] == mxid(0).as_str(),
        "a lookup of a bound address: {status} {answer}"
    );
    Ok(pepper)
}

/// An empty directory at `dir`, whatever was there.
fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("could not remove {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))
}

/// A free port on 127.0.0.1: bound, read, released. Another process could
/// take it in between, but the kernel hands ports out in turn.
fn loopback() -> Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?)
}

/// Runs `seed.py` with `args`, using `python`.
fn seed(python: &Path, args: &[&str]) -> Result<()> {
    output(Command::new(python).arg("-c").arg(SEED_SCRIPT).args(args))?;
    Ok(())
}

fn utc_now() -> String {
    output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).map_or_else(
        |_| "an unknown date".to_owned(),
        |date| date.trim().to_owned(),
    )
}

/// `hearth 0.1.0` → `Hearth 0.1.0`.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Where the measured binary came from: ` (git abc1234)`, noting
/// uncommitted changes; `HEARTH_BIN` when that named it; empty outside a
/// checkout.
fn provenance(root: &Path) -> String {
    if let Some(bin) = std::env::var_os(HEARTH_BIN_VAR).filter(|bin| !bin.is_empty()) {
        return format!(" ({HEARTH_BIN_VAR}={})", bin.to_string_lossy());
    }
    let git = |args: &[&str]| output(Command::new("git").args(args).current_dir(root));
    let Ok(commit) = git(&["rev-parse", "--short", "HEAD"]) else {
        return String::new();
    };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_ok_and(|status| !status.trim().is_empty());
    let note = if dirty {
        ", with uncommitted changes"
    } else {
        ""
    };
    format!(" (git {}{note})", commit.trim())
}

#[cfg(test)]
mod tests {
    use super::capitalized;

    #[test]
    fn names_are_capitalized() {
        assert_eq!(capitalized("hearth 0.1.0"), "Hearth 0.1.0");
        assert_eq!(capitalized(""), "");
    }
}
