//! A PostgreSQL transaction as the store's checked writes see it
//! ([`Txn`]), so a submission, a transition with its flow effects and a
//! flow edit do on PostgreSQL exactly what they do on redb.
//!
//! - **Reads lock what they decide on**, for as long as the transaction
//!   lasts, so hosts writing at once wait for each other instead of
//!   deciding on what another is changing: a task's row (`FOR UPDATE`),
//!   and, through transaction-scoped advisory locks, an idempotency key
//!   (also one not taken yet, so two hosts cannot both create a task for
//!   it) and a flow (also one with no record yet).
//!   Reads that decide nothing about a row's own write (a flow's tenant,
//!   its root's state, the task a key already names) take no row lock
//!   ([`Txn::peek_task`]).
//! - **Flows before rows.** A transaction that writes tasks takes their
//!   flows' locks before their rows' ([`lock_flows_of`]: a task's flow
//!   never changes, so it is read without a lock), so one that ends a
//!   task and unblocks the tasks waiting for it (`joins.rs`) under the
//!   flow's lock never waits for a transaction that holds a waiting
//!   task's row and waits for that flow.
//! - **Writes are kept in memory**, the last write of each row winning,
//!   and reads see them; [`PgTxn::flush`] makes them all in a few
//!   statements, one per table and kind of write, before the commit. A
//!   batch of operations keeps each one's writes apart until it is
//!   settled ([`PgTxn::keep`], [`PgTxn::discard`]), so one refused after
//!   its first write leaves nothing behind.
//! - redb's secondary indexes (`Redo::Index`) have no rows here: the
//!   columns beside each record and PostgreSQL's indexes serve instead.

use super::flow_counts::CountChanges;
use super::joins::NewWaits;
use super::listings::ListedRows;
use crate::store::apply::{ContextBytes, Txn};
use crate::store::record::decode;
use crate::store::{FlowRecord, Redo, StoreError, TaskRecord, TaskState};
use sqlx::postgres::PgConnection;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use uuid::Uuid;

/// A task row's writes in one transaction.
#[derive(Default)]
struct TaskWrites {
    /// The record as last written (and its encoding), if written.
    record: Option<(TaskRecord, Vec<u8>)>,
    /// Its input: written once, at submission, so the row is new.
    input: Option<Vec<u8>>,
    output: Option<Vec<u8>>,
}

/// Writes kept in memory, the last of each row winning.
#[derive(Default)]
struct Writes {
    /// Task rows written, by id.
    tasks: BTreeMap<Uuid, TaskWrites>,
    keys: HashMap<String, Uuid>,
    flow_keys: HashMap<(Uuid, String), Uuid>,
    flows: HashMap<Uuid, Vec<u8>>,
    flow_tasks: BTreeSet<(Uuid, Uuid)>,
    /// `None` deletes.
    context: BTreeMap<(Uuid, String), Option<Vec<u8>>>,
    logs: BTreeMap<(Uuid, u32), Vec<u8>>,
    /// `true` adds the entry, `false` removes it.
    finished: BTreeMap<(String, u64, Uuid), bool>,
    cleared_callbacks: BTreeSet<Uuid>,
    /// Tasks whose lease ends (their attempt's outcome is written, or they
    /// were taken back or moved out of running).
    released: BTreeSet<Uuid>,
}

impl Writes {
    fn put(&mut self, write: Redo) -> Result<(), StoreError> {
        match write {
            Redo::Task(id, bytes) => {
                let record: TaskRecord = decode(&bytes)?;
                self.tasks.entry(Uuid::from_u128(id)).or_default().record = Some((record, bytes));
            }
            Redo::Input(id, input) => self.tasks.entry(Uuid::from_u128(id)).or_default().input = Some(input),
            Redo::Output(id, output) => self.tasks.entry(Uuid::from_u128(id)).or_default().output = Some(output),
            // The column beside the record holds it.
            Redo::Key(key, id) => {
                self.keys.insert(key, Uuid::from_u128(id));
            }
            Redo::FlowKey(flow, key, id) => {
                self.flow_keys.insert((Uuid::from_u128(flow), key), Uuid::from_u128(id));
            }
            Redo::Flow(id, bytes) => drop(self.flows.insert(Uuid::from_u128(id), bytes)),
            Redo::FlowTask(flow, id) => drop(self.flow_tasks.insert((Uuid::from_u128(flow), Uuid::from_u128(id)))),
            Redo::Context(flow, key, value) => drop(self.context.insert((Uuid::from_u128(flow), key), value)),
            Redo::Log(id, attempt, log) => drop(self.logs.insert((Uuid::from_u128(id), attempt), log)),
            Redo::Index(_) => {}
            Redo::Finished(group, at, id, add) => drop(self.finished.insert((group, at, Uuid::from_u128(id)), add)),
            Redo::ClearCallback(id) => drop(self.cleared_callbacks.insert(Uuid::from_u128(id))),
        }
        Ok(())
    }

    /// Takes in `later`'s writes, made after these.
    fn absorb(&mut self, later: Writes) {
        for (id, writes) in later.tasks {
            let row = self.tasks.entry(id).or_default();
            if writes.record.is_some() {
                row.record = writes.record;
            }
            if writes.input.is_some() {
                row.input = writes.input;
            }
            if writes.output.is_some() {
                row.output = writes.output;
            }
        }
        self.keys.extend(later.keys);
        self.flow_keys.extend(later.flow_keys);
        self.flows.extend(later.flows);
        self.flow_tasks.extend(later.flow_tasks);
        self.context.extend(later.context);
        self.logs.extend(later.logs);
        self.finished.extend(later.finished);
        self.cleared_callbacks.extend(later.cleared_callbacks);
        self.released.extend(later.released);
    }
}

/// One open transaction's reads and kept writes.
pub(crate) struct PgTxn<'c> {
    conn: &'c mut PgConnection,
    /// Records read under a lock the transaction holds.
    locked: HashMap<Uuid, TaskRecord>,
    /// Records read without one (see [`Txn::peek_task`]).
    peeked: HashMap<Uuid, TaskRecord>,
    /// Flows read under their lock, as stored (decoded by each read, so a
    /// record that cannot be decoded fails only the operation reading it):
    /// `None` has no record.
    flows_read: HashMap<Uuid, Option<Vec<u8>>>,
    /// Flows' keys read under their lock (held until the transaction
    /// ends, so what was read stays so but for this transaction's own
    /// writes, which are looked at first): the task each names, if any.
    flow_keys_read: HashMap<(Uuid, String), Option<Uuid>>,
    /// Flows whose locks the transaction took before it was opened as this
    /// ([`lock_flows_of`]): not asked for again.
    held_flows: HashSet<Uuid>,
    /// The writes of the operations settled so far.
    kept: Writes,
    /// The writes of the operation under way.
    op: Writes,
    /// The hosts were told to look for work as the transaction began
    /// ([`PgStore::begin_waking`](super::PgStore::begin_waking)), so its
    /// flush does not tell them again.
    woken: bool,
}

/// Leases a claim takes on the tasks it starts, granted in the statement
/// that writes their rows ([`PgTxn::flush_granting`]).
pub(crate) struct Grant<'a> {
    pub(crate) host: &'a str,
    /// How long each lease lasts from the statement on (ms).
    pub(crate) lease_ms: i64,
    pub(crate) tasks: &'a [Uuid],
}

impl<'c> PgTxn<'c> {
    /// Reads and writes through `conn`, which is inside a transaction.
    pub(crate) fn new(conn: &'c mut PgConnection) -> Self {
        Self {
            conn,
            locked: HashMap::new(),
            peeked: HashMap::new(),
            flows_read: HashMap::new(),
            flow_keys_read: HashMap::new(),
            held_flows: HashSet::new(),
            kept: Writes::default(),
            op: Writes::default(),
            woken: false,
        }
    }

    /// The hosts were told to look for work as the transaction began.
    pub(crate) fn woken(&mut self) {
        self.woken = true;
    }

    /// Keeps the writes of the operation just applied, for the commit.
    pub(crate) fn keep(&mut self) {
        let op = std::mem::take(&mut self.op);
        self.kept.absorb(op);
    }

    /// Forgets the writes of the operation just applied (it was refused).
    pub(crate) fn discard(&mut self) {
        self.op = Writes::default();
    }

    /// Ends task `id`'s lease, if it has one, with the operation under way.
    pub(crate) fn release_lease(&mut self, id: Uuid) {
        self.op.released.insert(id);
    }

    /// A task's record as written in this transaction, if it was.
    fn written(&self, id: Uuid) -> Option<&TaskRecord> {
        [&self.op, &self.kept].into_iter().find_map(|w| w.tasks.get(&id)?.record.as_ref().map(|(r, _)| r))
    }

    /// A flow's record as written in this transaction, if it was.
    fn written_flow(&self, id: Uuid) -> Option<&Vec<u8>> {
        self.op.flows.get(&id).or_else(|| self.kept.flows.get(&id))
    }

    /// Records the caller read with their rows locked (`FOR UPDATE`) in
    /// this transaction, so reading them again costs no query.
    pub(crate) fn locked(&mut self, records: impl IntoIterator<Item = TaskRecord>) {
        self.locked.extend(records.into_iter().map(|r| (r.id, r)));
    }

    /// Holds the transaction-scoped advisory lock named `name` until the
    /// transaction ends (waiting for a transaction that holds it).
    async fn lock_name(&mut self, name: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(name)
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }

    /// Takes the locks of the idempotency keys of `tasks` (of the API's
    /// namespace for a flow's root, of its flow's for a task a flow grew)
    /// at once (see [`lock_names`]), so a batch's submissions wait for
    /// another's sharing keys with them instead of deadlocking.
    pub(crate) async fn lock_keys<'r>(
        &mut self,
        tasks: impl IntoIterator<Item = &'r TaskRecord>,
    ) -> Result<(), StoreError> {
        let names = tasks
            .into_iter()
            .filter_map(|r| {
                let key = r.idempotency_key.as_deref()?;
                Some(if r.is_flow_root() { key_lock(key) } else { flow_key_lock(r.flow_id, key) })
            })
            .collect();
        self.lock_names(names).await
    }

    /// Flows `ids` are locked already ([`lock_flows_of`], before this was
    /// opened on the transaction).
    pub(crate) fn flows_held(&mut self, ids: impl IntoIterator<Item = Uuid>) {
        self.held_flows.extend(ids);
    }

    /// Takes the locks of flows `ids` at once (see
    /// [`lock_names`]; those held already are not asked for again) and
    /// reads their records, so the transitions of a batch read none of
    /// them one by one.
    pub(crate) async fn lock_flows(&mut self, ids: impl IntoIterator<Item = Uuid>) -> Result<(), StoreError> {
        let mut ids: Vec<Uuid> = ids
            .into_iter()
            .filter(|id| self.written_flow(*id).is_none() && !self.flows_read.contains_key(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(());
        }
        let names = ids.iter().filter(|id| !self.held_flows.contains(id)).map(|id| flow_lock(*id)).collect();
        self.lock_names(names).await?;
        let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as("SELECT id, record FROM taskhost_flows WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *self.conn)
            .await?;
        let mut found: HashMap<Uuid, Vec<u8>> = rows.into_iter().collect();
        for id in ids {
            self.flows_read.insert(id, found.remove(&id));
        }
        Ok(())
    }

    async fn lock_names(&mut self, names: Vec<String>) -> Result<(), StoreError> {
        lock_names(self.conn, names).await
    }

    /// How `w`'s task and flow writes change flows' counts of unended
    /// tasks, from each task's state as this transaction read it under its
    /// lock (one read without it may be stale: its flow is counted again).
    fn count_changes(&self, w: &Writes) -> CountChanges {
        let mut counts = CountChanges::default();
        for (id, writes) in &w.tasks {
            let Some((record, _)) = &writes.record else { continue };
            let unended = !record.state.is_terminal();
            if writes.input.is_some() {
                // A new flow root's flow has no record unless this
                // transaction writes one (recounted then, as it is when
                // written later): no count to move. Ids are new, so none
                // was stored before.
                if !record.is_flow_root() {
                    counts.task(record.flow_id, None, unended);
                }
            } else if let Some(before) = self.locked.get(id) {
                counts.task(record.flow_id, Some(!before.state.is_terminal()), unended);
            } else {
                counts.unknown(record.flow_id);
            }
        }
        for id in w.flows.keys() {
            if !matches!(self.flows_read.get(id), Some(Some(_))) {
                counts.created(*id);
            }
        }
        // A flow read under its lock with no record, and given none here,
        // has no count (only flows with a record are counted): nothing to
        // move, and no statement to send.
        counts.uncounted(|flow| matches!(self.flows_read.get(flow), Some(None)) && !w.flows.contains_key(flow));
        counts
    }

    /// Makes every kept write, a statement per table and kind.
    pub(crate) async fn flush(self) -> Result<(), StoreError> {
        self.write(None).await.map(drop)
    }

    /// Makes every kept write, as [`PgTxn::flush`] does, and grants
    /// `grant`'s leases in the statement that updates the task rows: each
    /// task's fencing token. Each of its tasks must be among the rows
    /// updated (stored before this transaction and written in it; a task
    /// created here is inserted instead, and fails the flush).
    pub(crate) async fn flush_granting(self, grant: Grant<'_>) -> Result<Vec<(Uuid, i64)>, StoreError> {
        self.write(Some(grant)).await
    }

    async fn write(mut self, grant: Option<Grant<'_>>) -> Result<Vec<(Uuid, i64)>, StoreError> {
        self.keep();
        let mut w = std::mem::take(&mut self.kept);
        let counts = self.count_changes(&w);
        let conn = &mut *self.conn;
        // Tasks started again from failed wait again for what they join.
        let again: HashSet<Uuid> = w
            .tasks
            .iter()
            .filter(|(id, writes)| {
                let pending = writes.record.as_ref().is_some_and(|(r, _)| r.state == TaskState::Pending);
                pending && self.locked.get(id).is_some_and(|r| r.state == TaskState::Failed)
            })
            .map(|(id, _)| *id)
            .collect();
        let (startable, granted) = flush_tasks(conn, std::mem::take(&mut w.tasks), &again, grant).await?;
        if startable && !self.woken {
            // Delivered to every listening host when (and only if) the
            // transaction commits.
            sqlx::query("SELECT pg_notify($1, '')").bind(super::wakeups::CHANNEL).execute(&mut *conn).await?;
        }
        if !w.flows.is_empty() {
            let (ids, records): (Vec<Uuid>, Vec<Vec<u8>>) = w.flows.drain().unzip();
            // A flow's write (its end, its next iteration, a cancel)
            // clears its note of a count at zero (`flow_counts.rs`); this
            // transaction's own counts, written next, may note it again.
            sqlx::query(
                "WITH written AS (
                     INSERT INTO taskhost_flows (id, record) SELECT * FROM unnest($1::uuid[], $2::bytea[])
                     ON CONFLICT (id) DO UPDATE SET record = excluded.record
                     RETURNING id
                 )
                 DELETE FROM taskhost_flow_ends WHERE flow_id IN (SELECT id FROM written)",
            )
            .bind(&ids)
            .bind(&records)
            .execute(&mut *conn)
            .await?;
        }
        counts.write(&mut *conn).await?;
        if !w.flow_keys.is_empty() {
            let mut columns = (Vec::new(), Vec::new(), Vec::new());
            for ((flow, key), task) in w.flow_keys.drain() {
                columns.0.push(flow);
                columns.1.push(key);
                columns.2.push(task);
            }
            sqlx::query(
                "INSERT INTO taskhost_flow_keys (flow_id, key, task_id)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[])",
            )
            .bind(&columns.0)
            .bind(&columns.1)
            .bind(&columns.2)
            .execute(&mut *conn)
            .await?;
        }
        if !w.flow_tasks.is_empty() {
            let (flows, tasks): (Vec<Uuid>, Vec<Uuid>) = std::mem::take(&mut w.flow_tasks).into_iter().unzip();
            sqlx::query(
                "INSERT INTO taskhost_flow_tasks (flow_id, task_id) SELECT * FROM unnest($1::uuid[], $2::uuid[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(&flows)
            .bind(&tasks)
            .execute(&mut *conn)
            .await?;
        }
        let (mut put, mut gone) = ((Vec::new(), Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for ((flow, key), value) in std::mem::take(&mut w.context) {
            match value {
                Some(value) => {
                    put.0.push(flow);
                    put.1.push(key);
                    put.2.push(value);
                }
                None => {
                    gone.0.push(flow);
                    gone.1.push(key);
                }
            }
        }
        if !gone.0.is_empty() {
            sqlx::query(
                "DELETE FROM taskhost_context AS c USING unnest($1::uuid[], $2::text[]) AS g (flow_id, key)
                 WHERE c.flow_id = g.flow_id AND c.key = g.key",
            )
            .bind(&gone.0)
            .bind(&gone.1)
            .execute(&mut *conn)
            .await?;
        }
        if !put.0.is_empty() {
            sqlx::query(
                "INSERT INTO taskhost_context (flow_id, key, value)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[])
                 ON CONFLICT (flow_id, key) DO UPDATE SET value = excluded.value",
            )
            .bind(&put.0)
            .bind(&put.1)
            .bind(&put.2)
            .execute(&mut *conn)
            .await?;
        }
        if !w.logs.is_empty() {
            let mut columns = (Vec::new(), Vec::new(), Vec::new());
            for ((task, attempt), log) in std::mem::take(&mut w.logs) {
                columns.0.push(task);
                columns.1.push(i64::from(attempt));
                columns.2.push(log);
            }
            sqlx::query(
                "INSERT INTO taskhost_logs (task_id, attempt, log)
                 SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bytea[])
                 ON CONFLICT (task_id, attempt) DO UPDATE SET log = excluded.log",
            )
            .bind(&columns.0)
            .bind(&columns.1)
            .bind(&columns.2)
            .execute(&mut *conn)
            .await?;
        }
        let (mut added, mut removed) = ((Vec::new(), Vec::new(), Vec::new()), (Vec::new(), Vec::new(), Vec::new()));
        for ((group, at, unit), add) in std::mem::take(&mut w.finished) {
            let to = if add { &mut added } else { &mut removed };
            to.0.push(group);
            to.1.push(super::to_i64(at));
            to.2.push(unit);
        }
        if !removed.0.is_empty() {
            sqlx::query(
                "DELETE FROM taskhost_finished AS f USING unnest($1::text[], $2::bigint[], $3::uuid[]) AS g (grp, at_ms, unit)
                 WHERE f.grp = g.grp AND f.at_ms = g.at_ms AND f.unit = g.unit",
            )
            .bind(&removed.0)
            .bind(&removed.1)
            .bind(&removed.2)
            .execute(&mut *conn)
            .await?;
        }
        if !added.0.is_empty() {
            sqlx::query(
                "INSERT INTO taskhost_finished (grp, at_ms, unit)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::uuid[]) ON CONFLICT DO NOTHING",
            )
            .bind(&added.0)
            .bind(&added.1)
            .bind(&added.2)
            .execute(&mut *conn)
            .await?;
        }
        if !w.released.is_empty() {
            let ids: Vec<Uuid> = std::mem::take(&mut w.released).into_iter().collect();
            // Locked in task order first (see `PgStore::renew`).
            sqlx::query(
                "DELETE FROM taskhost_leases WHERE task_id IN (
                     SELECT task_id FROM taskhost_leases WHERE task_id = ANY($1) ORDER BY task_id FOR UPDATE
                 )",
            )
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
        }
        if !w.cleared_callbacks.is_empty() {
            let ids: Vec<Uuid> = std::mem::take(&mut w.cleared_callbacks).into_iter().collect();
            sqlx::query("DELETE FROM taskhost_callbacks WHERE task_id = ANY($1)")
                .bind(&ids)
                .execute(&mut *conn)
                .await?;
        }
        Ok(granted)
    }
}

/// Binds [`UPDATE`]'s parameters to `query` (a `Query` or a `QueryAs`).
macro_rules! bind_changed {
    ($query:expr, $changed:expr) => {
        $query
            .bind(&$changed.ids)
            .bind(&$changed.states)
            .bind(&$changed.versions)
            .bind(&$changed.due)
            .bind(&$changed.records)
            .bind(&$changed.outputs)
    };
}

/// Updates the changed task rows: their record, the columns queried
/// beside it, and their output (kept when not written). `$1`-`$6`.
const UPDATE: &str = "UPDATE taskhost_tasks AS t
     SET state = c.state, version = c.version, due_at_ms = c.due, record = c.record,
         output = coalesce(c.output, t.output)
     FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::bytea[], $6::bytea[])
       AS c (id, state, version, due, record, output)
     WHERE t.id = c.id";

/// Inserts the new task rows and updates the others (record, the columns
/// queried beside it, output), and keeps joins (`joins.rs`): waits of the
/// new tasks and of those in `again` (started again from failed), and
/// the waits the tasks that ended release. Says whether any of them may
/// be claimed now or later (pending or retrying, or unblocked), and the
/// leases `grant` took, in the statement that updates the rows.
async fn flush_tasks(
    conn: &mut PgConnection,
    tasks: BTreeMap<Uuid, TaskWrites>,
    again: &HashSet<Uuid>,
    grant: Option<Grant<'_>>,
) -> Result<(bool, Vec<(Uuid, i64)>), StoreError> {
    let mut new = NewRows::default();
    let mut changed = ChangedRows::default();
    for (id, writes) in tasks {
        match (writes.record, writes.input) {
            (Some((record, encoded)), Some(input)) => new.push(&record, encoded, input, writes.output),
            (Some((record, encoded)), None) => {
                if again.contains(&id) {
                    new.waits.push(&record);
                }
                changed.push(&record, encoded, writes.output)
            }
            (None, _) => {
                return Err(StoreError::Refused(format!(
                    "task {id}: an input or output was written without its record"
                )));
            }
        }
    }
    if !new.ids.is_empty() {
        // With what listings select by (see migration 7), written once.
        static INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "WITH tasks AS (
                     INSERT INTO taskhost_tasks (id, state, version, queue, priority, due_at_ms, idempotency_key, record,
                                                 input, output)
                     SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::smallint[], $6::bigint[],
                                          $7::text[], $8::bytea[], $9::bytea[], $10::bytea[])
                 )
                 {}",
                ListedRows::insert(11)
            )
        });
        let insert = sqlx::query(&INSERT)
            .bind(&new.ids)
            .bind(&new.states)
            .bind(&new.versions)
            .bind(&new.queues)
            .bind(&new.priorities)
            .bind(&new.due)
            .bind(&new.keys)
            .bind(&new.records)
            .bind(&new.inputs)
            .bind(&new.outputs);
        new.listed.bind(insert).execute(&mut *conn).await?;
    }
    let mut granted = Vec::new();
    if let Some(grant) = grant.filter(|g| !g.tasks.is_empty()) {
        // A claim: the rows it starts, and their leases, in one statement
        // (the lease's row refers to the task's).
        static GRANTING: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "WITH changed AS ({UPDATE} RETURNING t.id)
                 INSERT INTO taskhost_leases (task_id, host, token, expires_at)
                 SELECT id, $7, nextval('taskhost_fencing_tokens'), clock_timestamp() + $8 * interval '1 millisecond'
                 FROM changed WHERE id = ANY($9::uuid[])
                 RETURNING task_id, token"
            )
        });
        granted = bind_changed!(sqlx::query_as(&GRANTING), changed)
            .bind(grant.host)
            .bind(grant.lease_ms)
            .bind(grant.tasks)
            .fetch_all(&mut *conn)
            .await?;
        if granted.len() != grant.tasks.len() {
            return Err(StoreError::Corrupt(format!(
                "{} of the {} tasks a claim starts were not updated with it, so got no lease",
                grant.tasks.len() - granted.len(),
                grant.tasks.len()
            )));
        }
    } else if !changed.ids.is_empty() {
        bind_changed!(sqlx::query(UPDATE), changed).execute(&mut *conn).await?;
    }
    // Joins, once every row is as this transaction leaves it: ends first
    // (a task written with a dependency ending here does not wait for it).
    let unblocked = super::joins::release(&mut *conn, &changed.ended).await?;
    new.waits.write(&mut *conn).await?;
    let startable = |state: &&str| matches!(*state, "pending" | "retrying");
    Ok((unblocked > 0 || new.states.iter().any(startable) || changed.states.iter().any(startable), granted))
}

/// The columns of new task rows, for one `INSERT … SELECT FROM unnest`.
#[derive(Default)]
struct NewRows {
    ids: Vec<Uuid>,
    states: Vec<&'static str>,
    versions: Vec<i64>,
    queues: Vec<String>,
    priorities: Vec<i16>,
    due: Vec<i64>,
    keys: Vec<Option<String>>,
    records: Vec<Vec<u8>>,
    inputs: Vec<Vec<u8>>,
    outputs: Vec<Option<Vec<u8>>>,
    listed: ListedRows,
    waits: NewWaits,
}

impl NewRows {
    fn push(&mut self, record: &TaskRecord, encoded: Vec<u8>, input: Vec<u8>, output: Option<Vec<u8>>) {
        self.ids.push(record.id);
        self.states.push(record.state.as_str());
        self.versions.push(super::to_i64(record.version));
        self.queues.push(record.queue.clone());
        self.priorities.push(i16::from(record.priority));
        self.due.push(super::to_i64(record.next_run_at_ms.unwrap_or(0)));
        // The API's namespace: a flow's root. A task a flow grew keeps
        // its key in `taskhost_flow_keys`.
        self.keys.push(record.idempotency_key.clone().filter(|_| record.is_flow_root()));
        self.records.push(encoded);
        self.inputs.push(input);
        self.outputs.push(output);
        self.listed.push(record);
        self.waits.push(record);
    }
}

/// The columns of changed task rows, for one `UPDATE … FROM unnest`.
#[derive(Default)]
struct ChangedRows {
    ids: Vec<Uuid>,
    states: Vec<&'static str>,
    versions: Vec<i64>,
    due: Vec<i64>,
    records: Vec<Vec<u8>>,
    outputs: Vec<Option<Vec<u8>>>,
    /// The tasks that ended (what waited for them may start).
    ended: Vec<Uuid>,
}

impl ChangedRows {
    fn push(&mut self, record: &TaskRecord, encoded: Vec<u8>, output: Option<Vec<u8>>) {
        self.ids.push(record.id);
        self.states.push(record.state.as_str());
        self.versions.push(super::to_i64(record.version));
        self.due.push(super::to_i64(record.next_run_at_ms.unwrap_or(0)));
        self.records.push(encoded);
        self.outputs.push(output);
        if record.state.is_terminal() {
            self.ended.push(record.id);
        }
    }
}

/// Takes the transaction-scoped advisory locks named `names` in one
/// statement, in one order on every host, so two transactions sharing some
/// wait for each other instead of deadlocking.
pub(super) async fn lock_names(conn: &mut PgConnection, mut names: Vec<String>) -> Result<(), StoreError> {
    names.sort_unstable();
    names.dedup();
    if !names.is_empty() {
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended(name, 0))
             FROM (SELECT name FROM unnest($1::text[]) AS name ORDER BY name) AS sorted",
        )
        .bind(&names)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Takes the locks of the flows of tasks `tasks` (from what never
/// changes of them, read without a lock) and of flows `more`, in one
/// statement ([`lock_names`]): a transaction takes them before it locks
/// any task's row. The flows it locked (for [`PgTxn::flows_held`]).
pub(super) async fn lock_flows_of(
    conn: &mut PgConnection,
    tasks: &[Uuid],
    more: impl IntoIterator<Item = Uuid>,
) -> Result<Vec<Uuid>, StoreError> {
    let mut flows: Vec<Uuid> = if tasks.is_empty() {
        Vec::new()
    } else {
        sqlx::query_scalar("SELECT DISTINCT flow_id FROM taskhost_listed WHERE id = ANY($1)")
            .bind(tasks)
            .fetch_all(&mut *conn)
            .await?
    };
    flows.extend(more);
    lock_names(conn, flows.iter().map(|id| flow_lock(*id)).collect()).await?;
    Ok(flows)
}

/// The advisory lock's name of an idempotency key of the API's namespace.
fn key_lock(key: &str) -> String {
    format!("taskhost key {key}")
}

/// The advisory lock's name of a key of a flow's own namespace.
fn flow_key_lock(flow: Uuid, key: &str) -> String {
    format!("taskhost flow key {flow} {key}")
}

/// The advisory lock's name of a flow.
pub(super) fn flow_lock(id: Uuid) -> String {
    format!("taskhost flow {id}")
}

impl Txn for PgTxn<'_> {
    async fn task(&mut self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        if let Some(record) = self.written(id).or_else(|| self.locked.get(&id)) {
            return Ok(Some(record.clone()));
        }
        let row: Option<Vec<u8>> = sqlx::query_scalar("SELECT record FROM taskhost_tasks WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *self.conn)
            .await?;
        let Some(bytes) = row else { return Ok(None) };
        let record: TaskRecord = decode(&bytes)?;
        self.locked.insert(id, record.clone());
        Ok(Some(record))
    }

    async fn peek_task(&mut self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        if let Some(record) = self.written(id).or_else(|| self.locked.get(&id)).or_else(|| self.peeked.get(&id)) {
            return Ok(Some(record.clone()));
        }
        let row: Option<Vec<u8>> = sqlx::query_scalar("SELECT record FROM taskhost_tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.conn)
            .await?;
        let Some(bytes) = row else { return Ok(None) };
        let record: TaskRecord = decode(&bytes)?;
        self.peeked.insert(id, record.clone());
        Ok(Some(record))
    }

    async fn keyed(&mut self, key: &str) -> Result<Option<Uuid>, StoreError> {
        if let Some(id) = self.op.keys.get(key).or_else(|| self.kept.keys.get(key)) {
            return Ok(Some(*id));
        }
        self.lock_name(&key_lock(key)).await?;
        Ok(sqlx::query_scalar("SELECT id FROM taskhost_tasks WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&mut *self.conn)
            .await?)
    }

    async fn flow_keyed(&mut self, flow: Uuid, key: &str) -> Result<Option<Uuid>, StoreError> {
        let at = (flow, key.to_owned());
        if let Some(id) = self.op.flow_keys.get(&at).or_else(|| self.kept.flow_keys.get(&at)) {
            return Ok(Some(*id));
        }
        // Read once: a commit's check of its flow's bounds and its
        // children's submissions both ask.
        if let Some(read) = self.flow_keys_read.get(&at) {
            return Ok(*read);
        }
        self.lock_name(&flow_key_lock(flow, key)).await?;
        let read = sqlx::query_scalar("SELECT task_id FROM taskhost_flow_keys WHERE flow_id = $1 AND key = $2")
            .bind(flow)
            .bind(key)
            .fetch_optional(&mut *self.conn)
            .await?;
        self.flow_keys_read.insert(at, read);
        Ok(read)
    }

    async fn flow(&mut self, id: Uuid) -> Result<Option<FlowRecord>, StoreError> {
        if let Some(bytes) = self.written_flow(id) {
            return decode(bytes).map(Some);
        }
        if let Some(row) = self.flows_read.get(&id) {
            return row.as_deref().map(decode).transpose();
        }
        if !self.held_flows.contains(&id) {
            self.lock_name(&flow_lock(id)).await?;
        }
        let row: Option<Vec<u8>> = sqlx::query_scalar("SELECT record FROM taskhost_flows WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.conn)
            .await?;
        let flow = row.as_deref().map(decode).transpose();
        self.flows_read.insert(id, row);
        flow
    }

    async fn flow_tenant(&mut self, flow: Uuid) -> Result<String, StoreError> {
        let first = match self.peek_task(flow).await? {
            Some(root) => Some(root),
            None => {
                let range = (flow, Uuid::nil())..=(flow, Uuid::max());
                let written =
                    [&self.op, &self.kept].into_iter().filter_map(|w| w.flow_tasks.range(range.clone()).next());
                let written: Option<Uuid> = written.map(|(_, t)| *t).min();
                let stored: Option<Uuid> = sqlx::query_scalar(
                    "SELECT task_id FROM taskhost_flow_tasks WHERE flow_id = $1 ORDER BY task_id LIMIT 1",
                )
                .bind(flow)
                .fetch_optional(&mut *self.conn)
                .await?;
                match written.into_iter().chain(stored).min() {
                    Some(task) => self.peek_task(task).await?,
                    None => None,
                }
            }
        };
        Ok(first.map_or_else(|| crate::tenant::DEFAULT.to_owned(), |t| crate::tenant::tenant_of(&t.plugin).to_owned()))
    }

    async fn context_bytes(&mut self, flow: Uuid, keys: &BTreeSet<String>) -> Result<ContextBytes, StoreError> {
        // This transaction's writes of the flow's context (the operation
        // under way's last), in place of the stored rows.
        let mut written: BTreeMap<&str, u64> = BTreeMap::new();
        for writes in [&self.kept, &self.op] {
            let of_flow = writes.context.range((flow, String::new())..).take_while(|((f, _), _)| *f == flow);
            for ((_, key), value) in of_flow {
                written.insert(key, value.as_ref().map_or(0, |v| (key.len() + v.len()) as u64));
            }
        }
        let asked: Vec<&str> = keys.iter().map(String::as_str).collect();
        let replaced: Vec<&str> = written.keys().copied().collect();
        let (these, others): (i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(octet_length(key) + octet_length(value)) FILTER (WHERE key = ANY($2)), 0)::bigint,
                    coalesce(sum(octet_length(key) + octet_length(value)) FILTER (WHERE key <> ALL($2)), 0)::bigint
             FROM taskhost_context WHERE flow_id = $1 AND key <> ALL($3)",
        )
        .bind(flow)
        .bind(&asked)
        .bind(&replaced)
        .fetch_one(&mut *self.conn)
        .await?;
        let mut bytes = ContextBytes { these: these.max(0) as u64, others: others.max(0) as u64 };
        for (key, size) in written {
            bytes.add(keys.contains(key), size);
        }
        Ok(bytes)
    }

    fn write(&mut self, write: Redo) -> Result<(), StoreError> {
        self.op.put(write)
    }
}
