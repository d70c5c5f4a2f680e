-- taskhost's PostgreSQL schema, version 1: tasks and their leases.
--
-- A task's record is the same postcard `TaskRecord` the redb store keeps;
-- the fields that claims and leases query are columns beside it, written
-- in the same statement as the record.
CREATE TABLE taskhost_tasks (
    id uuid PRIMARY KEY,
    state text NOT NULL
        CHECK (state IN ('pending', 'running', 'retrying', 'completed', 'failed', 'cancelled')),
    version bigint NOT NULL,
    queue text NOT NULL,
    priority smallint NOT NULL,
    -- When a pending or retrying task may start (ms since the Unix epoch).
    due_at_ms bigint NOT NULL,
    -- A flow root's idempotency key (one task per key).
    idempotency_key text UNIQUE,
    record bytea NOT NULL,
    input bytea NOT NULL,
    output bytea
);

-- What a claim reads: startable tasks, highest priority first, then the
-- earliest due, then the oldest (ids are UUIDv7).
CREATE INDEX taskhost_tasks_claimable ON taskhost_tasks (priority DESC, due_at_ms, id)
    WHERE state IN ('pending', 'retrying');

-- Fencing tokens: every lease gets a new, larger one.
CREATE SEQUENCE taskhost_fencing_tokens;

-- A running task's lease: the host that claimed it, its token, and when
-- it lapses unless renewed (the database's clock, so hosts' clocks do not
-- matter).
CREATE TABLE taskhost_leases (
    task_id uuid PRIMARY KEY REFERENCES taskhost_tasks (id) ON DELETE CASCADE,
    host text NOT NULL,
    token bigint NOT NULL UNIQUE,
    expires_at timestamptz NOT NULL
);

CREATE INDEX taskhost_leases_expiry ON taskhost_leases (expires_at);
