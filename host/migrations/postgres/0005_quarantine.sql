-- taskhost's PostgreSQL schema, version 5: a task row whose record cannot
-- be decoded (damaged, or written by a build that encodes differently) is
-- set aside, `quarantined` with the reason, instead of failing every
-- host's claims and reaps that read it. Its record stays as it was, for
-- whoever repairs or removes it.
ALTER TABLE taskhost_tasks DROP CONSTRAINT taskhost_tasks_state_check;
ALTER TABLE taskhost_tasks ADD CONSTRAINT taskhost_tasks_state_check
    CHECK (state IN ('pending', 'running', 'retrying', 'completed', 'failed', 'cancelled', 'quarantined'));
ALTER TABLE taskhost_tasks ADD COLUMN quarantined_because text;
