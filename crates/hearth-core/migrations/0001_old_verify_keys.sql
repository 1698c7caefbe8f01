-- Keys this server no longer signs with, published as old_verify_keys.
CREATE TABLE old_verify_keys (
    key_id TEXT PRIMARY KEY NOT NULL,
    public_key TEXT NOT NULL,
    expired_ts BIGINT NOT NULL
);
