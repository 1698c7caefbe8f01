//! `hearth keys` against Synapse's own key library: PyPI `signedjson`, which
//! Synapse uses to read and write `signing.key` and to sign and verify JSON
//! (reference §6 for the file format, §3.2 for signing). Python writes keys
//! Hearth imports, reads keys Hearth exports, and checks Hearth's signatures.

use std::collections::BTreeMap;
use std::time::Duration;

use hearth_core::ids::ServerName;
use hearth_core::time::now_ms;
use hearth_e2e::{PY_VERIFY_SIGNED_JSON, Site, python_ok};
use hearth_federation::keys::verify_server_keys;

const KEYS: &str = "/_matrix/key/v2/server";
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// `generate_signing_key(version)` then `write_signing_keys` to argv[1], as
/// Synapse's `generate_signing_key` script does; prints `<key id> <public>`.
const PY_GENERATE: &str = "\
import sys
from signedjson.key import generate_signing_key, get_verify_key, encode_verify_key_base64, write_signing_keys
key = generate_signing_key(sys.argv[2])
with open(sys.argv[1], 'w') as f:
    write_signing_keys(f, [key])
print('%s:%s %s' % (key.alg, key.version, encode_verify_key_base64(get_verify_key(key))))
";

/// `read_signing_keys` on stdin, as Synapse loads `signing.key`; prints
/// `<key id> <public>` per key.
const PY_READ: &str = "\
import sys
from signedjson.key import read_signing_keys, get_verify_key, encode_verify_key_base64
for key in read_signing_keys(sys.stdin):
    print('%s:%s %s' % (key.alg, key.version, encode_verify_key_base64(get_verify_key(key))))
";

/// `hearth keys show`, parsed: current key id to public key, and old key id
/// to (public key, `expired_ts`).
#[derive(Debug, PartialEq)]
struct Shown {
    current: BTreeMap<String, String>,
    old: BTreeMap<String, (String, i64)>,
}

fn show(site: &Site) -> Shown {
    let out = site.run_ok(&["keys", "show"]);
    let mut shown = Shown {
        current: BTreeMap::new(),
        old: BTreeMap::new(),
    };
    for line in out.stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["current", id, key] => {
                shown.current.insert((*id).to_owned(), (*key).to_owned());
            }
            ["old", id, key, expired] => {
                let expired_ts = expired
                    .strip_prefix("expired_ts=")
                    .and_then(|ts| ts.parse().ok())
                    .unwrap_or_else(|| panic!("bad old key line {line:?}"));
                shown
                    .old
                    .insert((*id).to_owned(), ((*key).to_owned(), expired_ts));
            }
            _ => panic!("unexpected `keys show` line {line:?}:\n{out}"),
        }
    }
    shown
}

/// Parses `<key id> <public key>` lines, as the Python peers print them.
fn key_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(|line| {
            let (id, key) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            (id.to_owned(), key.to_owned())
        })
        .collect()
}

/// A site whose first start made its signing key; that key's id and public key.
fn site_with_generated_key() -> (Site, String, String) {
    let site = Site::new();
    let mut hearth = site.start(&["serve"]);
    assert!(hearth.stop(STOP_TIMEOUT).success());
    let shown = show(&site);
    assert!(shown.old.is_empty(), "{shown:?}");
    let (id, key) = shown.current.into_iter().next().expect("a generated key");
    (site, id, key)
}

/// Migrating from Synapse (reference §6): a key written by `signedjson`'s
/// `write_signing_keys` is imported; `keys show` lists it as current and the
/// auto-generated key as old. After a start, the keys endpoint publishes the
/// imported key in `verify_keys`, the old one in `old_verify_keys` with its
/// `expired_ts`, and `signedjson.sign.verify_signed_json` (what Synapse
/// runs on key responses) accepts the signature made with the imported key.
#[test]
fn synapse_key_is_imported_published_and_verified_by_signedjson() {
    let started = now_ms();
    let (site, old_id, old_key) = site_with_generated_key();
    let file = site.path().join("synapse.signing.key");
    let python_key = key_lines(&python_ok(
        PY_GENERATE,
        &[file.to_str().unwrap(), "a_pyth"],
        b"",
    ));
    assert_eq!(python_key.keys().collect::<Vec<_>>(), ["ed25519:a_pyth"]);

    let out = site.run_ok(&["keys", "import", file.to_str().unwrap()]);
    assert!(out.stdout.contains("ed25519:a_pyth"), "{out}");

    let shown = show(&site);
    assert_eq!(shown.current, python_key);
    let (key, expired_ts) = &shown.old[&old_id];
    assert_eq!(key, &old_key);
    assert!(
        (started..=now_ms()).contains(expired_ts),
        "expired_ts {expired_ts}"
    );
    assert_eq!(shown.old.len(), 1, "{shown:?}");

    let hearth = site.start(&["serve"]);
    let response = hearth.get(KEYS);
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(
        body["verify_keys"]["ed25519:a_pyth"]["key"],
        python_key["ed25519:a_pyth"].as_str()
    );
    assert_eq!(
        body["verify_keys"].as_object().map(serde_json::Map::len),
        Some(1),
        "{body}"
    );
    assert_eq!(body["old_verify_keys"][&old_id]["key"], old_key.as_str());
    assert_eq!(body["old_verify_keys"][&old_id]["expired_ts"], *expired_ts);
    verify_server_keys(
        body.clone(),
        &ServerName::parse("localhost").unwrap(),
        now_ms(),
    )
    .unwrap_or_else(|e| panic!("{e}: {body}"));

    let verified = python_ok(
        PY_VERIFY_SIGNED_JSON,
        &["localhost", file.to_str().unwrap()],
        &response.body,
    );
    assert_eq!(verified.trim(), "verified 1");
}

/// Backing up to Synapse's format: `hearth keys export` is read by
/// `signedjson.key.read_signing_keys` and yields the key id and public key
/// `hearth keys show` reports.
#[test]
fn exported_key_is_read_by_signedjson() {
    let (site, id, key) = site_with_generated_key();
    let exported = site.run_ok(&["keys", "export"]);
    let read = key_lines(&python_ok(PY_READ, &[], exported.stdout.as_bytes()));
    assert_eq!(read, BTreeMap::from([(id, key)]));
}

/// Key rotation as Synapse's docs ask (reference §6): `hearth keys generate`
/// makes a new key with a fresh Synapse-style `a_XXXX` version and keeps the
/// current one as an old verify key, which a restart publishes.
#[test]
fn generate_retires_the_current_key() {
    let (site, old_id, old_key) = site_with_generated_key();
    let out = site.run_ok(&["keys", "generate"]);
    let shown = show(&site);
    assert_eq!(shown.current.len(), 1, "{shown:?}");
    let (new_id, new_key) = shown.current.iter().next().unwrap();
    assert!(out.stdout.contains(new_id.as_str()), "{out}");
    let version = new_id
        .strip_prefix("ed25519:a_")
        .unwrap_or_else(|| panic!("key id {new_id}"));
    assert!(
        version.len() == 4 && version.bytes().all(|b| b.is_ascii_alphabetic()),
        "key id {new_id} is not ed25519:a_ and four letters"
    );
    assert_ne!(new_id, &old_id);
    assert_ne!(new_key, &old_key);
    assert_eq!(shown.old[&old_id].0, old_key);

    let hearth = site.start(&["serve"]);
    let body = hearth.get(KEYS).json();
    assert_eq!(
        body["verify_keys"][new_id.as_str()]["key"],
        new_key.as_str()
    );
    assert_eq!(body["old_verify_keys"][&old_id]["key"], old_key.as_str());
}

/// One key id must always name one key (synapse#3121, #4012; reference §6):
/// importing a different key under the id of the current key, or of a
/// retired one, is refused and changes nothing.
#[test]
fn import_refuses_a_reused_key_id() {
    let (site, old_id, _) = site_with_generated_key();
    let first = site.path().join("first.key");
    python_ok(PY_GENERATE, &[first.to_str().unwrap(), "a_pyth"], b"");
    site.run_ok(&["keys", "import", first.to_str().unwrap()]);
    let before = show(&site);

    let old_version = old_id.strip_prefix("ed25519:").unwrap();
    for version in ["a_pyth", old_version] {
        let clash = site.path().join(format!("clash-{version}.key"));
        python_ok(PY_GENERATE, &[clash.to_str().unwrap(), version], b"");
        let out = site.run(&["keys", "import", clash.to_str().unwrap()]);
        assert!(
            !out.status.success(),
            "importing a second ed25519:{version} succeeded: {out}"
        );
        assert!(out.stderr.contains(&format!("ed25519:{version}")), "{out}");
        assert_eq!(show(&site), before, "a refused import changed the keys");
    }

    // The same key again is no clash, and retires nothing.
    site.run_ok(&["keys", "import", first.to_str().unwrap()]);
    assert_eq!(show(&site), before);
}
