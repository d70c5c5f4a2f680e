//! Task rows whose record cannot be decoded, set aside: such a row would
//! fail every claim and reap that reads it, on every host, until someone
//! removed it. A claim, an outcome or a reap that finds one marks it
//! `quarantined` (with the decoding error) in its own transaction and goes
//! on without it; claims never read it again, and [`PgStore::quarantined`]
//! lists it for whoever repairs or removes it. Its record stays as stored.

use super::{PgError, PgStore};
use crate::store::{StoreError, TaskRecord, decode_record};
use sqlx::postgres::PgConnection;
use uuid::Uuid;

/// Rows read: the records that decoded, and the ids (with why) of those
/// that did not.
#[derive(Default)]
pub(super) struct Decoded {
    pub(super) records: Vec<TaskRecord>,
    pub(super) bad: Vec<(Uuid, String)>,
}

impl Decoded {
    /// Decodes each row's record.
    pub(super) fn of(rows: Vec<(Uuid, Vec<u8>)>) -> Self {
        let mut decoded = Decoded::default();
        for (id, bytes) in rows {
            match decode_record(&bytes) {
                Ok(record) => decoded.records.push(record),
                Err(error) => decoded.bad.push((id, error.to_string())),
            }
        }
        decoded
    }
}

/// Marks rows `bad` quarantined, in the transaction `conn` is in (their
/// rows are locked by the read that found them).
pub(super) async fn set_aside(conn: &mut PgConnection, bad: &[(Uuid, String)]) -> Result<(), StoreError> {
    if bad.is_empty() {
        return Ok(());
    }
    for (id, why) in bad {
        tracing::error!(task = %id, %why, "a task's record in PostgreSQL cannot be decoded; it is quarantined");
    }
    let (ids, reasons): (Vec<Uuid>, Vec<&str>) = bad.iter().map(|(id, why)| (*id, why.as_str())).unzip();
    // Whether it had ended is kept (the state it replaces is read here,
    // in the row as it was).
    sqlx::query(
        "UPDATE taskhost_tasks AS t SET state = 'quarantined', quarantined_because = b.why,
             quarantined_ended = CASE WHEN t.state = 'quarantined' THEN t.quarantined_ended
                                      ELSE t.state IN ('completed', 'failed', 'cancelled') END
         FROM unnest($1::uuid[], $2::text[]) AS b (id, why) WHERE t.id = b.id",
    )
    .bind(&ids)
    .bind(&reasons)
    .execute(&mut *conn)
    .await?;
    // One that had not ended never does: tasks waiting for it stay
    // blocked, and its flow counts it unended ([`unended`]) until an
    // operator repairs or removes it.
    sqlx::query("DELETE FROM taskhost_leases WHERE task_id = ANY($1)").bind(&ids).execute(&mut *conn).await?;
    Ok(())
}

/// SQL: whether the task row `alias` has not ended (pending, running,
/// retrying; or quarantined before it ended: it never will).
pub(super) fn unended(alias: &str) -> String {
    format!(
        "({alias}.state IN ('pending', 'running', 'retrying') \
         OR ({alias}.state = 'quarantined' AND NOT {alias}.quarantined_ended))"
    )
}

impl PgStore {
    /// The quarantined tasks, oldest first, with why each was set aside.
    pub async fn quarantined(&self) -> Result<Vec<(Uuid, String)>, PgError> {
        Ok(sqlx::query_as(
            "SELECT id, coalesce(quarantined_because, '') FROM taskhost_tasks WHERE state = 'quarantined' ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?)
    }
}
