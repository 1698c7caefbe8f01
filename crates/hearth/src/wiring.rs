//! `hearth homeserver-config`: the snippets that point a homeserver and its
//! clients at this Hearth, built from the config actually loaded (server
//! name, public URLs, current verify keys), so nothing is copied by hand.

use crate::config::Config;
use anyhow::Context as _;
use hearth_core::keys::SigningKey;
use serde_json::{Map, Value, json};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

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
    /// LiveKit's config.yaml `rtc.turn_servers`, for MatrixRTC (YAML; holds
    /// TURN credentials).
    Livekit,
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
    /// The TURN service, when enabled.
    pub turn: Option<Turn>,
    /// The integration manager, when enabled.
    pub integrations: Option<Integrations>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Turn {
    pub uris: Vec<String>,
    pub secret: TurnSecret,
    /// Synapse's `turn_user_lifetime`: how long the credentials it hands
    /// out last.
    pub lifetime: Duration,
    /// Long-lived credentials for LiveKit, which hands them to every call
    /// participant: (username, password, expiry as Unix seconds).
    pub livekit: Option<(String, String, u64)>,
}

/// Where Synapse gets the TURN shared secret: the file Hearth reads it from
/// (nothing secret printed), or the value itself.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TurnSecret {
    File(PathBuf),
    Inline(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Integrations {
    pub ui_url: String,
    pub rest_url: String,
    pub jitsi_domain: Option<String>,
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
        livekit_lifetime: Duration,
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
        let turn = turn_wiring(config, livekit_lifetime)?;
        let integrations = config.integrations.enabled.then(|| {
            let base = trim_slash(
                config
                    .integrations
                    .public_base_url
                    .clone()
                    .unwrap_or_else(|| default_base_url(config)),
            );
            Integrations {
                ui_url: format!("{base}/element"),
                rest_url: format!("{base}/api"),
                jitsi_domain: config.integrations.widgets.jitsi_domain.clone(),
            }
        });
        Ok(Self {
            notary,
            identity_url,
            homeserver,
            turn,
            integrations,
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
        if let Some(im) = &self.integrations {
            out.push_str(
                "\n# The integration manager, advertised as m.integrations in\n\
                 # /.well-known/matrix/client (merge with extra content you already have).\n\
                 extra_well_known_client_content:\n  \"m.integrations\":\n    managers:\n",
            );
            let _ = writeln!(out, "      - api_url: {}", quote(&im.rest_url));
            let _ = writeln!(out, "        ui_url: {}", quote(&im.ui_url));
        }
        if let Some(turn) = &self.turn {
            out.push_str(
                "\n# Calls: Synapse hands clients TURN credentials that Hearth's TURN checks\n\
                 # with the same shared secret.\nturn_uris:\n",
            );
            for uri in &turn.uris {
                let _ = writeln!(out, "  - {}", quote(uri));
            }
            match &turn.secret {
                TurnSecret::File(path) => {
                    out.push_str(
                        "# The file Hearth reads the secret from (Synapse 1.116 or later); on\n\
                         # another host, copy it there and change the path.\n",
                    );
                    let _ = writeln!(
                        out,
                        "turn_shared_secret_path: {}",
                        quote(&path.display().to_string())
                    );
                }
                TurnSecret::Inline(secret) => {
                    out.push_str(
                        "# SECRET: the TURN shared secret, as in Hearth's config. Keep this file\n\
                         # private, or set turn.shared_secret_file to print a path instead.\n",
                    );
                    let _ = writeln!(out, "turn_shared_secret: {}", quote(secret));
                }
            }
            let _ = writeln!(
                out,
                "# In milliseconds: Hearth's turn.credential_lifetime.\nturn_user_lifetime: {}",
                turn.lifetime.as_millis()
            );
        }
        out
    }

    /// LiveKit's `rtc.turn_servers`, so MatrixRTC clients behind strict
    /// firewalls reach its SFU through Hearth's TURN.
    pub(crate) fn livekit_yaml(&self) -> String {
        let Some(turn) = &self.turn else {
            return "# TURN is disabled ([turn] enabled = false): nothing for LiveKit.\n"
                .to_owned();
        };
        let Some((username, password, expiry)) = &turn.livekit else {
            return "# TURN has no shared secret: nothing for LiveKit.\n".to_owned();
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Hearth's TURN for LiveKit's config.yaml (from `hearth homeserver-config livekit`).\n\
             # SECRET: these credentials let anyone relay through Hearth until Unix time\n\
             # {expiry}; LiveKit hands them to call participants. Print them again before\n\
             # then (--livekit-days), or after changing the shared secret.\n\
             rtc:\n  turn_servers:"
        );
        for uri in &turn.uris {
            let Some((host, port, protocol)) = parse_turn_uri(uri) else {
                continue;
            };
            let _ = writeln!(out, "    - host: {}", quote(&host));
            let _ = writeln!(out, "      port: {port}");
            let _ = writeln!(out, "      protocol: {protocol}");
            let _ = writeln!(out, "      username: {}", quote(username));
            let _ = writeln!(out, "      credential: {}", quote(password));
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
        if let Some(im) = &self.integrations {
            doc.insert(
                "m.integrations".into(),
                json!({"managers": [{"api_url": im.rest_url, "ui_url": im.ui_url}]}),
            );
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
        if let Some(im) = &self.integrations {
            doc.insert("integrations_ui_url".into(), im.ui_url.clone().into());
            doc.insert("integrations_rest_url".into(), im.rest_url.clone().into());
            // Widgets under these prefixes get the user's scalar_token. Hearth's
            // widget pages need none, so only the REST URL is named (Element's
            // own fallback), which no widget lives under.
            doc.insert("integrations_widgets_urls".into(), json!([im.rest_url]));
            if let Some(domain) = &im.jitsi_domain {
                doc.insert("jitsi".into(), json!({"preferred_domain": domain}));
            }
        }
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
            Target::Livekit => self.livekit_yaml(),
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
                    (
                        "LiveKit (MatrixRTC, Element Call): config.yaml",
                        Target::Livekit,
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

/// What Synapse and LiveKit need from `[turn]`, when it is enabled.
fn turn_wiring(config: &Config, livekit_lifetime: Duration) -> anyhow::Result<Option<Turn>> {
    if !config.turn.enabled {
        return Ok(None);
    }
    let secret = match (&config.turn.shared_secret_file, &config.turn.shared_secret) {
        (Some(file), _) => TurnSecret::File(file.clone()),
        (None, Some(secret)) => TurnSecret::Inline(secret.expose().to_owned()),
        (None, None) => {
            anyhow::bail!("[turn] has no shared_secret or shared_secret_file for Synapse to share")
        }
    };
    let uris = config.turn.client_uris();
    if uris.is_empty() {
        anyhow::bail!("no TURN URI to hand out: set turn.uris or turn.external_ip");
    }
    let livekit = config.turn.secret()?.map(|secret| {
        let c = hearth_turn::rest_credentials(
            secret.expose(),
            "livekit",
            livekit_lifetime,
            SystemTime::now(),
            Vec::new(),
        );
        let expiry = c
            .username
            .split(':')
            .next()
            .and_then(|e| e.parse().ok())
            .unwrap_or_default();
        (c.username, c.password, expiry)
    });
    Ok(Some(Turn {
        uris,
        secret,
        lifetime: config.turn.credential_lifetime.0,
        livekit,
    }))
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

/// Host, port and LiveKit protocol of a `turn:`/`turns:` URI.
fn parse_turn_uri(uri: &str) -> Option<(String, u16, &'static str)> {
    let (tls, rest) = if let Some(rest) = uri.strip_prefix("turns:") {
        (true, rest)
    } else {
        (false, uri.strip_prefix("turn:")?)
    };
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None if tls => 5349,
        None => 3478,
    };
    let tcp = query.split('&').any(|p| p == "transport=tcp");
    let protocol = match (tls, tcp) {
        (true, _) => "tls",
        (false, true) => "tcp",
        (false, false) => "udp",
    };
    Some((host.to_owned(), port, protocol))
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
            turn: None,
            integrations: None,
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
        assert_eq!(all.matches("==> ").count(), 4, "{all}");
    }

    fn with_turn_and_integrations() -> Wiring {
        let mut w = wiring();
        w.turn = Some(Turn {
            uris: vec![
                "turn:turn.example.org:3478?transport=udp".into(),
                "turn:turn.example.org:3478?transport=tcp".into(),
                "turns:turn.example.org:5349?transport=tcp".into(),
            ],
            secret: TurnSecret::File("/run/secrets/turn".into()),
            lifetime: Duration::from_secs(3600),
            livekit: Some((
                "1700000000:livekit".into(),
                "cGFzcw==".into(),
                1_700_000_000,
            )),
        });
        w.integrations = Some(Integrations {
            ui_url: "https://im.example.org/element".into(),
            rest_url: "https://im.example.org/api".into(),
            jitsi_domain: Some("meet.example.org".into()),
        });
        w
    }

    #[test]
    fn turn_and_integrations_reach_every_snippet() {
        let w = with_turn_and_integrations();
        let docs = yaml_rust2::YamlLoader::load_from_str(&w.synapse_yaml()).unwrap();
        let doc = &docs[0];
        assert_eq!(
            doc["turn_uris"][2].as_str(),
            Some("turns:turn.example.org:5349?transport=tcp")
        );
        assert_eq!(
            doc["turn_shared_secret_path"].as_str(),
            Some("/run/secrets/turn")
        );
        assert!(
            doc["turn_shared_secret"].is_badvalue(),
            "no secret when a file holds it"
        );
        assert_eq!(doc["turn_user_lifetime"].as_i64(), Some(3_600_000));
        let manager = &doc["extra_well_known_client_content"]["m.integrations"]["managers"][0];
        assert_eq!(
            manager["api_url"].as_str(),
            Some("https://im.example.org/api")
        );
        assert_eq!(
            manager["ui_url"].as_str(),
            Some("https://im.example.org/element")
        );

        assert_eq!(
            w.well_known()["m.integrations"],
            json!({"managers": [{"api_url": "https://im.example.org/api",
                                 "ui_url": "https://im.example.org/element"}]})
        );
        let element = w.element();
        assert_eq!(
            element["integrations_ui_url"],
            "https://im.example.org/element"
        );
        assert_eq!(
            element["integrations_rest_url"],
            "https://im.example.org/api"
        );
        assert_eq!(
            element["integrations_widgets_urls"],
            json!(["https://im.example.org/api"])
        );
        assert_eq!(
            element["jitsi"],
            json!({"preferred_domain": "meet.example.org"})
        );

        let docs = yaml_rust2::YamlLoader::load_from_str(&w.livekit_yaml()).unwrap();
        let servers = docs[0]["rtc"]["turn_servers"].as_vec().unwrap();
        let seen: Vec<(&str, i64, &str)> = servers
            .iter()
            .map(|s| {
                assert_eq!(s["username"].as_str(), Some("1700000000:livekit"));
                assert_eq!(s["credential"].as_str(), Some("cGFzcw=="));
                (
                    s["host"].as_str().unwrap(),
                    s["port"].as_i64().unwrap(),
                    s["protocol"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("turn.example.org", 3478, "udp"),
                ("turn.example.org", 3478, "tcp"),
                ("turn.example.org", 5349, "tls")
            ]
        );
    }

    #[test]
    fn an_inline_secret_is_printed_marked_as_secret() {
        let mut w = with_turn_and_integrations();
        if let Some(turn) = &mut w.turn {
            turn.secret = TurnSecret::Inline("s3cret".into());
        }
        let yaml = w.synapse_yaml();
        assert!(yaml.contains("# SECRET: the TURN shared secret"), "{yaml}");
        let docs = yaml_rust2::YamlLoader::load_from_str(&yaml).unwrap();
        assert_eq!(docs[0]["turn_shared_secret"].as_str(), Some("s3cret"));
    }

    #[test]
    fn turn_uris_become_livekit_servers() {
        assert_eq!(
            parse_turn_uri("turn:1.2.3.4?transport=udp"),
            Some(("1.2.3.4".into(), 3478, "udp"))
        );
        assert_eq!(
            parse_turn_uri("turns:t.example.org"),
            Some(("t.example.org".into(), 5349, "tls"))
        );
        assert_eq!(
            parse_turn_uri("turn:[2001:db8::1]:3479?transport=tcp"),
            Some(("2001:db8::1".into(), 3479, "tcp"))
        );
        assert_eq!(parse_turn_uri("stun:t.example.org"), None);
    }

    #[test]
    fn quoting_survives_yaml_specials() {
        for s in ["a: b", "#x", "ed25519:0", "'\"", "yes"] {
            let docs = yaml_rust2::YamlLoader::load_from_str(&format!("k: {}", quote(s))).unwrap();
            assert_eq!(docs[0]["k"].as_str(), Some(s));
        }
    }
}
