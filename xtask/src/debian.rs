//! Programs from Debian's packages that tests run as peers: installed with
//! apt-get when missing (root only), so a fresh machine passes.

use crate::{is_root, run_visible};
use anyhow::{Result, bail};
use std::path::Path;
use std::process::Command;

/// Makes sure `program` exists, installing `package` when it does not.
pub(crate) fn ensure(program: &Path, package: &str) -> Result<()> {
    if program.is_file() {
        return Ok(());
    }
    if !is_root()? {
        bail!(
            "{} not found; install Debian's {package} package",
            program.display()
        );
    }
    eprintln!(
        "xtask: {} not found, installing {package} with apt-get",
        program.display()
    );
    let apt = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run_visible(apt().args(["-q", "update"]))?;
    run_visible(apt().args(["-q", "install", "-y", "--no-install-recommends", package]))?;
    if !program.is_file() {
        bail!(
            "apt-get installed {package}, but {} is still missing",
            program.display()
        );
    }
    Ok(())
}

/// Installs `package` with apt-get (as root), without recommends.
pub(crate) fn install(package: &str) -> Result<()> {
    eprintln!("xtask: installing Debian's {package} with apt-get");
    let apt = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run_visible(apt().args(["-q", "update"]))?;
    run_visible(apt().args(["-q", "install", "-y", "--no-install-recommends", package]))
}
