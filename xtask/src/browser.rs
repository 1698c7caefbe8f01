//! The browser the integration manager's end-to-end test drives: Debian's
//! Chromium (installed with apt-get when missing, never a downloaded
//! browser build) and playwright-core from npm, which only talks to it, in
//! `<peers>/browser`. Node.js is the machine's.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{debian, run_visible};

/// The variables the test reads.
pub(crate) const CHROMIUM_VAR: &str = "HEARTH_TEST_CHROMIUM";
pub(crate) const PLAYWRIGHT_VAR: &str = "HEARTH_TEST_PLAYWRIGHT";
const CHROMIUM: &str = "/usr/bin/chromium";
/// Pinned, so a new release cannot change how the test drives the browser.
const PLAYWRIGHT: &str = "playwright-core@1.65.1";

#[derive(Debug)]
pub(crate) struct Browser {
    chromium: PathBuf,
    node_modules: PathBuf,
}

impl Browser {
    pub(crate) fn setup(root: &Path) -> Result<Self> {
        let chromium = match env::var_os(CHROMIUM_VAR).filter(|p| !p.is_empty()) {
            Some(path) => path.into(),
            None => {
                debian::ensure(Path::new(CHROMIUM), "chromium")?;
                debian::ensure(Path::new("/usr/bin/npm"), "npm")?;
                PathBuf::from(CHROMIUM)
            }
        };
        let node_modules = match env::var_os(PLAYWRIGHT_VAR).filter(|p| !p.is_empty()) {
            Some(path) => path.into(),
            None => {
                let dir = crate::peers_dir(root).join("browser");
                let node_modules = dir.join("node_modules");
                if !is_current(&node_modules) {
                    fs::create_dir_all(&dir)
                        .with_context(|| format!("could not create {}", dir.display()))?;
                    eprintln!(
                        "xtask: installing {PLAYWRIGHT} from npm into {}",
                        dir.display()
                    );
                    run_visible(
                        Command::new("npm")
                            .args([
                                "install",
                                "--no-audit",
                                "--no-fund",
                                "--no-save",
                                PLAYWRIGHT,
                            ])
                            .current_dir(&dir),
                    )?;
                    if !is_current(&node_modules) {
                        bail!(
                            "npm installed no {PLAYWRIGHT} in {}",
                            node_modules.display()
                        );
                    }
                }
                node_modules
            }
        };
        eprintln!(
            "xtask: browser ready, {CHROMIUM_VAR}={} {PLAYWRIGHT_VAR}={}",
            chromium.display(),
            node_modules.display()
        );
        Ok(Self {
            chromium,
            node_modules,
        })
    }

    pub(crate) fn chromium(&self) -> &Path {
        &self.chromium
    }

    pub(crate) fn node_modules(&self) -> &Path {
        &self.node_modules
    }
}

/// Whether the pinned playwright-core is installed there.
fn is_current(node_modules: &Path) -> bool {
    let version = PLAYWRIGHT.rsplit('@').next().unwrap_or_default();
    fs::read_to_string(node_modules.join("playwright-core/package.json"))
        .is_ok_and(|text| text.contains(&format!("\"version\": \"{version}\"")))
}
