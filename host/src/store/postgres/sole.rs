//! One engine per database, for now: the engine keeps its schedule in
//! memory and recovers the tasks a stopped host was running, so a second
//! engine on the same database would run tasks twice.
//!
//! A starting engine takes an exclusive session-level advisory lock on a
//! connection of its own, then the lead (`leader.rs`) under a new, larger
//! term, which it renews on that connection every [`CHECK_EVERY`] for a
//! lease on the database's clock. Every transaction of its group committer
//! checks that term first ([`PgStore::leads`], which holds off a takeover
//! until the transaction ends), so once another host has taken over,
//! nothing more of this host's is written ([`PgError::Deposed`]).
//!
//! A second host is refused ([`PgError::InUse`]) while the lock is held
//! and the holder's lease is live. A holder whose lease lapsed stopped
//! renewing it (frozen, cut off) though its lock's session lives on: the
//! new host ends that session, takes the lock and the lead, and recovers
//! the tasks the old one was running; if the old host comes back, its
//! commits are refused and its check finds the lock's session ended, and
//! it stops. PostgreSQL releases the lock when the connection ends (the
//! host stopped or died), so a host that died frees the database at once.
//!
//! The lock's connection is checked by the renewal: once it fails (the
//! server restarted, the network went), or finds another host's term,
//! [`SoleEngine::lost`] says so, for the host to stop.

use super::{PgError, PgStore, Term};
use sqlx::postgres::PgConnection;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The lock's name.
const SOLE: &str = "taskhost sole engine";

/// How often the lease is renewed (and the lock's connection checked).
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The shortest lease: a few renewals long, so one late renewal does not
/// lose it.
pub const MIN_LEASE: Duration = Duration::from_secs(6);

/// How long a starting host tries to take the lock from a holder whose
/// lease lapsed.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// The held lock and lead. Dropping it stops the renewal and closes its
/// connection, which releases the lock.
#[derive(Debug)]
pub struct SoleEngine {
    lost: watch::Receiver<Option<String>>,
    check: tokio::task::AbortHandle,
    term: Term,
}

impl Drop for SoleEngine {
    fn drop(&mut self) {
        self.check.abort();
    }
}

impl SoleEngine {
    /// Waits until the lock or the lead is lost; why.
    pub async fn lost(&self) -> String {
        let mut lost = self.lost.clone();
        let why = lost.wait_for(Option::is_some).await.map(|why| why.clone().unwrap_or_default());
        match why {
            Ok(why) => why,
            // The check ended without a word: it was stopped with the lock.
            Err(_) => std::future::pending().await,
        }
    }

    /// The term this host's writes are fenced with.
    pub fn term(&self) -> Term {
        self.term
    }
}

impl PgStore {
    /// Takes the database's engine lock and the lead for `host`, renewed
    /// for `lease` at a time (at least [`MIN_LEASE`]); refuses while
    /// another host holds the lock under a live lease, and takes over from
    /// one whose lease lapsed.
    pub async fn hold_sole_engine(&self, host: &str, lease: Duration) -> Result<SoleEngine, PgError> {
        if lease < MIN_LEASE {
            return Err(PgError::Setting(format!("the engine lease must be at least {MIN_LEASE:?}")));
        }
        let mut conn = self.pool().acquire().await?.detach();
        let deadline = Instant::now() + TAKEOVER_WAIT;
        let mut told = false;
        loop {
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(SOLE)
                .fetch_one(&mut conn)
                .await?;
            if taken {
                break;
            }
            // Held. Taken over only from the session the leader row names,
            // once its lease lapsed (it stopped renewing): a lock held by
            // any other session, or under a live lease, or with no row at
            // all (a host of an earlier version), is a live host's.
            let holders: Vec<i32> = sqlx::query_scalar(
                "SELECT l.pid FROM pg_locks AS l JOIN pg_database AS d ON d.oid = l.database
                 WHERE d.datname = current_database() AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                   AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)",
            )
            .bind(SOLE)
            .fetch_all(&mut conn)
            .await?;
            let lapsed: Option<i32> = sqlx::query_scalar(
                "SELECT pid FROM taskhost_leader WHERE expires_at <= clock_timestamp() AND pid IS NOT NULL",
            )
            .fetch_optional(&mut conn)
            .await?;
            let Some(pid) = lapsed.filter(|pid| holders == [*pid]) else {
                // Ended meanwhile (the lock is free now), or a live host's.
                if holders.is_empty() && Instant::now() < deadline {
                    continue;
                }
                return Err(PgError::InUse);
            };
            if Instant::now() > deadline {
                return Err(PgError::InUse);
            }
            if !told {
                told = true;
                tracing::warn!(
                    pid,
                    "the host holding this database's engine lock stopped renewing its lease: ending its session \
                     to take over"
                );
            }
            // Only while the row still names it, lapsed: two hosts starting
            // at once never end each other's session.
            sqlx::query(
                "SELECT pg_terminate_backend($1) FROM taskhost_leader
                 WHERE pid = $1 AND expires_at <= clock_timestamp()",
            )
            .bind(pid)
            .execute(&mut conn)
            .await
            .map_err(|error| match &error {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
                    PgError::CannotTakeOver(db.message().to_owned())
                }
                _ => PgError::from(error),
            })?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let term = PgStore::take_lead(&mut conn, host, lease).await?;
        let (tell, lost) = watch::channel(None);
        let check = tokio::spawn(check(conn, term, lease, tell)).abort_handle();
        Ok(SoleEngine { lost, check, term })
    }
}

/// Timeouts in a row that count as the connection lost (a loaded server
/// may answer one check late).
const TIMEOUTS: u32 = 3;

/// Renews the lease every [`CHECK_EVERY`] until the connection fails (an
/// error, or [`TIMEOUTS`] renewals in a row unanswered) or another host's
/// term replaced this one, then says why. The connection is held on after
/// that (until the lock is dropped): a server that only answered late
/// still holds the lock for this host while it stops.
async fn check(mut conn: PgConnection, term: Term, lease: Duration, lost: watch::Sender<Option<String>>) {
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut late = 0;
    let why = loop {
        every.tick().await;
        match tokio::time::timeout(CHECK_EVERY, PgStore::renew_lead(&mut conn, term, lease)).await {
            Ok(Ok(true)) => late = 0,
            Ok(Ok(false)) => {
                break "another host took over the engine (this host's lease had lapsed: was it frozen or cut \
                       off?)"
                    .to_owned();
            }
            Ok(Err(error)) => break format!("the connection holding the engine lock failed: {error}"),
            Err(_) => {
                late += 1;
                if late >= TIMEOUTS {
                    break format!(
                        "the connection holding the engine lock did not answer {TIMEOUTS} renewals in a row, each \
                         within {CHECK_EVERY:?}"
                    );
                }
            }
        }
    };
    tracing::error!(%why, "this host is no longer sure to be the only engine on its PostgreSQL database");
    let _ = lost.send(Some(why));
    std::future::pending::<()>().await;
    drop(conn);
}
