//! A Python virtualenv with the PyPI libraries the end-to-end tests use as
//! peers: `signedjson`, the library Synapse reads and writes its
//! `signing.key` files and signs JSON with, and `aiosmtpd`, an SMTP server
//! that captures the mails Hearth sends.
//!
//! The virtualenv lives in `<peers>/python` and survives between runs;
//! it is rebuilt only when it is missing, broken, or holds other versions
//! than the ones pinned here.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{is_root, output, run_visible};

/// The variable the tests read; set it to use an interpreter of your own
/// (one that can `import signedjson, aiosmtpd`) instead.
pub(crate) const PYTHON_VAR: &str = "HEARTH_TEST_PYTHON";
/// Pinned, so a new release cannot change what the tests compare against.
const REQUIREMENTS: &[(&str, &str)] = &[("signedjson", "1.1.4"), ("aiosmtpd", "1.4.6")];
/// The interpreter the virtualenv is made from.
const BASE_PYTHON: &str = "python3";

/// The interpreter the tests run Python peers with.
#[derive(Debug)]
pub(crate) struct Python {
    interpreter: PathBuf,
}

impl Python {
    /// Uses `HEARTH_TEST_PYTHON` when set, else makes sure the virtualenv in
    /// `<peers>/python` exists with the pinned libraries.
    pub(crate) fn setup(root: &Path) -> Result<Self> {
        if let Some(interpreter) = env::var_os(PYTHON_VAR).filter(|p| !p.is_empty()) {
            eprintln!("xtask: using Python from {PYTHON_VAR}");
            return Ok(Self {
                interpreter: interpreter.into(),
            });
        }
        let venv = Venv {
            dir: crate::peers_dir(root).join("python"),
        };
        if venv.is_current() {
            eprintln!(
                "xtask: reusing the Python virtualenv in {}",
                venv.dir.display()
            );
        } else {
            venv.create()?;
        }
        eprintln!(
            "xtask: Python peers ready, {PYTHON_VAR}={}",
            venv.interpreter().display()
        );
        Ok(Self {
            interpreter: venv.interpreter(),
        })
    }

    pub(crate) fn interpreter(&self) -> &Path {
        &self.interpreter
    }
}

#[derive(Debug)]
struct Venv {
    dir: PathBuf,
}

impl Venv {
    fn interpreter(&self) -> PathBuf {
        self.dir.join("bin/python")
    }

    /// Whether the virtualenv runs and holds exactly the pinned versions.
    fn is_current(&self) -> bool {
        if !self.interpreter().is_file() {
            return false;
        }
        let installed = output(
            Command::new(self.interpreter())
                .arg("-c")
                .arg(VERSIONS_SCRIPT)
                .args(REQUIREMENTS.iter().map(|(name, _)| *name)),
        );
        installed.is_ok_and(|text| text.lines().eq(REQUIREMENTS.iter().map(|(_, v)| *v)))
    }

    /// Makes the virtualenv from scratch and installs the pinned libraries.
    fn create(&self) -> Result<()> {
        ensure_venv_module()?;
        eprintln!(
            "xtask: creating a Python virtualenv in {}",
            self.dir.display()
        );
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("could not remove {}", self.dir.display()))?;
        }
        if let Some(parent) = self.dir.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("could not create {}", parent.display()))?;
        }
        output(
            Command::new(BASE_PYTHON)
                .args(["-m", "venv"])
                .arg(&self.dir),
        )?;
        let pins: Vec<String> = REQUIREMENTS
            .iter()
            .map(|(name, version)| format!("{name}=={version}"))
            .collect();
        eprintln!("xtask: installing {} from PyPI", pins.join(" "));
        run_visible(
            Command::new(self.interpreter())
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                .args(&pins),
        )?;
        if !self.is_current() {
            bail!(
                "the virtualenv in {} still lacks {}",
                self.dir.display(),
                pins.join(" ")
            );
        }
        Ok(())
    }
}

/// Prints the installed version of each distribution named in argv, one per
/// line, and fails if one is missing or cannot be imported.
const VERSIONS_SCRIPT: &str = "\
import importlib, importlib.metadata, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
    print(importlib.metadata.version(name))
";

/// Debian ships `venv` (with `ensurepip`) apart from Python itself; root
/// installs it, others get told what to do.
pub(crate) fn ensure_venv_module() -> Result<()> {
    let has_venv =
        || output(Command::new(BASE_PYTHON).args(["-c", "import venv, ensurepip"])).is_ok();
    if has_venv() {
        return Ok(());
    }
    if !is_root()? {
        bail!(
            "{BASE_PYTHON} with the venv module is needed (Debian: the python3-venv package), \
             or set {PYTHON_VAR} to a Python that can import signedjson and aiosmtpd"
        );
    }
    eprintln!("xtask: Python's venv module not found");
    crate::debian::install("python3-venv")?;
    if !has_venv() {
        bail!("apt-get installed python3-venv, but {BASE_PYTHON} still has no venv module");
    }
    Ok(())
}
