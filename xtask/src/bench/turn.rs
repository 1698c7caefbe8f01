//! `cargo xtask bench turn`: Hearth's TURN relay against coturn from
//! Debian, on this machine, in one run, under the same load from coturn's
//! own `turnutils_uclient` (UDP, channels, echoed by `turnutils_peer`).
//!
//! For each server and each client count: start the server alone, run the
//! load, read the server's CPU time from `/proc/<pid>/stat` before and
//! after, and parse uclient's totals. Then each server again holding 1,000
//! allocations, for memory per allocation. Writes
//! `<target dir>/bench/turn.md` and prints it.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::server::Server;
use crate::{cargo_command, coturn, describe, output, run_visible, target_dir, workspace_root};

/// Not a secret: both servers listen on loopback only, for minutes.
const SECRET: &str = "xtask-bench-turn";
const REALM: &str = "bench.localhost";
const HEARTH_PORT: u16 = 34780;
const COTURN_PORT: u16 = 34790;
const PEER_PORT: u16 = 34800;
const MIN_RELAY: u16 = 40000;
const MAX_RELAY: u16 = 59999;
const MESSAGE_LEN: &str = "200";
/// Raises the descriptor limit to the hard one: 1,000 allocations need
/// more than the usual soft limit of 1,024.
const RAISE_NOFILE: &str = "ulimit -n \"$(ulimit -Hn)\"";
/// Allocations held for the memory measurement.
const HELD: usize = 1000;

pub(crate) const USAGE: &str = "\
usage: cargo xtask bench turn [--quick] [--messages N] [--interval MS] [--rounds N]

Relays UDP channel data through Hearth's TURN server and through coturn
(Debian's package, installed when missing), 100 then 400 turnutils_uclient
clients each sending N 200-byte messages every MS milliseconds to a
turnutils_peer that echoes them back. Then holds 1,000 allocations on each.
Writes <target dir>/bench/turn.md.

  --quick          200 messages per client instead of 1000
  --messages N     messages per client (default 1000)
  --interval MS    milliseconds between one client's messages (default 20)
  --rounds N       runs of each load per server, alternating servers; the
                   ratios compare medians (default 1)";

#[derive(Debug, Clone, Copy)]
struct Options {
    messages: u32,
    interval_ms: u32,
    rounds: u32,
}

impl Options {
    fn parse(args: &[String]) -> Result<Option<Self>> {
        let mut options = Self {
            messages: 1000,
            interval_ms: 20,
            rounds: 1,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut number = |name: &str| -> Result<u32> {
                args.next()
                    .with_context(|| format!("{name} needs a value"))?
                    .parse()
                    .with_context(|| format!("{name} needs a number"))
            };
            match arg.as_str() {
                "--quick" => options.messages = 200,
                "--messages" => options.messages = number("--messages")?,
                "--interval" => options.interval_ms = number("--interval")?,
                "--rounds" => options.rounds = number("--rounds")?.max(1),
                "-h" | "--help" => return Ok(None),
                other => bail!("unknown option {other:?}\n{USAGE}"),
            }
        }
        Ok(Some(options))
    }
}

/// One server under one load.
#[derive(Debug, Clone, Copy)]
struct Load {
    clients: u32,
    sent: u64,
    received: u64,
    lost: u64,
    seconds: f64,
    cpu_seconds: f64,
    /// From uclient's first progress line with messages sent to its exit:
    /// the relaying alone, without its tens of seconds of set-up.
    relaying: Window,
}

#[derive(Debug, Clone, Copy, Default)]
struct Window {
    relayed: u64,
    cpu_seconds: f64,
}

impl Window {
    fn cpu_per_100k(&self) -> f64 {
        self.cpu_seconds * 100_000.0 / self.relayed.max(1) as f64
    }
}

impl Load {
    /// Every echoed message crosses the relay twice: to the peer, back.
    fn relayed(&self) -> u64 {
        self.sent + self.received
    }

    fn per_second(&self) -> f64 {
        self.relayed() as f64 / self.seconds
    }

    fn cpu_per_100k(&self) -> f64 {
        self.cpu_seconds * 100_000.0 / self.relayed().max(1) as f64
    }

    fn loss(&self) -> f64 {
        100.0 * self.lost as f64 / self.sent.max(1) as f64
    }
}

/// The two servers, in the order each round runs them.
const SERVERS: [&str; 2] = ["Hearth", "coturn"];
const CLIENTS: [u32; 2] = [100, 400];

/// One server's memory: KiB resident idle, then holding `held`
/// allocations.
#[derive(Debug)]
struct Memory {
    name: &'static str,
    idle_kib: u64,
    held_kib: u64,
    held: usize,
}

impl Memory {
    fn per_allocation_kib(&self) -> f64 {
        self.held_kib.saturating_sub(self.idle_kib) as f64 / self.held.max(1) as f64
    }
}

pub(crate) fn bench(args: &[String]) -> Result<()> {
    let Some(options) = Options::parse(args)? else {
        eprintln!("{USAGE}");
        return Ok(());
    };
    coturn::ensure()?;
    let root = workspace_root();
    let hearth = build_server(&root)?;
    let out = target_dir(&root).join("bench").join("turn");
    fs::create_dir_all(&out).with_context(|| format!("could not create {}", out.display()))?;
    let tick = clock_ticks()?;
    let hearth_config = out.join("hearth-turn.toml");
    fs::write(&hearth_config, hearth_toml())?;

    let _peer = Peer::start(&out)?;
    // Servers alternate within each round, so a slow spell of this shared
    // machine falls on both rather than on one.
    let mut runs = Vec::new();
    for round in 1..=options.rounds {
        for clients in CLIENTS {
            for name in SERVERS {
                let server = start(name, &hearth, &hearth_config, &out)?;
                eprintln!("xtask: round {round}");
                runs.push((name, measure(&server, name, clients, options, tick, &out)?));
            }
        }
    }
    let mut memory = Vec::new();
    for name in SERVERS {
        let (idle_kib, held_kib, held) =
            hold(&start(name, &hearth, &hearth_config, &out)?, name, &out)?;
        memory.push(Memory {
            name,
            idle_kib,
            held_kib,
            held,
        });
    }
    let report = render(&runs, &memory, options, &coturn_version());
    let path = target_dir(&root).join("bench").join("turn.md");
    fs::write(&path, &report).with_context(|| format!("could not write {}", path.display()))?;
    eprintln!("{report}");
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

/// The standalone TURN server, release build: the crate's example runs the
/// same `Server` as `hearth turn`, without the database and admin listener
/// that would add to the measured process but not to the relay.
fn build_server(root: &Path) -> Result<PathBuf> {
    let mut cmd = cargo_command();
    cmd.args([
        "build",
        "--release",
        "--package",
        "hearth-turn",
        "--example",
        "turn_server",
    ])
    .current_dir(root);
    eprintln!("xtask: building the TURN server ({})", describe(&cmd));
    run_visible(&mut cmd)?;
    let bin = target_dir(root)
        .join("release")
        .join("examples")
        .join("turn_server");
    if !bin.is_file() {
        bail!("cargo built no binary at {}", bin.display());
    }
    Ok(bin)
}

fn hearth_toml() -> String {
    format!(
        "realm = \"{REALM}\"\n\
         shared_secret = \"{SECRET}\"\n\
         udp = [\"127.0.0.1:{HEARTH_PORT}\"]\n\
         tcp = []\n\
         tls = []\n\
         relay_ip = [\"127.0.0.1\"]\n\
         min_port = {MIN_RELAY}\n\
         max_port = {MAX_RELAY}\n\
         allowed_peer_ips = [\"127.0.0.1\"]\n\
         user_quota = 0\n\
         total_quota = 0\n"
    )
}

/// Starts a server under a shell that raises its descriptor limit first,
/// and waits until it answers a STUN Binding request.
fn start(name: &'static str, hearth: &Path, config: &Path, out: &Path) -> Result<Server> {
    let (program, port) = if name == "Hearth" {
        (
            format!("{} {}", hearth.display(), config.display()),
            HEARTH_PORT,
        )
    } else {
        (
            format!(
                "turnserver -n --no-cli --no-tls --no-dtls --log-file=stdout \
                 --listening-ip=127.0.0.1 --listening-port={COTURN_PORT} \
                 --relay-ip=127.0.0.1 --min-port={MIN_RELAY} --max-port={MAX_RELAY} \
                 --use-auth-secret --static-auth-secret={SECRET} --realm={REALM} \
                 --allow-loopback-peers --no-tcp-relay"
            ),
            COTURN_PORT,
        )
    };
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{RAISE_NOFILE} && exec {program}"));
    let log = out.join(format!("{}.log", name.to_lowercase()));
    let mut server = Server::start(name, cmd, &log)?;
    let probe = UdpSocket::bind("127.0.0.1:0")?;
    probe.set_read_timeout(Some(Duration::from_millis(100)))?;
    server.wait_for(Duration::from_secs(20), "STUN answer", |_| {
        stun_answers(&probe, port)
    })?;
    Ok(server)
}

fn stun_answers(probe: &UdpSocket, port: u16) -> bool {
    let mut binding = [0u8; 20];
    binding[..2].copy_from_slice(&[0x00, 0x01]);
    binding[4..8].copy_from_slice(&0x2112_a442u32.to_be_bytes());
    binding[8..20].copy_from_slice(b"xtask-bench!");
    if probe.send_to(&binding, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    probe
        .recv(&mut buf)
        .is_ok_and(|n| n >= 20 && buf[..2] == [0x01, 0x01])
}

/// A `turnutils_peer` echoing for the whole run.
struct Peer(Child);

impl Peer {
    fn start(out: &Path) -> Result<Self> {
        let log = fs::File::create(out.join("peer.log"))?;
        let child = Command::new("turnutils_peer")
            .args(["-L", "127.0.0.1", "-p", &PEER_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("could not start turnutils_peer")?;
        thread::sleep(Duration::from_millis(300));
        Ok(Self(child))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn port_of(name: &str) -> u16 {
    if name == "Hearth" {
        HEARTH_PORT
    } else {
        COTURN_PORT
    }
}

fn uclient(name: &str, clients: u32, messages: u32, interval_ms: u32, hang: bool) -> Command {
    let mut cmd = Command::new("sh");
    let flags = format!(
        "-e 127.0.0.1 -r {PEER_PORT} -p {} -W {SECRET} -u bench \
         -m {clients} -n {messages} -l {MESSAGE_LEN} -z {interval_ms} -c -X{}",
        port_of(name),
        if hang { " -h" } else { "" }
    );
    cmd.arg("-c").arg(format!(
        "{RAISE_NOFILE} && exec turnutils_uclient {flags} 127.0.0.1"
    ));
    cmd
}

fn measure(
    server: &Server,
    name: &str,
    clients: u32,
    options: Options,
    tick: f64,
    out: &Path,
) -> Result<Load> {
    eprintln!("xtask: {name}, {clients} clients");
    let before = cpu_ticks(server.pid())?;
    let started = Instant::now();
    let mut cmd = uclient(name, clients, options.messages, options.interval_ms, false);
    let errors = out.join(format!("{}-uclient.log", name.to_lowercase()));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&errors)?)
        .spawn()
        .context("could not start turnutils_uclient")?;
    let stdout = child.stdout.take().context("uclient's output")?;
    let mut text = String::new();
    // (CPU ticks, packets relayed) at the first progress line showing
    // messages sent.
    let mut relaying_from = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if relaying_from.is_none()
            && let Some((sent, received)) = progress(&line)
            && sent > 0
        {
            relaying_from = Some((cpu_ticks(server.pid())?, sent + received));
        }
        text.push_str(&line);
        text.push('\n');
    }
    let status = child.wait()?;
    let after = cpu_ticks(server.pid())?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "turnutils_uclient failed ({status}); see {}",
            errors.display()
        );
    }
    let (sent, received, lost) = totals(&text)
        .with_context(|| format!("no totals in turnutils_uclient's output:\n{text}"))?;
    let relaying = relaying_from.map_or_else(Window::default, |(ticks, relayed)| Window {
        relayed: (sent + received).saturating_sub(relayed),
        cpu_seconds: after.saturating_sub(ticks) as f64 / tick,
    });
    Ok(Load {
        clients,
        sent,
        received,
        lost,
        seconds,
        cpu_seconds: (after - before) as f64 / tick,
        relaying,
    })
}

/// Messages sent and received so far, from a uclient progress line.
fn progress(line: &str) -> Option<(u64, u64)> {
    if !line.contains("start_mclient: ") {
        return None;
    }
    Some((
        number_after(line, "tot_send_msgs=")?,
        number_after(line, "tot_recv_msgs=")?,
    ))
}

fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// Resident KiB idle, then holding at least `HELD` allocations (uclient
/// `-h` keeps them until killed), and how many it held. Both servers open
/// two sockets per UDP allocation (the relay, and one connected to the
/// client), so allocations are counted from the server's descriptors:
/// uclient's own count is no use, as it abandons and retries some.
fn hold(server: &Server, name: &str, out: &Path) -> Result<(u64, u64, usize)> {
    let idle = server.memory()?.rss_kib;
    let idle_fds = open_fds(server.pid())?;
    let log = out.join(format!("{}-hold.log", name.to_lowercase()));
    let file = fs::File::create(&log)?;
    let mut cmd = uclient(name, HELD as u32, 1, 20, true);
    let mut client = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("could not start turnutils_uclient")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let allocations = |fds: usize| fds.saturating_sub(idle_fds) / 2;
    while allocations(open_fds(server.pid())?) < HELD && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    // Let the last responses settle.
    thread::sleep(Duration::from_secs(1));
    let held = server.memory()?.rss_kib;
    let count = allocations(open_fds(server.pid())?);
    let _ = client.kill();
    let _ = client.wait();
    if count == 0 {
        bail!("{name} held no allocation; see {}", log.display());
    }
    Ok((idle, held, count))
}

fn open_fds(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(fs::read_dir(&dir)
        .with_context(|| format!("could not read {dir}"))?
        .count())
}

/// uclient's closing totals: sent, received, lost.
fn totals(text: &str) -> Option<(u64, u64, u64)> {
    let mut totals = (None, None);
    for line in text.lines() {
        if line.contains("start_mclient: tot_send_msgs=") {
            totals.0 = progress(line);
        }
        if line.contains("Total lost packets ") {
            totals.1 = number_after(line, "Total lost packets ");
        }
    }
    let ((sent, received), lost) = (totals.0?, totals.1?);
    Some((sent, received, lost))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th of the whole line.
    let rest = &stat[stat.rfind(')').context("no command name")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("short stat")?.parse()?;
    let stime: u64 = fields.get(12).context("short stat")?.parse()?;
    Ok(utime + stime)
}

fn clock_ticks() -> Result<f64> {
    Ok(output(Command::new("getconf").arg("CLK_TCK"))?
        .trim()
        .parse()?)
}

fn coturn_version() -> String {
    Command::new("turnserver")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The median of some values (the mean of the middle two for an even
/// count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn render(
    runs: &[(&'static str, Load)],
    memory: &[Memory],
    options: Options,
    coturn: &str,
) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# TURN relay: Hearth vs coturn {coturn}\n");
    let _ = writeln!(
        r,
        "turnutils_uclient, UDP, channels, {} × {MESSAGE_LEN}-byte messages per client \
         every {} ms, echoed by turnutils_peer; loopback; `nproc` = {}; {} round(s), \
         the servers alternating. CPU is the server's utime + stime: over the whole \
         run (uclient's set-up included), and over the relaying alone (from uclient's \
         first progress line with messages sent).\n",
        options.messages,
        options.interval_ms,
        thread::available_parallelism().map_or(0, |n| n.get()),
        options.rounds
    );
    let _ = writeln!(
        r,
        "| server | clients | relayed packets | packets/s | loss | server CPU s | \
         CPU s per 100k, whole run | CPU s per 100k, relaying |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|---|---|---|");
    for (name, l) in runs {
        let _ = writeln!(
            r,
            "| {name} | {} | {} | {:.0} | {:.2} % ({}) | {:.2} | {:.3} | {:.3} |",
            l.clients,
            l.relayed(),
            l.per_second(),
            l.loss(),
            l.lost,
            l.cpu_seconds,
            l.cpu_per_100k(),
            l.relaying.cpu_per_100k()
        );
    }
    let medians = |server: &str, clients: u32, f: fn(&Load) -> f64| {
        median(
            runs.iter()
                .filter(|(name, l)| *name == server && l.clients == clients)
                .map(|(_, l)| f(l))
                .collect(),
        )
    };
    let ratio = |clients, f: fn(&Load) -> f64| {
        medians("Hearth", clients, f) / medians("coturn", clients, f).max(f64::MIN_POSITIVE)
    };
    let _ = writeln!(
        r,
        "\n| clients | CPU per packet, Hearth ÷ coturn, whole run | \
         CPU per packet, Hearth ÷ coturn, relaying | packets/s, Hearth ÷ coturn |"
    );
    let _ = writeln!(r, "|---|---|---|---|");
    for clients in CLIENTS {
        let _ = writeln!(
            r,
            "| {clients} | {:.2} | {:.2} | {:.2} |",
            ratio(clients, Load::cpu_per_100k),
            ratio(clients, |l| l.relaying.cpu_per_100k()),
            ratio(clients, Load::per_second)
        );
    }
    let _ = writeln!(r, "\nMemory holding about {HELD} allocations:\n");
    let _ = writeln!(
        r,
        "| server | allocations | idle RSS MiB | RSS MiB | KiB per allocation |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|");
    for m in memory {
        let _ = writeln!(
            r,
            "| {} | {} | {:.1} | {:.1} | {:.1} |",
            m.name,
            m.held,
            m.idle_kib as f64 / 1024.0,
            m.held_kib as f64 / 1024.0,
            m.per_allocation_kib()
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::{median, progress, totals};

    #[test]
    fn uclient_totals_are_parsed() {
        let text = "\
1: : start_mclient: msz=2, tot_send_msgs=0, tot_recv_msgs=0, tot_send_bytes ~ 0
4: : start_mclient: tot_send_msgs=40, tot_recv_msgs=38
4: : Total lost packets 2 (5.000000%), total send dropped 0 (0.000000%)";
        assert_eq!(totals(text), Some((40, 38, 2)));
        assert_eq!(totals("nothing"), None);
    }

    /// The relaying window opens at the first progress line with
    /// messages sent, as uclient 4.6.1 prints it each second.
    #[test]
    fn progress_lines_are_parsed() {
        let line = "3: : start_mclient: msz=10, tot_send_msgs=25, tot_recv_msgs=24, \
                    tot_send_bytes ~ 5000, tot_recv_bytes ~ 4800";
        assert_eq!(progress(line), Some((25, 24)));
        assert_eq!(progress("0: : Total connect time is 1"), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }
}
