//! Offline check and repair of a store file: `taskhost store check` and
//! `taskhost store repair`, run while no server has the file open (redb's
//! lock refuses them otherwise).
//!
//! [`check`] changes nothing: it runs redb's integrity check (every page's
//! checksum) through an in-memory layer that takes redb's writes, then
//! reads every record and checks the task indexes against the task table.
//!
//! [`repair`] first copies the file to a backup beside it. A file whose
//! pages verify but whose derived tables (indexes, idempotency keys, flow
//! membership) disagree with the task table gets them rebuilt in place. A
//! file with damaged pages cannot be repaired by redb itself (with
//! quick-repair commits it refuses a damaged primary), so repair salvages:
//! it reads every table forwards and backwards, past a damaged area, into a
//! new file, rebuilds the derived tables from the tasks, and renames the
//! new file into place. What could not be read is reported, table by
//! table.

use super::backend::Overlay;
use super::open::{self, panic_message, quietly, sibling};
use super::record::decode;
use super::tables::*;
use super::{FlowRecord, IndexWrite, Indexes, PluginEntry, StoreError, TaskRecord, index_writes};
use redb::{
    Builder, Database, Key, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, Value,
    WriteTransaction,
};
use std::path::{Path, PathBuf};

/// Cache redb may use while checking or repairing: as when serving.
use super::open::CACHE_BYTES;
/// Examples listed per kind of problem.
const EXAMPLES: usize = 5;

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CheckReport {
    /// What was checked and found sound, one line each.
    pub notes: Vec<String>,
    /// What is wrong, one line each (empty: the store is healthy).
    pub problems: Vec<String>,
    /// Whether redb found damaged pages (only `repair`'s salvage helps).
    pub damaged_pages: bool,
}

impl CheckReport {
    /// Whether nothing is wrong.
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What [`repair`] did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RepairReport {
    /// The copy of the file as it was before the repair.
    pub backup: Option<PathBuf>,
    /// What was done, one line each.
    pub actions: Vec<String>,
    /// What could not be kept, one line each (empty: nothing was lost).
    pub lost: Vec<String>,
    /// A check of the file after the repair.
    pub after: CheckReport,
}

/// Checks the store file at `path` without changing it. An `Err` means the
/// check could not run (no file, in use, unreadable); what it finds wrong
/// is in the report.
pub fn check(path: &Path) -> Result<CheckReport, StoreError> {
    let mut report = CheckReport::default();
    let meta = std::fs::metadata(path).map_err(|e| StoreError::Storage(e.into()))?;
    if meta.len() == 0 {
        report.problems.push("the file is empty (0 bytes): it holds no store".into());
        return Ok(report);
    }
    let db = match open_overlay(path, true) {
        Ok(db) => db,
        Err(StoreError::Damaged { problem, .. }) => {
            report.damaged_pages = true;
            report.problems.push(format!("redb's integrity check failed: the file {problem}"));
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    report.notes.push(format!("redb: every page of {} bytes verifies", meta.len()));
    check_records(&db, &mut report)?;
    Ok(report)
}

/// Repairs the store file at `path` (see the module docs), keeping a
/// backup of it first. An `Err` means nothing was changed (but a backup
/// may have been written, named in the error's context by the caller).
pub fn repair(path: &Path) -> Result<RepairReport, StoreError> {
    let mut report = RepairReport::default();
    let meta = std::fs::metadata(path).map_err(|e| StoreError::Storage(e.into()))?;
    if meta.len() == 0 {
        let backup = backup_name(path);
        std::fs::rename(path, &backup).map_err(|e| StoreError::Storage(e.into()))?;
        open::sync_dir(path)?;
        report.actions.push(format!(
            "the file was empty and held nothing: moved it to {}; the next start creates a new store",
            backup.display()
        ));
        report.backup = Some(backup);
        return Ok(report);
    }
    // Refuses at once (before any copy) when a server has the file open.
    let verified = match open_overlay(path, true) {
        Ok(db) => Some(db),
        Err(StoreError::Damaged { .. }) => None,
        Err(e) => return Err(e),
    };
    let before = match verified {
        Some(db) => {
            let mut before = CheckReport::default();
            check_records(&db, &mut before)?;
            Some(before)
        }
        None => None,
    };
    if let Some(before) = &before
        && before.is_healthy()
    {
        report.actions.push("every page verifies and every record and index agrees: nothing to repair".into());
        report.after = before.clone();
        return Ok(report);
    }
    let backup = backup_name(path);
    copy_durably(path, &backup)?;
    report.actions.push(format!("kept a copy of the file as it was: {}", backup.display()));
    report.backup = Some(backup);
    match before {
        Some(before) => {
            for problem in &before.problems {
                report.actions.push(format!("found: {problem}"));
            }
            rebuild_in_place(path, &mut report)?;
        }
        None => salvage(path, &mut report)?,
    }
    report.after = check(path)?;
    Ok(report)
}

/// Opens `path` through an [`Overlay`] (nothing reaches the file), with
/// redb's integrity check when `verify`.
fn open_overlay(path: &Path, verify: bool) -> Result<Database, StoreError> {
    let backend = Overlay::open(path).map_err(|e| open::open_error(path, e))?;
    open::guarded(path, || {
        Builder::new().set_cache_size(CACHE_BYTES).set_check_integrity_on_open(verify).create_with_backend(backend)
    })
}

/// Problems collected per kind, with a few examples each.
#[derive(Default)]
struct Tally {
    kinds: std::collections::BTreeMap<&'static str, (u64, Vec<String>)>,
}

impl Tally {
    fn add(&mut self, kind: &'static str, example: impl FnOnce() -> String) {
        let (count, examples) = self.kinds.entry(kind).or_default();
        *count += 1;
        if examples.len() < EXAMPLES {
            examples.push(example());
        }
    }

    fn into_problems(self, problems: &mut Vec<String>) {
        for (kind, (count, examples)) in self.kinds {
            let more = if count > examples.len() as u64 { ", ..." } else { "" };
            problems.push(format!("{count} {kind} (e.g. {}{more})", examples.join(", ")));
        }
    }
}

/// Reads every record and checks the derived tables against the tasks.
fn check_records(db: &Database, report: &mut CheckReport) -> Result<(), StoreError> {
    let txn = db.begin_read()?;
    let schema = match txn.open_table(META) {
        Ok(meta) => meta.get("schema")?.map(|v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    match schema {
        None => {
            report.problems.push("no schema record: this is not a taskhost store".into());
            return Ok(());
        }
        Some(v) if (LAYOUT_SINCE..=SCHEMA_VERSION).contains(&v) => report.notes.push(format!("schema version {v}")),
        Some(v) if v < SCHEMA_VERSION => {
            report.notes.push(format!("schema version {v}: the next start migrates it to {SCHEMA_VERSION}"));
            return Ok(());
        }
        Some(v) => {
            report.problems.push(format!("schema version {v} is newer than this build reads ({SCHEMA_VERSION})"));
            return Ok(());
        }
    }
    let mut tally = Tally::default();
    let tasks = match txn.open_table(TASKS) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let Some(tasks) = tasks else {
        report.notes.push("no task table yet".into());
        return Ok(());
    };
    let inputs = open_or_none(&txn, INPUTS)?;
    let outputs = open_or_none(&txn, OUTPUTS)?;
    let keys = open_or_none(&txn, IDEMPOTENCY)?;
    let flow_keys = open_or_none(&txn, FLOW_KEYS)?;
    let flow_tasks = open_or_none(&txn, FLOW_TASKS)?;
    let by_state = open_or_none(&txn, BY_STATE)?;
    let by_queue = open_or_none(&txn, BY_QUEUE)?;
    let by_plugin = open_or_none(&txn, BY_PLUGIN)?;
    let by_iteration = open_or_none(&txn, BY_ITERATION)?;
    let mut count = 0u64;
    for entry in tasks.iter()? {
        let (key, value) = entry?;
        let id = key.value();
        let show = || uuid::Uuid::from_u128(id).to_string();
        let record: TaskRecord = match decode(value.value()) {
            Ok(r) => r,
            Err(e) => {
                tally.add("task records do not decode", || format!("{}: {e}", show()));
                continue;
            }
        };
        count += 1;
        if inputs.as_ref().is_none_or(|t| t.get(id).ok().flatten().is_none()) {
            tally.add("tasks have no input", show);
        }
        if record.output_len.is_some() && outputs.as_ref().is_none_or(|t| t.get(id).ok().flatten().is_none()) {
            tally.add("tasks lost their output", show);
        }
        for write in index_writes(&record) {
            let present = match &write {
                IndexWrite::State { bucket, id, .. } => has(&by_state, (*bucket, *id)),
                IndexWrite::Queue(queue, id) => has(&by_queue, (queue.as_str(), *id)),
                IndexWrite::Plugin(plugin, id) => has(&by_plugin, (plugin.as_str(), *id)),
                IndexWrite::Iteration(flow, iteration, id) => has(&by_iteration, (*flow, *iteration, *id)),
            };
            if !present {
                tally.add("tasks are missing from an index", show);
            }
        }
        if !record.is_flow_root() && !has(&flow_tasks, (record.flow_id.as_u128(), id)) {
            tally.add("tasks are missing from their flow's list", show);
        }
        // A flow root's key is the API's; a flow child's is its flow's.
        if let Some(k) = &record.idempotency_key {
            let named = if record.is_flow_root() {
                keys.as_ref().and_then(|t| t.get(k.as_str()).ok().flatten()).map(|v| v.value())
            } else {
                let flow = record.flow_id.as_u128();
                flow_keys.as_ref().and_then(|t| t.get((flow, k.as_str())).ok().flatten()).map(|v| v.value())
            };
            if named != Some(id) {
                tally.add("idempotency keys do not name their task", || k.clone());
            }
        }
    }
    // Every index entry names a task that matches it.
    let task = |id: u128| tasks.get(id).ok().flatten().and_then(|v| decode::<TaskRecord>(v.value()).ok());
    if let Some(index) = &by_state {
        for entry in index.iter()? {
            let (bucket, id) = entry?.0.value();
            if task(id).is_none_or(|r| super::state_bucket(r.state) != bucket) {
                tally.add("state-index entries are stale", || uuid::Uuid::from_u128(id).to_string());
            }
        }
    }
    for (index, name) in [(&by_queue, "queue"), (&by_plugin, "plugin")] {
        if let Some(index) = index {
            for entry in index.iter()? {
                let key = entry?.0;
                let (value, id) = key.value();
                let matches =
                    task(id).is_some_and(|r| if name == "queue" { r.queue == value } else { r.plugin == value });
                if !matches {
                    tally.add("queue- or plugin-index entries are stale", || uuid::Uuid::from_u128(id).to_string());
                }
            }
        }
    }
    if let Some(index) = &by_iteration {
        for entry in index.iter()? {
            let (flow, iteration, id) = entry?.0.value();
            if task(id).is_none_or(|r| r.flow_id.as_u128() != flow || r.iteration != iteration) {
                tally.add("iteration-index entries are stale", || uuid::Uuid::from_u128(id).to_string());
            }
        }
    }
    if let Some(index) = &flow_tasks {
        for entry in index.iter()? {
            let (flow, id) = entry?.0.value();
            if task(id).is_none_or(|r| r.flow_id.as_u128() != flow) {
                tally.add("flow-list entries are stale", || uuid::Uuid::from_u128(id).to_string());
            }
        }
    }
    if let Some(index) = &keys {
        for entry in index.iter()? {
            let (key, id) = entry?;
            let (key, id) = (key.value().to_owned(), id.value());
            if task(id).is_none_or(|r| !r.is_flow_root() || r.idempotency_key.as_deref() != Some(key.as_str())) {
                tally.add("idempotency keys name a missing task", || key);
            }
        }
    }
    if let Some(index) = &flow_keys {
        for entry in index.iter()? {
            let (key, id) = entry?;
            let ((flow, key), id) = ((key.value().0, key.value().1.to_owned()), id.value());
            let names = |r: &TaskRecord| r.flow_id.as_u128() == flow && r.idempotency_key.as_deref() == Some(&key);
            if task(id).is_none_or(|r| r.is_flow_root() || !names(&r)) {
                tally.add("idempotency keys name a missing task", || key);
            }
        }
    }
    // The retention index lists exactly the ended units.
    match (open_or_none(&txn, FINISHED)?, open_or_none(&txn, FLOWS)?, &flow_tasks) {
        (None, _, _) => report.notes.push("no retention index yet: the next start builds it".into()),
        (Some(finished), Some(flows), Some(flow_tasks)) => {
            let expected = super::retention::expected_finished(&tasks, &flows, flow_tasks)?;
            let mut found = std::collections::BTreeSet::new();
            for entry in finished.iter()? {
                let (key, _) = entry?;
                let (group, at, id) = key.value();
                // Iterations' entries are a schedule, not derived.
                if !super::retention::is_iteration_group(group) {
                    found.insert((group.to_owned(), at, id));
                }
            }
            for (_, _, id) in expected.symmetric_difference(&found) {
                tally.add("retention-index entries are missing or stale", || uuid::Uuid::from_u128(*id).to_string());
            }
        }
        _ => {}
    }
    report.notes.push(format!("{count} task records, their inputs, outputs and indexes"));
    let mut records = 0u64;
    if let Some(flows) = open_or_none(&txn, FLOWS)? {
        for entry in flows.iter()? {
            let (key, value) = entry?;
            records += 1;
            if let Err(e) = decode::<FlowRecord>(value.value()) {
                tally.add("flow records do not decode", || format!("{}: {e}", uuid::Uuid::from_u128(key.value())));
            }
        }
    }
    let blobs = open_or_none(&txn, BLOBS)?;
    if let Some(plugins) = open_or_none(&txn, PLUGINS)? {
        for entry in plugins.iter()? {
            let (key, value) = entry?;
            records += 1;
            let name = key.value().to_owned();
            match decode::<PluginEntry>(value.value()) {
                Ok(plugin) => {
                    for version in plugin.versions {
                        if !has(&blobs, version.digest.as_str()) {
                            tally.add("plugin versions lost their component", || format!("{name}@{}", version.version));
                        }
                    }
                }
                Err(e) => tally.add("plugin entries do not decode", || format!("{name}: {e}")),
            }
        }
    }
    if let Some(queues) = open_or_none(&txn, QUEUES)? {
        for entry in queues.iter()? {
            let (key, value) = entry?;
            records += 1;
            if let Err(e) = super::record::decode_queue(value.value()) {
                tally.add("queue settings do not decode", || format!("{}: {e}", key.value()));
            }
        }
    }
    if let Some(tokens) = open_or_none(&txn, TOKENS)? {
        for entry in tokens.iter()? {
            let (key, value) = entry?;
            records += 1;
            if let Err(e) = decode::<super::StoredToken>(value.value()) {
                tally.add("tokens do not decode", || format!("{}: {e}", key.value()));
            }
        }
    }
    if let Some(tenants) = open_or_none(&txn, TENANTS)? {
        for entry in tenants.iter()? {
            let (key, value) = entry?;
            records += 1;
            if let Err(e) = serde_json::from_slice::<super::TenantRecord>(value.value()) {
                tally.add("tenants do not decode", || format!("{}: {e}", key.value()));
            }
        }
    }
    report.notes.push(format!("{records} flow, plugin, queue, token and tenant records"));
    tally.into_problems(&mut report.problems);
    Ok(())
}

fn open_or_none<K: Key + 'static, V: Value + 'static>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<'_, K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether `table` holds `key` (a read error counts as absent).
fn has<'k, K: Key + 'static, V: Value + 'static>(
    table: &Option<redb::ReadOnlyTable<K, V>>,
    key: impl std::borrow::Borrow<K::SelfType<'k>>,
) -> bool {
    table.as_ref().is_some_and(|t| t.get(key).ok().flatten().is_some())
}

/// A name for the backup of `path` that no file has yet.
fn backup_name(path: &Path) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut candidate = sibling(path, &format!(".{stamp}.bak"));
    let mut n = 1;
    while candidate.exists() {
        n += 1;
        candidate = sibling(path, &format!(".{stamp}-{n}.bak"));
    }
    candidate
}

/// Copies `from` to `to` and makes the copy durable.
fn copy_durably(from: &Path, to: &Path) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Storage(e.into());
    std::fs::copy(from, to).map_err(io)?;
    std::fs::File::open(to).and_then(|f| f.sync_all()).map_err(io)?;
    open::sync_dir(to)
}

/// The derived tables, rebuilt from the task table.
const DERIVED: [&str; 7] = [
    "idempotency",
    "flow_tasks",
    "tasks_by_state",
    "tasks_by_queue",
    "tasks_by_plugin",
    "tasks_by_iteration",
    "finished",
];

/// Rebuilds the derived tables of a file whose pages verify.
fn rebuild_in_place(path: &Path, report: &mut RepairReport) -> Result<(), StoreError> {
    let db = match quietly(|| Builder::new().set_cache_size(CACHE_BYTES).open(path)) {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => return Err(open::open_error(path, e)),
        Err(panic) => return Err(open::damaged(path, &panic_message(&panic))),
    };
    let txn = super::commit::begin(&db)?;
    let dropped = rebuild_derived(&txn)?;
    txn.commit()?;
    report.actions.push(format!(
        "rebuilt the indexes, idempotency keys and flow lists from the task table ({})",
        DERIVED.join(", ")
    ));
    if dropped > 0 {
        report.lost.push(format!("{dropped} task records that do not decode were removed"));
    }
    Ok(())
}

/// Empties and refills the derived tables from the tasks; removes task
/// records that do not decode. Returns how many it removed.
fn rebuild_derived(txn: &WriteTransaction) -> Result<u64, StoreError> {
    // Recreated empty below.
    txn.delete_table(IDEMPOTENCY)?;
    txn.delete_table(FLOW_KEYS)?;
    txn.delete_table(FLOW_TASKS)?;
    txn.delete_table(BY_STATE)?;
    txn.delete_table(BY_QUEUE)?;
    txn.delete_table(BY_PLUGIN)?;
    txn.delete_table(BY_ITERATION)?;
    txn.delete_table(FINISHED)?;
    let mut tasks = txn.open_table(TASKS)?;
    let mut keys = txn.open_table(IDEMPOTENCY)?;
    let mut flow_keys = txn.open_table(FLOW_KEYS)?;
    let mut flow_tasks = txn.open_table(FLOW_TASKS)?;
    let mut indexes = Indexes::open(txn)?;
    let mut broken = Vec::new();
    for entry in tasks.iter()? {
        let (key, value) = entry?;
        let id = key.value();
        match decode::<TaskRecord>(value.value()) {
            Ok(record) => {
                for write in index_writes(&record) {
                    indexes.put(&write)?;
                }
                if !record.is_flow_root() {
                    flow_tasks.insert((record.flow_id.as_u128(), id), ())?;
                }
                match &record.idempotency_key {
                    Some(k) if record.is_flow_root() => drop(keys.insert(k.as_str(), id)?),
                    Some(k) => drop(flow_keys.insert((record.flow_id.as_u128(), k.as_str()), id)?),
                    None => {}
                }
            }
            Err(_) => broken.push(id),
        }
    }
    for id in &broken {
        tasks.remove(*id)?;
    }
    drop((tasks, keys, flow_keys, flow_tasks, indexes));
    super::retention::index_finished(txn)?;
    Ok(broken.len() as u64)
}

/// How much of one table a salvage kept.
struct Kept {
    copied: u64,
    expected: u64,
    /// Why reading stopped early, in either direction.
    stops: Vec<String>,
}

/// Copies every entry of `def` that can be read from `src` into `dst`:
/// forwards until a damaged area stops it, then backwards from the end
/// until it reaches the same area (or what was already copied).
fn copy_table<K: Key + 'static, V: Value + 'static>(
    src: &Database,
    dst: &WriteTransaction,
    def: TableDefinition<'_, K, V>,
) -> Result<Kept, StoreError> {
    let mut out = dst.open_table(def)?;
    let mut kept = Kept { copied: 0, expected: 0, stops: Vec::new() };
    let read = src.begin_read()?;
    let table = match read.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(kept),
        Err(e) => {
            kept.stops.push(e.to_string());
            return Ok(kept);
        }
    };
    kept.expected = table.len().unwrap_or(0);
    for backwards in [false, true] {
        let walked = quietly(|| -> Result<(), String> {
            let range = table.iter().map_err(|e| e.to_string())?;
            let mut copy = |entry: Result<(redb::AccessGuard<'_, K>, redb::AccessGuard<'_, V>), redb::StorageError>| {
                let (key, value) = entry.map_err(|e| e.to_string())?;
                let key = key.value();
                if backwards && out.get(&key).map_err(|e| e.to_string())?.is_some() {
                    return Ok(false);
                }
                out.insert(&key, value.value()).map_err(|e| e.to_string())?;
                kept.copied += 1;
                Ok::<_, String>(true)
            };
            if backwards {
                for entry in range.rev() {
                    if !copy(entry)? {
                        break;
                    }
                }
            } else {
                for entry in range {
                    copy(entry)?;
                }
            }
            Ok(())
        });
        match walked {
            Ok(Ok(())) if !backwards => return Ok(kept),
            Ok(Ok(())) => {}
            Ok(Err(e)) => kept.stops.push(e),
            Err(panic) => kept.stops.push(panic_message(&panic)),
        }
    }
    Ok(kept)
}

/// Builds a new file from what can be read of the damaged one, then
/// renames it into place.
fn salvage(path: &Path, report: &mut RepairReport) -> Result<(), StoreError> {
    let src = open_overlay(path, false)?;
    let schema = quietly(|| -> Option<u64> {
        let txn = src.begin_read().ok()?;
        let meta = txn.open_table(META).ok()?;
        meta.get("schema").ok()?.map(|v| v.value())
    })
    .ok()
    .flatten();
    let schema = match schema {
        Some(v) if v > SCHEMA_VERSION => {
            return Err(open::damaged(path, &format!("has schema version {v}, newer than this build reads")));
        }
        Some(v) => v,
        None => {
            report.actions.push(format!("the schema record cannot be read: assuming version {SCHEMA_VERSION}"));
            SCHEMA_VERSION
        }
    };
    let temporary = sibling(path, ".repairing");
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::Storage(e.into())),
    }
    let dst =
        Builder::new().set_cache_size(CACHE_BYTES).create(&temporary).map_err(|e| open::open_error(&temporary, e))?;
    let txn = super::commit::begin(&dst)?;
    txn.open_table(META)?.insert("schema", schema)?;
    let mut kept = vec![
        ("tasks", copy_table(&src, &txn, TASKS)?),
        ("inputs", copy_table(&src, &txn, INPUTS)?),
        ("outputs", copy_table(&src, &txn, OUTPUTS)?),
        ("flows", copy_table(&src, &txn, FLOWS)?),
        ("context", copy_table(&src, &txn, CONTEXT)?),
        ("plugins", copy_table(&src, &txn, PLUGINS)?),
        ("blobs", copy_table(&src, &txn, BLOBS)?),
        ("queues", copy_table(&src, &txn, QUEUES)?),
        ("cache", copy_table(&src, &txn, CACHE)?),
        ("tokens", copy_table(&src, &txn, TOKENS)?),
        ("tenants", copy_table(&src, &txn, TENANTS)?),
        ("audit", copy_table(&src, &txn, AUDIT)?),
        ("secrets", copy_table(&src, &txn, SECRETS)?),
        ("callbacks", copy_table(&src, &txn, CALLBACKS)?),
        ("logs", copy_table(&src, &txn, LOGS)?),
    ];
    if (LAYOUT_SINCE..=SCHEMA_VERSION).contains(&schema) {
        let dropped = rebuild_derived(&txn)?;
        if dropped > 0 {
            report.lost.push(format!("{dropped} task records that do not decode"));
        }
    } else {
        // An older layout: its records are migrated and indexed on the next
        // start, which does not rebuild these two.
        kept.push(("idempotency", copy_table(&src, &txn, IDEMPOTENCY)?));
        kept.push(("flow_tasks", copy_table(&src, &txn, FLOW_TASKS)?));
    }
    drop(src);
    txn.commit()?;
    dst.close().map_err(|e| StoreError::Storage(e.into()))?;
    for (name, k) in kept {
        let stops =
            if k.stops.is_empty() { String::new() } else { format!(" (reading stopped at: {})", k.stops.join("; ")) };
        report.actions.push(format!("{name}: kept {} of {} entries{stops}", k.copied, k.expected));
        if k.copied < k.expected {
            report.lost.push(format!("{name}: {} entries could not be read", k.expected - k.copied));
        } else if !k.stops.is_empty() {
            report.lost.push(format!("{name}: the table could not be read to its end{stops}"));
        }
    }
    std::fs::File::open(&temporary).and_then(|f| f.sync_all()).map_err(|e| StoreError::Storage(e.into()))?;
    std::fs::rename(&temporary, path).map_err(|e| StoreError::Storage(e.into()))?;
    open::sync_dir(path)?;
    report.actions.push(format!("wrote what could be read to a new file and renamed it to {}", path.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::record;
    use crate::store::{Store, TaskState};

    /// A store with `n` tasks whose inputs carry a findable marker.
    async fn store_with_tasks(path: &Path, n: u128) {
        let store = Store::open(path, true).unwrap();
        for i in 0..n {
            let mut r = record(i, Some(&format!("key-{i}")));
            r.queue = format!("q{}", i % 3);
            store.submit(r, marker(i).repeat(40).into_bytes()).await.unwrap();
        }
    }

    fn marker(i: u128) -> String {
        format!("<input {i:05}>")
    }

    #[tokio::test]
    async fn check_changes_nothing_and_repair_rebuilds_stale_indexes_keeping_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        store_with_tasks(&path, 20).await;
        assert!(check(&path).unwrap().is_healthy());
        {
            // Damage the derived tables behind the store's back.
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(BY_QUEUE).unwrap().remove(("q1", 1u128)).unwrap();
            txn.open_table(IDEMPOTENCY).unwrap().insert("ghost", 999u128).unwrap();
            txn.commit().unwrap();
        }
        let damaged = std::fs::read(&path).unwrap();
        let report = check(&path).unwrap();
        assert!(!report.damaged_pages, "{report:?}");
        let problems = report.problems.join("\n");
        assert!(problems.contains("1 tasks are missing from an index"), "{problems}");
        assert!(problems.contains("1 idempotency keys name a missing task (e.g. ghost)"), "{problems}");
        assert_eq!(std::fs::read(&path).unwrap(), damaged, "check writes nothing");

        let repaired = repair(&path).unwrap();
        assert!(repaired.lost.is_empty(), "{repaired:?}");
        assert!(repaired.after.is_healthy(), "{repaired:?}");
        let backup = repaired.backup.unwrap();
        assert_eq!(std::fs::read(&backup).unwrap(), damaged, "the backup is the file as it was");
        let store = Store::open(&path, true).unwrap();
        let q1 = crate::store::TaskQuery { queue: Some("q1".into()), ..Default::default() };
        assert_eq!(store.list(&q1, None, 100).unwrap().0.len(), 7);
        assert_eq!(store.task_by_key("ghost").unwrap(), None);
    }

    #[tokio::test]
    async fn a_zeroed_page_is_found_refused_on_open_and_salvaged_by_repair() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        store_with_tasks(&path, 300).await;
        // Zero the live page holding task 150's input (earlier copies of it
        // are free pages that nothing reads).
        let original = std::fs::read(&path).unwrap();
        let wanted = marker(150);
        let mut pages: Vec<usize> = original
            .windows(13)
            .enumerate()
            .filter(|(_, w)| *w == wanted.as_bytes())
            .map(|(at, _)| at / 4096)
            .collect();
        pages.dedup();
        let bytes = pages
            .into_iter()
            .map(|page| {
                let mut bytes = original.clone();
                bytes[page * 4096..(page + 1) * 4096].fill(0);
                std::fs::write(&path, &bytes).unwrap();
                bytes
            })
            .find(|_| check(&path).unwrap().damaged_pages)
            .expect("one copy of the page is live");

        let refused = Store::open(&path, true).unwrap_err();
        assert!(matches!(&refused, StoreError::Damaged { path: p, .. } if p == &path), "{refused}");
        assert!(refused.to_string().contains("taskhost store repair"), "{refused}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "a refused open writes nothing");

        let report = check(&path).unwrap();
        assert!(report.damaged_pages && !report.is_healthy(), "{report:?}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "check writes nothing");

        let repaired = repair(&path).unwrap();
        assert_eq!(std::fs::read(repaired.backup.as_ref().unwrap()).unwrap(), bytes);
        let lost = repaired.lost.join("\n");
        assert!(lost.starts_with("inputs: "), "only inputs were lost: {lost}");
        let store = Store::open(&path, true).unwrap();
        assert_eq!(store.task_count().unwrap(), 300, "every task record was kept");
        assert_eq!(store.input(uuid::Uuid::from_u128(150)).unwrap(), None);
        assert_eq!(store.input(uuid::Uuid::from_u128(0)).unwrap(), Some(marker(0).repeat(40).into_bytes()));
        assert_eq!(store.input(uuid::Uuid::from_u128(299)).unwrap(), Some(marker(299).repeat(40).into_bytes()));
        assert_eq!(store.task_by_key("key-7").unwrap(), Some(uuid::Uuid::from_u128(7)), "keys rebuilt");
        let pending = crate::store::TaskQuery { state: Some(TaskState::Pending), ..Default::default() };
        assert_eq!(store.list(&pending, None, 1000).unwrap().0.len(), 300, "indexes rebuilt");
        drop(store);
        let after = check(&path).unwrap();
        assert!(!after.damaged_pages, "{after:?}");
        assert!(after.problems.iter().all(|p| p.contains("tasks have no input")), "{after:?}");
    }

    #[test]
    fn an_empty_file_is_reported_and_moved_aside_by_repair() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        std::fs::write(&path, b"").unwrap();
        assert!(!check(&path).unwrap().is_healthy());
        let repaired = repair(&path).unwrap();
        assert!(!path.exists() && repaired.backup.unwrap().exists());
    }
}
