//! A Python virtualenv with Sydent from PyPI (`matrix-sydent`), the
//! reference identity server: the peer `cargo xtask bench` measures
//! Hearth's lookups against, and the end-to-end suite's source of real
//! Sydent databases for `hearth identity import-sydent`.
//!
//! The virtualenv lives in `<peers>/sydent`, apart from the other
//! peers: Sydent pins old libraries (its own `signedjson`, Twisted) that
//! should not move theirs. It survives between runs and is rebuilt only
//! when it is missing, broken, or holds other versions than the ones
//! pinned here.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{output, python, run_visible};

/// The variable the tests read; set it to use an interpreter of your own
/// (one that can `import sydent.sydent`) instead.
pub(crate) const PYTHON_VAR: &str = "HEARTH_TEST_SYDENT_PYTHON";
/// Pinned, so a new release cannot change what Hearth is compared with.
const REQUIREMENTS: &[(&str, &str)] = &[
    // The last Apache-2.0 release.
    ("matrix-sydent", "2.6.1"),
    // Only an optional extra upstream ("prometheus"), yet `sydent.sydent`
    // imports it unconditionally: without it Sydent does not start.
    ("prometheus-client", "0.26.0"),
    // Sydent asks only for twisted>=18.4.0; this one starts it on Python
    // 3.11, and a future one might not.
    ("Twisted", "26.10.0"),
];
/// The interpreter the virtualenv is made from.
const BASE_PYTHON: &str = "python3";

/// Prints the installed version of each distribution named in argv, one per
/// line, after checking that Sydent imports.
const VERSIONS_SCRIPT: &str = "\
import importlib.metadata, sys
import sydent.sydent
for name in sys.argv[1:]:
    print(importlib.metadata.version(name))
";

/// An installed Sydent: the interpreter that runs it.
#[derive(Debug)]
pub(crate) struct Sydent {
    python: PathBuf,
}

impl Sydent {
    /// For the tests: `HEARTH_TEST_SYDENT_PYTHON` when set, else the pinned
    /// virtualenv ([`Sydent::install`]).
    pub(crate) fn setup(root: &Path) -> Result<Self> {
        if let Some(python) = env::var_os(PYTHON_VAR).filter(|p| !p.is_empty()) {
            eprintln!("xtask: using Sydent's Python from {PYTHON_VAR}");
            return Ok(Self {
                python: python.into(),
            });
        }
        let sydent = Self::install(root)?;
        eprintln!(
            "xtask: Sydent {} ready, {PYTHON_VAR}={}",
            sydent.version(),
            sydent.python.display()
        );
        Ok(sydent)
    }

    /// Makes sure the virtualenv in `<peers>/sydent` holds exactly the
    /// pinned versions. The bench always uses this one, so its report names
    /// what was measured.
    pub(crate) fn install(root: &Path) -> Result<Self> {
        let dir = crate::peers_dir(root).join("sydent");
        let sydent = Self {
            python: dir.join("bin/python"),
        };
        if sydent.is_current() {
            eprintln!("xtask: reusing the Sydent virtualenv in {}", dir.display());
        } else {
            sydent.create(&dir)?;
        }
        Ok(sydent)
    }

    /// The interpreter that runs `python -m sydent.sydent`; it also has
    /// Sydent's own libraries (hashing, `signedjson`) at hand.
    pub(crate) fn python(&self) -> &Path {
        &self.python
    }

    pub(crate) fn version(&self) -> &'static str {
        REQUIREMENTS[0].1
    }

    /// The pinned distributions and the interpreter, for reports.
    pub(crate) fn description(&self) -> Result<String> {
        let python = output(Command::new(&self.python).arg("--version"))?;
        let pins: Vec<String> = REQUIREMENTS
            .iter()
            .map(|(name, version)| format!("{name} {version}"))
            .collect();
        Ok(format!(
            "Sydent {} ({}) on {}",
            self.version(),
            pins.join(", "),
            python.trim()
        ))
    }

    /// Whether the interpreter runs Sydent and holds exactly the pins.
    fn is_current(&self) -> bool {
        if !self.python.is_file() {
            return false;
        }
        let installed = output(
            Command::new(&self.python)
                .arg("-c")
                .arg(VERSIONS_SCRIPT)
                .args(REQUIREMENTS.iter().map(|(name, _)| *name)),
        );
        installed.is_ok_and(|text| text.lines().eq(REQUIREMENTS.iter().map(|(_, v)| *v)))
    }

    /// Makes the virtualenv from scratch and installs the pins (about a
    /// minute, mostly downloads).
    fn create(&self, dir: &Path) -> Result<()> {
        python::ensure_venv_module()?;
        eprintln!("xtask: creating the Sydent virtualenv in {}", dir.display());
        if dir.exists() {
            fs::remove_dir_all(dir)
                .with_context(|| format!("could not remove {}", dir.display()))?;
        }
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("could not create {}", parent.display()))?;
        }
        output(Command::new(BASE_PYTHON).args(["-m", "venv"]).arg(dir))?;
        let pins: Vec<String> = REQUIREMENTS
            .iter()
            .map(|(name, version)| format!("{name}=={version}"))
            .collect();
        eprintln!("xtask: installing {} from PyPI", pins.join(" "));
        run_visible(
            Command::new(&self.python)
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                .args(&pins),
        )?;
        if !self.is_current() {
            bail!(
                "the virtualenv in {} still lacks {}",
                dir.display(),
                pins.join(" ")
            );
        }
        Ok(())
    }
}
