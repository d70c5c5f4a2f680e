//! Retention: which ended work the store keeps, and deleting the rest.
//!
//! What ended together is deleted together, as one *unit*: a task outside
//! any flow, or a whole flow (every task with its input, output, logs and
//! callback outcome, the flow's context, keys and lists). The [`FINISHED`]
//! index lists the ended units by group and end time: a lone task under
//! its queue, a flow under its tenant's flow group ([`flow_group`]). The
//! writes that end a unit, or open it again (a retry), keep the index in
//! step in the same transaction.
//!
//! A sweep finds the units past their group's [`Retention`] with a read
//! ([`Store::expired`], off the committer) and deletes them in one write
//! ([`Store::delete_expired`]) that checks each again: a unit retried or
//! changed meanwhile stays.

use super::record::{decode, now_ms};
use super::tables::*;
use super::{FlowRecord, Store, StoreError, TaskRecord, TaskState};
use redb::{ReadableDatabase as _, ReadableTable, WriteTransaction};
use std::collections::BTreeSet;
use std::ops::Bound;

/// The name of the flow group in a tenant's namespace (no queue name
/// holds `@`, so none is read as this one).
const FLOW_GROUP: &str = "@flows";

/// The group of repeating flows' past iterations in a tenant's namespace:
/// an entry (its time, the flow's id) each time an iteration ended, so a
/// flow that repeats for ever still lets its old iterations go.
const ITERATION_GROUP: &str = "@iterations";

/// How long a task whose completion callback has no recorded outcome is
/// kept past its retention, for the delivery to end (after a restart
/// the delivery is not made again, so the wait has an end).
pub(crate) const CALLBACK_GRACE_MS: u64 = 60 * 60 * 1000;

/// How long and how many ended units a group keeps; `None` sets no bound.
/// A unit goes when either bound is passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// Keep a unit this many milliseconds after it ended.
    pub keep_for_ms: Option<u64>,
    /// Keep at most this many of the group's latest ended units.
    pub keep_count: Option<u64>,
}

impl Retention {
    /// A retention of `keep_for_ms` and `keep_count`.
    pub fn new(keep_for_ms: Option<u64>, keep_count: Option<u64>) -> Self {
        Self { keep_for_ms, keep_count }
    }

    /// Keeps everything.
    pub fn forever() -> Self {
        Self::default()
    }
}

/// The group of the flows of `tenant`.
pub(crate) fn flow_group(tenant: &str) -> String {
    crate::tenant::qualify(tenant, FLOW_GROUP)
}

/// Whether a group of the `finished` index is a tenant's flows, or its repeating
/// flows' iterations (else a queue): both follow the host's retention.
pub fn is_flow_group(group: &str) -> bool {
    matches!(crate::tenant::split(group).1, FLOW_GROUP | ITERATION_GROUP)
}

/// The group of the past iterations of `tenant`'s repeating flows.
pub(crate) fn iteration_group(tenant: &str) -> String {
    crate::tenant::qualify(tenant, ITERATION_GROUP)
}

pub(crate) fn is_iteration_group(group: &str) -> bool {
    crate::tenant::split(group).1 == ITERATION_GROUP
}

/// An ended unit past its retention, as a read found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expired {
    pub(crate) group: String,
    pub(crate) ended_at_ms: u64,
    pub(crate) id: u128,
}

/// What a deletion removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Removed {
    /// Each task deleted: its queue, state, tenant and the bytes it kept
    /// (input, output and logs).
    pub tasks: Vec<(String, TaskState, String, u64)>,
    /// Flows deleted.
    pub flows: u64,
    /// Units found expired but kept: changed meanwhile, or still waiting
    /// for a callback's outcome.
    pub kept: u64,
    /// Those units, for a sweep to pass over.
    pub(crate) kept_units: Vec<Expired>,
}

/// The tenant a flow belongs to: its root task's or first task's.
pub(crate) fn flow_tenant(
    tasks: &impl ReadableTable<u128, &'static [u8]>,
    flow_tasks: &impl ReadableTable<(u128, u128), ()>,
    flow: u128,
) -> Result<String, StoreError> {
    let first = match tasks.get(flow)? {
        Some(root) => Some(decode::<TaskRecord>(root.value())?),
        None => match flow_tasks.range((flow, 0u128)..=(flow, u128::MAX))?.next() {
            Some(entry) => tasks.get(entry?.0.value().1)?.map(|v| decode::<TaskRecord>(v.value())).transpose()?,
            None => None,
        },
    };
    Ok(first.map_or_else(|| crate::tenant::DEFAULT.to_owned(), |t| crate::tenant::tenant_of(&t.plugin).to_owned()))
}

/// The entries [`FINISHED`] should hold, from the tasks and flows.
pub(crate) fn expected_finished(
    tasks: &impl ReadableTable<u128, &'static [u8]>,
    flows: &impl ReadableTable<u128, &'static [u8]>,
    flow_tasks: &impl ReadableTable<(u128, u128), ()>,
) -> Result<BTreeSet<(String, u64, u128)>, StoreError> {
    let mut out = BTreeSet::new();
    for entry in tasks.iter()? {
        let (key, value) = entry?;
        let Ok(record) = decode::<TaskRecord>(value.value()) else { continue };
        if record.state.is_terminal() && record.is_flow_root() && flows.get(key.value())?.is_none() {
            let at = record.finished_at_ms.unwrap_or(record.created_at_ms);
            out.insert((record.queue, at, key.value()));
        }
    }
    for entry in flows.iter()? {
        let (key, value) = entry?;
        let Ok(flow) = decode::<FlowRecord>(value.value()) else { continue };
        if flow.state != super::FlowState::Running {
            let group = flow_group(&flow_tenant(tasks, flow_tasks, key.value())?);
            out.insert((group, flow.finished_at_ms.unwrap_or(flow.created_at_ms), key.value()));
        }
    }
    Ok(out)
}

/// Fills [`FINISHED`] anew from the tasks and flows (a file from before
/// it; a repaired file).
pub(crate) fn index_finished(txn: &WriteTransaction) -> Result<(), StoreError> {
    let expected = {
        let tasks = txn.open_table(TASKS)?;
        let flows = txn.open_table(FLOWS)?;
        let flow_tasks = txn.open_table(FLOW_TASKS)?;
        expected_finished(&tasks, &flows, &flow_tasks)?
    };
    let mut finished = txn.open_table(FINISHED)?;
    // Iterations' entries are not derived from the records: kept.
    finished.retain(|key, _| is_iteration_group(key.0))?;
    for (group, at, id) in &expected {
        finished.insert((group.as_str(), *at, *id), ())?;
    }
    Ok(())
}

/// Whether task `record` waits for its callback's outcome (for at most
/// [`CALLBACK_GRACE_MS`] after it ended).
fn awaits_callback(
    record: &TaskRecord,
    callbacks: &impl ReadableTable<u128, &'static [u8]>,
    now: u64,
) -> Result<bool, StoreError> {
    let ended = record.finished_at_ms.unwrap_or(record.created_at_ms);
    Ok(record.callback_url.is_some()
        && ended.saturating_add(CALLBACK_GRACE_MS) > now
        && callbacks.get(record.id.as_u128())?.is_none())
}

impl Store {
    /// Up to `limit` ended units past their group's retention (`rule`
    /// gives it) at time `now`, oldest first in each group. A lone task
    /// still waiting for its callback's outcome is passed over.
    #[cfg(test)]
    pub(crate) fn expired(
        &self,
        rule: impl Fn(&str) -> Retention,
        now: u64,
        limit: usize,
    ) -> Result<Vec<Expired>, StoreError> {
        self.expired_past(rule, now, limit, &std::collections::HashSet::new())
    }

    /// [`Store::expired`], passing over the units in `skip` (kept by an
    /// earlier deletion of the same sweep).
    pub(crate) fn expired_past(
        &self,
        rule: impl Fn(&str) -> Retention,
        now: u64,
        limit: usize,
        skip: &std::collections::HashSet<(String, u64, u128)>,
    ) -> Result<Vec<Expired>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let index = txn.open_table(FINISHED)?;
        let tasks = txn.open_table(TASKS)?;
        let callbacks = txn.open_table(CALLBACKS)?;
        let mut out = Vec::new();
        let mut next = index.first()?.map(|(key, _)| key.value().0.to_owned());
        while let Some(group) = next.take() {
            let g = group.as_str();
            let group_range = (g, 0u64, 0u128)..=(g, u64::MAX, u128::MAX);
            let retention = rule(g);
            // Units past the count, oldest first.
            let mut over = match retention.keep_count {
                Some(keep) => (index.range(group_range.clone())?.count() as u64).saturating_sub(keep),
                None => 0,
            };
            for entry in index.range(group_range)? {
                let (_, ended_at_ms, id) = entry?.0.value();
                let old = retention.keep_for_ms.is_some_and(|keep| ended_at_ms.saturating_add(keep) <= now);
                if !old && over == 0 {
                    break;
                }
                over = over.saturating_sub(1);
                if skip.contains(&(group.clone(), ended_at_ms, id)) {
                    continue;
                }
                if !is_flow_group(g)
                    && let Some(value) = tasks.get(id)?
                    && awaits_callback(&decode(value.value())?, &callbacks, now)?
                {
                    continue;
                }
                out.push(Expired { group: group.clone(), ended_at_ms, id });
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            let after = (Bound::Excluded((g, u64::MAX, u128::MAX)), Bound::Unbounded);
            next =
                index.range::<(&str, u64, u128)>(after)?.next().transpose()?.map(|(key, _)| key.value().0.to_owned());
        }
        Ok(out)
    }

    /// Deletes the units `expired` found, each only if it is still listed
    /// as it was found (so a unit retried meanwhile stays) and none of its
    /// tasks waits for its callback's outcome: in one transaction.
    pub(crate) async fn delete_expired(&self, expired: Vec<Expired>) -> Result<Removed, StoreError> {
        let out = std::sync::Arc::new(std::sync::Mutex::new(Removed::default()));
        let result = out.clone();
        self.admin(move |txn| {
            let mut removed = Removed::default();
            let now = now_ms();
            for unit in &expired {
                delete_unit(txn, unit, now, &mut removed)?;
            }
            *crate::sync::lock(&out) = removed;
            Ok(())
        })
        .await?;
        Ok(std::mem::take(&mut *crate::sync::lock(&result)))
    }
}

/// Deletes one unit if it is still listed and nothing holds it.
fn delete_unit(txn: &WriteTransaction, unit: &Expired, now: u64, removed: &mut Removed) -> Result<(), StoreError> {
    let key = (unit.group.as_str(), unit.ended_at_ms, unit.id);
    let mut finished = txn.open_table(FINISHED)?;
    if finished.get(key)?.is_none() {
        removed.kept += 1;
        removed.kept_units.push(unit.clone());
        return Ok(());
    }
    if is_iteration_group(&unit.group) {
        delete_iterations(txn, unit, now, removed)?;
        finished.remove(key)?;
        return Ok(());
    }
    let flow = is_flow_group(&unit.group);
    let ids = {
        let tasks = txn.open_table(TASKS)?;
        let mut ids = Vec::new();
        if tasks.get(unit.id)?.is_some() {
            ids.push(unit.id);
        }
        if flow {
            let flow_tasks = txn.open_table(FLOW_TASKS)?;
            for entry in flow_tasks.range((unit.id, 0u128)..=(unit.id, u128::MAX))? {
                ids.push(entry?.0.value().1);
            }
        }
        // Every task must have ended, and none may wait for a callback.
        let callbacks = txn.open_table(CALLBACKS)?;
        for id in &ids {
            let Some(value) = tasks.get(*id)? else { continue };
            let record: TaskRecord = decode(value.value())?;
            if !record.state.is_terminal() || awaits_callback(&record, &callbacks, now)? {
                removed.kept += 1;
                removed.kept_units.push(unit.clone());
                return Ok(());
            }
        }
        ids
    };
    for id in ids {
        if let Some(task) = delete_task(txn, id)? {
            removed.tasks.push(task);
        }
    }
    if flow {
        let f = unit.id;
        txn.open_table(FLOWS)?.remove(f)?;
        txn.open_table(FLOW_TASKS)?.retain_in((f, 0u128)..=(f, u128::MAX), |_, _| false)?;
        txn.open_table(FLOW_KEYS)?.retain_in((f, "")..(f.saturating_add(1), ""), |_, _| false)?;
        txn.open_table(CONTEXT)?.retain_in((f, "")..(f.saturating_add(1), ""), |_, _| false)?;
        removed.flows += 1;
    }
    finished.remove(key)?;
    Ok(())
}

/// Deletes the iterations of a repeating flow that ended by the unit's
/// time, oldest first, each whole (its tasks, their keys and list
/// entries); the flow's root task, the iteration before the current one
/// (and the current one), and the flow's result stay.
fn delete_iterations(
    txn: &WriteTransaction,
    unit: &Expired,
    now: u64,
    removed: &mut Removed,
) -> Result<(), StoreError> {
    let f = unit.id;
    let Some(flow) = txn.open_table(FLOWS)?.get(f)?.map(|v| decode::<FlowRecord>(v.value())).transpose()? else {
        return Ok(());
    };
    let keep_from = flow.iteration.saturating_sub(1);
    let mut by_iteration: std::collections::BTreeMap<u32, Vec<u128>> = std::collections::BTreeMap::new();
    for entry in txn.open_table(BY_ITERATION)?.range((f, 0u32, 0u128)..(f, keep_from, 0u128))? {
        let (flow_id, iteration, id) = entry?.0.value();
        debug_assert_eq!(flow_id, f);
        by_iteration.entry(iteration).or_default().push(id);
    }
    let result = flow.result_task.map(|r| r.as_u128());
    for ids in by_iteration.into_values() {
        let done = {
            let tasks = txn.open_table(TASKS)?;
            let callbacks = txn.open_table(CALLBACKS)?;
            let mut done = true;
            for id in &ids {
                let Some(value) = tasks.get(*id)? else { continue };
                let record: TaskRecord = decode(value.value())?;
                let ended_in_time = record.state.is_terminal()
                    && record.finished_at_ms.unwrap_or(u64::MAX) <= unit.ended_at_ms
                    && !awaits_callback(&record, &callbacks, now)?;
                if !ended_in_time || result == Some(*id) {
                    done = false;
                    break;
                }
            }
            done
        };
        if !done {
            // Iterations end in order: the later ones ended later still.
            break;
        }
        let gone: BTreeSet<u128> = ids.iter().copied().collect();
        for id in ids {
            if let Some(task) = delete_task(txn, id)? {
                removed.tasks.push(task);
            }
            txn.open_table(FLOW_TASKS)?.remove((f, id))?;
        }
        txn.open_table(FLOW_KEYS)?.retain_in((f, "")..(f.saturating_add(1), ""), |_, named| !gone.contains(&named))?;
    }
    Ok(())
}

/// Deletes one task with everything kept beside it; returns its queue,
/// state, tenant and the bytes it kept.
fn delete_task(txn: &WriteTransaction, id: u128) -> Result<Option<(String, TaskState, String, u64)>, StoreError> {
    let Some(record) = txn.open_table(TASKS)?.remove(id)?.map(|v| decode::<TaskRecord>(v.value())).transpose()? else {
        return Ok(None);
    };
    // Counted as the engine counts what a tenant keeps (recovery,
    // admission, completion), so the usage goes back to what it was.
    let mut bytes = record.input_len + record.output_len.unwrap_or(0);
    txn.open_table(INPUTS)?.remove(id)?;
    txn.open_table(OUTPUTS)?.remove(id)?;
    txn.open_table(LOGS)?.retain_in((id, 0u32)..=(id, u32::MAX), |_, log| {
        bytes += log.len() as u64;
        false
    })?;
    txn.open_table(CALLBACKS)?.remove(id)?;
    if record.is_flow_root()
        && let Some(key) = &record.idempotency_key
    {
        let mut keys = txn.open_table(IDEMPOTENCY)?;
        if keys.get(key.as_str())?.is_some_and(|named| named.value() == id) {
            keys.remove(key.as_str())?;
        }
    }
    txn.open_table(BY_STATE)?.remove((super::state_bucket(record.state), id))?;
    txn.open_table(BY_QUEUE)?.remove((record.queue.as_str(), id))?;
    txn.open_table(BY_PLUGIN)?.remove((record.plugin.as_str(), id))?;
    if !record.is_flow_root() {
        txn.open_table(BY_ITERATION)?.remove((record.flow_id.as_u128(), record.iteration, id))?;
    }
    let tenant = crate::tenant::tenant_of(&record.plugin).to_owned();
    Ok(Some((record.queue, record.state, tenant, bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::matrix::retention::{completed, ids, keep};
    use crate::store::tests::task_in;

    fn open() -> (tempfile::TempDir, std::path::PathBuf, Store) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let store = Store::open(&path, true).unwrap();
        (dir, path, store)
    }

    fn assert_consistent(path: &std::path::Path, store: Store) {
        drop(store);
        let report = crate::store::check::check(path).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[tokio::test]
    async fn a_file_from_before_the_index_gets_it_built_on_open() {
        let (_dir, path, store) = open();
        completed(&store, 1).await;
        completed(&store, 2).await;
        task_in(&store, 3, TaskState::Pending).await;
        drop(store);
        {
            // As a file written before the index: neither it nor its flag.
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(FINISHED).unwrap();
            txn.open_table(META).unwrap().remove(FINISHED_BUILT).unwrap();
            txn.commit().unwrap();
        }
        let report = crate::store::check::check(&path).unwrap();
        assert!(report.notes.iter().any(|n| n.contains("retention index")), "{:?}", report.notes);
        let store = Store::open(&path, true).unwrap();
        assert_eq!(ids(&store.expired(keep(1), now_ms(), 10).unwrap()), [1]);
        assert_consistent(&path, store);
        // A stale entry is found by `store check` and rebuilt by repair.
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(FINISHED).unwrap().insert(("q", 5u64, 3u128), ()).unwrap();
            txn.commit().unwrap();
        }
        let report = crate::store::check::check(&path).unwrap();
        assert!(report.problems.iter().any(|p| p.contains("retention-index")), "{:?}", report.problems);
        crate::store::check::repair(&path).unwrap();
        assert_consistent(&path, Store::open(&path, true).unwrap());
    }
}
