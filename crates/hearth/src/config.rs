//! The whole config: core sections plus each service's, loaded from
//! defaults, then the TOML file, then `HEARTH_*` environment variables
//! (`HEARTH_DATABASE__URL` sets `database.url`).

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use hearth_core::config::{
    AdminConfig, DatabaseConfig, HttpConfig, LogConfig, Secret, resolve_secret,
};
use hearth_core::ids::ServerName;
use hearth_core::storage::SqliteSynchronous;
use hearth_core::tls::TlsFiles;
use hearth_federation::FederationConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The documented example, every key with its default.
pub(crate) const EXAMPLE: &str = include_str!("../../../config/hearth.example.toml");

/// Whether `HEARTH_<key>` is a config key: the config file's own variable,
/// the binary's path and the test suite's variables (`HEARTH_TEST_*`) are not.
fn is_config_key(key: &str) -> bool {
    key != "config" && key != "bin" && !key.starts_with("test_")
}

/// The names of the top-level keys and sections.
fn top_level_keys() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    pub server_name: ServerName,
    pub data_dir: PathBuf,
    pub signing_key_path: Option<PathBuf>,
    pub http: HttpConfig,
    pub admin: AdminConfig,
    pub database: DatabaseConfig,
    pub federation: FederationConfig,
    pub log: LogConfig,
    pub identity: hearth_identity::Config,
    pub integrations: hearth_integrations::Config,
    pub notary: hearth_notary::Config,
    pub turn: hearth_turn::Config,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: ServerName::parse("localhost").expect("a valid server name"),
            data_dir: PathBuf::from("./data"),
            signing_key_path: None,
            http: HttpConfig::default(),
            admin: AdminConfig::default(),
            database: DatabaseConfig::default(),
            federation: FederationConfig::default(),
            log: LogConfig::default(),
            identity: hearth_identity::Config::default(),
            integrations: hearth_integrations::Config::default(),
            notary: hearth_notary::Config::default(),
            turn: hearth_turn::Config::default(),
        }
    }
}

/// A config problem, phrased for the operator: which file, which key, why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigError(String);

impl Config {
    /// Loads defaults < `file` < environment. A file that was named but does
    /// not exist is an error, not an empty config.
    pub(crate) fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_sources(file).map(|(config, _)| config)
    }

    /// As [`Config::load`], with the merged values as given (defaults, file
    /// and environment), before typing: what a reload compares key by key.
    /// Unlike the typed config they hold secrets as written, so a changed
    /// secret shows; they are compared, never printed.
    pub(crate) fn load_with_sources(
        file: Option<&Path>,
    ) -> Result<(Self, serde_json::Value), ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {}: not found",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let sections = top_level_keys();
        figment = figment.merge(
            Env::prefixed("HEARTH_")
                .filter(move |key| {
                    let key = key.as_str().to_ascii_lowercase();
                    if !is_config_key(&key) {
                        return false;
                    }
                    // Kubernetes injects `HEARTH_PORT=tcp://...` and the like
                    // for a Service named `hearth`: a variable that names no
                    // key or section is not meant for us. Typos inside a
                    // section still fail, as they do in TOML.
                    let top = key.split("__").next().unwrap_or_default();
                    let known = sections.iter().any(|s| s == top);
                    if !known {
                        eprintln!(
                            "warning: ignoring HEARTH_{}: no config key or section named {top:?}",
                            key.to_ascii_uppercase()
                        );
                    }
                    known
                })
                .split("__"),
        );
        let config: Config = figment.extract().map_err(|e| ConfigError(describe(e)))?;
        config.validate()?;
        // The typed values (secrets as placeholders) if the untyped ones
        // cannot be had: the comparison then only misses secrets.
        let sources = figment
            .extract()
            .or_else(|_| serde_json::to_value(&config))
            .unwrap_or_default();
        Ok((config, sources))
    }

    /// Checks what types alone cannot: pairs of keys and readable files.
    fn validate(&self) -> Result<(), ConfigError> {
        self.database_url()?;
        self.tls_files()?;
        if self.http.bind.is_empty() {
            return Err(ConfigError(
                "http.bind: give at least one address".to_owned(),
            ));
        }
        if self.admin.bind.0.is_empty() {
            return Err(ConfigError(
                "admin.bind: give at least one address".to_owned(),
            ));
        }
        Ok(())
    }

    /// The database URL: `database.url`, `database.url_file`, or SQLite in
    /// the data directory. A SQLite URL carries `database.sqlite_synchronous`
    /// when it is not the default, unless the URL sets `synchronous` itself.
    pub(crate) fn database_url(&self) -> Result<Secret, ConfigError> {
        let given = resolve_secret(
            "database.url",
            self.database.url.as_ref(),
            self.database.url_file.as_deref(),
        )
        .map_err(ConfigError)?;
        let url = given.unwrap_or_else(|| {
            Secret(hearth_core::storage::default_sqlite_url(&self.data_dir).into())
        });
        let synchronous = self.database.sqlite_synchronous;
        if !url.expose().starts_with("sqlite:")
            || synchronous == SqliteSynchronous::default()
            || url.expose().contains("synchronous=")
        {
            return Ok(url);
        }
        let separator = if url.expose().contains('?') { '&' } else { '?' };
        Ok(Secret(
            format!(
                "{}{separator}synchronous={}",
                url.expose(),
                synchronous.pragma()
            )
            .into(),
        ))
    }

    pub(crate) fn signing_key_path(&self) -> PathBuf {
        self.signing_key_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("signing.key"))
    }

    pub(crate) fn tls_files(&self) -> Result<Option<TlsFiles>, ConfigError> {
        match (&self.http.tls_certificate, &self.http.tls_private_key) {
            (Some(certificate), Some(private_key)) => Ok(Some(TlsFiles {
                certificate: certificate.clone(),
                private_key: private_key.clone(),
            })),
            (None, None) => Ok(None),
            _ => Err(ConfigError(
                "http.tls_certificate and http.tls_private_key must be set together".to_owned(),
            )),
        }
    }
}

/// Names the key and the file for each problem figment found.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                String::new()
            } else {
                format!(" at key `{}`", e.path.join("."))
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(source) => format!(" in {source}"),
                    None => format!(" in {}", m.name),
                })
                .unwrap_or_default();
            format!("config error{key}{source}: {}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every dotted key path that a TOML document sets.
    fn key_paths(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
        if let toml::Value::Table(table) = value {
            for (k, v) in table {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if v.is_table() {
                    key_paths(v, &path, out);
                } else {
                    out.insert(path);
                }
            }
        }
    }

    /// Turns `#key = value` and `#[section]` lines into real ones. Prose
    /// comments start with `# `, so they are left alone.
    fn uncomment(text: &str) -> String {
        text.lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if !rest.starts_with(' ') && !rest.is_empty() => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn parse(text: &str) -> Config {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .unwrap_or_else(|e| panic!("{}", describe(e)))
    }

    /// The example file, as shipped, is exactly the defaults.
    #[test]
    fn example_matches_the_defaults() {
        assert_eq!(parse(EXAMPLE), Config::default());
    }

    /// With its commented-out keys enabled, the example sets every key the
    /// config types have, and the types accept every key it documents.
    #[test]
    fn example_documents_every_key() {
        let full = uncomment(EXAMPLE);
        let documented: toml::Value = toml::from_str(&full).unwrap();
        let mut doc_keys = BTreeSet::new();
        key_paths(&documented, "", &mut doc_keys);
        let typed = toml::Value::try_from(parse(&full)).unwrap();
        let mut type_keys = BTreeSet::new();
        key_paths(&typed, "", &mut type_keys);
        assert_eq!(doc_keys, type_keys);
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.toml");
        std::fs::write(&path, "[http]\nbindd = []\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("bindd") && err.contains("hearth.toml"),
            "{err}"
        );

        std::fs::write(&path, "[admin]\nbind = 5\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("admin.bind") && err.contains("hearth.toml"),
            "{err}"
        );

        std::fs::write(&path, "server_name = \"bad name\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("server_name"), "{err}");

        let err = Config::load(Some(&dir.path().join("missing.toml"))).unwrap_err();
        assert!(err.to_string().contains("missing.toml: not found"));
    }

    #[test]
    fn secrets_from_files_and_paired_tls_keys() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("db_url");
        std::fs::write(&secret, "postgres://u:pw@db/hearth\n").unwrap();
        let path = dir.path().join("hearth.toml");
        std::fs::write(
            &path,
            format!(
                "[database]\nurl_file = {:?}\n",
                secret.display().to_string()
            ),
        )
        .unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(
            config.database_url().unwrap().expose(),
            "postgres://u:pw@db/hearth"
        );
        assert!(!format!("{config:?}").contains("pw@"));

        std::fs::write(&path, "[http]\ntls_certificate = \"c.pem\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("tls_private_key"), "{err}");
    }

    /// Variables Kubernetes injects for a Service named `hearth` are ignored;
    /// an unknown key inside a known section still fails.
    #[test]
    #[expect(
        clippy::result_large_err,
        reason = "figment::Jail's closure returns figment's error"
    )]
    fn environment_ignores_foreign_variables_but_not_typos_in_sections() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HEARTH_PORT", "tcp://10.0.0.1:8090");
            jail.set_env("HEARTH_SERVICE_HOST", "10.0.0.1");
            jail.set_env("HEARTH_PORT_8090_TCP_ADDR", "10.0.0.1");
            jail.set_env("HEARTH_ADMIN__BIND", "127.0.0.1:9999");
            let config = Config::load(None).expect("foreign variables are ignored");
            assert_eq!(config.admin.bind.0[0].port(), 9999);

            jail.set_env("HEARTH_HTTP__BINDD", "[]");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("bindd"), "{err}");
            Ok(())
        });
    }

    /// Issue 10 item 7: FULL is the default and needs no URL parameter;
    /// another choice reaches `Database::connect` in the URL.
    #[test]
    fn sqlite_synchronous_travels_in_the_url() {
        let mut config = Config::default();
        config.database.sqlite_synchronous = SqliteSynchronous::Normal;
        assert_eq!(
            config.database_url().unwrap().expose(),
            "sqlite://./data/hearth.db?synchronous=normal"
        );
        config.database.url = Some(Secret("sqlite:///x.db?cache=private".to_owned().into()));
        assert_eq!(
            config.database_url().unwrap().expose(),
            "sqlite:///x.db?cache=private&synchronous=normal"
        );
        config.database.url = Some(Secret("postgres://db/hearth".to_owned().into()));
        assert_eq!(
            config.database_url().unwrap().expose(),
            "postgres://db/hearth"
        );
    }

    #[test]
    fn defaults_keep_data_in_the_data_dir() {
        let config = Config::default();
        assert_eq!(
            config.database_url().unwrap().expose(),
            "sqlite://./data/hearth.db"
        );
        assert_eq!(
            config.signing_key_path(),
            PathBuf::from("./data/signing.key")
        );
        assert!(config.http.bind.iter().all(|a| a.ip().is_loopback()));
        assert!(config.admin.bind.0.iter().all(|a| a.ip().is_loopback()));
    }
}
