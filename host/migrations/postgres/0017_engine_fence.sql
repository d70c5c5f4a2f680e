-- taskhost's PostgreSQL schema, version 17: the sole engine's fence as one
-- call, sent with `BEGIN` in one round trip (see `leader.rs`,
-- `PgStore::begin_fenced`).
--
-- `taskhost_fence(term)` holds the fence's advisory lock shared until the
-- transaction ends (a takeover holds it exclusively while it writes the
-- leader row, so it waits for the transaction), then reads the leader row
-- and raises unless `term` leads with its lease live: SQLSTATE `TH001`
-- when another host took over (or the row is gone), `TH002` when the
-- term still holds the row but its lease lapsed. The read is a statement
-- of its own after the lock: in a volatile function under READ
-- COMMITTED it takes a new snapshot, so it sees a takeover that committed
-- while the lock was awaited.
CREATE FUNCTION taskhost_fence(held bigint) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    current bigint;
    live boolean;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('taskhost engine fence', 0));
    SELECT term, expires_at > clock_timestamp() INTO current, live FROM taskhost_leader;
    IF current IS DISTINCT FROM held THEN
        RAISE EXCEPTION 'taskhost: another host took over this database' USING ERRCODE = 'TH001';
    ELSIF NOT live THEN
        RAISE EXCEPTION 'taskhost: this host''s lease on the lead lapsed' USING ERRCODE = 'TH002';
    END IF;
END $$;
