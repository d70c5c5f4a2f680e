//! One engine per database, for now: the engine keeps its schedule in
//! memory and recovers the tasks a stopped host was running, so a second
//! engine on the same database would run tasks twice. A starting engine
//! takes an exclusive session-level advisory lock on a connection of its
//! own and holds it while it runs; a second one is refused with
//! [`PgError::InUse`]. PostgreSQL releases the lock when the connection
//! ends (the host stopped or died).

use super::{PgError, PgStore};
use sqlx::postgres::PgConnection;

/// The lock's name.
const SOLE: &str = "taskhost sole engine";

/// The held lock: dropping it closes its connection, which releases it.
#[derive(Debug)]
pub struct SoleEngine {
    _conn: PgConnection,
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
        Ok(SoleEngine { _conn: conn })
    }
}
