-- Logouts (a token's hash) and erasures (a user), written in the same
-- transaction as the deletion, so that every instance's in-memory cache of
-- tokens and terms acceptances drops them within a second. Pruned after an
-- hour.
CREATE TABLE auth_changes (
    seq AUTO_ID,
    service TEXT NOT NULL,
    token_hash TEXT,
    user_id TEXT,
    ts BIGINT NOT NULL
);
CREATE INDEX auth_changes_ts ON auth_changes (ts);
