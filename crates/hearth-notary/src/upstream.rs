//! Upstream notaries, asked only when an origin cannot be reached. Their
//! answers count only when signed by a key the operator configured for
//! them, and each server's keys only when self-signed by that server too.

use crate::config::Upstream;
use hearth_core::ids::ServerName;
use hearth_core::keys::VerifyKey;
use hearth_core::signed_json::verify_json;
use hearth_core::time::now_ms;
use hearth_federation::FederationClient;
use hearth_federation::keys::{ServerKeys, verify_server_keys};
use serde_json::{Value, json};

/// An upstream notary with its parsed keys.
#[derive(Debug, Clone)]
pub(crate) struct Notary {
    pub(crate) server_name: ServerName,
    verify_keys: Vec<(String, VerifyKey)>,
}

impl Notary {
    /// Checks one `[[notary.upstream]]` entry; the error names the key.
    pub(crate) fn parse(upstream: &Upstream, index: usize) -> Result<Self, String> {
        let at = format!("notary.upstream[{index}]");
        let server_name = ServerName::parse(&upstream.server_name)
            .map_err(|e| format!("{at}.server_name: {e}"))?;
        if upstream.verify_keys.is_empty() {
            return Err(format!(
                "{at}.verify_keys: give at least one key; unsigned answers are never trusted"
            ));
        }
        let verify_keys = upstream
            .verify_keys
            .iter()
            .map(|(id, key)| {
                if !id.starts_with("ed25519:") {
                    return Err(format!("{at}.verify_keys: {id:?} is not an ed25519 key id"));
                }
                let key = VerifyKey::from_base64(key)
                    .map_err(|_| format!("{at}.verify_keys.{id:?}: not an ed25519 public key"))?;
                Ok((id.clone(), key))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            server_name,
            verify_keys,
        })
    }

    /// Asks this notary for `server`'s keys. Entries for other servers, or
    /// that fail either signature, are dropped.
    pub(crate) async fn query(
        &self,
        client: &FederationClient,
        server: &ServerName,
        key_ids: &[String],
        minimum_valid_until_ts: i64,
    ) -> Result<Vec<ServerKeys>, String> {
        // `minimum_valid_until_ts` is sent explicitly: Synapse since 1.142
        // rejects criteria without it, although the spec makes it optional.
        let criteria: serde_json::Map<String, Value> = key_ids
            .iter()
            .map(|id| {
                (
                    id.clone(),
                    json!({ "minimum_valid_until_ts": minimum_valid_until_ts }),
                )
            })
            .collect();
        let body = json!({ "server_keys": { server.as_str(): criteria } });
        let answer = client
            .post_json(&self.server_name, "/_matrix/key/v2/query", &body)
            .await
            .map_err(|e| e.to_string())?;
        let entries = answer
            .get("server_keys")
            .and_then(Value::as_array)
            .ok_or("no server_keys array")?;
        let fetched_ts = now_ms();
        let mut verified = Vec::new();
        for entry in entries {
            if entry.get("server_name").and_then(Value::as_str) != Some(server.as_str()) {
                continue;
            }
            if let Err(e) = verify_json(
                entry,
                self.server_name.as_str(),
                self.verify_keys.iter().map(|(id, key)| (id.as_str(), key)),
            ) {
                tracing::warn!(notary = %self.server_name, error = %e, "an upstream notary's answer is not signed by its configured keys");
                continue;
            }
            match verify_server_keys(entry.clone(), server, fetched_ts) {
                Ok(keys) => verified.push(keys),
                Err(e) => {
                    tracing::warn!(notary = %self.server_name, error = %e, "an upstream notary relayed keys that do not verify");
                }
            }
        }
        Ok(verified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn config_entries_need_a_valid_name_and_keys() {
        let key = hearth_core::keys::SigningKey::generate();
        let good = Upstream {
            server_name: "notary.example".to_owned(),
            verify_keys: BTreeMap::from([(key.key_id(), key.public_key_base64())]),
        };
        assert!(Notary::parse(&good, 0).is_ok());
        let no_keys = Upstream {
            verify_keys: BTreeMap::new(),
            ..good.clone()
        };
        assert!(
            Notary::parse(&no_keys, 0)
                .unwrap_err()
                .contains("verify_keys")
        );
        let bad_name = Upstream {
            server_name: "bad name".to_owned(),
            ..good.clone()
        };
        assert!(
            Notary::parse(&bad_name, 1)
                .unwrap_err()
                .contains("upstream[1].server_name")
        );
        let bad_key = Upstream {
            verify_keys: BTreeMap::from([("ed25519:x".to_owned(), "nope".to_owned())]),
            ..good
        };
        assert!(Notary::parse(&bad_key, 0).is_err());
    }
}
