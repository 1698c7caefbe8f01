//! Long-term credentials (RFC 8489 §9.2) with the TURN REST scheme that
//! Synapse and coturn share: username `<expiry unix seconds>:<user>`,
//! password `base64(HMAC-SHA1(secret, username))`. Nonces are stateless:
//! a timestamp and an HMAC over it and the client's address, so a flood of
//! unauthenticated requests allocates nothing.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a nonce stays good before the client is told 438 and retries
/// with a fresh one (RFC 8489 §9.2.4; coturn's default stale-nonce time).
pub(crate) const NONCE_LIFETIME_SECS: u64 = 600;

/// The long-term key: MD5(username ":" realm ":" password) (RFC 8489
/// §9.2.2). Passwords are used as given: REST passwords are base64, which
/// SASLprep/OpaqueString leaves unchanged.
pub(crate) fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(username.as_bytes());
    md5.update(b":");
    md5.update(realm.as_bytes());
    md5.update(b":");
    md5.update(password.as_bytes());
    md5.finalize().into()
}

/// The TURN REST password for `username`.
pub fn rest_password(secret: &str, username: &str) -> String {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// What a client needs to use this server, as Synapse's
/// `/_matrix/client/v3/voip/turnServer` hands it out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// Seconds the credentials stay valid.
    pub ttl: u64,
    pub uris: Vec<String>,
}

/// Credentials for `user_id`, valid for `lifetime` from `now`, computed
/// exactly as Synapse does (`synapse/rest/client/voip.py`).
pub fn rest_credentials(
    secret: &str,
    user_id: &str,
    lifetime: Duration,
    now: SystemTime,
    uris: Vec<String>,
) -> Credentials {
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let expiry = (now + lifetime).as_secs();
    let username = format!("{expiry}:{user_id}");
    Credentials {
        password: rest_password(secret, &username),
        username,
        ttl: lifetime.as_secs(),
        uris,
    }
}

/// The outcome of looking a username up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The key, and the name quotas count against: the user id of a REST
    /// username (so renewed credentials share a quota), else the username.
    Key {
        key: [u8; 16],
        quota_user: String,
    },
    /// A REST username whose expiry has passed, with the key it had.
    Expired {
        key: [u8; 16],
        quota_user: String,
    },
    Unknown,
}

#[derive(Debug)]
pub(crate) struct Authenticator {
    realm: String,
    secret: Option<String>,
    /// Static users' keys, computed once.
    users: HashMap<String, [u8; 16]>,
    nonce_key: [u8; 32],
}

impl Authenticator {
    pub(crate) fn new(
        realm: String,
        secret: Option<String>,
        users: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let users = users
            .into_iter()
            .map(|(name, password)| {
                let key = long_term_key(&name, &realm, &password);
                (name, key)
            })
            .collect();
        let mut nonce_key = [0; 32];
        getrandom::fill(&mut nonce_key).expect("the OS random number generator works");
        Self {
            realm,
            secret,
            users,
            nonce_key,
        }
    }

    pub(crate) fn realm(&self) -> &str {
        &self.realm
    }

    pub(crate) fn lookup(&self, username: &str, now_secs: u64) -> Lookup {
        if let Some(key) = self.users.get(username) {
            return Lookup::Key {
                key: *key,
                quota_user: username.to_owned(),
            };
        }
        let Some(secret) = &self.secret else {
            return Lookup::Unknown;
        };
        // `turnutils_uclient -W` without `-u` sends the timestamp alone.
        let (expiry, user) = username.split_once(':').unwrap_or((username, ""));
        let Ok(expiry) = expiry.parse::<u64>() else {
            return Lookup::Unknown;
        };
        let password = rest_password(secret, username);
        let key = long_term_key(username, &self.realm, &password);
        let quota_user = if user.is_empty() { username } else { user }.to_owned();
        if expiry < now_secs {
            Lookup::Expired { key, quota_user }
        } else {
            Lookup::Key { key, quota_user }
        }
    }

    fn nonce_mac(&self, ts: u64, client: IpAddr) -> [u8; 20] {
        let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(&self.nonce_key)
            .expect("HMAC takes keys of any length");
        mac.update(&ts.to_be_bytes());
        match client {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        mac.finalize().into_bytes().into()
    }

    /// A nonce for `client`: 16 hex digits of time, 24 of HMAC.
    pub(crate) fn nonce(&self, now_secs: u64, client: IpAddr) -> String {
        let mac = self.nonce_mac(now_secs, client);
        let mut nonce = format!("{now_secs:016x}");
        for b in &mac[..12] {
            nonce.push_str(&format!("{b:02x}"));
        }
        nonce
    }

    /// Whether `nonce` was issued by this process to `client` within the
    /// nonce lifetime. Anything else is stale (438), including nonces from
    /// before a restart, so clients recover by retrying.
    pub(crate) fn nonce_is_fresh(&self, nonce: &str, now_secs: u64, client: IpAddr) -> bool {
        if nonce.len() != 40 || !nonce.is_ascii() {
            return false;
        }
        let Ok(ts) = u64::from_str_radix(&nonce[..16], 16) else {
            return false;
        };
        if ts > now_secs || now_secs - ts > NONCE_LIFETIME_SECS {
            return false;
        }
        let mac = self.nonce_mac(ts, client);
        let mut given = [0u8; 12];
        for (i, b) in given.iter_mut().enumerate() {
            match u8::from_str_radix(&nonce[16 + 2 * i..18 + 2 * i], 16) {
                Ok(v) => *b = v,
                Err(_) => return false,
            }
        }
        // Constant time, so the MAC cannot be found byte by byte.
        mac[..12]
            .iter()
            .zip(given)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The reference from Synapse's TURN guide and coturn's README:
    /// `echo -n "$user" | openssl dgst -binary -sha1 -hmac "$secret" | base64`.
    /// Skipped only where no `openssl` binary exists.
    #[test]
    fn rest_password_matches_the_openssl_one_liner() {
        let secret = "north wind: 7 \u{e9}t\u{e9}s";
        for username in ["1700000000:@alice:example.org", "1443779631", "0:@b:c.d"] {
            let out = Command::new("sh")
                .arg("-c")
                .arg(r#"printf %s "$U" | openssl dgst -binary -sha1 -hmac "$S" | base64"#)
                .env("U", username)
                .env("S", secret)
                .output();
            let Some(out) = out.ok().filter(|o| o.status.success()) else {
                eprintln!("openssl not available; skipping the shell comparison");
                return;
            };
            let shell = String::from_utf8(out.stdout).unwrap();
            assert_eq!(rest_password(secret, username), shell.trim(), "{username}");
        }
    }

    /// A value computed independently (HMAC-SHA1 test case 2 of RFC 2202:
    /// key "Jefe", data "what do ya want for nothing?").
    #[test]
    fn rest_password_is_base64_of_hmac_sha1() {
        assert_eq!(
            rest_password("Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
    }

    #[test]
    fn credentials_follow_synapse() {
        let now = UNIX_EPOCH + Duration::from_secs(1_443_776_031);
        let c = rest_credentials(
            "s3cret",
            "@user:example.com",
            Duration::from_secs(3600),
            now,
            vec!["turn:turn.example.com?transport=udp".to_owned()],
        );
        assert_eq!(c.username, "1443779631:@user:example.com");
        assert_eq!(c.password, rest_password("s3cret", &c.username));
        assert_eq!(c.ttl, 3600);
    }

    #[test]
    fn rest_usernames_expire_and_share_a_quota_name() {
        let auth = Authenticator::new("example.org".into(), Some("s".into()), []);
        let now = 1_700_000_000;
        let name = format!("{}:@alice:example.org", now + 60);
        let expected = long_term_key(&name, "example.org", &rest_password("s", &name));
        assert_eq!(
            auth.lookup(&name, now),
            Lookup::Key {
                key: expected,
                quota_user: "@alice:example.org".into()
            }
        );
        assert_eq!(
            auth.lookup(&name, now + 61),
            Lookup::Expired {
                key: expected,
                quota_user: "@alice:example.org".into()
            }
        );
        assert_eq!(auth.lookup("alice", now), Lookup::Unknown);
        assert_eq!(auth.lookup(":x", now), Lookup::Unknown);
        let bare = (now + 5).to_string();
        assert!(matches!(auth.lookup(&bare, now), Lookup::Key { .. }));
    }

    #[test]
    fn static_users_and_no_secret() {
        let auth = Authenticator::new("r".into(), None, [("u".into(), "p".into())]);
        assert_eq!(
            auth.lookup("u", 0),
            Lookup::Key {
                key: long_term_key("u", "r", "p"),
                quota_user: "u".into()
            }
        );
        assert_eq!(auth.lookup("1999999999:u", 0), Lookup::Unknown);
    }

    #[test]
    fn nonces_are_bound_to_time_and_client() {
        let auth = Authenticator::new("r".into(), None, []);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let n = auth.nonce(1000, a);
        assert!(auth.nonce_is_fresh(&n, 1000, a));
        assert!(auth.nonce_is_fresh(&n, 1000 + NONCE_LIFETIME_SECS, a));
        assert!(!auth.nonce_is_fresh(&n, 1001 + NONCE_LIFETIME_SECS, a));
        assert!(!auth.nonce_is_fresh(&n, 999, a), "from the future");
        assert!(!auth.nonce_is_fresh(&n, 1000, b), "other client");
        let mut forged = n.clone().into_bytes();
        forged[39] = if forged[39] == b'0' { b'1' } else { b'0' };
        assert!(!auth.nonce_is_fresh(std::str::from_utf8(&forged).unwrap(), 1000, a));
        // Another process (a restart) has another key.
        let other = Authenticator::new("r".into(), None, []);
        assert!(!other.nonce_is_fresh(&n, 1000, a));
    }
}
