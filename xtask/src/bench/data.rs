//! The data set both servers hold, and the hashes the load generator asks
//! for. Association `i` binds the email address `bound{i}@bench.invalid` to
//! `@bound{i}:bench.invalid`; `absent{i}@bench.invalid` is bound nowhere.
//!
//! The seeding scripts get the prefix and domain as arguments, so this file
//! alone says what the addresses look like.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

/// Every association is an email address: the medium does not change how
/// either server looks hashes up.
pub(crate) const MEDIUM: &str = "email";
/// `.invalid` (RFC 2606): no mail can ever go anywhere by mistake.
pub(crate) const DOMAIN: &str = "bench.invalid";
pub(crate) const BOUND_PREFIX: &str = "bound";
const ABSENT_PREFIX: &str = "absent";

pub(crate) fn bound_address(i: usize) -> String {
    format!("{BOUND_PREFIX}{i}@{DOMAIN}")
}

pub(crate) fn mxid(i: usize) -> String {
    format!("@{BOUND_PREFIX}{i}:{DOMAIN}")
}

fn absent_address(i: usize) -> String {
    format!("{ABSENT_PREFIX}{i}@{DOMAIN}")
}

/// The spec's `sha256` lookup hash: URL-safe unpadded base64 of
/// SHA-256(`"<address> <medium> <pepper>"`).
pub(crate) fn lookup_hash(address: &str, medium: &str, pepper: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(format!("{address} {medium} {pepper}")))
}

/// How Hearth stores a service token (`service_tokens.token_hash`): standard
/// unpadded base64 of SHA-256(token).
pub(crate) fn token_hash(token: &str) -> String {
    STANDARD_NO_PAD.encode(Sha256::digest(token))
}

/// The lookup hashes of every bound address and of as many absent ones,
/// under one pepper. Hashed once before the run, so the load generator,
/// which shares the server's two cores, spends its time on requests.
#[derive(Debug)]
pub(crate) struct Hashes {
    /// `bound[i]` is the hash of association `i`.
    pub(crate) bound: Vec<String>,
    pub(crate) absent: Vec<String>,
}

impl Hashes {
    pub(crate) fn new(pepper: &str, associations: usize) -> Self {
        let hash = |address: String| lookup_hash(&address, MEDIUM, pepper);
        Self {
            bound: (0..associations).map(bound_address).map(hash).collect(),
            absent: (0..associations).map(absent_address).map(hash).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{lookup_hash, token_hash};

    /// The spec's examples, with the pepper `matrixrocks`.
    #[test]
    fn lookup_hashes_match_the_spec() {
        assert_eq!(
            lookup_hash("alice@example.com", "email", "matrixrocks"),
            "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc"
        );
        assert_eq!(
            lookup_hash("18005552067", "msisdn", "matrixrocks"),
            "nlo35_T5fzSGZzJApqu8lgIudJvmOQtDaHtr-I4rU7I"
        );
    }

    #[test]
    fn token_hashes_are_standard_unpadded_base64() {
        // SHA-256("abc"), a FIPS 180-2 test vector.
        assert_eq!(
            token_hash("abc"),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0"
        );
    }
}
