//! Many hosts serving one database together (`taskhost serve
//! --many-hosts`): each claims tasks under leases and fences its outcomes
//! with them (`leases.rs`), so none needs to be the only one; the duties
//! that must run on one host at a time (retention) run on the leader,
//! elected through the leader row (`leader.rs`).
//!
//! A joining host takes the engine lock of `sole.rs` **shared**, on a
//! connection of its own, for as long as it serves: hosts serving together
//! hold it side by side, and a host serving alone (which holds it
//! exclusively) and hosts serving together never serve one database at
//! once, whichever started first. On the same connection it asks for the
//! lead every [`CHECK_EVERY`](super::sole::CHECK_EVERY): the row is taken
//! once the leader's lease lapsed, or at once when the leader's session
//! ended (its process died: its host id's lock is gone), so after a
//! leader is killed another host leads within one check, and after one
//! is frozen or cut off, within one lease plus one check.
//! [`ManyHosts::term`] says whether this host leads, under which term.
//!
//! Once the connection fails (the server restarted, the network went), or
//! three checks in a row go unanswered, [`ManyHosts::lost`] says so: the
//! lock may be gone, and a host serving alone could start, so this host
//! stops too.

use super::leader::Term;
use super::leases::millis;
use super::sole::{CHECK_EVERY, MIN_LEASE, SOLE};
use super::{PgError, PgStore};
use sqlx::postgres::PgConnection;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Checks in a row unanswered that count as the connection lost.
const TIMEOUTS: u32 = 3;

/// The prefix of the name of a host id's lock (see [`hold_host_id`]).
const HOST_ID_LOCK: &str = "taskhost host id ";

/// How long a joining host waits for another session holding its id to
/// end (a process of this host just killed: PostgreSQL ends its session
/// once it sees the connection closed) before refusing to start.
const ENDING_WAIT: Duration = Duration::from_secs(3);

/// A holder of a host id is taken for gone once its heartbeat is older
/// than this (and the lease): a live host writes one every 2 s, late
/// under load by a few.
const QUIET_FOR: Duration = Duration::from_secs(10);

/// How long a joining host tries to end a quiet holder's session before
/// refusing to start.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// This host's place among the hosts serving a database together.
/// Dropping it stops the checks and closes the connection, which releases
/// its share of the lock.
#[derive(Debug)]
pub struct ManyHosts {
    term: watch::Receiver<Option<Term>>,
    lost: watch::Receiver<Option<String>>,
    check: tokio::task::AbortHandle,
}

impl Drop for ManyHosts {
    fn drop(&mut self) {
        self.check.abort();
    }
}

impl ManyHosts {
    /// This host's term while it leads (as of its last check), else
    /// `None`.
    pub fn term(&self) -> Option<Term> {
        *self.term.borrow()
    }

    /// Waits until the lock's connection is lost; why.
    pub async fn lost(&self) -> String {
        super::sole::said_lost(&self.lost).await
    }
}

impl PgStore {
    /// Joins the hosts serving this database together as `host`, asking
    /// for the lead for `lease` at a time (at least [`MIN_LEASE`]).
    /// Refused ([`PgError::ServedAlone`]) while a host serves it alone.
    pub async fn join_many_hosts(&self, host: &str, lease: Duration) -> Result<ManyHosts, PgError> {
        if lease < MIN_LEASE {
            return Err(PgError::Setting(format!("the engine lease must be at least {MIN_LEASE:?}")));
        }
        let mut conn = self.pool().acquire().await?.detach();
        let joined: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock_shared(hashtextextended($1, 0))")
            .bind(SOLE)
            .fetch_one(&mut conn)
            .await?;
        if !joined {
            return Err(PgError::ServedAlone);
        }
        hold_host_id(&mut conn, host, lease).await?;
        let first = lead_on(&mut conn, host, lease).await?;
        let (tell_term, term) = watch::channel(first);
        let (tell_lost, lost) = watch::channel(None);
        let check = tokio::spawn(check(conn, host.to_owned(), lease, tell_term, tell_lost)).abort_handle();
        Ok(ManyHosts { term, lost, check })
    }
}

/// Takes the lock of host id `host` on `conn` (the joining host's own,
/// held as long as it serves), so no two processes serve together under
/// one id: they would share their leases and the lead. A holder whose
/// heartbeat is older than the lease and [`QUIET_FOR`] (frozen or cut
/// off, or its machine gone before its session ended) has its session
/// ended, as `sole.rs` ends a lapsed host's; one just killed is waited for
/// while its session ends (up to [`ENDING_WAIT`]); a live one refuses the
/// start ([`PgError::HostIdInUse`]).
async fn hold_host_id(conn: &mut PgConnection, host: &str, lease: Duration) -> Result<(), PgError> {
    let name = format!("{HOST_ID_LOCK}{host}");
    let quiet = millis(lease.max(QUIET_FOR));
    let started = Instant::now();
    loop {
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(&name)
            .fetch_one(&mut *conn)
            .await?;
        if taken {
            // Its old heartbeat is this process's now: no other joiner
            // takes it for a quiet holder's before the engine beats.
            sqlx::query("UPDATE taskhost_hosts SET heartbeat_at = clock_timestamp() WHERE host = $1")
                .bind(host)
                .execute(&mut *conn)
                .await?;
            return Ok(());
        }
        let holders = super::sole::lock_holders(conn, &name).await?;
        let age_ms: Option<i64> = sqlx::query_scalar(
            "SELECT floor(extract(epoch FROM clock_timestamp() - heartbeat_at) * 1000)::bigint
             FROM taskhost_hosts WHERE host = $1",
        )
        .bind(host)
        .fetch_optional(&mut *conn)
        .await?;
        let quiet_holder = match (holders.as_slice(), age_ms) {
            ([pid], Some(ms)) if ms > quiet => Some(*pid),
            _ => None,
        };
        match quiet_holder {
            Some(pid) if started.elapsed() < TAKEOVER_WAIT => {
                tracing::warn!(
                    pid,
                    host,
                    "a session holding this host's id has not written its heartbeat for {} ms: ending it",
                    age_ms.unwrap_or_default()
                );
                // Only while the row is still that old and the session
                // still holds the id (its pid not reused meanwhile).
                sqlx::query(
                    "SELECT pg_terminate_backend($1) FROM taskhost_hosts
                     WHERE host = $2 AND heartbeat_at < clock_timestamp() - $3 * interval '1 millisecond'
                       AND EXISTS (
                           SELECT 1 FROM pg_locks AS l JOIN pg_database AS d ON d.oid = l.database
                           WHERE l.pid = $1 AND d.datname = current_database() AND l.locktype = 'advisory'
                             AND l.granted AND l.objsubid = 1
                             AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($4, 0)
                       )",
                )
                .bind(pid)
                .bind(host)
                .bind(quiet)
                .bind(&name)
                .execute(&mut *conn)
                .await
                .map_err(super::sole::refused_takeover)?;
            }
            None if started.elapsed() < ENDING_WAIT => {}
            _ => {
                let seen = age_ms.map_or_else(
                    || "it has written no heartbeat".to_owned(),
                    |ms| format!("its last heartbeat {:.1} s ago", ms.max(0) as f64 / 1000.0),
                );
                return Err(PgError::HostIdInUse { host: host.to_owned(), seen });
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Leads, or keeps leading, for `lease` from now, unless another host
/// leads: one whose lease is live (see [`PgStore::lead`]) and whose
/// session still holds its host id's lock (taken on this same connection
/// when it joined, [`hold_host_id`]), on `conn`. Whether it does is asked
/// by trying that lock for the statement alone, which can't succeed while
/// any session holds it. A leader whose process died (its session ended,
/// releasing the lock) is replaced at the next check, not a lease later; a
/// leader deposed so while it still runs (its connection cut) finds out at
/// its own next check, and its duties' writes are checked under their
/// term meanwhile. The row names no session: a host serving alone ends
/// only the session of a lapsed host serving alone (`sole.rs`).
async fn lead_on(conn: &mut PgConnection, host: &str, lease: Duration) -> Result<Option<Term>, PgError> {
    let term: Option<i64> = sqlx::query_scalar(
        "INSERT INTO taskhost_leader AS l (singleton, host, term, expires_at, pid)
         VALUES (true, $1, nextval('taskhost_leader_terms'), clock_timestamp() + $2 * interval '1 millisecond', NULL)
         ON CONFLICT (singleton) DO UPDATE
           SET host = excluded.host,
               term = CASE WHEN l.host = excluded.host AND l.expires_at > clock_timestamp()
                           THEN l.term ELSE excluded.term END,
               expires_at = excluded.expires_at,
               pid = NULL
           WHERE l.host = excluded.host OR l.expires_at <= clock_timestamp()
              OR pg_try_advisory_xact_lock(hashtextextended($3 || l.host, 0))
         RETURNING term",
    )
    .bind(host)
    .bind(millis(lease))
    .bind(HOST_ID_LOCK)
    .fetch_optional(conn)
    .await?;
    Ok(term.map(Term))
}

/// Asks for the lead every [`CHECK_EVERY`] until the connection fails,
/// then says why (and holds the connection until dropped).
async fn check(
    mut conn: PgConnection,
    host: String,
    lease: Duration,
    term: watch::Sender<Option<Term>>,
    lost: watch::Sender<Option<String>>,
) {
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    let mut late = 0;
    let why = loop {
        every.tick().await;
        match tokio::time::timeout(CHECK_EVERY, lead_on(&mut conn, &host, lease)).await {
            Ok(Ok(now)) => {
                late = 0;
                let was = term.send_replace(now);
                if was != now {
                    match now {
                        Some(t) => tracing::info!(term = t.0, "this host leads the hosts serving its database"),
                        None => tracing::info!("another host leads the hosts serving this database"),
                    }
                }
            }
            Ok(Err(error)) => {
                break format!("the connection holding this host's share of the engine lock failed: {error}");
            }
            Err(_) => {
                // Not known to lead any more: its duties wait.
                term.send_replace(None);
                late += 1;
                if late >= TIMEOUTS {
                    break format!(
                        "the connection holding this host's share of the engine lock did not answer {TIMEOUTS} \
                         checks in a row, each within {CHECK_EVERY:?}"
                    );
                }
            }
        }
    };
    term.send_replace(None);
    tracing::error!(%why, "this host can no longer be sure no host serves its PostgreSQL database alone");
    let _ = lost.send(Some(why));
    std::future::pending::<()>().await;
    drop(conn);
}
