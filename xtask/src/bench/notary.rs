//! Cached key queries (`POST /_matrix/key/v2/query`): Hearth's notary
//! against Synapse acting as a notary, over the same cached keys, under the
//! same `wrk` load (Debian's), one server at a time.
//!
//! The origin both ask is a Hearth serving its keys over TLS under a
//! throwaway CA (made with `openssl`), which both notaries trust. Each
//! notary answers one query first (filling its cache, and for Hearth timing
//! a cold query against a direct fetch from the origin), then `wrk` sends
//! the same single-key query over 8 connections.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::cpu::{Sample, Usage};
use super::server::Server;
use super::{fresh_dir, loopback};
use crate::{debian, output};

/// wrk's connections, as the Synapse figure was measured.
const CONNECTIONS: usize = 8;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Synapse 1.163 on this kind of machine, as the issue quotes it.
const SYNAPSE_QUOTED: &str = "about 930 queries/s at 8 ms p50";
const GOAL_RATIO: f64 = 20.0;
const STRETCH_RATIO: f64 = 50.0;
const WRK: &str = "/usr/bin/wrk";
/// Servers queried cold, each once; the median is reported.
const COLD_SAMPLES: usize = 4;

/// One notary under load.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) server: String,
    pub(crate) per_second: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) requests: u64,
    /// Server CPU time per answered request.
    pub(crate) cpu_per_request: Duration,
    pub(crate) cpu: Usage,
}

/// Both runs and the cold figures.
#[derive(Debug)]
pub(crate) struct Measured {
    pub(crate) hearth: Run,
    pub(crate) synapse: Run,
    /// Hearth's first query for a server it never saw (median of
    /// [`COLD_SAMPLES`], the process already warm).
    pub(crate) cold: Duration,
    /// `curl` fetching the origin's keys directly: one TLS round trip.
    pub(crate) origin_fetch: Duration,
}

pub(crate) fn run(
    hearth_bin: &Path,
    synapse_python: &Path,
    dir: &Path,
    duration: Duration,
    cpus: usize,
) -> Result<Measured> {
    debian::ensure(Path::new(WRK), "wrk")?;
    fresh_dir(dir)?;
    let ca = Ca::make(dir)?;

    // The first origin is the one queried under load; the others are each
    // queried once, cold.
    let mut origins = Vec::with_capacity(1 + COLD_SAMPLES);
    for i in 0..=COLD_SAMPLES {
        let addr = loopback()?;
        let name = format!("localhost:{}", addr.port());
        let tls = [
            (
                "HEARTH_HTTP__TLS_CERTIFICATE",
                ca.cert.display().to_string(),
            ),
            ("HEARTH_HTTP__TLS_PRIVATE_KEY", ca.key.display().to_string()),
        ];
        let mut origin = hearth(
            hearth_bin,
            &dir.join(format!("origin{i}")),
            addr,
            &name,
            &tls,
        )?;
        origin.wait_for_port(addr, READY_TIMEOUT)?;
        origins.push((name, origin));
    }
    let origin_name = origins[0].0.clone();
    let origin_url = format!("https://{origin_name}/_matrix/key/v2/server");
    let keys = curl_json(&origin_url, &ca.ca)?;
    let key_id = keys["verify_keys"]
        .as_object()
        .and_then(|k| k.keys().next().cloned())
        .context("the origin published no key")?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let body = serde_json::json!({
        "server_keys": {origin_name.as_str(): {key_id.as_str(): {"minimum_valid_until_ts": now_ms}}}
    })
    .to_string();

    // Hearth's notary.
    let addr = loopback()?;
    let mut notary = hearth(
        hearth_bin,
        &dir.join("hearth"),
        addr,
        &format!("localhost:{}", addr.port()),
        &[
            ("HEARTH_FEDERATION__CA_FILE", ca.ca.display().to_string()),
            (
                "HEARTH_FEDERATION__ALLOW_PRIVATE_ADDRESSES",
                "true".to_owned(),
            ),
        ],
    )?;
    notary.wait_for_port(addr, READY_TIMEOUT)?;
    // The first query also warms the process up (connection pool, lazy
    // set-up); the cold figure comes from servers it never saw after that.
    check_answer(addr, &body, &origin_name)?;
    let mut colds = Vec::new();
    for (name, _) in &origins[1..] {
        let all_keys = serde_json::json!({"server_keys": {name.as_str(): {}}}).to_string();
        colds.push(check_answer(addr, &all_keys, name)?);
    }
    colds.sort_unstable();
    let cold = colds[colds.len() / 2];
    let origin_fetch = curl_time(&origin_url, &ca.ca)?;
    let version = output(Command::new(hearth_bin).arg("--version"))?;
    let hearth = load(
        &mut notary,
        addr,
        &body,
        dir,
        duration,
        cpus,
        version.trim(),
    )?;
    notary.stop()?;

    // Synapse's notary, trusting the same CA, fetching the origin directly.
    let addr = loopback()?;
    let mut synapse = synapse(synapse_python, &dir.join("synapse"), addr, &ca.ca)?;
    synapse.wait_for_port(addr, READY_TIMEOUT)?;
    wait_answer(&mut synapse, addr, &body, &origin_name)?;
    let version = output(Command::new(synapse_python).args([
        "-c",
        "import synapse; print('Synapse', synapse.__version__)",
    ]))?;
    let synapse_run = load(
        &mut synapse,
        addr,
        &body,
        dir,
        duration,
        cpus,
        version.trim(),
    )?;
    synapse.stop()?;
    for (_, mut origin) in origins {
        origin.stop()?;
    }
    Ok(Measured {
        hearth,
        synapse: synapse_run,
        cold,
        origin_fetch,
    })
}

/// A throwaway CA and a `localhost` certificate it signed.
struct Ca {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Ca {
    fn make(dir: &Path) -> Result<Self> {
        let path = |name: &str| dir.join(name).display().to_string();
        let openssl = |args: &[&str]| output(Command::new("openssl").args(args).current_dir(dir));
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=Hearth bench CA",
                ],
            ]
            .concat(),
        )?;
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "key.pem",
                    "-out",
                    "leaf.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
        )?;
        fs::write(dir.join("leaf.ext"), "subjectAltName=DNS:localhost\n")?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ])?;
        Ok(Self {
            ca: path("ca.pem").into(),
            cert: path("cert.pem").into(),
            key: path("key.pem").into(),
        })
    }
}

/// `hearth notary` in `dir` named `name` on `addr`, with `extra` settings.
fn hearth(
    bin: &Path,
    dir: &Path,
    addr: SocketAddr,
    name: &str,
    extra: &[(&str, String)],
) -> Result<Server> {
    fs::create_dir_all(dir)?;
    let mut cmd = Command::new(bin);
    cmd.arg("notary").current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HEARTH_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("NO_COLOR", "1")
        .env("HEARTH_SERVER_NAME", name)
        .env("HEARTH_DATA_DIR", dir.join("data"))
        .env("HEARTH_HTTP__BIND", format!("[\"{addr}\"]"))
        .env("HEARTH_ADMIN__BIND", loopback()?.to_string())
        // All load comes from one address.
        .env("HEARTH_HTTP__RATE_LIMIT__PER_SECOND", "0");
    for (key, value) in extra {
        cmd.env(key, value);
    }
    Server::start("Hearth", cmd, &dir.join("hearth.log"))
}

/// Synapse from PyPI as a notary: a generated config, one plain-HTTP
/// listener, no notary of its own, the CA for reaching the origin.
fn synapse(python: &Path, dir: &Path, addr: SocketAddr, ca: &Path) -> Result<Server> {
    fs::create_dir_all(dir)?;
    let name = format!("localhost:{}", addr.port());
    output(
        Command::new(python)
            .args(["-m", "synapse.app.homeserver", "--server-name", &name])
            .args([
                "--config-path",
                "homeserver.yaml",
                "--generate-config",
                "--report-stats=no",
            ])
            .current_dir(dir),
    )?;
    let overrides = serde_json::json!({
        "listeners": [{
            "port": addr.port(), "bind_addresses": ["127.0.0.1"], "type": "http", "tls": false,
            "x_forwarded": false, "resources": [{"names": ["federation"], "compress": false}],
        }],
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
        "federation_custom_ca_list": [ca.display().to_string()],
        "ip_range_whitelist": ["127.0.0.1"],
    });
    output(
        Command::new(python)
            .args(["-c", MERGE_YAML, "homeserver.yaml", &overrides.to_string()])
            .current_dir(dir),
    )?;
    let mut cmd = Command::new(python);
    cmd.args(["-m", "synapse.app.homeserver", "-c", "homeserver.yaml"])
        .current_dir(dir);
    Server::start("Synapse", cmd, &dir.join("stdout.log"))
}

/// Merges the JSON object argv[2] into the YAML file argv[1].
const MERGE_YAML: &str = "\
import json, sys, yaml
with open(sys.argv[1]) as f:
    config = yaml.safe_load(f)
config.update(json.loads(sys.argv[2]))
with open(sys.argv[1], 'w') as f:
    yaml.safe_dump(config, f)
";

fn curl(args: &[&str]) -> Result<String> {
    output(
        Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args),
    )
}

fn curl_json(url: &str, ca: &Path) -> Result<serde_json::Value> {
    let text = curl(&["--cacert", &ca.display().to_string(), url])?;
    serde_json::from_str(&text).with_context(|| format!("{url} answered {text}"))
}

/// The best of five direct fetches, each a new TLS connection, as a
/// notary's origin fetch is.
fn curl_time(url: &str, ca: &Path) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let secs = curl(&[
            "--cacert",
            &ca.display().to_string(),
            "-o",
            "/dev/null",
            "-w",
            "%{time_total}",
            url,
        ])?;
        let secs: f64 = secs.trim().parse().context("curl's time_total")?;
        best = best.min(Duration::from_secs_f64(secs));
    }
    Ok(best)
}

/// One query; fails unless the answer holds the origin's keys. Its time
/// as curl measures it (`time_total`), as the direct fetch is measured, so
/// curl's own start-up counts in neither.
fn check_answer(addr: SocketAddr, body: &str, origin: &str) -> Result<Duration> {
    let url = format!("http://{addr}/_matrix/key/v2/query");
    let out = curl(&[
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        "-w",
        "\n%{time_total}",
        &url,
    ])?;
    let (text, secs) = out.rsplit_once('\n').context("curl printed no time")?;
    let answer: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("{url} answered {text}"))?;
    ensure!(
        answer["server_keys"][0]["server_name"] == origin,
        "{url} did not return {origin}'s keys: {text}"
    );
    let secs: f64 = secs.trim().parse().context("curl's time_total")?;
    Ok(Duration::from_secs_f64(secs))
}

/// Synapse's HTTP listener opens before it serves: retry until it answers.
fn wait_answer(server: &mut Server, addr: SocketAddr, body: &str, origin: &str) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match check_answer(addr, body, origin) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.context(server.log_tail())),
            Err(_) => {
                server.ensure_running()?;
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// `wrk` against `addr` for `duration`, with the server's CPU time.
fn load(
    server: &mut Server,
    addr: SocketAddr,
    body: &str,
    dir: &Path,
    duration: Duration,
    cpus: usize,
    name: &str,
) -> Result<Run> {
    let script = dir.join("query.lua");
    fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
            serde_json::Value::String(body.to_owned())
        ),
    )?;
    eprintln!("xtask: measuring {name}'s notary: {CONNECTIONS} connections, {duration:?}");
    let before = Sample::take(server.pid())?;
    let text = output(Command::new(WRK).args([
        "-t1",
        &format!("-c{CONNECTIONS}"),
        &format!("-d{}s", duration.as_secs().max(1)),
        "--latency",
        "-s",
        &script.display().to_string(),
        &format!("http://{addr}/_matrix/key/v2/query"),
    ]))?;
    let cpu = Usage::between(before, Sample::take(server.pid())?, cpus);
    server.ensure_running()?;
    let wrk = Wrk::parse(&text)?;
    if wrk.failed > 0 {
        bail!("{name}: {} of the queries failed:\n{text}", wrk.failed);
    }
    let cpu_secs = cpu.server * duration.as_secs_f64();
    let run = Run {
        server: name.to_owned(),
        per_second: wrk.per_second,
        p50: wrk.p50,
        p99: wrk.p99,
        requests: wrk.requests,
        cpu_per_request: Duration::from_secs_f64(cpu_secs / wrk.requests.max(1) as f64),
        cpu,
    };
    eprintln!(
        "xtask: {name}: {:.0} queries/s, p50 {:?}, p99 {:?}, {:?} server CPU per query",
        run.per_second, run.p50, run.p99, run.cpu_per_request
    );
    Ok(run)
}

/// What `wrk --latency` printed.
#[derive(Debug, PartialEq)]
struct Wrk {
    per_second: f64,
    requests: u64,
    p50: Duration,
    p99: Duration,
    /// Non-2xx answers and socket errors.
    failed: u64,
}

impl Wrk {
    fn parse(text: &str) -> Result<Self> {
        let mut wrk = Self {
            per_second: 0.0,
            requests: 0,
            p50: Duration::ZERO,
            p99: Duration::ZERO,
            failed: 0,
        };
        for line in text.lines().map(str::trim) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["Requests/sec:", n] => wrk.per_second = n.parse()?,
                [n, "requests", "in", ..] => wrk.requests = n.parse()?,
                ["50%", t] => wrk.p50 = duration(t)?,
                ["99%", t] => wrk.p99 = duration(t)?,
                ["Non-2xx", "or", "3xx", "responses:", n] => wrk.failed += n.parse::<u64>()?,
                ["Socket", "errors:", rest @ ..] => {
                    for n in rest
                        .iter()
                        .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    {
                        wrk.failed += n;
                    }
                }
                _ => {}
            }
        }
        ensure!(wrk.requests > 0, "wrk answered nothing:\n{text}");
        Ok(wrk)
    }
}

/// wrk's `1.23ms`, `456.00us`, `2.01s`.
fn duration(text: &str) -> Result<Duration> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse()?;
    let secs = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => bail!("unknown unit in {text:?}"),
    };
    Ok(Duration::from_secs_f64(secs))
}

impl Measured {
    pub(crate) fn render(&self, out: &mut String) {
        let ratio = self.hearth.per_second / self.synapse.per_second;
        let cpu_ratio = self.synapse.cpu_per_request.as_secs_f64()
            / self
                .hearth
                .cpu_per_request
                .as_secs_f64()
                .max(f64::MIN_POSITIVE);
        let _ = writeln!(
            out,
            "# Cached key queries: Hearth's notary against Synapse's\n\n\
             `POST /_matrix/key/v2/query` for one key of one server, both notaries holding it \
             in their cache; `wrk -t1 -c{CONNECTIONS}` (Debian) on loopback.\n\n\
             | notary | queries/s | p50 | p99 | queries | server CPU per query | server cores |\n\
             |---|---:|---:|---:|---:|---:|---:|"
        );
        for run in [&self.hearth, &self.synapse] {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.2} ms | {:.2} ms | {} | {:.1} µs | {:.2} |",
                run.server,
                run.per_second,
                run.p50.as_secs_f64() * 1e3,
                run.p99.as_secs_f64() * 1e3,
                run.requests,
                run.cpu_per_request.as_secs_f64() * 1e6,
                run.cpu.server,
            );
        }
        let verdict = if ratio >= STRETCH_RATIO {
            "met, stretch goal too"
        } else if ratio >= GOAL_RATIO {
            "met"
        } else {
            "not met"
        };
        let _ = writeln!(
            out,
            "\n**Throughput ratio Hearth/Synapse: {ratio:.1}×** (goal: at least {GOAL_RATIO:.0}×, \
             stretch {STRETCH_RATIO:.0}×: {verdict}). Server CPU per query: Synapse uses \
             {cpu_ratio:.1}× Hearth's.\n\n\
             **Cold query** (a query for a server Hearth never saw, as the client measures it; \
             median of {COLD_SAMPLES}): {:.2} ms, against {:.2} ms for one direct fetch of the \
             origin's keys over a new TLS connection (`curl`, best of five): {:+.2} ms.\n\n\
             For scale, the issue quotes Synapse 1.163 at {SYNAPSE_QUOTED} on this kind of \
             machine. The load generator shares the two cores with the server; the table's \
             last column is the server's own share.\n",
            self.cold.as_secs_f64() * 1e3,
            self.origin_fetch.as_secs_f64() * 1e3,
            (self.cold.as_secs_f64() - self.origin_fetch.as_secs_f64()) * 1e3,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 5s test @ http://127.0.0.1:1/_matrix/key/v2/query
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   210.00us  100.00us   3.00ms   90.00%
  Latency Distribution
     50%  180.00us
     75%  220.00us
     90%  300.00us
     99%    1.20ms
  190000 requests in 5.00s, 200.00MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 3
Requests/sec:  38000.12
Transfer/sec:     40.00MB
";
        let wrk = Wrk::parse(text).unwrap();
        assert_eq!(wrk.requests, 190_000);
        assert_eq!(wrk.p50, Duration::from_micros(180));
        assert_eq!(wrk.p99, Duration::from_micros(1200));
        assert_eq!(wrk.failed, 6);
        assert!((wrk.per_second - 38000.12).abs() < 1e-6);
    }
}
