//! Reloading on SIGHUP: the config is read again exactly as at start (the
//! same file, the same `HEARTH_*` overlay) and checked as `hearth config
//! check` checks it. Then every reloadable part is prepared: the public
//! listener's certificate, the log filter, and each running service's
//! [`Reload`] with its new section. Only when all of that succeeded is
//! anything swapped in, so a reload applies entirely or not at all.
//!
//! Every other key is compared with the config the process started with,
//! and a change is reported as needing a restart, by key name only.

use crate::config::Config;
use crate::logging::Logging;
use crate::serve;
use anyhow::Context as _;
use hearth_core::tls::ServerCert;
use hearth_service::{Prepared, Reload};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

/// Keys outside the services' sections that a reload applies.
const RELOADABLE: &[&str] = &["http.tls_certificate", "http.tls_private_key", "log.filter"];

/// What a reload did.
#[derive(Debug, PartialEq)]
pub(crate) struct Reloaded {
    /// What was read again and swapped in.
    pub(crate) applied: Vec<String>,
    /// Changed keys that wait for a restart, sorted.
    pub(crate) needs_restart: Vec<String>,
}

/// Everything a reload needs from the running process.
#[derive(Debug)]
pub(crate) struct Reloader {
    /// The config file named at start (`--config` or `HEARTH_CONFIG`).
    path: Option<PathBuf>,
    /// The config as started, typed and as given.
    started: Config,
    started_sources: Value,
    /// Sections of services that do not run in this process (`hearth
    /// <service>` runs one): none of its business.
    ignored: Vec<&'static str>,
    logging: Option<Logging>,
    /// The public listener's certificate, when it speaks TLS.
    http_tls: Option<Arc<ServerCert>>,
    /// The running services' reload handles, by section name.
    services: Vec<(&'static str, Box<dyn Reload>)>,
}

impl Reloader {
    pub(crate) fn new(
        path: Option<PathBuf>,
        started: Config,
        started_sources: Value,
        logging: Option<Logging>,
    ) -> Self {
        Self {
            path,
            started,
            started_sources,
            ignored: Vec::new(),
            logging,
            http_tls: None,
            services: Vec::new(),
        }
    }

    /// `name` runs here; `reload` is what it can apply.
    pub(crate) fn service(&mut self, name: &'static str, reload: Option<Box<dyn Reload>>) {
        if let Some(reload) = reload {
            self.services.push((name, reload));
        }
    }

    /// `name` does not run in this process.
    pub(crate) fn ignore(&mut self, name: &'static str) {
        self.ignored.push(name);
    }

    pub(crate) fn http_tls(&mut self, cert: Arc<ServerCert>) {
        self.http_tls = Some(cert);
    }

    /// Reloads, and logs what happened: one line for what was applied, a
    /// warning naming keys that wait for a restart, or the error and that
    /// nothing changed.
    pub(crate) fn on_hangup(&self) {
        let path = self.path.as_ref().map_or_else(
            || "embedded defaults".to_owned(),
            |p| p.display().to_string(),
        );
        let outcome = match self.reload() {
            Ok(done) => {
                if !done.needs_restart.is_empty() {
                    tracing::warn!(
                        keys = %done.needs_restart.join(", "),
                        "config reload: these changed settings need a restart"
                    );
                }
                tracing::info!(from = %path, "config reloaded: {}", done.applied.join(", "));
                "ok"
            }
            Err(e) => {
                tracing::error!(
                    from = %path,
                    error = %format!("{e:#}"),
                    "config reload failed; the running config is kept, unchanged"
                );
                "error"
            }
        };
        metrics::counter!("hearth_config_reloads_total", "outcome" => outcome).increment(1);
    }

    /// Reads, checks and prepares everything, then applies it all; on an
    /// error nothing changed.
    pub(crate) fn reload(&self) -> anyhow::Result<Reloaded> {
        let (new, sources) = Config::load_with_sources(self.path.as_deref())?;
        serve::check(&new)?;
        let mut needs_restart = self.changed_keys(&new, &sources);

        let log = self
            .logging
            .as_ref()
            .map(|logging| logging.prepare(&new.log))
            .transpose()?;
        let http_tls = match (&self.http_tls, new.tls_files()?) {
            (Some(running), Some(files)) => Some((
                running,
                ServerCert::read(&files).map_err(|e| anyhow::anyhow!("http TLS: {e}"))?,
            )),
            (None, None) => None,
            // The listener speaks TLS or not from its start.
            _ => {
                needs_restart.push("http.tls_certificate".to_owned());
                None
            }
        };
        let sections = serve::services(&new);
        let mut prepared: Vec<(&str, Prepared)> = Vec::new();
        for (name, reload) in &self.services {
            let section = sections
                .iter()
                .find(|s| s.name() == *name)
                .with_context(|| format!("no [{name}] section"))?;
            let ready = reload
                .prepare(*section)
                .with_context(|| format!("[{name}]"))?;
            prepared.push((name, ready));
        }

        // Everything is ready: swap it all in.
        let mut applied = Vec::new();
        if let Some((running, key)) = http_tls {
            running.replace(key);
            applied.push("http TLS certificate".to_owned());
        }
        if let (Some(logging), Some(filter)) = (&self.logging, log) {
            applied.push(logging.apply(filter).to_owned());
        }
        for (name, ready) in prepared {
            needs_restart.extend(ready.needs_restart.iter().cloned());
            applied.extend(
                ready
                    .commit()
                    .into_iter()
                    .map(|what| format!("{name} {what}")),
            );
        }
        needs_restart.sort();
        needs_restart.dedup();
        Ok(Reloaded {
            applied,
            needs_restart,
        })
    }

    /// The keys whose values differ from those at start and that no reload
    /// applies. The database URL is compared resolved, so a new
    /// `database.url_file` content counts too.
    fn changed_keys(&self, new: &Config, sources: &Value) -> Vec<String> {
        let mut changed = Vec::new();
        diff(&self.started_sources, sources, "", &mut changed);
        let reloadable: Vec<String> = RELOADABLE
            .iter()
            .map(|k| (*k).to_owned())
            .chain(self.services.iter().flat_map(|(name, reload)| {
                reload.keys().iter().map(move |k| format!("{name}.{k}"))
            }))
            .collect();
        let covered = |key: &str, by: &str| {
            key == by
                || key
                    .strip_prefix(by)
                    .is_some_and(|rest| rest.starts_with('.'))
        };
        changed.retain(|key| {
            !reloadable.iter().any(|r| covered(key, r))
                && !self.ignored.iter().any(|s| covered(key, s))
        });
        let url = |config: &Config| config.database_url().ok().map(|u| u.expose().to_owned());
        if url(&self.started) != url(new) && !changed.iter().any(|k| k.starts_with("database.url"))
        {
            changed.push("database.url_file".to_owned());
        }
        changed
    }
}

/// The dotted paths at which `old` and `new` differ. Tables are walked;
/// anything else (arrays included) is compared whole.
fn diff(old: &Value, new: &Value, at: &str, out: &mut Vec<String>) {
    let path = |key: &str| {
        if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        }
    };
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            for (key, value) in old {
                diff(value, new.get(key).unwrap_or(&Value::Null), &path(key), out);
            }
            for (key, value) in new.iter().filter(|(k, _)| !old.contains_key(*k)) {
                diff(&Value::Null, value, &path(key), out);
            }
        }
        (old, new) if old != new => out.push(at.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_service::{Service, ServiceError};
    use std::sync::Mutex;

    /// A service's reload that records what it applied, and refuses
    /// sections whose `jitsi_domain` is "refuse.example".
    #[derive(Debug, Default)]
    struct Recording(Arc<Mutex<Vec<String>>>);

    impl Reload for Recording {
        fn keys(&self) -> &'static [&'static str] {
            &["widgets"]
        }

        fn prepare(&self, new: &dyn Service) -> Result<Prepared, ServiceError> {
            let new: &hearth_integrations::Config = hearth_service::section(new)?;
            let domain = new.widgets.jitsi_domain.clone().unwrap_or_default();
            if domain == "refuse.example" {
                return Err(ServiceError::Config(
                    "widgets.jitsi_domain: refused".to_owned(),
                ));
            }
            let log = self.0.clone();
            Ok(Prepared::new(vec!["catalog".to_owned()], move || {
                log.lock().unwrap().push(domain);
            }))
        }
    }

    struct Setup {
        dir: tempfile::TempDir,
        file: PathBuf,
        applied: Arc<Mutex<Vec<String>>>,
    }

    impl Setup {
        fn write(&self, toml: &str) {
            let base = format!("data_dir = {:?}\n", self.dir.path().join("data"));
            std::fs::write(&self.file, base + toml).unwrap();
        }

        /// A reloader for the config now in the file, with one recording
        /// service in the integration manager's place.
        fn reloader(&self) -> Reloader {
            let (config, sources) = Config::load_with_sources(Some(&self.file)).unwrap();
            let mut reloader = Reloader::new(Some(self.file.clone()), config, sources, None);
            reloader.service(
                "integrations",
                Some(Box::new(Recording(self.applied.clone()))),
            );
            reloader
        }
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hearth.toml");
        let setup = Setup {
            dir,
            file,
            applied: Arc::default(),
        };
        setup.write("[integrations.widgets]\njitsi_domain = \"one.example\"\n");
        setup
    }

    /// Reloadable keys are applied; the others are named as needing a
    /// restart, secrets included (by name only), and nothing is said about
    /// keys that did not change.
    #[test]
    fn reloads_apply_reloadable_keys_and_name_the_others() {
        let setup = setup();
        let reloader = setup.reloader();
        let same = reloader.reload().unwrap();
        assert_eq!(same.applied, ["integrations catalog"]);
        assert!(same.needs_restart.is_empty(), "{:?}", same.needs_restart);

        setup.write(
            "log.filter = \"debug\"\n\
             [http]\nbind = [\"127.0.0.1:1\"]\n\
             [integrations]\npublic_base_url = \"https://im.example\"\n\
             [integrations.widgets]\njitsi_domain = \"two.example\"\n\
             [turn]\nshared_secret = \"new secret\"\n",
        );
        let reloaded = reloader.reload().unwrap();
        assert_eq!(
            reloaded.needs_restart,
            [
                "http.bind",
                "integrations.public_base_url",
                "turn.shared_secret"
            ]
        );
        assert_eq!(
            *setup.applied.lock().unwrap(),
            ["one.example", "two.example"]
        );
        let text = format!("{reloaded:?}");
        assert!(!text.contains("new secret"), "{text}");
    }

    /// All or nothing: a section one service refuses, or a config that does
    /// not load, fails the reload before anything is applied.
    #[test]
    fn a_failing_reload_applies_nothing() {
        let setup = setup();
        let reloader = setup.reloader();
        setup.write("[integrations.widgets]\njitsi_domain = \"refuse.example\"\n");
        let err = format!("{:#}", reloader.reload().unwrap_err());
        assert!(
            err.contains("[integrations]") && err.contains("refused"),
            "{err}"
        );

        setup.write("[integrations.widgets\n");
        assert!(reloader.reload().is_err());

        // The HTTP certificate is checked too, before any service applies.
        setup.write(
            "[http]\ntls_certificate = \"/nonexistent/cert.pem\"\n\
             tls_private_key = \"/nonexistent/key.pem\"\n\
             [integrations.widgets]\njitsi_domain = \"three.example\"\n",
        );
        let err = format!("{:#}", reloader.reload().unwrap_err());
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
        assert!(setup.applied.lock().unwrap().is_empty());
    }

    /// With `hearth <service>`, the other services' sections are not this
    /// process's: changing them is not reported.
    #[test]
    fn sections_of_services_running_elsewhere_are_ignored() {
        let setup = setup();
        let mut reloader = setup.reloader();
        reloader.ignore("turn");
        setup.write(
            "[integrations.widgets]\njitsi_domain = \"one.example\"\n\
             [turn]\nenabled = true\nshared_secret = \"s\"\n\
             [notary]\nenabled = false\n",
        );
        assert_eq!(reloader.reload().unwrap().needs_restart, ["notary.enabled"]);
    }

    #[test]
    fn diffs_name_changed_added_and_removed_keys() {
        let old = serde_json::json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        let new = serde_json::json!({"a": {"b": 1, "c": [1], "e": true}});
        let mut out = Vec::new();
        diff(&old, &new, "", &mut out);
        assert_eq!(out, ["a.c", "a.e", "d"]);
    }
}
