-- Validation sessions keep only a SHA-256 of the client secret, and record
-- `send_attempt` once a send succeeded (NULL: nothing sent yet).
-- `lookup_alias` is the address lower-cased when that differs from the
-- case-folded canonical form (what Element hashes).
-- Secrets cannot be hashed in SQL on SQLite, so sessions open during the
-- upgrade (a day's at most) are dropped: their clients request anew.
DROP TABLE identity_sessions;
CREATE TABLE identity_sessions (
    sid TEXT PRIMARY KEY NOT NULL,
    client_secret_hash TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    lookup_alias TEXT,
    send_attempt BIGINT,
    failed_attempts BIGINT NOT NULL,
    next_link TEXT,
    created_ts BIGINT NOT NULL,
    updated_ts BIGINT NOT NULL,
    validated_ts BIGINT
);
CREATE INDEX identity_sessions_threepid ON identity_sessions (medium, address, client_secret_hash);

-- The second form a binding is found by in lookups (see above).
ALTER TABLE identity_associations ADD COLUMN lookup_alias TEXT;
ALTER TABLE identity_lookup_changes ADD COLUMN lookup_alias TEXT;

-- The ephemeral public key handed out with each invite, so that the mailed
-- signing link works only with that invite's private key.
ALTER TABLE identity_invites ADD COLUMN ephemeral_public_key TEXT;
CREATE INDEX identity_invites_sender ON identity_invites (sender, created_ts);
