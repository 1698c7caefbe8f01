//! Test helpers shared by the service tests of every crate and the
//! end-to-end suite (a dev-dependency only; never part of the binary):
//! in-process federation peers, a fake homeserver, an SMTP capture with
//! mail parsing, and the spec's lookup hash.

pub mod federation;
pub mod homeserver;
pub mod mail;
pub mod response;
pub mod smtp;

pub use homeserver::{FakeHomeserver, Recorded};
pub use mail::Mail;
pub use response::TestResponse;
pub use smtp::{SmtpCapture, python};

use std::path::{Path, PathBuf};

/// The workspace's root, found upward from the package directory of the
/// running test, which cargo and nextest set at run time. A test binary
/// built in another checkout that shares the target directory (as CI's
/// cache does) has that checkout's path compiled in, and cargo does not
/// rebuild it when only the path changes; so the compiled-in path is only
/// the fallback.
pub fn workspace_root() -> PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    package
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .map_or(package.clone(), Path::to_path_buf)
}

/// The terms most service tests configure: one policy, `privacy_policy`
/// version 1, in English, named `name`, at `url`.
pub fn privacy_policy(name: &str, url: &str) -> hearth_auth::TermsConfig {
    let languages = std::collections::BTreeMap::from([(
        "en".to_owned(),
        hearth_auth::PolicyLanguage {
            name: name.to_owned(),
            url: Some(url.to_owned()),
            file: None,
        },
    )]);
    hearth_auth::TermsConfig {
        policies: std::collections::BTreeMap::from([(
            "privacy_policy".to_owned(),
            hearth_auth::PolicyConfig {
                version: "1".to_owned(),
                languages,
            },
        )]),
    }
}

/// The spec's sha256 lookup hash (Identity Service API "Hashing"):
/// `"<address> <medium> <pepper>"`, SHA-256, URL-safe unpadded base64.
pub fn sha256_lookup_hash(address: &str, medium: &str, pepper: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{address} {medium} {pepper}").as_bytes());
    hearth_core::base64::encode_url_safe(digest)
}

#[cfg(test)]
mod tests {
    /// The spec's example (Identity Service API "Hashing"): `alice@example.com
    /// email matrixrocks`.
    #[test]
    fn lookup_hash_matches_the_spec_example() {
        assert_eq!(
            super::sha256_lookup_hash("alice@example.com", "email", "matrixrocks"),
            "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc"
        );
    }
}
