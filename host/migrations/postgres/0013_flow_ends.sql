-- taskhost's PostgreSQL schema, version 13: flows whose count of unended
-- tasks reached zero, noted by the transaction that ended their last task
-- and cleared by the write that records the flow's end (or its next
-- iteration). The host that ended the last task records the flow's end at
-- once; a note older than a few seconds means that host stopped first,
-- and any host's periodic check records the end instead.
CREATE TABLE taskhost_flow_ends (
    flow_id uuid PRIMARY KEY,
    noted_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX taskhost_flow_ends_noted ON taskhost_flow_ends (noted_at);
