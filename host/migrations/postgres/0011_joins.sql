-- taskhost's PostgreSQL schema, version 11: joins kept in the database,
-- so any host's claim can tell a task that waits for others of its flow
-- (its record's `after`) from one it may start. Each dependency that had
-- not ended when the task was written is a row of `taskhost_waits`; a
-- task with any is `blocked`, and claims skip it. A dependency's end
-- deletes the rows naming it and unblocks the tasks left with none. Both
-- are written under the flow's lock, which a task's writes and its
-- dependencies' ends take alike (a task waits only for tasks of its own
-- flow), so no end is missed by a task written at the same time.
ALTER TABLE taskhost_tasks ADD COLUMN blocked boolean NOT NULL DEFAULT false;

CREATE TABLE taskhost_waits (
    dep uuid NOT NULL,
    task uuid NOT NULL REFERENCES taskhost_tasks (id) ON DELETE CASCADE,
    PRIMARY KEY (dep, task)
);

CREATE INDEX taskhost_waits_by_task ON taskhost_waits (task);

-- What claims read: startable tasks that wait for nothing.
DROP INDEX taskhost_tasks_claimable_by_queue;
CREATE INDEX taskhost_tasks_claimable_by_queue ON taskhost_tasks (queue, priority DESC, due_at_ms, id)
    WHERE state IN ('pending', 'retrying') AND NOT blocked;
DROP INDEX taskhost_tasks_due_by_queue;
CREATE INDEX taskhost_tasks_due_by_queue ON taskhost_tasks (queue, due_at_ms)
    WHERE state IN ('pending', 'retrying') AND NOT blocked;

-- Tasks stored before this version have no waits: the first host that
-- connects after it writes those of the startable ones (up to the newest
-- id stored now, `done_to` the last one read) from their records, then
-- deletes this row.
CREATE TABLE taskhost_waits_fill (upto uuid, done_to uuid);
INSERT INTO taskhost_waits_fill SELECT id FROM taskhost_tasks ORDER BY id DESC LIMIT 1;
