//! Signing JSON per the spec appendix "Signing JSON": strip `signatures` and
//! `unsigned`, sign the canonical encoding, and store the signature under
//! `signatures.<entity>.<key id>`.

use crate::canonical_json::{self, CanonicalJsonError};
use crate::keys::{SigningKey, VerifyKey};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("only JSON objects can be signed")]
    NotAnObject,
    #[error(transparent)]
    Canonical(#[from] CanonicalJsonError),
    #[error("`signatures` is malformed")]
    MalformedSignatures,
    #[error("no signature from {0}")]
    Unsigned(String),
    #[error("no signature from {0} with a known key")]
    NoKnownKey(String),
    #[error("bad signature from {entity} with {key_id}")]
    BadSignature { entity: String, key_id: String },
}

/// The bytes a signature covers: the canonical object without `signatures`
/// and `unsigned`.
pub fn signable_bytes(object: &Map<String, Value>) -> Result<Vec<u8>, SignatureError> {
    let mut stripped = object.clone();
    stripped.remove("signatures");
    stripped.remove("unsigned");
    Ok(canonical_json::to_string(&Value::Object(stripped))?.into_bytes())
}

/// Adds `entity`'s signature with `key`, keeping any signatures already there.
pub fn sign_json(value: &mut Value, entity: &str, key: &SigningKey) -> Result<(), SignatureError> {
    let object = value.as_object_mut().ok_or(SignatureError::NotAnObject)?;
    let signature = key.sign(&signable_bytes(object)?);
    let signatures = object
        .entry("signatures")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or(SignatureError::MalformedSignatures)?;
    let mine = signatures
        .entry(entity)
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or(SignatureError::MalformedSignatures)?;
    mine.insert(key.key_id(), Value::String(signature));
    Ok(())
}

/// The signatures `entity` put on `value`, by key id.
pub fn signatures_of<'a>(
    value: &'a Value,
    entity: &str,
) -> Result<&'a Map<String, Value>, SignatureError> {
    value
        .as_object()
        .ok_or(SignatureError::NotAnObject)?
        .get("signatures")
        .and_then(|s| s.get(entity))
        .and_then(Value::as_object)
        .ok_or_else(|| SignatureError::Unsigned(entity.to_owned()))
}

/// Checks that `entity` signed `value` with at least one of `keys`
/// (key id, key); every signature by a known key must verify.
pub fn verify_json<'k>(
    value: &Value,
    entity: &str,
    keys: impl IntoIterator<Item = (&'k str, &'k VerifyKey)>,
) -> Result<(), SignatureError> {
    let signatures = signatures_of(value, entity)?;
    let object = value.as_object().ok_or(SignatureError::NotAnObject)?;
    let message = signable_bytes(object)?;
    let mut verified = false;
    for (key_id, key) in keys {
        let Some(signature) = signatures.get(key_id) else {
            continue;
        };
        let ok = signature.as_str().is_some_and(|s| key.verify(&message, s));
        if !ok {
            return Err(SignatureError::BadSignature {
                entity: entity.to_owned(),
                key_id: key_id.to_owned(),
            });
        }
        verified = true;
    }
    if verified {
        Ok(())
    } else {
        Err(SignatureError::NoKnownKey(entity.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyVersion;
    use serde_json::json;

    fn spec_key() -> SigningKey {
        let seed = crate::base64::decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1").unwrap();
        SigningKey::from_seed(KeyVersion::parse("1").unwrap(), seed.try_into().unwrap())
    }

    /// Spec appendix "Cryptographic test vectors", JSON signing of `{}`.
    #[test]
    fn spec_vector_empty_object() {
        let mut value = json!({});
        sign_json(&mut value, "domain", &spec_key()).unwrap();
        assert_eq!(
            value,
            json!({"signatures": {"domain": {"ed25519:1":
                "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}})
        );
    }

    /// Spec appendix "Cryptographic test vectors", `{"one": 1, "two": "Two"}`.
    #[test]
    fn spec_vector_one_two() {
        let mut value = json!({"one": 1, "two": "Two"});
        sign_json(&mut value, "domain", &spec_key()).unwrap();
        assert_eq!(
            value,
            json!({"one": 1, "two": "Two", "signatures": {"domain": {"ed25519:1":
                "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"}}})
        );
    }

    #[test]
    fn verify_accepts_good_and_rejects_tampered_or_unknown() {
        let key = spec_key();
        let verify_key = key.verify_key();
        let mut value = json!({"one": 1, "unsigned": {"age": 5}});
        sign_json(&mut value, "domain", &key).unwrap();
        // `unsigned` is not covered, so changing it keeps the signature valid.
        value["unsigned"]["age"] = json!(6);
        verify_json(&value, "domain", [("ed25519:1", &verify_key)]).unwrap();

        let mut tampered = value.clone();
        tampered["one"] = json!(2);
        assert!(matches!(
            verify_json(&tampered, "domain", [("ed25519:1", &verify_key)]),
            Err(SignatureError::BadSignature { .. })
        ));
        assert_eq!(
            verify_json(&value, "domain", [("ed25519:2", &verify_key)]),
            Err(SignatureError::NoKnownKey("domain".into()))
        );
        assert_eq!(
            verify_json(&value, "other", [("ed25519:1", &verify_key)]),
            Err(SignatureError::Unsigned("other".into()))
        );
    }

    #[test]
    fn a_second_entity_adds_its_signature_beside_the_first() {
        let mut value = json!({"server_name": "a"});
        sign_json(&mut value, "a", &spec_key()).unwrap();
        let notary = SigningKey::generate();
        sign_json(&mut value, "notary", &notary).unwrap();
        verify_json(&value, "a", [("ed25519:1", &spec_key().verify_key())]).unwrap();
        let id = notary.key_id();
        verify_json(&value, "notary", [(id.as_str(), &notary.verify_key())]).unwrap();
    }
}
