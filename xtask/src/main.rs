//! Project automation, run as `cargo xtask <command>`.
//!
//! Each peer the tests talk to (PostgreSQL today; Synapse, an SMTP capture
//! server later) lives in its own module. A peer is set up before the test
//! run, hands over the environment variables that point the tests at it, and
//! stops what it started when dropped.

mod postgres;

use std::env;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [args...]

commands:
  test [args...]   set up PostgreSQL, then run every test in the workspace;
                   args go to `cargo nextest run` (or `cargo test`)
  help             show this message";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
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

/// `cargo xtask test`: peers up, tests, peers down, the runner's exit code.
fn test(args: &[String]) -> Result<ExitCode> {
    let root = workspace_root();
    // Bound for the whole run: dropping it stops the server, on every path.
    let postgres = postgres::Postgres::setup(&root)?;
    let env = [(postgres::URL_VAR, postgres.url())];
    let status = run_tests(&root, args, &env)?;
    drop(postgres);
    Ok(exit_code(status))
}

/// Runs nextest when installed (faster, clearer output), else `cargo test`.
fn run_tests(root: &Path, args: &[String], env: &[(&str, &str)]) -> Result<ExitStatus> {
    let mut cmd = Command::new(cargo());
    if has_nextest() {
        cmd.args(["nextest", "run"]);
    } else {
        eprintln!("xtask: cargo-nextest not found, using cargo test");
        cmd.arg("test");
    }
    // Cargo lets `--workspace` win over `-p`, so leave it out when the caller
    // picked packages; otherwise `cargo xtask test -p foo` would run it all.
    if !selects_packages(args) {
        cmd.arg("--workspace");
    }
    cmd.arg("--no-fail-fast").args(args).current_dir(root);
    cmd.envs(env.iter().copied());
    eprintln!("xtask: running {}", describe(&cmd));
    cmd.status().context("could not start the test runner")
}

fn has_nextest() -> bool {
    Command::new(cargo())
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
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

/// The workspace root: this crate sits directly inside it.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
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
    use super::selects_packages;

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
}
