-- taskhost's PostgreSQL schema, version 2: the leader row.
--
-- One host at a time runs the duties that must run once (timers,
-- repeaters, reaping, retention): the one holding this row's lease.
-- Every new leadership gets a new, larger term from the sequence, which
-- fences a deposed leader's writes.
CREATE TABLE taskhost_leader (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    host text NOT NULL,
    term bigint NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE SEQUENCE taskhost_leader_terms;
