-- taskhost's PostgreSQL schema, version 3: what a task's transitions
-- write beside its record, each table the redb store's table of the same
-- name (see host/src/store/tables.rs): flows and the tasks and keys they
-- grew, their context, attempts' transcripts, the ended units retention
-- removes, and how completion callbacks ended.

-- Flow id -> the flow's record (postcard `FlowRecord`).
CREATE TABLE taskhost_flows (
    id uuid PRIMARY KEY,
    record bytea NOT NULL
);

-- A key of a task a flow grew, in that flow's own namespace.
CREATE TABLE taskhost_flow_keys (
    flow_id uuid NOT NULL,
    key text NOT NULL,
    task_id uuid NOT NULL,
    PRIMARY KEY (flow_id, key)
);

-- Every task of a flow except its root (whose id is the flow's).
CREATE TABLE taskhost_flow_tasks (
    flow_id uuid NOT NULL,
    task_id uuid NOT NULL,
    PRIMARY KEY (flow_id, task_id)
);

-- A flow's context store.
CREATE TABLE taskhost_context (
    flow_id uuid NOT NULL,
    key text NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (flow_id, key)
);

-- Each attempt's transcript (postcard `AttemptLog`).
CREATE TABLE taskhost_logs (
    task_id uuid NOT NULL,
    attempt bigint NOT NULL,
    log bytea NOT NULL,
    PRIMARY KEY (task_id, attempt)
);

-- Every ended unit of retention (a task outside any flow under its queue,
-- a flow under its tenant's flow group), oldest first in each group.
CREATE TABLE taskhost_finished (
    grp text NOT NULL,
    at_ms bigint NOT NULL,
    unit uuid NOT NULL,
    PRIMARY KEY (grp, at_ms, unit)
);

-- How a task's completion callback ended (postcard `CallbackOutcome`).
CREATE TABLE taskhost_callbacks (
    task_id uuid PRIMARY KEY,
    outcome bytea NOT NULL
);
