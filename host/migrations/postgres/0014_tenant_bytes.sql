-- taskhost's PostgreSQL schema, version 14: the bytes each tenant keeps
-- (its tasks' inputs, outputs and transcripts), for `max_stored_bytes`.
-- Every host adds its own changes (what it admitted, completed, logged
-- and deleted) every 2 s and reads every tenant's total back, so each
-- counts what the others did too. A total is the signed sum of every
-- change (read as zero while below it), so changes may arrive in any
-- order. Counted here from the tasks stored now; tasks stored before
-- version 7 that have no `taskhost_listed` row yet are added as their row
-- is filled; a host that serves the database alone counts again from its
-- start-up scan.
CREATE TABLE taskhost_tenant_bytes (
    tenant text PRIMARY KEY,
    bytes bigint NOT NULL
);

-- The last batch of changes each host added (numbered from 1): a batch
-- whose commit's answer was lost is sent again under its number, and not
-- added twice.
CREATE TABLE taskhost_tenant_bytes_sent (
    host text PRIMARY KEY,
    seq bigint NOT NULL
);

INSERT INTO taskhost_tenant_bytes (tenant, bytes)
SELECT l.tenant,
       sum(octet_length(t.input) + coalesce(octet_length(t.output), 0)
           + coalesce((SELECT sum(octet_length(g.log)) FROM taskhost_logs AS g WHERE g.task_id = t.id), 0))
FROM taskhost_tasks AS t JOIN taskhost_listed AS l ON l.id = t.id
WHERE t.state <> 'quarantined'
GROUP BY l.tenant;
