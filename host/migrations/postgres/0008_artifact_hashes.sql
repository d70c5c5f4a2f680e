-- taskhost's PostgreSQL schema, version 8: the hashes of the artifacts
-- each host compiled into its own cache, by host. A host checks an
-- artifact it loads from its cache against its own row (another host's
-- cache is another directory, whose bytes may differ).
CREATE TABLE taskhost_artifact_hashes (
    host text NOT NULL,
    key text NOT NULL,
    hash text NOT NULL,
    PRIMARY KEY (host, key)
);
