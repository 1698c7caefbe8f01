//! matrix-js-sdk from npm, the library Element Web uses, for the end-to-end
//! test that makes Element's identity-server calls (`tests/js`). Node and
//! npm come from Debian's packages; the SDK's version is pinned in
//! `tests/js/package.json` and its lockfile.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::{debian, run_visible};

const NODE: &str = "/usr/bin/node";
const NPM: &str = "/usr/bin/npm";

/// Makes sure Node runs and `tests/js/node_modules` holds what the
/// lockfile pins; installs with `npm ci` when it does not.
pub(crate) fn setup(root: &Path) -> Result<()> {
    debian::ensure(Path::new(NODE), "nodejs")?;
    debian::ensure(Path::new(NPM), "npm")?;
    let dir = root.join("tests/js");
    if dir
        .join("node_modules/matrix-js-sdk/package.json")
        .is_file()
        && dir.join("node_modules/.package-lock.json").is_file()
    {
        eprintln!("xtask: reusing matrix-js-sdk in {}", dir.display());
        return Ok(());
    }
    eprintln!(
        "xtask: installing matrix-js-sdk from npm into {}",
        dir.display()
    );
    run_visible(
        Command::new(NPM)
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir),
    )?;
    if !dir
        .join("node_modules/matrix-js-sdk/package.json")
        .is_file()
    {
        bail!("npm ci left no matrix-js-sdk in {}", dir.display());
    }
    Ok(())
}
