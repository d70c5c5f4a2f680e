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
//!
//! For now the row is the sole engine's (`sole.rs`): it takes the lead by
//! force under the engine lock ([`PgStore::take_lead`]) and fences its
//! commits with [`PgStore::begin_fenced`] (or [`PgStore::begin_waking`],
//! which also wakes the hosts as it commits). Nothing else may call
//! [`PgStore::lead`] on a database an engine serves.

use super::leases::millis;
use super::{PgError, PgStore};
use sqlx::Transaction;
use sqlx::postgres::{PgConnection, Postgres};
use std::time::Duration;

/// This host's leadership: its term, larger than any leader's before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Term(pub i64);

/// The advisory lock that fences the sole engine's commits against a
/// takeover: commits hold it shared, a takeover exclusively. Migration
/// 17's `taskhost_fence` names it too (a test checks they agree).
pub(super) const FENCE: &str = "taskhost engine fence";

/// The SQLSTATE `taskhost_fence` raises when another host took over.
const DEPOSED: &str = "TH001";
/// The SQLSTATE `taskhost_fence` raises when this host's lease lapsed.
const LAPSED: &str = "TH002";

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
        .bind(millis(lease))
        .fetch_optional(self.pool())
        .await?;
        Ok(term.map(Term))
    }

    /// The last host to lead, if any has.
    pub async fn leader(&self) -> Result<Option<Leader>, PgError> {
        let mut conn = self.pool().acquire().await?;
        PgStore::leader_on(&mut conn).await
    }

    /// [`PgStore::leader`], read on `conn`.
    pub(crate) async fn leader_on(conn: &mut PgConnection) -> Result<Option<Leader>, PgError> {
        let row: Option<(String, i64, f64)> = sqlx::query_as(
            "SELECT host, term, extract(epoch FROM expires_at - clock_timestamp())::float8 FROM taskhost_leader",
        )
        .fetch_optional(conn)
        .await?;
        Ok(row.map(|(host, term, left)| Leader {
            host,
            term: Term(term),
            live: left > 0.0,
            left: Duration::try_from_secs_f64(left.abs()).unwrap_or(Duration::MAX),
        }))
    }

    /// Takes the lead for `host` now, whoever held it, under a new, larger
    /// term, naming `conn`'s session (fencing the last leader's commits:
    /// [`PgStore::begin_fenced`] refuses its term from now on). Only for
    /// a host that knows no other may lead: the sole engine, holding the
    /// engine lock on `conn`. Waits, holding the fence exclusively, for the
    /// commits that checked the last term to end.
    pub(crate) async fn take_lead(conn: &mut PgConnection, host: &str, lease: Duration) -> Result<Term, PgError> {
        use sqlx::Connection as _;
        let mut txn = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))").bind(FENCE).execute(&mut *txn).await?;
        let term: i64 = sqlx::query_scalar(
            "INSERT INTO taskhost_leader AS l (singleton, host, term, expires_at, pid)
             VALUES (true, $1, nextval('taskhost_leader_terms'), clock_timestamp() + $2 * interval '1 millisecond',
                     pg_backend_pid())
             ON CONFLICT (singleton) DO UPDATE
               SET host = excluded.host, term = excluded.term, expires_at = excluded.expires_at, pid = excluded.pid
             RETURNING term",
        )
        .bind(host)
        .bind(millis(lease))
        .fetch_one(&mut *txn)
        .await?;
        txn.commit().await?;
        Ok(Term(term))
    }

    /// Begins a transaction that goes on only while `fence` (a host
    /// serving alone's term, if any) still leads, in one round trip:
    /// `taskhost_fence` (migration 17) sent with `BEGIN` holds the fence
    /// shared until the transaction ends, so a takeover waits for it (a
    /// renewal does not). A host replaced meanwhile gets
    /// [`PgError::Deposed`], one whose own lease lapsed
    /// [`PgError::Lapsed`]; either leaves no transaction open.
    pub(crate) async fn begin_fenced(&self, fence: Option<Term>) -> Result<Transaction<'static, Postgres>, PgError> {
        self.begin_as(fence, false).await
    }

    /// Begins a transaction as [`PgStore::begin_fenced`] does, and tells
    /// every listening host (`wakeups.rs`) to look for work when (and
    /// only if) it commits, in the same round trip: for one that writes
    /// startable tasks (`PgTxn::woken`). A wake-up it turns out not to
    /// need costs a look that finds nothing.
    pub(crate) async fn begin_waking(&self, fence: Option<Term>) -> Result<Transaction<'static, Postgres>, PgError> {
        self.begin_as(fence, true).await
    }

    async fn begin_as(&self, fence: Option<Term>, wake: bool) -> Result<Transaction<'static, Postgres>, PgError> {
        if fence.is_none() && !wake {
            return Ok(self.pool().begin().await?);
        }
        // The check runs first, in the implicit transaction that `BEGIN`
        // then makes explicit (its lock held on): refused, it rolls back
        // whole (the notification with it), and the connection is left
        // idle. The term is this host's own number, and the channel a
        // constant, written in.
        let mut begin = String::new();
        if let Some(term) = fence {
            begin.push_str(&format!("SELECT taskhost_fence({}); ", term.0));
        }
        if wake {
            begin.push_str(&format!("SELECT pg_notify('{}', ''); ", super::wakeups::CHANNEL));
        }
        begin.push_str("BEGIN");
        // In a task of its own: were the caller's wait cancelled while the
        // check waits for the lock, sqlx (which counts the transaction
        // open only once `BEGIN` answered) would give the connection back
        // to the pool inside it; the task's transaction, dropped
        // unclaimed, is rolled back instead.
        let pool = self.pool().clone();
        match tokio::spawn(async move { pool.begin_with(begin).await }).await {
            Ok(begun) => begun.map_err(|error| match error.as_database_error().and_then(|e| e.code()).as_deref() {
                Some(DEPOSED) => PgError::Deposed,
                Some(LAPSED) => PgError::Lapsed,
                _ => PgError::Database(error),
            }),
            Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
            // Only as the runtime shuts down, the pool's work with it.
            Err(_) => Err(PgError::Database(sqlx::Error::PoolClosed)),
        }
    }

    /// Renews `term`'s lease for `lease` from now: whether it still held
    /// the lead (no other host took it, lapsed or not).
    pub(crate) async fn renew_lead(conn: &mut PgConnection, term: Term, lease: Duration) -> Result<bool, PgError> {
        let renewed = sqlx::query(
            "UPDATE taskhost_leader SET expires_at = clock_timestamp() + $2 * interval '1 millisecond' WHERE term = $1",
        )
        .bind(term.0)
        .bind(millis(lease))
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
