//! Debian's `coturn` package, for its client tools (`turnutils_uclient`,
//! `turnutils_peer`, `turnutils_stunclient`) that the TURN interop tests
//! drive Hearth with, and for `turnserver`, which `cargo xtask bench turn`
//! measures Hearth against.

use std::path::Path;

use anyhow::Result;

use crate::debian;

/// Set for the test run once the tools are installed: the interop tests
/// then fail, rather than skip, when a tool is missing.
pub(crate) const TOOLS_VAR: &str = "HEARTH_TEST_COTURN";

/// Installs the package unless its tools are already there.
pub(crate) fn ensure() -> Result<()> {
    debian::ensure(Path::new("/usr/bin/turnutils_uclient"), "coturn")
}
