//! Retention on PostgreSQL, as the redb store's `retention.rs` does it:
//! `taskhost_finished` lists the ended units (a lone task under its queue,
//! a flow under its tenant's flow group, a repeating flow's past
//! iterations under its tenant's iteration group), kept in step by every
//! write that ends a unit or opens it again. A sweep finds the units past
//! their group's [`Retention`] with reads, then deletes each in a
//! transaction of its own that checks it again under its locks (its
//! tasks' rows, then its flow's lock, then its entry, the order every
//! write takes them in): a unit retried or changed meanwhile stays, and so
//! does one with a quarantined task.

use super::txn::{flow_lock, lock_names};
use super::{PgError, PgStore};
use crate::store::record::decode;
use crate::store::retention::{CALLBACK_GRACE_MS, Expired, Removed, Retention, is_flow_group, is_iteration_group};
use crate::store::{FlowRecord, TaskRecord, TaskState};
use sqlx::PgConnection;
use std::collections::{BTreeMap, HashSet};
use uuid::Uuid;

/// Entries of one group read per statement while a sweep looks for
/// expired units.
const PAGE: i64 = 512;

impl PgStore {
    /// Up to `limit` ended units past their group's retention (`rule`
    /// gives it) at time `now`, oldest first in each group, passing over
    /// those in `skip` and lone tasks still waiting for their callback's
    /// outcome.
    pub(crate) async fn expired_past(
        &self,
        rule: impl Fn(&str) -> Retention,
        now: u64,
        limit: usize,
        skip: &HashSet<(String, u64, u128)>,
    ) -> Result<Vec<Expired>, PgError> {
        let groups: Vec<(String, i64)> =
            sqlx::query_as("SELECT grp, count(*) FROM taskhost_finished GROUP BY grp ORDER BY grp COLLATE \"C\"")
                .fetch_all(self.pool())
                .await?;
        let mut out = Vec::new();
        for (group, count) in groups {
            let retention = rule(&group);
            let mut over = retention.keep_count.map_or(0, |keep| (count.max(0) as u64).saturating_sub(keep));
            let mut after: Option<(i64, Uuid)> = None;
            'group: loop {
                // With each lone task's record and whether its callback's
                // outcome is recorded (a flow's entry needs neither).
                let rows: Vec<(i64, Uuid, Option<Vec<u8>>, bool)> = sqlx::query_as(
                    "SELECT f.at_ms, f.unit, t.record,
                            EXISTS (SELECT 1 FROM taskhost_callbacks AS c WHERE c.task_id = f.unit)
                     FROM taskhost_finished AS f
                     LEFT JOIN taskhost_tasks AS t ON t.id = f.unit AND t.state <> 'quarantined' AND NOT $5
                     WHERE f.grp = $1 AND ($2::bigint IS NULL OR (f.at_ms, f.unit) > ($2, $3))
                     ORDER BY f.at_ms, f.unit LIMIT $4",
                )
                .bind(&group)
                .bind(after.map(|(at, _)| at))
                .bind(after.map(|(_, unit)| unit))
                .bind(PAGE)
                .bind(is_flow_group(&group))
                .fetch_all(self.pool())
                .await?;
                let Some(last) = rows.last().map(|(at, unit, _, _)| (*at, *unit)) else { break };
                for (at, unit, record, recorded) in rows {
                    let ended_at_ms = at.max(0) as u64;
                    let old = retention.keep_for_ms.is_some_and(|keep| ended_at_ms.saturating_add(keep) <= now);
                    if !old && over == 0 {
                        break 'group;
                    }
                    over = over.saturating_sub(1);
                    if skip.contains(&(group.clone(), ended_at_ms, unit.as_u128())) {
                        continue;
                    }
                    if let Some(record) = record
                        && awaits(&decode(&record)?, recorded, now)
                    {
                        continue;
                    }
                    out.push(Expired { group: group.clone(), ended_at_ms, id: unit.as_u128() });
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
                after = Some(last);
            }
        }
        Ok(out)
    }

    /// Deletes the units `expired` found, each only if it is still listed
    /// as it was found and every task of it ended and waits for no
    /// callback: each unit in a transaction of its own, so no sweep holds
    /// one unit's locks while it takes another's. At a unit whose deletion
    /// fails (a lost connection) the sweep stops, logging it: what was
    /// deleted before it is answered, the rest waits for a later sweep.
    pub(crate) async fn delete_expired(&self, expired: Vec<Expired>) -> Result<Removed, PgError> {
        let mut removed = Removed::default();
        let now = crate::store::now_ms();
        for unit in &expired {
            let mut one = Removed::default();
            let deleted = async {
                let mut txn = self.pool().begin().await?;
                delete_unit(&mut txn, unit, now, &mut one).await?;
                txn.commit().await?;
                Ok::<_, PgError>(())
            }
            .await;
            match deleted {
                Ok(()) => {
                    removed.tasks.append(&mut one.tasks);
                    removed.flows += one.flows;
                    removed.kept += one.kept;
                    removed.kept_units.append(&mut one.kept_units);
                }
                Err(error) => {
                    // The rest waits for a later sweep too: a database
                    // that is gone would fail each unit in turn.
                    tracing::warn!(group = %unit.group, unit = %Uuid::from_u128(unit.id), %error,
                        "deleting an expired unit failed; a later sweep tries again");
                    // Passed over by the rest of this sweep.
                    keep(unit, &mut removed);
                    break;
                }
            }
        }
        Ok(removed)
    }
}

/// Whether `record`, whose callback's outcome is `recorded` or not, waits
/// for it (for at most [`CALLBACK_GRACE_MS`] after it ended).
fn awaits(record: &TaskRecord, recorded: bool, now: u64) -> bool {
    let ended = record.finished_at_ms.unwrap_or(record.created_at_ms);
    record.callback_url.is_some() && ended.saturating_add(CALLBACK_GRACE_MS) > now && !recorded
}

/// Locks tasks `ids` (in id order) and reads them, with whether each has
/// its callback's outcome recorded; `None` when one of them is
/// quarantined (its record can't be read: its unit stays).
async fn lock_tasks(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Option<Vec<(TaskRecord, bool)>>, PgError> {
    let rows: Vec<(String, Vec<u8>, bool)> = sqlx::query_as(
        "SELECT t.state, t.record, EXISTS (SELECT 1 FROM taskhost_callbacks AS c WHERE c.task_id = t.id)
         FROM taskhost_tasks AS t WHERE t.id = ANY($1) ORDER BY t.id FOR UPDATE OF t",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    if rows.iter().any(|(state, _, _)| state == "quarantined") {
        return Ok(None);
    }
    let tasks = rows.into_iter().map(|(_, bytes, recorded)| Ok((decode(&bytes)?, recorded)));
    Ok(Some(tasks.collect::<Result<_, PgError>>()?))
}

/// The tasks a flow grew, in id order.
async fn grown(conn: &mut PgConnection, flow: Uuid) -> Result<Vec<Uuid>, PgError> {
    Ok(sqlx::query_scalar("SELECT task_id FROM taskhost_flow_tasks WHERE flow_id = $1 ORDER BY task_id")
        .bind(flow)
        .fetch_all(&mut *conn)
        .await?)
}

/// Takes and checks the unit's entry; false when it is gone (the unit
/// was opened again, or another sweep took it).
async fn listed(conn: &mut PgConnection, unit: &Expired) -> Result<bool, PgError> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM taskhost_finished WHERE grp = $1 AND at_ms = $2 AND unit = $3 FOR UPDATE")
            .bind(&unit.group)
            .bind(ms(unit.ended_at_ms))
            .bind(Uuid::from_u128(unit.id))
            .fetch_optional(&mut *conn)
            .await?;
    Ok(found.is_some())
}

async fn unlist(conn: &mut PgConnection, unit: &Expired) -> Result<(), PgError> {
    sqlx::query("DELETE FROM taskhost_finished WHERE grp = $1 AND at_ms = $2 AND unit = $3")
        .bind(&unit.group)
        .bind(ms(unit.ended_at_ms))
        .bind(Uuid::from_u128(unit.id))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn ms(at: u64) -> i64 {
    i64::try_from(at).unwrap_or(i64::MAX)
}

fn keep(unit: &Expired, removed: &mut Removed) {
    removed.kept += 1;
    removed.kept_units.push(unit.clone());
}

/// Deletes one unit if it is still listed and nothing holds it. Locks are
/// taken as every write takes them (see `txn.rs`): the flow's lock, then
/// the tasks' rows (in id order), then the unit's entry.
async fn delete_unit(conn: &mut PgConnection, unit: &Expired, now: u64, removed: &mut Removed) -> Result<(), PgError> {
    let id = Uuid::from_u128(unit.id);
    if is_iteration_group(&unit.group) {
        return delete_iterations(conn, unit, now, removed).await;
    }
    let flow = is_flow_group(&unit.group);
    let mut ids = vec![id];
    if flow {
        // What it grew, read under its lock: it grows under it too.
        lock_names(conn, vec![flow_lock(id)]).await?;
        ids.extend(grown(conn, id).await?);
    }
    let Some(tasks) = lock_tasks(conn, &ids).await? else {
        keep(unit, removed);
        return Ok(());
    };
    if !listed(conn, unit).await? {
        keep(unit, removed);
        return Ok(());
    }
    // Every task must have ended, and none may wait for a callback.
    if tasks.iter().any(|(record, recorded)| !record.state.is_terminal() || awaits(record, *recorded, now)) {
        keep(unit, removed);
        return Ok(());
    }
    for (record, _) in &tasks {
        removed.tasks.push(delete_task(conn, record).await?);
    }
    if flow {
        for table in ["taskhost_flow_tasks", "taskhost_flow_keys", "taskhost_context"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE flow_id = $1")).bind(id).execute(&mut *conn).await?;
        }
        sqlx::query("DELETE FROM taskhost_flows WHERE id = $1").bind(id).execute(&mut *conn).await?;
        removed.flows += 1;
    }
    unlist(conn, unit).await
}

/// Deletes the iterations of a repeating flow that ended by the unit's
/// time, oldest first, each whole (its tasks, their keys and list
/// entries); the flow's root task, the iteration before the current one
/// (and the current one), and the flow's result stay. The flow's lock is
/// taken first, then the candidates read and locked (their rows, then the
/// entry).
async fn delete_iterations(
    conn: &mut PgConnection,
    unit: &Expired,
    now: u64,
    removed: &mut Removed,
) -> Result<(), PgError> {
    let f = Uuid::from_u128(unit.id);
    lock_names(conn, vec![flow_lock(f)]).await?;
    let Some(flow) = flow_record(conn, f).await? else {
        // The flow went (with its own unit): so does this entry.
        if listed(conn, unit).await? {
            unlist(conn, unit).await?;
        }
        return Ok(());
    };
    let keep_from = flow.iteration.saturating_sub(1);
    let rows: Vec<(i64, Uuid)> = sqlx::query_as(
        "SELECT iteration, id FROM taskhost_listed WHERE flow_id = $1 AND id <> $1 AND iteration < $2
         ORDER BY iteration, id",
    )
    .bind(f)
    .bind(i64::from(keep_from))
    .fetch_all(&mut *conn)
    .await?;
    let mut ids: Vec<Uuid> = rows.iter().map(|(_, id)| *id).collect();
    ids.sort_unstable();
    let Some(tasks) = lock_tasks(conn, &ids).await? else {
        keep(unit, removed);
        return Ok(());
    };
    if !listed(conn, unit).await? {
        keep(unit, removed);
        return Ok(());
    }
    // Under the flow's lock: its result as it is now.
    let result = flow_record(conn, f).await?.and_then(|flow| flow.result_task);
    let mut records: std::collections::HashMap<Uuid, (TaskRecord, bool)> =
        tasks.into_iter().map(|(record, recorded)| (record.id, (record, recorded))).collect();
    let mut by_iteration: BTreeMap<i64, Vec<Uuid>> = BTreeMap::new();
    for (iteration, id) in rows {
        by_iteration.entry(iteration).or_default().push(id);
    }
    for ids in by_iteration.into_values() {
        let done = ids.iter().filter_map(|id| records.get(id)).all(|(record, recorded)| {
            record.state.is_terminal()
                && record.finished_at_ms.unwrap_or(u64::MAX) <= unit.ended_at_ms
                && !awaits(record, *recorded, now)
                && result != Some(record.id)
        });
        if !done {
            // Iterations end in order: the later ones ended later still.
            break;
        }
        for id in &ids {
            if let Some((record, _)) = records.remove(id) {
                removed.tasks.push(delete_task(conn, &record).await?);
            }
        }
        sqlx::query("DELETE FROM taskhost_flow_tasks WHERE flow_id = $1 AND task_id = ANY($2)")
            .bind(f)
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM taskhost_flow_keys WHERE flow_id = $1 AND task_id = ANY($2)")
            .bind(f)
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
    }
    unlist(conn, unit).await
}

async fn flow_record(conn: &mut PgConnection, id: Uuid) -> Result<Option<FlowRecord>, PgError> {
    let record: Option<Vec<u8>> = sqlx::query_scalar("SELECT record FROM taskhost_flows WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(record.map(|bytes| decode(&bytes)).transpose()?)
}

/// Deletes one locked task with everything kept beside it; its queue,
/// state, tenant and the bytes it kept (input, output and logs, counted as
/// the engine counts what a tenant keeps).
async fn delete_task(
    conn: &mut PgConnection,
    record: &TaskRecord,
) -> Result<(String, TaskState, String, u64), PgError> {
    let logs: i64 = sqlx::query_scalar(
        "WITH gone AS (DELETE FROM taskhost_logs WHERE task_id = $1 RETURNING octet_length(log) AS n)
         SELECT coalesce(sum(n), 0)::bigint FROM gone",
    )
    .bind(record.id)
    .fetch_one(&mut *conn)
    .await?;
    for statement in [
        "DELETE FROM taskhost_callbacks WHERE task_id = $1",
        "DELETE FROM taskhost_listed WHERE id = $1",
        "DELETE FROM taskhost_tasks WHERE id = $1",
    ] {
        sqlx::query(statement).bind(record.id).execute(&mut *conn).await?;
    }
    let bytes = record.input_len + record.output_len.unwrap_or(0) + logs.max(0) as u64;
    let tenant = crate::tenant::tenant_of(&record.plugin).to_owned();
    Ok((record.queue.clone(), record.state, tenant, bytes))
}
