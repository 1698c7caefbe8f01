-- The lookup pepper (MSC2134), one per rotation epoch; the highest epoch is
-- current. The epoch key lets instances sharing a database race safely.
CREATE TABLE identity_peppers (
    epoch BIGINT PRIMARY KEY NOT NULL,
    pepper TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);

-- One binding per 3PID, address in canonical form.
CREATE TABLE identity_associations (
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    mxid TEXT NOT NULL,
    ts BIGINT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    PRIMARY KEY (medium, address)
);
CREATE INDEX identity_associations_mxid ON identity_associations (mxid);

-- Binding changes in order (mxid NULL: removed), so that every instance's
-- in-memory lookup index follows the binds made through the others.
-- Pruned after an hour.
CREATE TABLE identity_lookup_changes (
    seq AUTO_ID,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    mxid TEXT,
    ts BIGINT NOT NULL
);
CREATE INDEX identity_lookup_changes_ts ON identity_lookup_changes (ts);

-- 3PID validation sessions. Tokens are not stored: they are derived from
-- the sid with a server secret, so a resent mail carries the same token.
CREATE TABLE identity_sessions (
    sid TEXT PRIMARY KEY NOT NULL,
    client_secret TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    send_attempt BIGINT NOT NULL,
    failed_attempts BIGINT NOT NULL,
    next_link TEXT,
    created_ts BIGINT NOT NULL,
    updated_ts BIGINT NOT NULL,
    validated_ts BIGINT
);
CREATE INDEX identity_sessions_threepid ON identity_sessions (medium, address, client_secret);

-- Pending third-party invites, until the address is bound.
CREATE TABLE identity_invites (
    token TEXT PRIMARY KEY NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX identity_invites_threepid ON identity_invites (medium, address);

-- Ephemeral public keys handed out with invites.
CREATE TABLE identity_ephemeral_keys (
    public_key TEXT PRIMARY KEY NOT NULL,
    created_ts BIGINT NOT NULL
);

-- onbind callbacks not yet delivered, retried with backoff.
CREATE TABLE identity_onbind_outbox (
    id AUTO_ID,
    destination TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_ts BIGINT NOT NULL,
    created_ts BIGINT NOT NULL
);
