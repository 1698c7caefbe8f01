//! The policies of one service (MSC2140) and whether a user accepted them.
//! Accepting any language of a policy's current version accepts the policy.

use crate::config::TermsConfig;
use serde_json::{Map, Value, json};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Terms {
    policies: Vec<Policy>,
}

#[derive(Debug, Clone)]
struct Policy {
    id: String,
    version: String,
    languages: Vec<Language>,
}

#[derive(Debug, Clone)]
struct Language {
    code: String,
    name: String,
    url: String,
    /// Served by Hearth at `url` when set.
    file: Option<PathBuf>,
}

/// Characters allowed in policy ids, versions and language codes, which
/// become path segments of served documents.
fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s != "."
        && s != ".."
}

impl Terms {
    /// Checks the policies and builds them; the error names the bad key.
    pub fn new(service: &str, config: &TermsConfig, public_base_url: &str) -> Result<Self, String> {
        let mut policies = Vec::new();
        for (id, policy) in &config.policies {
            let at = format!("{service}.auth.terms.policies.{id}");
            if !is_segment(id) || !is_segment(&policy.version) {
                return Err(format!(
                    "{at}: the id and version may hold only letters, digits, '-', '_' and '.'"
                ));
            }
            if policy.languages.is_empty() {
                return Err(format!("{at}: give at least one language"));
            }
            let mut languages = Vec::new();
            for (code, lang) in &policy.languages {
                if !is_segment(code) {
                    return Err(format!("{at}.languages.{code}: not a language code"));
                }
                let url = match (&lang.url, &lang.file) {
                    (Some(url), None) => url.clone(),
                    (None, Some(file)) => {
                        if !file.is_file() {
                            return Err(format!(
                                "{at}.languages.{code}.file {}: not found",
                                file.display()
                            ));
                        }
                        format!(
                            "{}/_hearth/terms/{service}/{id}/{}/{code}",
                            public_base_url.trim_end_matches('/'),
                            policy.version
                        )
                    }
                    _ => return Err(format!("{at}.languages.{code}: set either url or file")),
                };
                languages.push(Language {
                    code: code.clone(),
                    name: lang.name.clone(),
                    url,
                    file: lang.file.clone(),
                });
            }
            policies.push(Policy {
                id: id.clone(),
                version: policy.version.clone(),
                languages,
            });
        }
        Ok(Self { policies })
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The `GET /terms` body.
    pub fn to_json(&self) -> Value {
        let policies: Map<String, Value> = self
            .policies
            .iter()
            .map(|p| {
                let mut entry = Map::new();
                entry.insert("version".to_owned(), p.version.clone().into());
                for l in &p.languages {
                    entry.insert(l.code.clone(), json!({ "name": l.name, "url": l.url }));
                }
                (p.id.clone(), Value::Object(entry))
            })
            .collect();
        json!({ "policies": policies })
    }

    /// Whether `url` is a document of a current policy.
    pub fn is_current_url(&self, url: &str) -> bool {
        self.policies
            .iter()
            .any(|p| p.languages.iter().any(|l| l.url == url))
    }

    /// Whether every current policy has one of its URLs in `accepted`.
    pub fn all_accepted(&self, accepted: &[String]) -> bool {
        self.policies.iter().all(|p| {
            p.languages
                .iter()
                .any(|l| accepted.iter().any(|a| a == &l.url))
        })
    }

    /// The file behind a document Hearth serves itself.
    pub(crate) fn document(&self, id: &str, version: &str, code: &str) -> Option<&PathBuf> {
        self.policies
            .iter()
            .find(|p| p.id == id && p.version == version)?
            .languages
            .iter()
            .find(|l| l.code == code)?
            .file
            .as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PolicyConfig, PolicyLanguage};

    fn config(version: &str) -> TermsConfig {
        let mut languages = std::collections::BTreeMap::new();
        for (code, name) in [
            ("en", "Privacy Policy"),
            ("fr", "Politique de confidentialité"),
        ] {
            languages.insert(
                code.to_owned(),
                PolicyLanguage {
                    name: name.to_owned(),
                    url: Some(format!("https://example.org/privacy-{version}-{code}.html")),
                    file: None,
                },
            );
        }
        let mut config = TermsConfig::default();
        config.policies.insert(
            "privacy_policy".to_owned(),
            PolicyConfig {
                version: version.to_owned(),
                languages,
            },
        );
        config
    }

    /// MSC2140 `GET /terms` shape: `{policies: {id: {version, lang: {name, url}}}}`.
    #[test]
    fn serializes_like_the_spec_example() {
        let terms = Terms::new("identity", &config("1.2"), "https://is.example").unwrap();
        assert_eq!(
            terms.to_json(),
            json!({"policies": {"privacy_policy": {
                "version": "1.2",
                "en": {"name": "Privacy Policy", "url": "https://example.org/privacy-1.2-en.html"},
                "fr": {"name": "Politique de confidentialité", "url": "https://example.org/privacy-1.2-fr.html"},
            }}})
        );
    }

    /// One language accepts the policy; a new version asks again.
    #[test]
    fn one_language_accepts_and_new_versions_ask_again() {
        let v1 = Terms::new("identity", &config("1"), "https://is.example").unwrap();
        let accepted = vec!["https://example.org/privacy-1-fr.html".to_owned()];
        assert!(v1.all_accepted(&accepted));
        assert!(!v1.all_accepted(&[]));
        let v2 = Terms::new("identity", &config("2"), "https://is.example").unwrap();
        assert!(!v2.all_accepted(&accepted));
        assert!(
            Terms::new("identity", &TermsConfig::default(), "x")
                .unwrap()
                .all_accepted(&[])
        );
    }

    #[test]
    fn served_files_get_urls_under_the_public_base() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tos.html");
        std::fs::write(&file, "<p>terms</p>").unwrap();
        let mut config = config("3");
        let policy = config.policies.get_mut("privacy_policy").unwrap();
        let en = policy.languages.get_mut("en").unwrap();
        en.url = None;
        en.file = Some(file.clone());
        let terms = Terms::new("identity", &config, "https://is.example/").unwrap();
        let url = "https://is.example/_hearth/terms/identity/privacy_policy/3/en";
        assert!(terms.is_current_url(url));
        assert_eq!(terms.document("privacy_policy", "3", "en"), Some(&file));
        assert_eq!(terms.document("privacy_policy", "2", "en"), None);

        en_both(&mut config);
        assert!(Terms::new("identity", &config, "x").is_err());
    }

    fn en_both(config: &mut TermsConfig) {
        let en = config
            .policies
            .get_mut("privacy_policy")
            .unwrap()
            .languages
            .get_mut("en")
            .unwrap();
        en.url = Some("https://x".to_owned());
    }
}
