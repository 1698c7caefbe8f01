"""Seeds the databases `cargo xtask bench` runs against, with the servers
stopped. Run with Sydent's virtualenv, whose hash function seeds Sydent.

usage:
  seed.py sydent DB COUNT PREFIX DOMAIN MEDIUM USER TOKEN
  seed.py hearth DB COUNT PREFIX DOMAIN MEDIUM USER TOKEN_HASH SERVICE

Association i binds "{PREFIX}{i}@{DOMAIN}" to "@{PREFIX}{i}:{DOMAIN}".
"""

import json
import sqlite3
import sys
import time

NOW = int(time.time() * 1000)
# Both servers bind for 100 years (Sydent: sydent/threepid/bind.py).
NOT_AFTER = NOW + 100 * 365 * 24 * 3600 * 1000


def associations(count, prefix, domain):
    for i in range(count):
        yield i, f"{prefix}{i}@{domain}", f"@{prefix}{i}:{domain}"


def seed_sydent(conn, count, prefix, domain, medium, user, token):
    """An account with a token (stored in clear, as Sydent does), and every
    association in the local table (what Sydent bound) and the global one
    (what /lookup reads), with the lookup hash Sydent computes at bind time."""
    from sydent.util.hash import sha256_and_url_safe_base64

    (pepper,) = conn.execute("SELECT lookup_pepper FROM hashing_metadata").fetchone()
    # No terms file is configured, so consent_version is never checked.
    conn.execute(
        "INSERT INTO accounts (user_id, created_ts, consent_version) VALUES (?, ?, NULL)",
        (user, NOW),
    )
    conn.execute("INSERT INTO tokens (token, user_id) VALUES (?, ?)", (token, user))
    rows = [
        (i, medium, address, mxid, sha256_and_url_safe_base64(f"{address} {medium} {pepper}"))
        for i, address, mxid in associations(count, prefix, domain)
    ]
    conn.executemany(
        "INSERT INTO local_threepid_associations"
        " (id, medium, address, lookup_hash, mxid, ts, notBefore, notAfter)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ((i + 1, m, a, h, x, NOW, NOW, NOT_AFTER) for i, m, a, x, h in rows),
    )
    conn.executemany(
        "INSERT INTO global_threepid_associations"
        " (medium, address, lookup_hash, mxid, ts, notBefore, notAfter,"
        "  originServer, originId, sgAssoc)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 'localhost', ?, ?)",
        ((m, a, h, x, NOW, NOW, NOT_AFTER, i + 1, signed_association(m, a, x))
         for i, m, a, x, h in rows),
    )


def signed_association(medium, address, mxid):
    """What Sydent keeps in sgAssoc, with a stand-in signature of the real
    length: lookups never read it, but it sizes the rows they scan past."""
    return json.dumps({
        "medium": medium,
        "address": address,
        "mxid": mxid,
        "ts": NOW,
        "not_before": NOW,
        "not_after": NOT_AFTER,
        "signatures": {"localhost": {"ed25519:0": "A" * 86}},
    })


def seed_hearth(conn, count, prefix, domain, medium, user, token_hash, service):
    """A service token (stored hashed, as Hearth does) and every association;
    Hearth builds its lookup index itself when it starts."""
    conn.execute(
        "INSERT INTO service_tokens (token_hash, service, user_id, created_ts)"
        " VALUES (?, ?, ?, ?)",
        (token_hash, service, user, NOW),
    )
    conn.executemany(
        "INSERT INTO identity_associations"
        " (medium, address, mxid, ts, not_before, not_after)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        ((medium, address, mxid, NOW, NOW, NOT_AFTER)
         for _, address, mxid in associations(count, prefix, domain)),
    )


def main(server, db, count, *rest):
    seed = {"sydent": seed_sydent, "hearth": seed_hearth}[server]
    conn = sqlite3.connect(db)
    # A throwaway database: durability only costs time here.
    conn.execute("PRAGMA synchronous = OFF")
    with conn:
        seed(conn, int(count), *rest)
    conn.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
