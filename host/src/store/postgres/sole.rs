//! One engine per database, for now: the engine keeps its schedule in
//! memory and recovers the tasks a stopped host was running, so a second
//! engine on the same database would run tasks twice. A starting engine
//! takes an exclusive session-level advisory lock on a connection of its
//! own and holds it while it runs; a second one is refused with
//! [`PgError::InUse`]. PostgreSQL releases the lock when the connection
//! ends (the host stopped or died).
//!
//! The connection is checked every [`CHECK_EVERY`]: once it fails (the
//! server restarted, the network went), the lock may be another host's,
//! and [`SoleEngine::lost`] says so, for the host to stop.

use super::{PgError, PgStore};
use sqlx::postgres::PgConnection;
use std::time::Duration;
use tokio::sync::watch;

/// The lock's name.
const SOLE: &str = "taskhost sole engine";

/// How often the lock's connection is checked.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The held lock. Dropping it stops its check and closes its connection,
/// which releases it.
#[derive(Debug)]
pub struct SoleEngine {
    lost: watch::Receiver<Option<String>>,
    check: tokio::task::AbortHandle,
}

impl Drop for SoleEngine {
    fn drop(&mut self) {
        self.check.abort();
    }
}

impl SoleEngine {
    /// Waits until the lock is lost; why.
    pub async fn lost(&self) -> String {
        let mut lost = self.lost.clone();
        let why = lost.wait_for(Option::is_some).await.map(|why| why.clone().unwrap_or_default());
        match why {
            Ok(why) => why,
            // The check ended without a word: it was stopped with the lock.
            Err(_) => std::future::pending().await,
        }
    }
}

impl PgStore {
    /// Takes the database's engine lock, or refuses while another host
    /// holds it.
    pub async fn hold_sole_engine(&self) -> Result<SoleEngine, PgError> {
        let mut conn = self.pool().acquire().await?.detach();
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(SOLE)
            .fetch_one(&mut conn)
            .await?;
        if !taken {
            return Err(PgError::InUse);
        }
        let (tell, lost) = watch::channel(None);
        let check = tokio::spawn(check(conn, tell)).abort_handle();
        Ok(SoleEngine { lost, check })
    }
}

/// Timeouts in a row that count as the connection lost (a loaded server
/// may answer one check late).
const TIMEOUTS: u32 = 3;

/// Checks the lock's connection until it fails (an error, or
/// [`TIMEOUTS`] checks in a row unanswered), then says why. The
/// connection is held on after that (until the lock is dropped): a
/// server that only answered late still holds the lock for this host
/// while it stops.
async fn check(mut conn: PgConnection, lost: watch::Sender<Option<String>>) {
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut late = 0;
    let why = loop {
        every.tick().await;
        match tokio::time::timeout(CHECK_EVERY, sqlx::query("SELECT 1").execute(&mut conn)).await {
            Ok(Ok(_)) => late = 0,
            Ok(Err(error)) => break error.to_string(),
            Err(_) => {
                late += 1;
                if late >= TIMEOUTS {
                    break format!("it did not answer {TIMEOUTS} checks in a row, each within {CHECK_EVERY:?}");
                }
            }
        }
    };
    tracing::error!(%why, "lost the connection holding this host's PostgreSQL engine lock");
    let _ = lost.send(Some(format!("the connection holding the engine lock failed: {why}")));
    std::future::pending::<()>().await;
    drop(conn);
}
