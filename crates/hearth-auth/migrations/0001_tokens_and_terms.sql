-- Service access tokens (identity, integrations), stored as SHA-256 hashes.
CREATE TABLE service_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    service TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX service_tokens_user ON service_tokens (service, user_id);

-- Policy URLs a user accepted (MSC2140), per service.
CREATE TABLE accepted_terms (
    service TEXT NOT NULL,
    user_id TEXT NOT NULL,
    url TEXT NOT NULL,
    accepted_ts BIGINT NOT NULL,
    PRIMARY KEY (service, user_id, url)
);
