//! Leader election on PostgreSQL: one row, held under a lease on the
//! database's clock. The duties that must run on exactly one host at a
//! time (timers of delayed and retrying tasks, repeaters, reaping,
//! retention) will run on the host holding it.
//!
//! A host calls [`PgStore::lead`] about every third of the lease: the
//! leader renews its lease and keeps its term; any other host takes the
//! row only once the lease has lapsed, under a new, larger term. So after
//! a leader dies another host leads within one lease plus one call
//! interval. A leader's duty checks its term in the transaction that
//! does the work ([`PgStore::leads`]), so a leader that was stopped past
//! its lease and resumes cannot act on the old term.

use super::{PgError, PgStore};
use sqlx::postgres::PgConnection;
use std::time::Duration;

/// This host's leadership: its term, larger than any leader's before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Term(pub i64);

/// Who leads, as the row says.
#[derive(Debug, Clone, PartialEq)]
pub struct Leader {
    /// The host's name.
    pub host: String,
    /// Its term.
    pub term: Term,
    /// Whether its lease is live.
    pub live: bool,
    /// How long its lease has left (since when it lapsed, when not live).
    pub left: Duration,
}

impl PgStore {
    /// Leads, or keeps leading, for `lease` from now, if no other host's
    /// lease is live: this host's term (the same while it keeps leading
    /// without a lapse), or `None` while another host leads.
    pub async fn lead(&self, host: &str, lease: Duration) -> Result<Option<Term>, PgError> {
        let term: Option<i64> = sqlx::query_scalar(
            "INSERT INTO taskhost_leader AS l (singleton, host, term, expires_at)
             VALUES (true, $1, nextval('taskhost_leader_terms'), clock_timestamp() + $2 * interval '1 millisecond')
             ON CONFLICT (singleton) DO UPDATE
               SET host = excluded.host,
                   term = CASE WHEN l.host = excluded.host AND l.expires_at > clock_timestamp()
                               THEN l.term ELSE excluded.term END,
                   expires_at = excluded.expires_at
               WHERE l.host = excluded.host OR l.expires_at <= clock_timestamp()
             RETURNING term",
        )
        .bind(host)
        .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
        .fetch_optional(self.pool())
        .await?;
        Ok(term.map(Term))
    }

    /// The last host to lead, if any has.
    pub async fn leader(&self) -> Result<Option<Leader>, PgError> {
        let row: Option<(String, i64, f64)> = sqlx::query_as(
            "SELECT host, term, extract(epoch FROM expires_at - clock_timestamp())::float8 FROM taskhost_leader",
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|(host, term, left)| Leader {
            host,
            term: Term(term),
            live: left > 0.0,
            left: Duration::try_from_secs_f64(left.abs()).unwrap_or(Duration::MAX),
        }))
    }

    /// Takes the lead for `host` now, whoever held it, under a new, larger
    /// term (fencing the last leader's writes: its term fails
    /// [`PgStore::leads`] from now on). Only for a host that knows no other
    /// may lead: the sole engine, holding the engine lock. Waits for a
    /// transaction that checked the last term to end.
    pub(crate) async fn take_lead(conn: &mut PgConnection, host: &str, lease: Duration) -> Result<Term, PgError> {
        let term: i64 = sqlx::query_scalar(
            "INSERT INTO taskhost_leader AS l (singleton, host, term, expires_at)
             VALUES (true, $1, nextval('taskhost_leader_terms'), clock_timestamp() + $2 * interval '1 millisecond')
             ON CONFLICT (singleton) DO UPDATE
               SET host = excluded.host, term = excluded.term, expires_at = excluded.expires_at
             RETURNING term",
        )
        .bind(host)
        .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
        .fetch_one(conn)
        .await?;
        Ok(Term(term))
    }

    /// Renews `term`'s lease for `lease` from now: whether it still held
    /// the lead (no other host took it, lapsed or not).
    pub(crate) async fn renew_lead(conn: &mut PgConnection, term: Term, lease: Duration) -> Result<bool, PgError> {
        let renewed = sqlx::query(
            "UPDATE taskhost_leader SET expires_at = clock_timestamp() + $2 * interval '1 millisecond' WHERE term = $1",
        )
        .bind(term.0)
        .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
        .execute(conn)
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Whether `term` still leads, checked inside the caller's
    /// transaction (it locks the row against a takeover until the
    /// transaction ends).
    pub async fn leads(conn: &mut PgConnection, term: Term) -> Result<bool, PgError> {
        let live: Option<i64> = sqlx::query_scalar(
            "SELECT term FROM taskhost_leader WHERE term = $1 AND expires_at > clock_timestamp() FOR SHARE",
        )
        .bind(term.0)
        .fetch_optional(conn)
        .await?;
        Ok(live.is_some())
    }
}
