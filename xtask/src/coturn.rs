//! Debian's `coturn` package, for its client tools (`turnutils_uclient`,
//! `turnutils_peer`, `turnutils_stunclient`) that the TURN interop tests
//! drive Hearth with, and for `turnserver`, which `cargo xtask bench`
//! measures Hearth against.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use crate::{is_root, run_visible};

/// Set for the test run once the tools are installed: the interop tests
/// then fail, rather than skip, when a tool is missing.
pub(crate) const TOOLS_VAR: &str = "HEARTH_TEST_COTURN";

/// The tools the tests and the bench run.
pub(crate) const TOOLS: [&str; 4] = [
    "turnutils_uclient",
    "turnutils_peer",
    "turnutils_stunclient",
    "turnserver",
];

/// Where `tool` is on `PATH`, if anywhere.
pub(crate) fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Installs the package unless every tool is already there.
pub(crate) fn ensure() -> Result<()> {
    if TOOLS.iter().all(|tool| find(tool).is_some()) {
        return Ok(());
    }
    if !is_root()? {
        bail!(
            "coturn's tools are missing; install Debian's coturn package (apt-get install coturn)"
        );
    }
    eprintln!("xtask: coturn's tools not found, installing coturn with apt-get");
    let apt = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run_visible(apt().args(["-q", "update"]))?;
    run_visible(apt().args(["-q", "install", "-y", "--no-install-recommends", "coturn"]))?;
    if let Some(missing) = TOOLS.iter().find(|tool| find(tool).is_none()) {
        bail!("apt-get installed coturn but {missing} is not on PATH");
    }
    Ok(())
}
