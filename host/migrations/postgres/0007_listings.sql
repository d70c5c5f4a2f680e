-- taskhost's PostgreSQL schema, version 7: what listings select by, as
-- columns beside the record (each set when the task is stored and never
-- changed): its plugin's name, its tenant (the name's prefix), its flow
-- and the iteration of the flow it belongs to; and the indexes the
-- listings walk, each in id (submission) order, as the redb store's
-- `by_state`, `by_queue`, `by_plugin` and `by_iteration` tables do.
-- Rows stored before this version have these columns filled from their
-- records by the first host that connects after it (`PgStore::connect`).
ALTER TABLE taskhost_tasks
    ADD COLUMN plugin text,
    ADD COLUMN tenant text,
    ADD COLUMN flow_id uuid,
    ADD COLUMN iteration bigint;

CREATE INDEX taskhost_tasks_by_state ON taskhost_tasks (state, id);
CREATE INDEX taskhost_tasks_by_queue ON taskhost_tasks (queue, id);
CREATE INDEX taskhost_tasks_by_plugin ON taskhost_tasks (plugin, id);
CREATE INDEX taskhost_tasks_by_tenant ON taskhost_tasks (tenant, id);
CREATE INDEX taskhost_tasks_by_iteration ON taskhost_tasks (flow_id, iteration, id);
-- The rows the first host after this version fills.
CREATE INDEX taskhost_tasks_unlisted ON taskhost_tasks (id) WHERE plugin IS NULL;
