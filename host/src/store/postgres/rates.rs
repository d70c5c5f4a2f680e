//! Token buckets kept in the database (`taskhost_rate_buckets`,
//! migration 15), so submission rates hold across hosts and attempts: a
//! tenant's `submit_per_sec` while hosts serve the database together, and
//! a flow's submissions per second on any PostgreSQL store. A host
//! draws a few tokens at a time ([`PgStore::draw_tokens`], one statement,
//! refilled by the database's clock, so hosts' clocks do not matter) and
//! admits submissions from them (`engine/rates.rs`). A missing row is a
//! full bucket, so the leader deletes the full ones
//! ([`PgStore::drop_full_buckets`]) and the table holds only the keys
//! drawn from lately.

use super::{PgError, PgStore};

/// What one draw from a shared bucket got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drawn {
    /// Tokens granted (0 up to the number asked for).
    pub granted: u32,
    /// Tokens left in the bucket after the draw (below 1: the next whole
    /// one comes in `(1 - left) / rate` seconds).
    pub left: f64,
}

impl PgStore {
    /// Draws up to `want` whole tokens from bucket `key`, refilled at
    /// `rate` tokens a second up to `burst` (a bucket never drawn from, or
    /// deleted as full, starts full). Partial: what the bucket holds is
    /// granted, down to none.
    pub async fn draw_tokens(&self, key: &str, rate: f64, burst: f64, want: u32) -> Result<Drawn, PgError> {
        // The row is locked for the statement only; every expression of the
        // update reads the row as it was (`b`) and the time the statement
        // read once (`excluded.at`). A draw that waited for another's lock
        // finds the row at a later time than its own and gets no refill
        // for the wait (never the same refill twice); the time never goes
        // back.
        let (granted, left): (i32, f64) = sqlx::query_as(
            "INSERT INTO taskhost_rate_buckets AS b (key, rate, burst, tokens, granted, at)
             VALUES ($1, $2, $3, $3 - least($4, floor($3)), least($4, floor($3))::integer, clock_timestamp())
             ON CONFLICT (key) DO UPDATE SET
               rate = $2,
               burst = $3,
               granted = least($4, floor(least($3, b.tokens + $2 * extract(epoch FROM
                   greatest(b.at, excluded.at) - b.at)::double precision)))::integer,
               tokens = least($3, b.tokens + $2 * extract(epoch FROM
                   greatest(b.at, excluded.at) - b.at)::double precision)
                   - least($4, floor(least($3, b.tokens + $2 * extract(epoch FROM
                   greatest(b.at, excluded.at) - b.at)::double precision))),
               at = greatest(b.at, excluded.at)
             RETURNING granted, tokens",
        )
        .bind(key)
        .bind(rate)
        .bind(burst)
        .bind(f64::from(want))
        .fetch_one(self.pool())
        .await?;
        Ok(Drawn { granted: u32::try_from(granted).unwrap_or(0), left })
    }

    /// Forgets bucket `key`: it starts full at its next draw (a changed
    /// quota starts from a full bucket).
    pub async fn forget_bucket(&self, key: &str) -> Result<(), PgError> {
        sqlx::query("DELETE FROM taskhost_rate_buckets WHERE key = $1").bind(key).execute(self.pool()).await?;
        Ok(())
    }

    /// Deletes the buckets that have refilled (a missing one is full);
    /// how many went.
    pub async fn drop_full_buckets(&self) -> Result<u64, PgError> {
        let done = sqlx::query(
            "DELETE FROM taskhost_rate_buckets
             WHERE tokens + rate * greatest(0, extract(epoch FROM clock_timestamp() - at)::double precision) >= burst",
        )
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }
}
