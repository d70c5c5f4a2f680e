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

/// Checks the lock's connection until it fails, then says why.
async fn check(mut conn: PgConnection, lost: watch::Sender<Option<String>>) {
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let checked = tokio::time::timeout(CHECK_EVERY, sqlx::query("SELECT 1").execute(&mut conn)).await;
        let why = match checked {
            Ok(Ok(_)) => continue,
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("it did not answer within {CHECK_EVERY:?}"),
        };
        tracing::error!(%why, "lost the connection holding this host's PostgreSQL engine lock");
        let _ = lost.send(Some(format!("the connection holding the engine lock failed: {why}")));
        return;
    }
}
