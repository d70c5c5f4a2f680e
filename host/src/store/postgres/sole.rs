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

use super::leases::millis;
use super::{Leader, PgError, PgStore, Term};
use sqlx::postgres::PgConnection;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The lock's name (hosts serving together hold it shared: `many.rs`).
pub(super) const SOLE: &str = "taskhost sole engine";

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
        said_lost(&self.lost).await
    }

    /// The term this host's writes are fenced with.
    pub fn term(&self) -> Term {
        self.term
    }
}

/// Waits until `lost` says why a hold was lost. A check that ended without
/// a word was stopped with its hold: then never.
pub(super) async fn said_lost(lost: &watch::Receiver<Option<String>>) -> String {
    let mut lost = lost.clone();
    let why = lost.wait_for(Option::is_some).await.map(|why| why.clone().unwrap_or_default());
    match why {
        Ok(why) => why,
        Err(_) => std::future::pending().await,
    }
}

/// How often a standby looks whether the database is free
/// ([`PgStore::stand_by_for_sole_engine`]).
pub const STANDBY_POLL: Duration = Duration::from_millis(500);

/// The longest one look of a standby may take (a takeover's included)
/// before its connection counts as lost.
const STANDBY_LOOK: Duration = Duration::from_secs(15);

/// The longest a standby waits before it connects again after losing its
/// connection.
const STANDBY_BACKOFF: Duration = Duration::from_secs(5);

/// A standby with a report writes its heartbeat every this many looks
/// (2 s, as a serving host beats).
const LOOKS_PER_BEAT: u32 = 4;

/// How long a standby that stops waits to remove its heartbeat.
const LEAVE_GRACE: Duration = Duration::from_secs(5);

/// What a host standing by sees (the receiver [`Standby::new`] gives).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StandbyState {
    /// It has not looked yet, or cannot reach the database now.
    Looking,
    /// Another host holds the database; the last leader row (its lease
    /// lapsed when `live` is false: that host is being taken over).
    Held(Option<Leader>),
    /// It holds the database's lock now and is starting.
    TakingOver,
}

/// A host standing by for a database another host serves: where it says
/// what it sees, and how it is told to stop waiting. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Standby {
    state: watch::Sender<StandbyState>,
    stop: watch::Sender<bool>,
    /// What it writes as its heartbeat while it waits, if anything.
    report: Option<Arc<serde_json::Value>>,
}

impl Standby {
    /// A standby, and the receiver of what it sees.
    pub fn new() -> (Self, watch::Receiver<StandbyState>) {
        let (state, seen) = watch::channel(StandbyState::Looking);
        (Self { state, stop: watch::channel(false).0, report: None }, seen)
    }

    /// Writes `report` as this host's heartbeat while it waits (every 2
    /// s, as a serving host beats; `GET /v1/hosts` lists it), and removes
    /// it however the wait ends (a host that took over writes its own
    /// once its engine runs). Set before it is cloned.
    pub fn with_report(self, report: serde_json::Value) -> Self {
        Self { report: Some(Arc::new(report)), ..self }
    }

    /// Stops waiting: [`PgStore::stand_by_for_sole_engine`] returns
    /// [`PgError::StoodDown`] unless it holds the lock already.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Keeps `state`; tells the receivers only when who leads, or
    /// whether their lease is live, changed (not the time it has left).
    fn tell(&self, state: StandbyState) {
        self.state.send_if_modified(|now| {
            let changed = match (&*now, &state) {
                (StandbyState::Held(Some(a)), StandbyState::Held(Some(b))) => {
                    (&a.host, a.term, a.live) != (&b.host, b.term, b.live)
                }
                (a, b) => a != b,
            };
            *now = state;
            changed
        });
    }
}

impl PgStore {
    /// Takes the database's engine lock and the lead for `host`, renewed
    /// for `lease` at a time (at least [`MIN_LEASE`]); refuses while
    /// another host holds the lock under a live lease, and takes over from
    /// one whose lease lapsed.
    pub async fn hold_sole_engine(&self, host: &str, lease: Duration) -> Result<SoleEngine, PgError> {
        check_lease(lease)?;
        let mut conn = self.pool().acquire().await?.detach();
        if !try_hold(&mut conn).await? {
            return Err(PgError::InUse);
        }
        start_holding(conn, host, lease).await
    }

    /// [`PgStore::hold_sole_engine`], waiting while another host holds
    /// the database, and taking over once the holder stopped (its
    /// connection ended: at once, from the lock's queue) or stopped
    /// renewing its lease (once it lapsed: a look every
    /// [`STANDBY_POLL`]). Tells `standby` what it sees. A lost connection
    /// (the server restarting, a look unanswered for 15 s) is made again,
    /// with a backoff up to 5 s, for as long as it waits. Returns
    /// [`PgError::StoodDown`] once [`Standby::stop`] was called (or the
    /// future may be dropped).
    pub async fn stand_by_for_sole_engine(
        &self,
        host: &str,
        lease: Duration,
        standby: &Standby,
    ) -> Result<SoleEngine, PgError> {
        let waited = self.stand_by(host, lease, standby).await;
        // Its standby row goes however the wait ended: a host that took
        // over writes its own once its engine runs.
        if standby.report.is_some() {
            match tokio::time::timeout(LEAVE_GRACE, self.leave(host)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "cannot remove this standby's heartbeat; it ages out"),
                Err(_) => tracing::warn!("removing this standby's heartbeat took too long; it ages out"),
            }
        }
        waited
    }

    async fn stand_by(&self, host: &str, lease: Duration, standby: &Standby) -> Result<SoleEngine, PgError> {
        check_lease(lease)?;
        let mut stop = standby.stop.subscribe();
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stopped);
        let mut backoff = STANDBY_POLL;
        loop {
            let round = tokio::select! {
                () = &mut stopped => return Err(PgError::StoodDown),
                round = self.stand_by_round(host, standby, lease) => round,
            };
            let error = match round {
                // Told to stop as the lock came: it is let go (with the
                // connection) untaken.
                Ok(_) if *standby.stop.borrow() => return Err(PgError::StoodDown),
                Ok(mine) => {
                    standby.tell(StandbyState::TakingOver);
                    match start_holding(mine, host, lease).await {
                        Err(error) if error.is_transient() => error,
                        held => return held,
                    }
                }
                Err(error) if !error.is_transient() => return Err(error),
                Err(error) => error,
            };
            // A round that saw the database starts the backoff again.
            if *standby.state.borrow() == StandbyState::Looking {
                backoff = (backoff * 2).min(STANDBY_BACKOFF);
            } else {
                tracing::warn!(%error, "standing by: lost the database; connecting again");
                backoff = STANDBY_POLL;
            }
            standby.tell(StandbyState::Looking);
            tokio::select! {
                () = &mut stopped => return Err(PgError::StoodDown),
                () = tokio::time::sleep(backoff) => {}
            }
        }
    }

    /// One round of standing by, on two connections of its own: one
    /// queued on the engine lock (granted the moment the holder's session
    /// ends), one looking every [`STANDBY_POLL`] who leads and whether
    /// their lease lapsed (then ending the holder's session). The
    /// connection that holds the lock, or the first failure.
    /// With a report, the looking connection writes the standby's
    /// heartbeat every [`LOOKS_PER_BEAT`] looks.
    async fn stand_by_round(&self, host: &str, standby: &Standby, lease: Duration) -> Result<PgConnection, PgError> {
        let queued = async {
            let mut mine = self.pool().acquire().await?.detach();
            // The server notices a standby that went away while queued
            // (its connection closed); and one that went silent (frozen,
            // cut off) and was granted the lock meanwhile is ended after a
            // lease of holding it idle, so it cannot keep the lock from
            // the others (both PostgreSQL 14 or later).
            let _ = sqlx::query("SET client_connection_check_interval = 1000").execute(&mut mine).await;
            let idle = format!("SET idle_session_timeout = {}", millis(lease));
            let _ = sqlx::query(&idle).execute(&mut mine).await;
            let wait = format!("SET statement_timeout = {}", STANDBY_LOOK.as_millis());
            sqlx::query(&wait).execute(&mut mine).await?;
            sqlx::query("SET lock_timeout = 0").execute(&mut mine).await?;
            loop {
                let lock = sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))").bind(SOLE);
                match unanswered(STANDBY_LOOK * 2, lock.execute(&mut mine)).await? {
                    Ok(_) => break,
                    // Still held when the statement's time ran out: queue
                    // again (were it granted as the time ran out, it is
                    // held, and asking again returns at once).
                    Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("57014") => {}
                    Err(error) => return Err(error.into()),
                }
            }
            // This connection renews the lease from now on: the session's
            // own settings again.
            let _ = sqlx::query("RESET idle_session_timeout").execute(&mut mine).await;
            sqlx::query("RESET statement_timeout").execute(&mut mine).await?;
            sqlx::query("RESET lock_timeout").execute(&mut mine).await?;
            Ok(mine)
        };
        let looking = async {
            let mut mine = self.pool().acquire().await?.detach();
            let mut looks = 0u32;
            let mut beat_failing = false;
            loop {
                let beat = standby.report.as_ref().filter(|_| looks.is_multiple_of(LOOKS_PER_BEAT));
                looks = looks.wrapping_add(1);
                let failing = &mut beat_failing;
                let look = async {
                    if try_hold(&mut mine).await? {
                        return Ok(None);
                    }
                    if let Some(report) = beat {
                        // Best effort: a failure to list itself does not
                        // stop it standing by (a lost connection fails
                        // the look below).
                        match super::hosts::beat_on(&mut mine, host, report).await {
                            Ok(()) => *failing = false,
                            Err(error) if !*failing => {
                                *failing = true;
                                tracing::warn!(%error, "standing by: cannot write this host's heartbeat");
                            }
                            Err(_) => {}
                        }
                    }
                    PgStore::leader_on(&mut mine).await.map(Some)
                };
                match unanswered(STANDBY_LOOK, look).await?? {
                    None => return Ok(mine),
                    Some(leader) => standby.tell(StandbyState::Held(leader)),
                }
                tokio::time::sleep(STANDBY_POLL).await;
            }
        };
        tokio::select! {
            queued = queued => queued,
            looked = looking => looked,
        }
    }
}

/// `work`'s result, or a transient error once it ran past `within` (the
/// connection is taken for lost).
async fn unanswered<T>(within: Duration, work: impl Future<Output = T>) -> Result<T, PgError> {
    tokio::time::timeout(within, work).await.map_err(|_| {
        let why = format!("the database did not answer within {within:?}");
        PgError::Database(sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, why)))
    })
}

/// A lease shorter than [`MIN_LEASE`] is refused.
fn check_lease(lease: Duration) -> Result<(), PgError> {
    if lease < MIN_LEASE {
        return Err(PgError::Setting(format!("the engine lease must be at least {MIN_LEASE:?}")));
    }
    Ok(())
}

/// A failed `pg_terminate_backend`: [`PgError::CannotTakeOver`] where
/// this role may not end the session (42501).
pub(super) fn refused_takeover(error: sqlx::Error) -> PgError {
    match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
            PgError::CannotTakeOver(db.message().to_owned())
        }
        _ => PgError::from(error),
    }
}

/// The sessions (their backends' pids) holding the advisory lock `name`
/// in this database.
pub(super) async fn lock_holders(conn: &mut PgConnection, name: &str) -> Result<Vec<i32>, PgError> {
    Ok(sqlx::query_scalar(
        "SELECT l.pid FROM pg_locks AS l JOIN pg_database AS d ON d.oid = l.database
         WHERE d.datname = current_database() AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
           AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await?)
}

/// Takes the engine lock on `conn`, ending the session of a holder whose
/// lease lapsed (trying for at most [`TAKEOVER_WAIT`]): whether it holds
/// it now (`false`: a live host holds it).
async fn try_hold(conn: &mut PgConnection) -> Result<bool, PgError> {
    let deadline = Instant::now() + TAKEOVER_WAIT;
    let mut told = false;
    loop {
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(SOLE)
            .fetch_one(&mut *conn)
            .await?;
        if taken {
            return Ok(true);
        }
        // Held. Taken over only from the session the leader row names,
        // once its lease lapsed (it stopped renewing): a lock held by
        // any other session, or under a live lease, or with no row at
        // all (a host of an earlier version), is a live host's.
        let holders = lock_holders(conn, SOLE).await?;
        let lapsed: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM taskhost_leader WHERE expires_at <= clock_timestamp() AND pid IS NOT NULL",
        )
        .fetch_optional(&mut *conn)
        .await?;
        let Some(pid) = lapsed.filter(|pid| holders == [*pid]) else {
            // Ended meanwhile (the lock is free now), or a live host's.
            if holders.is_empty() && Instant::now() < deadline {
                continue;
            }
            return Ok(false);
        };
        if Instant::now() > deadline {
            return Ok(false);
        }
        if !told {
            told = true;
            tracing::warn!(
                pid,
                "the host holding this database's engine lock stopped renewing its lease: ending its session to \
                 take over"
            );
        }
        // Only while the row still names it, lapsed: two hosts starting
        // at once never end each other's session.
        sqlx::query(
            "SELECT pg_terminate_backend($1) FROM taskhost_leader
             WHERE pid = $1 AND expires_at <= clock_timestamp()",
        )
        .bind(pid)
        .execute(&mut *conn)
        .await
        .map_err(refused_takeover)?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With the lock held on `conn`: takes the lead for `host` and starts
/// renewing it.
async fn start_holding(mut conn: PgConnection, host: &str, lease: Duration) -> Result<SoleEngine, PgError> {
    let term = PgStore::take_lead(&mut conn, host, lease).await?;
    let (tell, lost) = watch::channel(None);
    let check = tokio::spawn(check(conn, term, lease, tell)).abort_handle();
    Ok(SoleEngine { lost, check, term })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_tells_who_leads_when_it_changes_not_the_time_left() {
        let (standby, mut seen) = Standby::new();
        let leader = |host: &str, term, live, left| Leader { host: host.into(), term: Term(term), live, left };
        standby.tell(StandbyState::Held(Some(leader("a", 1, true, Duration::from_secs(9)))));
        assert!(seen.has_changed().unwrap());
        seen.mark_unchanged();
        standby.tell(StandbyState::Held(Some(leader("a", 1, true, Duration::from_secs(8)))));
        assert!(!seen.has_changed().unwrap(), "only the time left changed");
        for changed in [leader("a", 1, false, Duration::ZERO), leader("b", 2, true, Duration::from_secs(9))] {
            standby.tell(StandbyState::Held(Some(changed)));
            assert!(seen.has_changed().unwrap());
            seen.mark_unchanged();
        }
        standby.tell(StandbyState::TakingOver);
        assert_eq!(*seen.borrow_and_update(), StandbyState::TakingOver);
    }
}
