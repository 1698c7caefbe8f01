//! `hearth homeserver-config`: the snippets that point a homeserver and its
//! clients at this Hearth, built from the config actually loaded (server
//! name, public URLs, current verify keys), so nothing is copied by hand.

use crate::config::Config;
use anyhow::Context as _;
use hearth_core::keys::SigningKey;
use serde_json::{Map, Value, json};
use std::fmt::Write as _;

/// Which snippet to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Target {
    /// Every snippet, each under a heading.
    All,
    /// Synapse's homeserver.yaml (YAML).
    Synapse,
    /// The homeserver's /.well-known/matrix/client (JSON).
    WellKnown,
    /// Element Web's config.json (JSON).
    Element,
}

/// What the snippets are made from, gathered once from the config.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Wiring {
    /// The notary's name and current verify keys (key id, base64), when the
    /// notary is enabled.
    pub notary: Option<(String, Vec<(String, String)>)>,
    /// The identity server's base URL, when enabled.
    pub identity_url: Option<String>,
    /// The homeserver's client base URL and server name, when given.
    pub homeserver: Option<Homeserver>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Homeserver {
    pub base_url: String,
    pub server_name: Option<String>,
}

impl Wiring {
    /// Reads what the snippets need. The verify keys come from the signing
    /// key file, which `hearth serve` makes on its first start.
    pub(crate) fn from_config(
        config: &Config,
        homeserver: Option<Homeserver>,
    ) -> anyhow::Result<Self> {
        let notary = if config.notary.enabled {
            let path = config.signing_key_path();
            if !path.exists() {
                anyhow::bail!(
                    "no signing key at {} yet: start Hearth once (or run `hearth keys generate`) \
                     so Synapse can be given its verify keys",
                    path.display()
                );
            }
            let keys = SigningKey::read_synapse_file(&path)
                .with_context(|| format!("reading the signing key {}", path.display()))?;
            let keys = keys
                .iter()
                .map(|k| (k.key_id(), k.public_key_base64()))
                .collect();
            Some((config.server_name.as_str().to_owned(), keys))
        } else {
            None
        };
        let identity_url = config.identity.enabled.then(|| {
            trim_slash(
                config
                    .identity
                    .public_base_url
                    .clone()
                    .unwrap_or_else(|| default_base_url(config)),
            )
        });
        Ok(Self {
            notary,
            identity_url,
            homeserver,
        })
    }

    /// Synapse's `homeserver.yaml` keys, as YAML with comments.
    pub(crate) fn synapse_yaml(&self) -> String {
        let mut out = String::from(
            "# Hearth's wiring for Synapse's homeserver.yaml (from `hearth homeserver-config`).\n\
             # Merge these top-level keys, or load this file as a second --config-path.\n",
        );
        match &self.notary {
            Some((name, keys)) => {
                out.push_str(
                    "\n# Fetch other servers' keys through Hearth instead of matrix.org, and accept\n\
                     # its answers only when signed by these keys. Print this again after\n\
                     # `hearth keys generate` or `hearth keys import`.\n\
                     trusted_key_servers:\n",
                );
                let _ = writeln!(out, "  - server_name: {}", quote(name));
                out.push_str("    verify_keys:\n");
                for (id, key) in keys {
                    let _ = writeln!(out, "      {}: {}", quote(id), quote(key));
                }
            }
            None => out.push_str(
                "\n# The notary is disabled ([notary] enabled = false): no trusted_key_servers.\n",
            ),
        }
        if let Some(url) = &self.identity_url {
            out.push_str(
                "\n# Advertised to clients as m.identity_server in /.well-known/matrix/client\n\
                 # (Synapse serves that document when public_baseurl is set).\n",
            );
            let _ = writeln!(out, "default_identity_server: {}", quote(url));
        }
        out
    }

    /// The homeserver's `/.well-known/matrix/client` entries Hearth provides.
    pub(crate) fn well_known(&self) -> Value {
        let mut doc = Map::new();
        if let Some(hs) = &self.homeserver {
            doc.insert("m.homeserver".into(), json!({"base_url": hs.base_url}));
        }
        if let Some(url) = &self.identity_url {
            doc.insert("m.identity_server".into(), json!({"base_url": url}));
        }
        Value::Object(doc)
    }

    /// Element Web's `config.json` keys.
    pub(crate) fn element(&self) -> Value {
        let mut server = Map::new();
        if let Some(hs) = &self.homeserver {
            let mut entry = Map::new();
            entry.insert("base_url".into(), hs.base_url.clone().into());
            if let Some(name) = &hs.server_name {
                entry.insert("server_name".into(), name.clone().into());
            }
            server.insert("m.homeserver".into(), Value::Object(entry));
        }
        if let Some(url) = &self.identity_url {
            server.insert("m.identity_server".into(), json!({"base_url": url}));
        }
        let mut doc = Map::new();
        doc.insert("default_server_config".into(), Value::Object(server));
        Value::Object(doc)
    }

    /// The snippet for `target`, ready to print.
    pub(crate) fn render(&self, target: Target) -> String {
        let json = |value: Value| {
            let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
            text.push('\n');
            text
        };
        match target {
            Target::Synapse => self.synapse_yaml(),
            Target::WellKnown => json(self.well_known()),
            Target::Element => json(self.element()),
            Target::All => {
                let mut out = String::new();
                let sections = [
                    ("Synapse: homeserver.yaml", Target::Synapse),
                    (
                        "The homeserver's https://<server name>/.well-known/matrix/client \
                         (merge into the JSON object)",
                        Target::WellKnown,
                    ),
                    (
                        "Element Web: config.json (merge into the JSON object)",
                        Target::Element,
                    ),
                ];
                for (i, (title, target)) in sections.into_iter().enumerate() {
                    if i > 0 {
                        out.push('\n');
                    }
                    let _ = writeln!(out, "==> {title} <==");
                    out.push_str(&self.render(target));
                }
                out
            }
        }
    }
}

/// `https://<server_name>`, the default public URL of every service.
fn default_base_url(config: &Config) -> String {
    format!("https://{}", config.server_name.as_str())
}

fn trim_slash(mut url: String) -> String {
    while url.ends_with('/') {
        url.pop();
    }
    url
}

/// A YAML double-quoted scalar: JSON's string syntax is valid YAML.
fn quote(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wiring() -> Wiring {
        Wiring {
            notary: Some((
                "hearth.example.org".into(),
                vec![("ed25519:a_AbCd".into(), "SGVsbG8gd29ybGQ".into())],
            )),
            identity_url: Some("https://id.example.org".into()),
            homeserver: Some(Homeserver {
                base_url: "https://matrix.example.org".into(),
                server_name: Some("example.org".into()),
            }),
        }
    }

    #[test]
    fn synapse_yaml_names_the_notary_and_its_keys() {
        let yaml = wiring().synapse_yaml();
        let docs = yaml_rust2::YamlLoader::load_from_str(&yaml).unwrap();
        let doc = &docs[0];
        let server = &doc["trusted_key_servers"][0];
        assert_eq!(server["server_name"].as_str(), Some("hearth.example.org"));
        assert_eq!(
            server["verify_keys"]["ed25519:a_AbCd"].as_str(),
            Some("SGVsbG8gd29ybGQ")
        );
        assert_eq!(
            doc["default_identity_server"].as_str(),
            Some("https://id.example.org")
        );
    }

    #[test]
    fn a_disabled_service_is_left_out() {
        let mut w = wiring();
        w.notary = None;
        w.identity_url = None;
        let yaml = w.synapse_yaml();
        let docs = yaml_rust2::YamlLoader::load_from_str(&yaml).unwrap();
        assert!(docs.is_empty() || docs[0]["trusted_key_servers"].is_badvalue());
        assert_eq!(
            w.well_known(),
            json!({"m.homeserver": {"base_url": "https://matrix.example.org"}})
        );
        assert_eq!(
            w.element(),
            json!({"default_server_config": {"m.homeserver": {
                "base_url": "https://matrix.example.org", "server_name": "example.org"}}})
        );
    }

    #[test]
    fn element_and_well_known_point_at_the_identity_server() {
        let w = wiring();
        assert_eq!(
            w.well_known()["m.identity_server"]["base_url"],
            "https://id.example.org"
        );
        assert_eq!(
            w.element()["default_server_config"]["m.identity_server"]["base_url"],
            "https://id.example.org"
        );
        let all = w.render(Target::All);
        assert_eq!(all.matches("==> ").count(), 3, "{all}");
    }

    #[test]
    fn quoting_survives_yaml_specials() {
        for s in ["a: b", "#x", "ed25519:0", "'\"", "yes"] {
            let docs = yaml_rust2::YamlLoader::load_from_str(&format!("k: {}", quote(s))).unwrap();
            assert_eq!(docs[0]["k"].as_str(), Some(s));
        }
    }
}
