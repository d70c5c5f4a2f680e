-- taskhost's PostgreSQL schema, version 7: what listings select by. A
-- task's queue, plugin, tenant (its plugin name's prefix), flow and the
-- iteration of the flow it belongs to never change, so they live in a
-- table of their own, written once with the task: every transition
-- rewrites a task's row (its state is indexed, so PostgreSQL cannot update
-- it in place) and would otherwise add an entry to each of these indexes.
-- Each index is in id (submission) order, as the redb store's `by_queue`,
-- `by_plugin` and `by_iteration` tables are; `by_state` is on the tasks'
-- table, whose state changes.
CREATE TABLE taskhost_listed (
    id uuid PRIMARY KEY,
    queue text NOT NULL,
    plugin text NOT NULL,
    tenant text NOT NULL,
    flow_id uuid NOT NULL,
    iteration bigint NOT NULL
);

CREATE INDEX taskhost_listed_by_queue ON taskhost_listed (queue, id);
CREATE INDEX taskhost_listed_by_plugin ON taskhost_listed (plugin, id);
CREATE INDEX taskhost_listed_by_tenant ON taskhost_listed (tenant, id);
CREATE INDEX taskhost_listed_by_iteration ON taskhost_listed (flow_id, iteration, id);
CREATE INDEX taskhost_tasks_by_state ON taskhost_tasks (state, id);

-- A task's idempotency key is unique among flow roots that have one; most
-- tasks have none, and a partial index holds no entry for those (a full
-- one took an entry for every task and every transition).
ALTER TABLE taskhost_tasks DROP CONSTRAINT taskhost_tasks_idempotency_key_key;
CREATE UNIQUE INDEX taskhost_tasks_by_key ON taskhost_tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;

-- Tasks stored before this version have no row in `taskhost_listed`: the
-- first host that connects after it fills theirs from their records (up to
-- the newest id stored now), then deletes this row.
CREATE TABLE taskhost_listed_fill (upto uuid);
INSERT INTO taskhost_listed_fill SELECT id FROM taskhost_tasks ORDER BY id DESC LIMIT 1;
