//! Project automation, run as `cargo xtask <command>`.
//!
//! Each peer the tests talk to (PostgreSQL, Python libraries such as
//! `signedjson` and `aiosmtpd`, Synapse, Sydent, Chromium) lives in its own
//! module. A
//! peer is set up before the test run, hands over the environment variables
//! that point the tests at it, and stops what it started when dropped. The
//! end-to-end suite (`tests/`, package `hearth-e2e`) also gets a freshly
//! built `hearth` binary in `HEARTH_BIN`.

mod bench;
mod browser;
mod coturn;
mod debian;
mod dist;
mod node;
mod postgres;
mod python;
mod sydent;
mod synapse;

use std::env;
use std::ffi::{OsStr, OsString};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [args...]

commands:
  test [args...]   set up PostgreSQL, the Python peers and the hearth binary,
                   then run every test in the workspace; args go to
                   `cargo nextest run` (or `cargo test`)
  bench [options]  measure Hearth's hashed lookups against Sydent's and
                   write target/bench/report.md; `bench --help` lists options
  bench turn [...] Hearth's TURN relay against coturn; `bench turn --help`
  dist [options]   build the .deb and .rpm packages; `dist --help` lists options
  help             show this message";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        Some("dist") => dist::dist(&args[1..]),
        Some("help" | "-h" | "--help") => {
            eprintln!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => {
            if let Some(command) = other {
                eprintln!("xtask: unknown command {command:?}");
            }
            eprintln!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    };
    result.unwrap_or_else(|error| {
        eprintln!("xtask: error: {error:#}");
        ExitCode::FAILURE
    })
}

/// The package holding the end-to-end suite, which needs the binary built.
const E2E_PACKAGE: &str = "hearth-e2e";
/// The package whose interop tests run coturn's client tools.
const TURN_PACKAGE: &str = "hearth-turn";
/// The variable the end-to-end harness reads to find the binary.
const HEARTH_BIN_VAR: &str = "HEARTH_BIN";
/// dnsmasq from Debian's dnsmasq-base, and the variable naming it.
const DNSMASQ: &str = "/usr/sbin/dnsmasq";
const DNSMASQ_VAR: &str = "HEARTH_TEST_DNSMASQ";

/// `cargo xtask test`: peers up, tests, peers down, the runner's exit code.
fn test(args: &[String]) -> Result<ExitCode> {
    let root = workspace_root();
    let runner = Runner::detect();
    // Bound for the whole run: dropping it stops the server, on every path.
    let postgres = postgres::Postgres::setup(&root)?;
    let mut env: Vec<(&str, OsString)> = vec![(postgres::URL_VAR, postgres.url().into())];
    if runs_package(args, TURN_PACKAGE) {
        coturn::ensure()?;
        env.push((coturn::TOOLS_VAR, "1".into()));
    }
    if runs_package(args, E2E_PACKAGE) {
        let python = python::Python::setup(&root)?;
        env.push((python::PYTHON_VAR, python.interpreter().into()));
        let synapse = synapse::Synapse::setup(&root)?;
        env.push((synapse::PYTHON_VAR, synapse.interpreter().into()));
        let sydent = sydent::Sydent::setup(&root)?;
        env.push((sydent::PYTHON_VAR, sydent.python().into()));
        // A real DNS server for server-name resolution (notary tests).
        debian::ensure(Path::new(DNSMASQ), "dnsmasq-base")?;
        env.push((DNSMASQ_VAR, DNSMASQ.into()));
        let browser = browser::Browser::setup(&root)?;
        env.push((browser::CHROMIUM_VAR, browser.chromium().into()));
        env.push((browser::PLAYWRIGHT_VAR, browser.node_modules().into()));
        // matrix-js-sdk for Element's calls (tests/js).
        node::setup(&root)?;
        let bin = hearth_binary(&root, runner, args)?;
        operator_peers(&root, &bin, &mut env)?;
        env.push((HEARTH_BIN_VAR, bin.into()));
    }
    let status = run_tests(&root, runner, args, &env)?;
    drop(postgres);
    Ok(exit_code(status))
}

/// What the operator tests (`tests/tests/operators.rs`) check: the
/// packages built from this binary, and Debian's compose CLI and
/// systemd-analyze to validate docker-compose.yml and the unit.
fn operator_peers(root: &Path, bin: &Path, env: &mut Vec<(&str, OsString)>) -> Result<()> {
    let out = target_dir(root).join("dist-test");
    eprintln!("xtask: packaging {} into {}", bin.display(), out.display());
    let packages = dist::build(root, bin, &out, dist::Compression::Fast)?;
    env.push((dist::DEB_VAR, packages.deb.into()));
    env.push((dist::RPM_VAR, packages.rpm.into()));
    debian::ensure(Path::new(COMPOSE), "docker-compose")?;
    env.push((COMPOSE_VAR, COMPOSE.into()));
    debian::ensure(Path::new(SYSTEMD_ANALYZE), "systemd")?;
    env.push((SYSTEMD_ANALYZE_VAR, SYSTEMD_ANALYZE.into()));
    Ok(())
}

/// Debian's docker-compose (1.29, Python): `config` validates a file
/// without a Docker engine.
const COMPOSE: &str = "/usr/bin/docker-compose";
const COMPOSE_VAR: &str = "HEARTH_TEST_COMPOSE";
const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";
const SYSTEMD_ANALYZE_VAR: &str = "HEARTH_TEST_SYSTEMD_ANALYZE";

/// Who runs the tests: nextest when installed (faster, clearer output),
/// else `cargo test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runner {
    Nextest,
    CargoTest,
}

impl Runner {
    fn detect() -> Self {
        if has_nextest() {
            Self::Nextest
        } else {
            eprintln!("xtask: cargo-nextest not found, using cargo test");
            Self::CargoTest
        }
    }

    /// The flag that picks a cargo profile: nextest's own `--profile` means
    /// something else.
    fn profile_flag(self) -> &'static str {
        match self {
            Self::Nextest => "--cargo-profile",
            Self::CargoTest => "--profile",
        }
    }
}

fn run_tests(
    root: &Path,
    runner: Runner,
    args: &[String],
    env: &[(&str, OsString)],
) -> Result<ExitStatus> {
    let mut cmd = cargo_command();
    match runner {
        Runner::Nextest => cmd.args(["nextest", "run"]),
        Runner::CargoTest => cmd.arg("test"),
    };
    // Cargo lets `--workspace` win over `-p`, so leave it out when the caller
    // picked packages; otherwise `cargo xtask test -p foo` would run it all.
    if !selects_packages(args) {
        cmd.arg("--workspace");
    }
    cmd.arg("--no-fail-fast").args(args).current_dir(root);
    cmd.envs(env.iter().map(|(key, value)| (OsStr::new(key), value)));
    eprintln!("xtask: running {}", describe(&cmd));
    cmd.status().context("could not start the test runner")
}

/// The `hearth` binary for the end-to-end suite: `HEARTH_BIN` when the
/// caller set it, else built now with the profile the tests are built with.
fn hearth_binary(root: &Path, runner: Runner, args: &[String]) -> Result<PathBuf> {
    if let Some(bin) = env::var_os(HEARTH_BIN_VAR).filter(|bin| !bin.is_empty()) {
        eprintln!("xtask: using the hearth binary from {HEARTH_BIN_VAR}");
        return Ok(bin.into());
    }
    let profile = cargo_profile(runner, args);
    let mut cmd = cargo_command();
    cmd.args(["build", "--package", "hearth", "--profile", profile])
        .current_dir(root);
    eprintln!("xtask: building the hearth binary ({})", describe(&cmd));
    run_visible(&mut cmd)?;
    let bin = target_dir(root)
        .join(profile_dir(profile))
        .join(format!("hearth{}", env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!("cargo built no binary at {}", bin.display());
    }
    eprintln!("xtask: {HEARTH_BIN_VAR}={}", bin.display());
    Ok(bin)
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (which `.ci/run` sets),
/// relative to the root, where cargo runs; else `target/` in the root.
fn target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Where the test peers (PostgreSQL cluster, virtualenvs) live, written
/// `<peers>` in comments: `HEARTH_PEERS_DIR`, else `peers` in cargo's target
/// directory, so a build cache that outlives the clone (`.ci/run`) keeps
/// them too.
pub(crate) fn peers_dir(root: &Path) -> PathBuf {
    peers_dir_from(root, env::var_os(PEERS_DIR_VAR), &target_dir(root))
}

fn peers_dir_from(root: &Path, var: Option<OsString>, target: &Path) -> PathBuf {
    match var.filter(|dir| !dir.is_empty()) {
        Some(dir) => root.join(dir),
        None => target.join("peers"),
    }
}

/// The variable that puts the test peers elsewhere.
const PEERS_DIR_VAR: &str = "HEARTH_PEERS_DIR";

/// The cargo profile the runner arguments (before any `--`) ask for.
fn cargo_profile(runner: Runner, args: &[String]) -> &str {
    let flag = runner.profile_flag();
    let mut profile = "dev";
    let mut args = args.iter().take_while(|arg| *arg != "--");
    while let Some(arg) = args.next() {
        if arg == "--release" || arg == "-r" {
            profile = "release";
        } else if arg == flag {
            if let Some(name) = args.next() {
                profile = name;
            }
        } else if let Some(name) = arg
            .strip_prefix(flag)
            .and_then(|rest| rest.strip_prefix('='))
        {
            profile = name;
        }
    }
    profile
}

/// The directory under the target directory that a profile builds into.
fn profile_dir(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    }
}

fn has_nextest() -> bool {
    cargo_command()
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The packages the runner arguments (before any `--`) name.
fn selected_packages(args: &[String]) -> Vec<&str> {
    let mut packages = Vec::new();
    let mut args = args.iter().take_while(|arg| *arg != "--");
    while let Some(arg) = args.next() {
        if arg == "-p" || arg == "--package" {
            packages.extend(args.next().map(String::as_str));
        } else if let Some(name) = arg.strip_prefix("--package=") {
            packages.push(name);
        } else if let Some(name) = arg.strip_prefix("-p") {
            packages.push(name);
        }
    }
    packages
}

/// Whether the run includes `package`: every package runs unless some are
/// picked.
fn runs_package(args: &[String], package: &str) -> bool {
    let picked = selected_packages(args);
    !selects_packages(args) || picked.contains(&package)
}

/// Whether the runner arguments (before any `--`) name packages.
fn selects_packages(args: &[String]) -> bool {
    args.iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| arg == "--package" || arg.starts_with("--package=") || arg.starts_with("-p"))
}

/// The cargo that runs us, so a toolchain override applies to the tests too.
fn cargo() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A cargo command without the variables `cargo run` set for xtask itself
/// (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, ...). Build scripts such as
/// ring's declare `rerun-if-env-changed` on them, and cargo compares the
/// values in its own environment: left in, every `cargo xtask test` would
/// rebuild ring, rustls and sqlx, and so would the next plain `cargo build`.
fn cargo_command() -> Command {
    let mut cmd = Command::new(cargo());
    for (key, _) in env::vars_os() {
        if is_package_var(&key.to_string_lossy()) {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Whether cargo sets `name` for the package it runs, rather than the user
/// setting it for cargo.
fn is_package_var(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(
            name,
            "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

/// The workspace root: this crate sits directly inside it.
fn workspace_root() -> PathBuf {
    // What `cargo run` sets now, before what was compiled in: cargo may
    // reuse an xtask binary built from another checkout of the same tree
    // (a git worktree since removed) sharing CARGO_TARGET_DIR.
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.clone(), Path::to_path_buf)
}

/// Maps a child's status to ours; a signal becomes 128 + signal, as in shells.
fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Whether we run as root, which PostgreSQL refuses and apt-get requires.
fn is_root() -> Result<bool> {
    Ok(output(Command::new("id").arg("-u"))?.trim() == "0")
}

/// Runs `cmd` to completion, capturing its output, and fails with that output
/// when it fails: quiet on success, everything needed to debug otherwise.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with its output shown, for slow steps where progress matters.
fn run_visible(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

/// The command line, for progress and error messages.
fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let name = program.file_name().unwrap_or(program.as_os_str());
    let mut line = name.to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

#[cfg(test)]
mod tests {
    use super::{
        Runner, cargo_profile, is_package_var, peers_dir_from, profile_dir, runs_package,
        selected_packages, selects_packages,
    };
    use std::path::Path;

    #[test]
    fn peers_live_beside_the_build_cache_unless_placed() {
        let root = Path::new("/src/hearth");
        let cache = Path::new("/var/cache/hearth/target");
        assert_eq!(
            peers_dir_from(root, None, cache),
            Path::new("/var/cache/hearth/target/peers")
        );
        assert_eq!(
            peers_dir_from(root, Some("".into()), cache),
            Path::new("/var/cache/hearth/target/peers")
        );
        assert_eq!(
            peers_dir_from(root, Some("/opt/peers".into()), cache),
            Path::new("/opt/peers")
        );
        // Relative to the workspace, where cargo runs.
        assert_eq!(
            peers_dir_from(root, Some("target/peers".into()), cache),
            Path::new("/src/hearth/target/peers")
        );
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| (*arg).to_owned()).collect()
    }

    #[test]
    fn package_selection_is_detected_before_the_separator_only() {
        assert!(selects_packages(&args(&["-p", "hearth-core"])));
        assert!(selects_packages(&args(&["-phearth-core"])));
        assert!(selects_packages(&args(&["--package=hearth-core"])));
        assert!(!selects_packages(&args(&["--release"])));
        assert!(!selects_packages(&args(&["--", "-p"])));
    }

    #[test]
    fn picked_packages_are_read_in_every_spelling() {
        let list = args(&[
            "-p",
            "a",
            "-pb",
            "--package",
            "c",
            "--package=d",
            "--",
            "-p",
            "e",
        ]);
        assert_eq!(selected_packages(&list), ["a", "b", "c", "d"]);
        assert!(runs_package(&args(&[]), "hearth-e2e"));
        assert!(runs_package(&args(&["-p", "hearth-e2e"]), "hearth-e2e"));
        assert!(!runs_package(&args(&["-p", "hearth-core"]), "hearth-e2e"));
    }

    #[test]
    fn the_binary_is_built_with_the_profile_of_the_tests() {
        let profile = |runner, list: &[&str]| cargo_profile(runner, &args(list)).to_owned();
        assert_eq!(profile(Runner::Nextest, &[]), "dev");
        assert_eq!(profile(Runner::Nextest, &["--release"]), "release");
        assert_eq!(profile(Runner::Nextest, &["--cargo-profile", "ci"]), "ci");
        // nextest's own --profile picks a nextest profile, not a cargo one.
        assert_eq!(profile(Runner::Nextest, &["--profile", "ci"]), "dev");
        assert_eq!(profile(Runner::CargoTest, &["--profile=bench"]), "bench");
        assert_eq!(profile(Runner::CargoTest, &["--", "--release"]), "dev");
        assert_eq!(profile_dir("dev"), "debug");
        assert_eq!(profile_dir("bench"), "release");
        assert_eq!(profile_dir("ci"), "ci");
    }

    #[test]
    fn only_the_variables_cargo_sets_for_xtask_are_dropped() {
        for name in [
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_LINKS",
            "CARGO_CRATE_NAME",
        ] {
            assert!(is_package_var(name), "{name}");
        }
        for name in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_TERM_COLOR",
            "RUSTFLAGS",
        ] {
            assert!(!is_package_var(name), "{name}");
        }
    }
}
