-- taskhost's PostgreSQL schema, version 16: how many tasks each queue
-- holds in each state, kept by the database itself, so hosts serving it
-- together report the same counts (`/metrics`' `tasks`, `/healthz`),
-- read from a table about as small as the queues times the states.
--
-- Statement triggers on `taskhost_tasks` add what each statement changed
-- (its new rows, less its old ones) to rows of their connection's own
-- (`pid`, the server process, unique among live connections), so
-- transactions of different connections never wait on each other's
-- counts, and every write to the table counts, whatever made it (a
-- TRUNCATE empties the counts; writes with the triggers off, as under
-- `session_replication_role = replica`, are not counted). The
-- leader folds the rows of past and idle connections into `pid` 0 (rows
-- it can lock without waiting; see `state_counts.rs`). A queue's count
-- in a state is the sum over `pid`s. Quarantined tasks are counted under
-- `quarantined`.
CREATE TABLE taskhost_state_counts (
    pid integer NOT NULL,
    queue text NOT NULL,
    state text NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (pid, queue, state)
);

-- Adds what one statement changed to its connection's rows.
CREATE FUNCTION taskhost_count_states() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO taskhost_state_counts (pid, queue, state, n)
        SELECT pg_backend_pid(), queue, state, count(*) FROM added GROUP BY queue, state
        ON CONFLICT (pid, queue, state) DO UPDATE SET n = taskhost_state_counts.n + excluded.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO taskhost_state_counts (pid, queue, state, n)
        SELECT pg_backend_pid(), queue, state, -count(*) FROM removed GROUP BY queue, state
        ON CONFLICT (pid, queue, state) DO UPDATE SET n = taskhost_state_counts.n + excluded.n;
    ELSE
        INSERT INTO taskhost_state_counts (pid, queue, state, n)
        SELECT pg_backend_pid(), queue, state, sum(d) FROM (
            SELECT queue, state, 1 AS d FROM added
            UNION ALL
            SELECT queue, state, -1 AS d FROM removed
        ) AS moves
        GROUP BY queue, state HAVING sum(d) <> 0
        ON CONFLICT (pid, queue, state) DO UPDATE SET n = taskhost_state_counts.n + excluded.n;
    END IF;
    RETURN NULL;
END
$$;

-- Created before the counts are read: the triggers' lock on the table
-- holds off other writers until this migration commits, so no write is
-- missed or counted twice.
CREATE TRIGGER taskhost_count_inserted AFTER INSERT ON taskhost_tasks
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION taskhost_count_states();
CREATE TRIGGER taskhost_count_updated AFTER UPDATE ON taskhost_tasks
    REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION taskhost_count_states();
CREATE TRIGGER taskhost_count_deleted AFTER DELETE ON taskhost_tasks
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION taskhost_count_states();

CREATE FUNCTION taskhost_count_none() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM taskhost_state_counts;
    RETURN NULL;
END
$$;
CREATE TRIGGER taskhost_count_truncated AFTER TRUNCATE ON taskhost_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION taskhost_count_none();

INSERT INTO taskhost_state_counts (pid, queue, state, n)
SELECT 0, queue, state, count(*) FROM taskhost_tasks GROUP BY queue, state;
