-- taskhost's PostgreSQL schema, version 15: submission rates shared by
-- hosts serving the database together. A token bucket per rate-limited
-- key (`tenant/<name>` for a tenant's `submit_per_sec`, `flow/<id>` for a
-- flow's submissions per second), refilled by the database's clock: each
-- host draws a few tokens at a time (`granted`: the last draw's) and
-- admits submissions from them, so the hosts together admit a key's rate.
-- A missing row is a full bucket: the leader deletes full ones.
CREATE TABLE taskhost_rate_buckets (
    key text PRIMARY KEY,
    rate double precision NOT NULL,
    burst double precision NOT NULL,
    tokens double precision NOT NULL,
    granted integer NOT NULL,
    at timestamptz NOT NULL
);
