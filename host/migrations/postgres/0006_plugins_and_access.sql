-- taskhost's PostgreSQL schema, version 6: the store's tables beside the
-- tasks', each the redb store's table of the same name (see
-- host/src/store/tables.rs): plugins and their components, so an upload
-- on any host is visible to every host; API tokens, tenants, the secrets
-- callbacks are signed with, and the audit log. The hashes of compiled
-- artifacts stay with each host (its artifact cache is its own).

-- Plugin name -> its entry (postcard `PluginEntry`: versions, the version
-- a plain name resolves to, the manifest).
CREATE TABLE taskhost_plugins (
    name text PRIMARY KEY,
    entry bytea NOT NULL
);

-- A component's bytes by their SHA-256 digest, shared by every version of
-- any plugin that has them; removed once no version references them.
CREATE TABLE taskhost_blobs (
    digest text PRIMARY KEY,
    bytes bytea NOT NULL
);

-- Token id -> the token (postcard `StoredToken`: only its secret's hash).
CREATE TABLE taskhost_tokens (
    id text PRIMARY KEY,
    token bytea NOT NULL
);

-- Tenant name -> its record (`TenantRecord` as JSON, as on redb, so quotas
-- added later read as absent).
CREATE TABLE taskhost_tenants (
    name text PRIMARY KEY,
    record jsonb NOT NULL
);

-- Named random secrets (callbacks' signing keys), made by the first host
-- that asks for one and read by every other.
CREATE TABLE taskhost_secrets (
    name text PRIMARY KEY,
    secret bytea NOT NULL
);

-- The audit log: entries by their UUIDv7 id (time-ordered, paged newest
-- first), with a sequence number so an append removes what falls past the
-- newest 100,000 through the index.
CREATE TABLE taskhost_audit (
    id uuid PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    entry bytea NOT NULL
);
