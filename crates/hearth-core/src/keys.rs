//! Ed25519 signing keys in Synapse's `signing.key` format:
//! one key per line, `ed25519 <version> <unpadded base64 32-byte seed>`.

use crate::base64;
use ed25519_dalek::{Signer, Verifier};
use std::fmt;
use std::path::Path;

/// The only key algorithm Matrix uses.
pub const ED25519: &str = "ed25519";

/// A key version: the part after `ed25519:` in a key id, `[a-zA-Z0-9_]+`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyVersion(String);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid key version {0:?}: only [a-zA-Z0-9_] is allowed")]
    InvalidVersion(String),
    #[error("invalid key id {0:?}: expected ed25519:<version>")]
    InvalidKeyId(String),
    #[error("{path}: line {line}: {reason}")]
    BadFile {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("{0}: no signing key in file")]
    EmptyFile(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid public key")]
    InvalidPublicKey,
}

impl KeyVersion {
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            Ok(Self(s.to_owned()))
        } else {
            Err(KeyError::InvalidVersion(s.to_owned()))
        }
    }

    /// `a_` plus four random letters, as Synapse generates them.
    pub fn random() -> Self {
        Self(format!(
            "a_{}",
            crate::random::string(4, crate::random::LETTERS)
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("{ED25519}:{}", self.0)
    }

    /// Parses a key id `ed25519:<version>`.
    pub fn from_key_id(key_id: &str) -> Result<Self, KeyError> {
        match key_id.split_once(':') {
            Some((ED25519, version)) => Self::parse(version),
            _ => Err(KeyError::InvalidKeyId(key_id.to_owned())),
        }
    }
}

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A server's ed25519 signing key and its version.
#[derive(Clone)]
pub struct SigningKey {
    version: KeyVersion,
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id())
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn from_seed(version: KeyVersion, seed: [u8; 32]) -> Self {
        Self {
            version,
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// A fresh key with a Synapse-style random version.
    pub fn generate() -> Self {
        Self::from_seed(KeyVersion::random(), crate::random::bytes())
    }

    pub fn version(&self) -> &KeyVersion {
        &self.version
    }

    pub fn key_id(&self) -> String {
        self.version.key_id()
    }

    pub fn verify_key(&self) -> VerifyKey {
        VerifyKey(self.key.verifying_key())
    }

    pub fn public_key_base64(&self) -> String {
        self.verify_key().to_base64()
    }

    /// Signs bytes and returns the unpadded base64 signature.
    pub fn sign(&self, message: &[u8]) -> String {
        base64::encode(self.key.sign(message).to_bytes())
    }

    /// A secret for `purpose`, derived from this key's seed: instances that
    /// share the key file share it, and it changes when the key does.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"hearth derived secret\0");
        hasher.update(purpose.as_bytes());
        hasher.update(b"\0");
        hasher.update(self.key.to_bytes());
        hasher.finalize().into()
    }

    /// One line of Synapse's key file, with its newline.
    pub fn to_synapse_line(&self) -> String {
        format!(
            "{ED25519} {} {}\n",
            self.version,
            base64::encode(self.key.to_bytes())
        )
    }

    /// Parses Synapse's key file format. Blank lines are skipped; every other
    /// line must hold exactly three fields.
    pub fn parse_synapse(text: &str, origin: &str) -> Result<Vec<Self>, KeyError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |reason: &str| KeyError::BadFile {
                path: origin.to_owned(),
                line: i + 1,
                reason: reason.to_owned(),
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [] => continue,
                [ED25519, version, seed] => {
                    let version = KeyVersion::parse(version).map_err(|e| bad(&e.to_string()))?;
                    let seed: [u8; 32] = base64::decode(seed)
                        .ok()
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| bad("the seed is not 32 bytes of base64"))?;
                    keys.push(Self::from_seed(version, seed));
                }
                [alg, _, _] => return Err(bad(&format!("unsupported algorithm {alg:?}"))),
                _ => return Err(bad("expected `ed25519 <version> <base64 seed>`")),
            }
        }
        if keys.is_empty() {
            return Err(KeyError::EmptyFile(origin.to_owned()));
        }
        Ok(keys)
    }

    pub fn read_synapse_file(path: &Path) -> Result<Vec<Self>, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_synapse(&text, &path.display().to_string())
    }

    /// Writes the key file atomically, readable by its owner only.
    pub fn write_synapse_file(path: &Path, keys: &[Self]) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("key.tmp");
        let text: String = keys.iter().map(Self::to_synapse_line).collect();
        write_private(&tmp, text.as_bytes()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VerifyKey(ed25519_dalek::VerifyingKey);

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyKey({})", self.to_base64())
    }
}

impl VerifyKey {
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes: [u8; 32] = base64::decode(text)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(KeyError::InvalidPublicKey)?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| KeyError::InvalidPublicKey)
    }

    pub fn to_base64(&self) -> String {
        base64::encode(self.0.as_bytes())
    }

    /// Checks an unpadded-base64 signature over `message`.
    pub fn verify(&self, message: &[u8], signature_b64: &str) -> bool {
        let Some(bytes) = base64::decode(signature_b64)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
        else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        self.0.verify_strict(message, &signature).is_ok()
            || self.0.verify(message, &signature).is_ok()
    }
}

/// A key this server no longer signs with, kept for `old_verify_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldVerifyKey {
    pub key_id: String,
    pub key: String,
    pub expired_ts: i64,
}

/// Changing this server's keys failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// One key id must always mean one key (synapse#3121, #4012).
    #[error(
        "{0} already names a different key here; reusing a key id breaks verification of old signatures"
    )]
    IdClash(String),
    #[error("there is no current signing key")]
    NoKey,
}

/// This server's keys: the current ones in the key file (the first signs)
/// and the retired ones in the database, still published as
/// `old_verify_keys` so that what they signed stays checkable.
#[derive(Debug, Clone)]
pub struct KeyRing {
    pub current: Vec<SigningKey>,
    pub old: Vec<OldVerifyKey>,
}

impl KeyRing {
    /// The keys as they are, creating a first key when the file does not
    /// exist. The flag says whether one was created.
    pub async fn load_or_create(
        path: &Path,
        db: &crate::storage::Database,
    ) -> Result<(Self, bool), KeyRingError> {
        let created = !path.exists();
        if created {
            SigningKey::write_synapse_file(path, &[SigningKey::generate()])?;
        }
        Ok((Self::load(path, db).await?, created))
    }

    /// The keys as they are; no current key when the file does not exist.
    pub async fn load(path: &Path, db: &crate::storage::Database) -> Result<Self, KeyRingError> {
        let current = if path.exists() {
            SigningKey::read_synapse_file(path)?
        } else {
            Vec::new()
        };
        Ok(Self {
            current,
            old: db.old_verify_keys().await?,
        })
    }

    /// The key that signs.
    pub fn signing_key(&self) -> Result<&SigningKey, KeyRingError> {
        self.current.first().ok_or(KeyRingError::NoKey)
    }

    /// The public key `key_id` names, current or retired.
    pub fn public_key(&self, key_id: &str) -> Option<String> {
        self.current
            .iter()
            .find(|k| k.key_id() == key_id)
            .map(SigningKey::public_key_base64)
            .or_else(|| {
                self.old
                    .iter()
                    .find(|k| k.key_id == key_id)
                    .map(|k| k.key.clone())
            })
    }

    /// Makes a new key with an id that never named another key here, and
    /// makes it the only current one.
    pub async fn generate(
        path: &Path,
        db: &crate::storage::Database,
    ) -> Result<SigningKey, KeyRingError> {
        let ring = Self::load(path, db).await?;
        let mut key = SigningKey::generate();
        while ring.public_key(&key.key_id()).is_some() {
            key = SigningKey::generate();
        }
        ring.replace(path, db, vec![key.clone()]).await?;
        Ok(key)
    }

    /// Makes `imported` the current keys, retiring the others. An id that
    /// already names a different key is refused.
    pub async fn import(
        path: &Path,
        db: &crate::storage::Database,
        imported: Vec<SigningKey>,
    ) -> Result<(), KeyRingError> {
        let ring = Self::load(path, db).await?;
        for key in &imported {
            if ring
                .public_key(&key.key_id())
                .is_some_and(|known| known != key.public_key_base64())
            {
                return Err(KeyRingError::IdClash(key.key_id()));
            }
        }
        ring.replace(path, db, imported).await
    }

    /// Retires the current keys that `new` does not keep, then writes `new`.
    /// Retiring first means a crash in between leaves a key published twice,
    /// never a key lost.
    async fn replace(
        &self,
        path: &Path,
        db: &crate::storage::Database,
        new: Vec<SigningKey>,
    ) -> Result<(), KeyRingError> {
        let now = crate::time::now_ms();
        for key in &self.current {
            if !new.iter().any(|n| n.key_id() == key.key_id()) {
                db.add_old_verify_key(&OldVerifyKey {
                    key_id: key.key_id(),
                    key: key.public_key_base64(),
                    expired_ts: now,
                })
                .await?;
            }
        }
        SigningKey::write_synapse_file(path, &new)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's test seed (appendix "Cryptographic test vectors").
    pub(crate) const SPEC_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";

    #[test]
    fn reads_the_spec_seed_in_synapse_format() {
        let keys = SigningKey::parse_synapse(&format!("ed25519 1 {SPEC_SEED}\n"), "t").unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].key_id(), "ed25519:1");
        assert_eq!(
            keys[0].public_key_base64(),
            "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"
        );
        // Written back canonically: same key, canonical trailing bits.
        let line = keys[0].to_synapse_line();
        assert_eq!(
            line,
            "ed25519 1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA0\n"
        );
    }

    #[test]
    fn file_round_trip_keeps_several_keys_and_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/signing.key");
        let keys = vec![SigningKey::generate(), SigningKey::generate()];
        SigningKey::write_synapse_file(&path, &keys).unwrap();
        let back = SigningKey::read_synapse_file(&path).unwrap();
        assert_eq!(back.len(), 2);
        for (a, b) in keys.iter().zip(&back) {
            assert_eq!(a.key_id(), b.key_id());
            assert_eq!(a.public_key_base64(), b.public_key_base64());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn generated_versions_look_like_synapse_ones() {
        let v = KeyVersion::random();
        assert!(v.as_str().starts_with("a_"));
        assert_eq!(v.as_str().len(), 6);
        assert!(v.as_str()[2..].bytes().all(|b| b.is_ascii_alphabetic()));
    }

    #[test]
    fn rejects_malformed_key_files() {
        for (text, want) in [
            ("", "no signing key"),
            ("ed25519 a_abcd", "line 1"),
            ("\ncurve448 a_abcd AAAA", "line 2: unsupported algorithm"),
            ("ed25519 a-b AAAA", "invalid key version"),
            ("ed25519 a_abcd AAAA", "not 32 bytes"),
        ] {
            let err = SigningKey::parse_synapse(text, "signing.key").unwrap_err();
            assert!(
                err.to_string().contains(want),
                "{err} should mention {want}"
            );
        }
        assert!(KeyVersion::from_key_id("curve:1").is_err());
        assert_eq!(
            KeyVersion::from_key_id("ed25519:a_x1").unwrap().as_str(),
            "a_x1"
        );
    }
}
