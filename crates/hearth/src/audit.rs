//! `hearth audit`: reads an operator's Synapse and Element configs and lists
//! each third-party service they make users or the server depend on, with
//! the change that points it at Hearth. Defaults count: a key left out
//! still sends traffic somewhere (Synapse's notary, Element's integration
//! manager and Jitsi), so absence is checked as well as values.

use crate::config::Config;
use anyhow::Context as _;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// Hosts run by third parties that the default configs of Synapse and
/// Element point at, matched as the host or a parent domain.
const THIRD_PARTIES: &[(&str, &str)] = &[
    ("vector.im", "Element's hosted services (vector.im)"),
    ("riot.im", "Element's hosted services (riot.im)"),
    ("element.io", "Element's hosted services (element.io)"),
    ("matrix.org", "the Matrix.org Foundation's servers"),
    ("l.google.com", "Google"),
    ("meet.jit.si", "the public Jitsi Meet (8x8)"),
];

/// Which file a finding is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Synapse,
    Element,
}

/// One third-party dependency and how to remove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    pub source: Source,
    /// The key path, e.g. `trusted_key_servers[0].server_name`.
    pub key: String,
    pub problem: String,
    pub fix: String,
}

/// What the fixes name: this Hearth's public URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hints {
    pub server_name: String,
    pub identity_url: String,
    /// The integration manager's base URL, when it is enabled.
    pub integrations_url: Option<String>,
}

impl Hints {
    pub(crate) fn from_config(config: &Config) -> Self {
        let server_name = config.server_name.as_str().to_owned();
        let identity_url = config
            .identity
            .public_base_url
            .clone()
            .unwrap_or_else(|| format!("https://{server_name}"));
        let integrations_url = config.integrations.enabled.then(|| {
            config
                .integrations
                .public_base_url
                .clone()
                .unwrap_or_else(|| format!("https://{server_name}"))
                .trim_end_matches('/')
                .to_owned()
        });
        Self {
            server_name,
            identity_url: identity_url.trim_end_matches('/').to_owned(),
            integrations_url,
        }
    }
}

/// Who runs `host`, when it is a known third party.
fn third_party(host: &str) -> Option<&'static str> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    THIRD_PARTIES
        .iter()
        .find(|(domain, _)| host == *domain || host.ends_with(&format!(".{domain}")))
        .map(|(_, who)| *who)
}

/// The host a config value names: a URL's, a STUN/TURN URI's, or the value
/// itself when it is a bare domain name.
fn host_of(value: &str) -> Option<&str> {
    let value = value.trim();
    let rest = if let Some((_, rest)) = value.split_once("://") {
        rest
    } else if let Some(rest) = ["stun:", "stuns:", "turn:", "turns:"]
        .iter()
        .find_map(|scheme| value.strip_prefix(scheme))
    {
        rest
    } else if !value.is_empty()
        && value.contains('.')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Some(value);
    } else {
        return None;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default()
    };
    (!host.is_empty()).then_some(host)
}

/// Every string in `value` with its key path.
fn strings<'a>(value: &'a Value, path: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::String(s) => out.push((path, s)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings(item, format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                strings(item, path, out);
            }
        }
        _ => {}
    }
}

/// A YAML document as JSON, so both configs are walked alike. Keys that are
/// not strings are written out; numbers and booleans keep their type.
fn yaml_to_json(yaml: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match yaml {
        Yaml::String(s) | Yaml::Real(s) => Value::String(s.clone()),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) | Yaml::Real(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// Parses Synapse's `homeserver.yaml` (the first document).
pub(crate) fn parse_yaml(text: &str) -> anyhow::Result<Value> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text)?;
    Ok(docs.first().map(yaml_to_json).unwrap_or(Value::Null))
}

fn finding(source: Source, key: impl Into<String>, problem: String, fix: String) -> Finding {
    Finding {
        source,
        key: key.into(),
        problem,
        fix,
    }
}

/// The third-party dependencies in Synapse's config.
pub(crate) fn synapse(config: &Value, hints: &Hints) -> Vec<Finding> {
    let mut found = Vec::new();
    let notary_fix = format!(
        "trust Hearth instead: `hearth homeserver-config synapse` prints trusted_key_servers \
         with server_name {:?} and its verify_keys",
        hints.server_name
    );
    if config.get("trusted_key_servers").is_none() && config.get("perspectives").is_none() {
        found.push(finding(
            Source::Synapse,
            "trusted_key_servers",
            "absent, so Synapse asks matrix.org for other servers' signing keys: matrix.org \
             learns which servers yours talks to, and vouches for their keys"
                .into(),
            notary_fix.clone(),
        ));
    }
    let turn_uris: Vec<&str> = config
        .get("turn_uris")
        .and_then(Value::as_array)
        .map(|uris| uris.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !turn_uris
        .iter()
        .any(|uri| uri.starts_with("turn:") || uri.starts_with("turns:"))
    {
        found.push(finding(
            Source::Synapse,
            "turn_uris",
            "no TURN server: calls fail between users behind NAT or strict firewalls, and \
             clients fall back to third-party STUN servers"
                .into(),
            "enable Hearth's TURN ([turn] enabled = true with a shared_secret) and set \
             turn_uris, turn_shared_secret and turn_user_lifetime from \
             `hearth homeserver-config synapse`"
                .into(),
        ));
    }
    if config.get("report_stats").and_then(Value::as_bool) == Some(true) {
        found.push(finding(
            Source::Synapse,
            "report_stats",
            "true: Synapse sends usage statistics to matrix.org".into(),
            "set report_stats: false".into(),
        ));
    }
    for (key, value) in all_strings(config) {
        let Some(who) = host_of(value).and_then(third_party) else {
            continue;
        };
        let (problem, fix) = if key.starts_with("trusted_key_servers")
            || key.starts_with("perspectives")
        {
            (
                format!(
                    "{value:?} is a notary run by {who}: it learns which servers yours talks to, and vouches for their keys"
                ),
                notary_fix.clone(),
            )
        } else if key == "default_identity_server" || key.starts_with("account_threepid_delegates")
        {
            (
                format!(
                    "{value:?} is an identity server run by {who}: it sees your users' email addresses and phone numbers"
                ),
                format!(
                    "use Hearth's identity server: default_identity_server: {:?}",
                    hints.identity_url
                ),
            )
        } else if key.starts_with("turn_uris") {
            (
                format!(
                    "{value:?} is a STUN/TURN server run by {who}: it sees your users' IP addresses during calls"
                ),
                "use Hearth's TURN: set turn_uris from `hearth homeserver-config synapse`".into(),
            )
        } else {
            (
                format!("{value:?} belongs to {who}"),
                "point it at a service you run, or remove it".into(),
            )
        };
        found.push(finding(Source::Synapse, key, problem, fix));
    }
    found
}

/// The third-party dependencies in Element Web's `config.json`.
pub(crate) fn element(config: &Value, hints: &Hints) -> Vec<Finding> {
    let mut found = Vec::new();
    let im_fix = match &hints.integrations_url {
        Some(base) => format!(
            "use Hearth's integration manager: integrations_ui_url {:?}, integrations_rest_url \
             {:?} (`hearth homeserver-config element` prints every key), or set both URLs to \
             \"\" to turn integrations off",
            format!("{base}/element"),
            format!("{base}/api")
        ),
        None => "set integrations_ui_url and integrations_rest_url to \"\" to turn \
                 integrations off, or enable Hearth's [integrations]"
            .to_owned(),
    };
    for key in ["integrations_ui_url", "integrations_rest_url"] {
        // Element's built-in defaults apply only to a key left out.
        if config.get(key).is_none() {
            found.push(finding(
                Source::Element,
                key,
                "absent, so Element silently uses scalar.vector.im, Element's hosted \
                 integration manager, which then learns your users' Matrix IDs and rooms"
                    .into(),
                im_fix.clone(),
            ));
        }
    }
    if config.get("jitsi").is_none() {
        found.push(finding(
            Source::Element,
            "jitsi.preferred_domain",
            "absent, so Element holds conference calls on meet.element.io, Element's hosted \
             Jitsi"
                .into(),
            "set jitsi.preferred_domain to a Jitsi Meet you run (the domain Hearth's \
             [integrations.widgets] jitsi_domain names)"
                .into(),
        ));
    }
    for (key, value) in all_strings(config) {
        let Some(who) = host_of(value).and_then(third_party) else {
            continue;
        };
        let (problem, fix) = if key.starts_with("default_server_config.m.identity_server") {
            (
                format!(
                    "{value:?} is an identity server run by {who}: it sees your users' email addresses and phone numbers"
                ),
                format!(
                    "use Hearth's identity server: default_server_config.m.identity_server.base_url: {:?}",
                    hints.identity_url
                ),
            )
        } else if key.starts_with("integrations_") {
            (
                format!(
                    "{value:?} is an integration manager run by {who}: it learns your users' Matrix IDs and rooms"
                ),
                im_fix.clone(),
            )
        } else if key.starts_with("jitsi") {
            (
                format!(
                    "{value:?} is a Jitsi Meet run by {who}: it carries your users' conference calls"
                ),
                "set jitsi.preferred_domain to a Jitsi Meet you run".into(),
            )
        } else if key.starts_with("default_server_config.m.homeserver") {
            (
                format!("{value:?} is a homeserver run by {who}: the client's default server"),
                "point default_server_config.m.homeserver at your homeserver".into(),
            )
        } else {
            (
                format!("{value:?} belongs to {who}"),
                "point it at a service you run, or remove it".into(),
            )
        };
        found.push(finding(Source::Element, key, problem, fix));
    }
    found
}

fn all_strings(config: &Value) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    strings(config, String::new(), &mut out);
    out
}

/// Reads the files given, prints the findings, and tells whether there were
/// none.
pub(crate) fn run(
    config: &Config,
    synapse_file: Option<&Path>,
    element_file: Option<&Path>,
    out: &mut impl std::io::Write,
) -> anyhow::Result<bool> {
    let hints = Hints::from_config(config);
    let mut found = Vec::new();
    if let Some(path) = synapse_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let yaml = parse_yaml(&text).with_context(|| format!("parsing {}", path.display()))?;
        found.extend(synapse(&yaml, &hints));
    }
    if let Some(path) = element_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let json: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        found.extend(element(&json, &hints));
    }
    write!(out, "{}", report(&found, synapse_file, element_file))?;
    Ok(found.is_empty())
}

/// The findings as text: one block each, then a count.
fn report(found: &[Finding], synapse_file: Option<&Path>, element_file: Option<&Path>) -> String {
    let mut text = String::new();
    for f in found {
        let file = match f.source {
            Source::Synapse => synapse_file,
            Source::Element => element_file,
        }
        .map(|p| p.display().to_string())
        .unwrap_or_default();
        let _ = writeln!(text, "{file}: {}\n  {}\n  fix: {}", f.key, f.problem, f.fix);
    }
    if found.is_empty() {
        text.push_str("no third-party dependency found\n");
    } else {
        let _ = writeln!(text, "{} third-party dependencies found", found.len());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hints() -> Hints {
        Hints {
            server_name: "hearth.example.org".into(),
            identity_url: "https://hearth.example.org".into(),
            integrations_url: Some("https://hearth.example.org".into()),
        }
    }

    fn keys(found: &[Finding]) -> Vec<&str> {
        found.iter().map(|f| f.key.as_str()).collect()
    }

    #[test]
    fn hosts_are_read_from_urls_uris_and_bare_names() {
        assert_eq!(
            host_of("https://scalar.vector.im/api"),
            Some("scalar.vector.im")
        );
        assert_eq!(
            host_of("stun:stun.l.google.com:19302"),
            Some("stun.l.google.com")
        );
        assert_eq!(
            host_of("turns:[2001:db8::1]:5349?transport=tcp"),
            Some("2001:db8::1")
        );
        assert_eq!(host_of("https://u:p@matrix.org:8448/x"), Some("matrix.org"));
        assert_eq!(host_of("matrix.org"), Some("matrix.org"));
        assert_eq!(host_of("just words"), None);
        assert_eq!(third_party("stun1.l.google.com"), Some("Google"));
        assert_eq!(
            third_party("MATRIX.ORG."),
            Some("the Matrix.org Foundation's servers")
        );
        // A suffix match needs a dot: notmatrix.org is someone else's.
        assert_eq!(third_party("notmatrix.org"), None);
    }

    #[test]
    fn synapse_defaults_and_values_are_both_found() {
        // Absent keys: the matrix.org notary default and no TURN.
        let found = synapse(&json!({"server_name": "example.org"}), &hints());
        assert_eq!(keys(&found), ["trusted_key_servers", "turn_uris"]);

        let found = synapse(
            &json!({
                "trusted_key_servers": [{"server_name": "matrix.org"}],
                "turn_uris": ["stun:stun.l.google.com:19302", "turn:turn.example.org"],
                "default_identity_server": "https://vector.im",
                "report_stats": true,
            }),
            &hints(),
        );
        assert_eq!(
            keys(&found),
            [
                "report_stats",
                "default_identity_server",
                "trusted_key_servers[0].server_name",
                "turn_uris[0]"
            ]
        );
        assert!(found[1].fix.contains("https://hearth.example.org"));
        assert!(
            found[2].fix.contains("\"hearth.example.org\""),
            "{:?}",
            found[2]
        );
    }

    #[test]
    fn a_synapse_pointed_at_hearth_is_clean() {
        let yaml = parse_yaml(
            "trusted_key_servers:\n  - server_name: hearth.example.org\n    verify_keys: {\"ed25519:a\": \"x\"}\n\
             default_identity_server: https://hearth.example.org\n\
             turn_uris: [\"turn:turn.example.org?transport=udp\"]\nreport_stats: false\n",
        )
        .unwrap();
        assert_eq!(synapse(&yaml, &hints()), []);
        // Explicitly no notary at all is no third party either.
        let none =
            parse_yaml("trusted_key_servers: []\nturn_uris: [\"turns:t.example.org\"]\n").unwrap();
        assert_eq!(synapse(&none, &hints()), []);
    }

    #[test]
    fn element_fallbacks_and_values_are_found() {
        let found = element(&json!({}), &hints());
        assert_eq!(
            keys(&found),
            [
                "integrations_ui_url",
                "integrations_rest_url",
                "jitsi.preferred_domain"
            ]
        );
        let found = element(
            &json!({
                "default_server_config": {"m.identity_server": {"base_url": "https://vector.im"}},
                "integrations_ui_url": "",
                "integrations_rest_url": "",
                "integrations_widgets_urls": ["https://scalar.vector.im/api"],
                "jitsi": {"preferred_domain": "meet.element.io"},
            }),
            &hints(),
        );
        assert_eq!(
            keys(&found),
            [
                "default_server_config.m.identity_server.base_url",
                "integrations_widgets_urls[0]",
                "jitsi.preferred_domain"
            ]
        );
        assert!(
            found[1]
                .fix
                .contains("\"https://hearth.example.org/element\""),
            "{:?}",
            found[1]
        );
        // Empty URLs turn integrations off: not a dependency.
        let off = element(
            &json!({"integrations_ui_url": "", "integrations_rest_url": "",
                    "jitsi": {"preferred_domain": "meet.example.org"}}),
            &hints(),
        );
        assert_eq!(off, []);
    }

    #[test]
    fn the_report_counts_what_it_lists() {
        let found = element(&json!({}), &hints());
        let text = report(&found, None, Some(Path::new("config.json")));
        assert!(
            text.starts_with("config.json: integrations_ui_url\n"),
            "{text}"
        );
        assert!(
            text.ends_with("3 third-party dependencies found\n"),
            "{text}"
        );
        assert_eq!(report(&[], None, None), "no third-party dependency found\n");
    }
}
