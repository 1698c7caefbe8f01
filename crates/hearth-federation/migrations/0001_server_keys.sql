-- Other servers' keys: the latest verified /_matrix/key/v2/server response
-- per server, as received (canonical JSON), shared by every service.
CREATE TABLE federation_server_keys (
    server_name TEXT PRIMARY KEY NOT NULL,
    response TEXT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    valid_until_ts BIGINT NOT NULL
);
