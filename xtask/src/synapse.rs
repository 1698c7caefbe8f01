//! A Python virtualenv with Synapse from PyPI (`matrix-synapse`), the real
//! homeserver the end-to-end tests run the identity service against.
//!
//! The virtualenv lives in `<peers>/synapse`, apart from the small
//! peers in `<peers>/python`: Synapse pulls in a large tree of
//! dependencies that should not move their pins. It survives between runs
//! and is rebuilt only when it is missing, broken, or holds another Synapse
//! than the one pinned here.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{output, python, run_visible};

/// The variable the tests read; set it to use an interpreter of your own
/// (one that can `import synapse`) instead.
pub(crate) const PYTHON_VAR: &str = "HEARTH_TEST_SYNAPSE_PYTHON";
/// The distribution and its pinned version, so a new Synapse release cannot
/// change what the tests run against.
const DISTRIBUTION: &str = "matrix-synapse";
const VERSION: &str = "1.163.2";
/// The interpreter the virtualenv is made from.
const BASE_PYTHON: &str = "python3";

/// Prints the installed Synapse version, failing if it cannot be imported.
const VERSION_SCRIPT: &str = "\
import importlib.metadata, synapse
print(importlib.metadata.version('matrix-synapse'))
";

/// The interpreter the tests run Synapse with.
#[derive(Debug)]
pub(crate) struct Synapse {
    interpreter: PathBuf,
}

impl Synapse {
    /// Uses `HEARTH_TEST_SYNAPSE_PYTHON` when set, else makes sure the
    /// virtualenv in `<peers>/synapse` exists with the pinned Synapse.
    pub(crate) fn setup(root: &Path) -> Result<Self> {
        if let Some(interpreter) = env::var_os(PYTHON_VAR).filter(|p| !p.is_empty()) {
            eprintln!("xtask: using Synapse's Python from {PYTHON_VAR}");
            return Ok(Self {
                interpreter: interpreter.into(),
            });
        }
        let dir = crate::peers_dir(root).join("synapse");
        let interpreter = dir.join("bin/python");
        if is_current(&interpreter) {
            eprintln!("xtask: reusing the Synapse virtualenv in {}", dir.display());
        } else {
            create(&dir, &interpreter)?;
        }
        eprintln!(
            "xtask: Synapse {VERSION} ready, {PYTHON_VAR}={}",
            interpreter.display()
        );
        Ok(Self { interpreter })
    }

    pub(crate) fn interpreter(&self) -> &Path {
        &self.interpreter
    }
}

/// Whether the virtualenv runs and holds exactly the pinned Synapse.
fn is_current(interpreter: &Path) -> bool {
    interpreter.is_file()
        && output(Command::new(interpreter).arg("-c").arg(VERSION_SCRIPT))
            .is_ok_and(|text| text.trim() == VERSION)
}

/// Makes the virtualenv from scratch and installs the pinned Synapse (about
/// a minute, mostly downloads).
fn create(dir: &Path, interpreter: &Path) -> Result<()> {
    python::ensure_venv_module()?;
    eprintln!(
        "xtask: creating the Synapse virtualenv in {}",
        dir.display()
    );
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("could not remove {}", dir.display()))?;
    }
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("could not create {}", parent.display()))?;
    }
    output(Command::new(BASE_PYTHON).args(["-m", "venv"]).arg(dir))?;
    let pin = format!("{DISTRIBUTION}=={VERSION}");
    eprintln!("xtask: installing {pin} from PyPI");
    run_visible(
        Command::new(interpreter)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg(&pin),
    )?;
    if !is_current(interpreter) {
        bail!("the virtualenv in {} still lacks {pin}", dir.display());
    }
    Ok(())
}
