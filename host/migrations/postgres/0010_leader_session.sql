-- taskhost's PostgreSQL schema, version 10: the leader row names the
-- database session of the host that holds it (the sole engine's lock
-- session), so a host taking over from one whose lease lapsed ends that
-- session only, never another holding the engine lock.
ALTER TABLE taskhost_leader ADD COLUMN pid integer;
