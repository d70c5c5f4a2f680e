-- taskhost's PostgreSQL schema, version 12: each flow's count of tasks
-- that have not ended (pending, running or retrying; a task quarantined
-- before it ended never ends), so whichever host ends a flow's last task can tell, under
-- the flow's lock, that the flow ran out of work. Kept by the
-- transactions that write tasks (what they create, end or start again);
-- NULL (flows from before this version) is counted again from the tasks
-- when next read.
ALTER TABLE taskhost_flows ADD COLUMN unfinished bigint;

-- Whether a quarantined task had ended when it was set aside (a task
-- quarantined before it ended never ends: its flow counts it, and what
-- waits for it stays blocked).
ALTER TABLE taskhost_tasks ADD COLUMN quarantined_ended boolean NOT NULL DEFAULT false;
