-- taskhost's PostgreSQL schema, version 9: the hosts serving the database.
-- Each host writes its row every few seconds (its heartbeat, on the
-- database's clock) with what it says of itself as JSON: its version,
-- start time, models and load (`GET /v1/hosts`). A host that stops
-- cleanly removes its row; a row not written for a day is removed by the
-- next heartbeat of any host.
CREATE TABLE taskhost_hosts (
    host text PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL,
    report jsonb NOT NULL
);
