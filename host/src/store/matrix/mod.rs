//! The store's tests that hold for both backends, each run on a redb file
//! and on a PostgreSQL database (a throwaway cluster, `tests/postgres`):
//! the transition table and expected versions, idempotency keys in their
//! two namespaces, flow effects committed only with a completion, a
//! cancelled flow, and a model-based run with a reopen; the store's other
//! tables in `catalog.rs`, listings in `listings.rs`, retention in
//! `retention.rs`. Both backends
//! apply changes through the same checked writes (`apply.rs`); these tests
//! hold each to what the other does. Tests of what only one backend has
//! (redb's files, migrations and write faults; PostgreSQL's leases) stay
//! beside it.

use super::postgres::{CommitConfig, PgCommitter, PgStore};
use super::tests::{child_of, record, task_in};
use super::*;
use std::collections::{BTreeSet, HashMap};

/// What the tests ask of a store, answered by either backend.
pub(crate) trait Backend {
    async fn submit(&self, record: TaskRecord, input: Vec<u8>) -> Result<Submitted, StoreError>;
    async fn apply(&self, change: Change) -> Result<Applied, StoreError>;
    async fn flow_change(
        &self,
        id: Uuid,
        edit: impl FnOnce(Option<FlowRecord>) -> Result<FlowUpdate, StoreError> + Send + 'static,
    ) -> Result<(FlowRecord, Vec<TaskRecord>), StoreError>;
    async fn get(&self, id: Uuid) -> Option<TaskRecord>;
    async fn input(&self, id: Uuid) -> Option<Vec<u8>>;
    async fn flow(&self, id: Uuid) -> Option<FlowRecord>;
    async fn flow_tasks(&self, flow: Uuid) -> Vec<TaskRecord>;
    async fn context_get(&self, flow: Uuid, key: &str) -> Option<Vec<u8>>;
    async fn context_keys(&self, flow: Uuid, prefix: &str) -> Vec<String>;
    async fn child_by_key(&self, flow: Uuid, key: &str) -> Option<Uuid>;
    async fn output(&self, id: Uuid) -> Option<Vec<u8>>;
    async fn attempt_log(&self, id: Uuid, attempt: u32) -> Option<crate::sandbox::AttemptLog>;
    /// The ended units of retention: (group, unit), without their end
    /// times (which differ from run to run).
    async fn finished(&self) -> BTreeSet<(String, Uuid)>;
    /// Every task.
    async fn all(&self) -> Vec<TaskRecord>;
    /// The tasks in `state`, as a listing by state finds them (redb's
    /// state index, PostgreSQL's state column).
    async fn in_state(&self, state: TaskState) -> BTreeSet<Uuid>;

    async fn transition(&self, change: Change) -> Result<TaskRecord, StoreError> {
        self.apply(change).await.map(|applied| applied.record)
    }
}

impl Backend for Store {
    async fn submit(&self, record: TaskRecord, input: Vec<u8>) -> Result<Submitted, StoreError> {
        Store::submit(self, record, input).await
    }
    async fn apply(&self, change: Change) -> Result<Applied, StoreError> {
        Store::apply(self, change).await
    }
    async fn flow_change(
        &self,
        id: Uuid,
        edit: impl FnOnce(Option<FlowRecord>) -> Result<FlowUpdate, StoreError> + Send + 'static,
    ) -> Result<(FlowRecord, Vec<TaskRecord>), StoreError> {
        Store::flow_change(self, id, edit).await
    }
    async fn get(&self, id: Uuid) -> Option<TaskRecord> {
        Store::get(self, id).unwrap()
    }
    async fn input(&self, id: Uuid) -> Option<Vec<u8>> {
        Store::input(self, id).unwrap()
    }
    async fn flow(&self, id: Uuid) -> Option<FlowRecord> {
        Store::flow(self, id).unwrap()
    }
    async fn flow_tasks(&self, flow: Uuid) -> Vec<TaskRecord> {
        Store::flow_tasks(self, flow).unwrap()
    }
    async fn context_get(&self, flow: Uuid, key: &str) -> Option<Vec<u8>> {
        Store::context_get(self, flow, key).unwrap()
    }
    async fn context_keys(&self, flow: Uuid, prefix: &str) -> Vec<String> {
        Store::context_keys(self, flow, prefix).unwrap()
    }
    async fn child_by_key(&self, flow: Uuid, key: &str) -> Option<Uuid> {
        Store::child_by_key(self, flow, key).unwrap()
    }
    async fn output(&self, id: Uuid) -> Option<Vec<u8>> {
        Store::output(self, id).unwrap()
    }
    async fn attempt_log(&self, id: Uuid, attempt: u32) -> Option<crate::sandbox::AttemptLog> {
        Store::attempt_log(self, id, attempt).unwrap()
    }
    async fn finished(&self) -> BTreeSet<(String, Uuid)> {
        let db = self.db().unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(FINISHED).unwrap();
        table
            .iter()
            .unwrap()
            .map(|entry| {
                let key = entry.unwrap().0;
                let (group, _, unit) = key.value();
                (group.to_owned(), Uuid::from_u128(unit))
            })
            .collect()
    }
    async fn all(&self) -> Vec<TaskRecord> {
        let mut all = Vec::new();
        self.scan(None, |record| {
            all.push(record);
            true
        })
        .unwrap();
        all
    }
    async fn in_state(&self, state: TaskState) -> BTreeSet<Uuid> {
        let query = TaskQuery { state: Some(state), ..TaskQuery::default() };
        let mut listing = Listing { limit: 500, ..Listing::default() };
        let mut out = BTreeSet::new();
        loop {
            let page = self.list_page(&query, &listing).unwrap();
            let Some(last) = page.tasks.last() else { return out };
            listing.after = Some(last.id);
            out.extend(page.tasks.iter().map(|t| t.id));
        }
    }
}

impl Backend for PgStore {
    async fn submit(&self, record: TaskRecord, input: Vec<u8>) -> Result<Submitted, StoreError> {
        PgStore::submit(self, record, input).await.map_err(StoreError::from)
    }
    async fn apply(&self, change: Change) -> Result<Applied, StoreError> {
        PgStore::transition(self, change).await.map_err(StoreError::from)
    }
    async fn flow_change(
        &self,
        id: Uuid,
        edit: impl FnOnce(Option<FlowRecord>) -> Result<FlowUpdate, StoreError> + Send + 'static,
    ) -> Result<(FlowRecord, Vec<TaskRecord>), StoreError> {
        PgStore::flow_change(self, id, edit).await.map_err(StoreError::from)
    }
    async fn get(&self, id: Uuid) -> Option<TaskRecord> {
        PgStore::get(self, id).await.unwrap()
    }
    async fn input(&self, id: Uuid) -> Option<Vec<u8>> {
        PgStore::input(self, id).await.unwrap()
    }
    async fn flow(&self, id: Uuid) -> Option<FlowRecord> {
        PgStore::flow(self, id).await.unwrap()
    }
    async fn flow_tasks(&self, flow: Uuid) -> Vec<TaskRecord> {
        PgStore::flow_tasks(self, flow).await.unwrap()
    }
    async fn context_get(&self, flow: Uuid, key: &str) -> Option<Vec<u8>> {
        PgStore::context_get(self, flow, key).await.unwrap()
    }
    async fn context_keys(&self, flow: Uuid, prefix: &str) -> Vec<String> {
        PgStore::context_keys(self, flow, prefix).await.unwrap()
    }
    async fn child_by_key(&self, flow: Uuid, key: &str) -> Option<Uuid> {
        PgStore::child_by_key(self, flow, key).await.unwrap()
    }
    async fn output(&self, id: Uuid) -> Option<Vec<u8>> {
        PgStore::output(self, id).await.unwrap()
    }
    async fn attempt_log(&self, id: Uuid, attempt: u32) -> Option<crate::sandbox::AttemptLog> {
        PgStore::attempt_log(self, id, attempt).await.unwrap()
    }
    async fn finished(&self) -> BTreeSet<(String, Uuid)> {
        let rows: Vec<(String, Uuid)> =
            sqlx::query_as("SELECT grp, unit FROM taskhost_finished").fetch_all(self.pool()).await.unwrap();
        rows.into_iter().collect()
    }
    async fn all(&self) -> Vec<TaskRecord> {
        let rows: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT record FROM taskhost_tasks ORDER BY id").fetch_all(self.pool()).await.unwrap();
        rows.iter().map(|bytes| decode_record(bytes).unwrap()).collect()
    }
    async fn in_state(&self, state: TaskState) -> BTreeSet<Uuid> {
        let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM taskhost_tasks WHERE state = $1")
            .bind(state.as_str())
            .fetch_all(self.pool())
            .await
            .unwrap();
        ids.into_iter().collect()
    }
}

/// A store of either kind, opened again from what it wrote (redb: the
/// file, reopened; PostgreSQL: a new connection to the database).
trait Reopen: Backend + Sized {
    async fn reopen(self) -> Self;
}

impl Reopen for Store {
    async fn reopen(self) -> Self {
        let path = self.path().to_owned();
        drop(self);
        Store::open(&path, true).unwrap()
    }
}

impl Reopen for PgStore {
    async fn reopen(self) -> Self {
        let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(self.pool()).await.unwrap();
        drop(self);
        PgStore::connect(&taskhost_test_postgres::cluster().url(&name), 4).await.unwrap()
    }
}

/// A PostgreSQL store written through its group committer, read directly.
/// The tests await each operation, so each is a batch of one: batches of
/// many are tested in `postgres/database_tests.rs`.
struct Grouped {
    store: PgStore,
    committer: PgCommitter,
}

impl Grouped {
    fn new(store: PgStore) -> Self {
        let committer = store.committer(CommitConfig { queue: 64, batch: 8, workers: 2, fence: None });
        Self { store, committer }
    }
}

impl Backend for Grouped {
    async fn submit(&self, record: TaskRecord, input: Vec<u8>) -> Result<Submitted, StoreError> {
        self.committer.submit(record, input).await.map_err(StoreError::from)
    }
    async fn apply(&self, change: Change) -> Result<Applied, StoreError> {
        self.committer.transition(change).await.map_err(StoreError::from)
    }
    async fn flow_change(
        &self,
        id: Uuid,
        edit: impl FnOnce(Option<FlowRecord>) -> Result<FlowUpdate, StoreError> + Send + 'static,
    ) -> Result<(FlowRecord, Vec<TaskRecord>), StoreError> {
        self.committer.flow_change(id, edit).await.map_err(StoreError::from)
    }
    async fn get(&self, id: Uuid) -> Option<TaskRecord> {
        Backend::get(&self.store, id).await
    }
    async fn input(&self, id: Uuid) -> Option<Vec<u8>> {
        Backend::input(&self.store, id).await
    }
    async fn flow(&self, id: Uuid) -> Option<FlowRecord> {
        Backend::flow(&self.store, id).await
    }
    async fn flow_tasks(&self, flow: Uuid) -> Vec<TaskRecord> {
        Backend::flow_tasks(&self.store, flow).await
    }
    async fn context_get(&self, flow: Uuid, key: &str) -> Option<Vec<u8>> {
        Backend::context_get(&self.store, flow, key).await
    }
    async fn context_keys(&self, flow: Uuid, prefix: &str) -> Vec<String> {
        Backend::context_keys(&self.store, flow, prefix).await
    }
    async fn child_by_key(&self, flow: Uuid, key: &str) -> Option<Uuid> {
        Backend::child_by_key(&self.store, flow, key).await
    }
    async fn output(&self, id: Uuid) -> Option<Vec<u8>> {
        Backend::output(&self.store, id).await
    }
    async fn attempt_log(&self, id: Uuid, attempt: u32) -> Option<crate::sandbox::AttemptLog> {
        Backend::attempt_log(&self.store, id, attempt).await
    }
    async fn finished(&self) -> BTreeSet<(String, Uuid)> {
        self.store.finished().await
    }
    async fn all(&self) -> Vec<TaskRecord> {
        self.store.all().await
    }
    async fn in_state(&self, state: TaskState) -> BTreeSet<Uuid> {
        self.store.in_state(state).await
    }
}

impl Reopen for Grouped {
    async fn reopen(self) -> Self {
        Grouped::new(self.store.reopen().await)
    }
}

/// Runs the test body `$body` (an async fn taking a store) on a new redb
/// file and on a new PostgreSQL database; after `grouped:`, also on a
/// PostgreSQL database written through the group committer.
macro_rules! on_both {
    (grouped: $($name:ident => $body:path;)*) => {$(
        on_both!(@tests $name => $body;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_grouped() {
                let url = taskhost_test_postgres::cluster().database(concat!("matrix_grouped_", stringify!($name)));
                $body(Grouped::new(PgStore::connect(&url, 4).await.unwrap())).await;
            }
        );
    )*};
    ($($name:ident => $body:path;)*) => {$(
        on_both!(@tests $name => $body;);
    )*};
    (@tests $name:ident => $body:path; $($more:item)*) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redb() {
                let dir = tempfile::tempdir().unwrap();
                $body(Store::open(&dir.path().join("t.redb"), true).unwrap()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let url = taskhost_test_postgres::cluster().database(concat!("matrix_", stringify!($name)));
                $body(PgStore::connect(&url, 4).await.unwrap()).await;
            }

            $($more)*
        }
    };
}

mod catalog;
mod listings;
pub(super) mod retention;

on_both! {
    grouped:
    children_and_context_commit_only_with_a_completion => children_and_context;
    effects_past_their_flows_bounds_are_refused_and_write_nothing => flow_bounds;
    a_cancelled_flow_takes_no_more_children => cancelled_flow;
    every_transition_is_checked_against_the_table => transition_table;
    a_stale_version_is_refused_and_changes_nothing => stale_version;
    an_idempotency_key_returns_the_first_task => idempotency;
    api_keys_and_flow_keys_live_in_separate_namespaces => key_namespaces;
}

/// The model run on each backend (and on PostgreSQL through the group
/// committer), each checked against the model; then each PostgreSQL run
/// compared with redb's for what the model does not track: every record
/// (but its times), output, transcript and retention entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_match_a_model_across_a_reopen_and_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let redb = model(Store::open(&dir.path().join("t.redb"), true).unwrap()).await;
    let url = taskhost_test_postgres::cluster().database("matrix_model");
    let postgres = model(PgStore::connect(&url, 4).await.unwrap()).await;
    same_as_redb(&redb, &postgres).await;
    let url = taskhost_test_postgres::cluster().database("matrix_model_grouped");
    let grouped = model(Grouped::new(PgStore::connect(&url, 4).await.unwrap())).await;
    same_as_redb(&redb, &grouped).await;
}

/// Checks that `other` holds what `redb` does, but for times.
async fn same_as_redb(redb: &Store, other: &impl Backend) {
    let timeless = |mut r: TaskRecord| {
        r.created_at_ms = 0;
        r.finished_at_ms = r.finished_at_ms.map(|_| 0);
        r.history.iter_mut().for_each(|t| t.at_ms = 0);
        r
    };
    let (a, b) = (redb.all().await, other.all().await);
    assert_eq!(a.len(), b.len());
    let b: HashMap<Uuid, TaskRecord> = b.into_iter().map(|r| (r.id, timeless(r))).collect();
    let mut outputs = 0;
    for record in a {
        let id = record.id;
        assert_eq!(Some(&timeless(record)), b.get(&id), "task {id}");
        let output = Backend::output(redb, id).await;
        assert_eq!(output, other.output(id).await, "the output of {id}");
        outputs += usize::from(output.is_some());
        for attempt in 0..=3 {
            let (a, b) = (Backend::attempt_log(redb, id, attempt).await, other.attempt_log(id, attempt).await);
            assert_eq!(a, b, "the transcript of {id}'s attempt {attempt}");
        }
    }
    assert!(outputs > 0, "the run stored outputs");
    let finished = redb.finished().await;
    assert!(!finished.is_empty(), "the run ended units of retention");
    assert_eq!(finished, other.finished().await);
}

async fn children_and_context(store: impl Backend) {
    let effects = |children: Vec<(TaskRecord, Vec<u8>)>| Effects {
        flow_id: Uuid::from_u128(1),
        children,
        context: vec![("k".into(), Some(b"v".to_vec()))],
        stop_repeating: false,
        bounds: None,
    };
    // A retry drops what the attempt held; `transition` ignores effects on
    // anything but a completion.
    let root = task_in(&store, 1, TaskState::Running).await;
    let retry = Change::new(root.id, TaskState::Retrying, "flaky").effects(effects(vec![child_of(1, 10, None)]));
    let applied = store.apply(retry).await.unwrap();
    assert!(applied.created.is_empty());
    assert!(store.get(Uuid::from_u128(10)).await.is_none());
    assert!(store.flow(root.id).await.is_none());
    assert_eq!(store.context_get(root.id, "k").await, None);
    // The completion commits children (a repeated key only once), the
    // context write and the flow record, in one transaction.
    store.transition(Change::new(root.id, TaskState::Running, "again")).await.unwrap();
    let children = vec![child_of(1, 11, Some("a")), child_of(1, 12, None), child_of(1, 13, Some("a"))];
    let done = Change::new(root.id, TaskState::Completed, "done").effects(effects(children));
    let applied = store.apply(done).await.unwrap();
    let created: Vec<u128> = applied.created.iter().map(|c| c.id.as_u128()).collect();
    assert_eq!(created, [11, 12]);
    assert_eq!(store.context_get(root.id, "k").await.as_deref(), Some(&b"v"[..]));
    assert_eq!(store.flow(root.id).await.unwrap().tasks, 3);
    let members: Vec<u128> = store.flow_tasks(root.id).await.iter().map(|t| t.id.as_u128()).collect();
    assert_eq!(members, [1, 11, 12]);
    assert_eq!(store.input(Uuid::from_u128(12)).await.unwrap(), b"input 12");
}

async fn flow_bounds(store: impl Backend) {
    let flow = Uuid::from_u128(1);
    let bounds = |tasks, context_bytes| Some(FlowBounds { tasks, context_bytes });
    let effects =
        |children, context, bounds| Effects { flow_id: flow, children, context, bounds, ..Effects::default() };
    let set = |key: &str, value: &str| (key.to_owned(), Some(value.as_bytes().to_vec()));
    let complete = |id: Uuid, effects| Change::new(id, TaskState::Completed, "done").effects(effects);
    let running = |id: u128| Change::new(Uuid::from_u128(id), TaskState::Running, "run");
    // The root and two children: 3 tasks, at the bound.
    let root = task_in(&store, 1, TaskState::Running).await;
    let grow = effects(vec![child_of(1, 11, None), child_of(1, 12, Some("a"))], Vec::new(), bounds(3, 10));
    assert_eq!(store.apply(complete(root.id, grow)).await.unwrap().created.len(), 2);
    // One more is refused whole: no child, no context write, still running.
    let child = store.transition(running(11)).await.unwrap();
    let past = effects(vec![child_of(1, 13, None)], vec![set("k", "v")], bounds(3, 10));
    let refused = store.apply(complete(child.id, past)).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::OverFlowLimit { limit: FlowLimit::Tasks, total: 4, bound: 3, .. }),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("to 4 tasks, over its limit of 3"), "{refused}");
    assert_eq!(store.get(child.id).await.unwrap(), child, "nothing of it was written");
    assert!(store.get(Uuid::from_u128(13)).await.is_none());
    assert_eq!(store.flow(flow).await.unwrap().tasks, 3);
    assert_eq!(store.context_get(flow, "k").await, None);
    // A key seen before (stored, or earlier in the same effects) creates
    // nothing, so it counts nothing; context up to the bound is kept
    // (keys plus values: 3 + 6 bytes).
    let keyed = vec![child_of(1, 14, Some("a")), child_of(1, 15, Some("b")), child_of(1, 16, Some("b"))];
    let again = effects(keyed, vec![set("k", "first"), set("k", "v1"), set("key2", "v2")], bounds(4, 10));
    let applied = store.apply(complete(child.id, again)).await.unwrap();
    assert_eq!(applied.created.iter().map(|c| c.id.as_u128()).collect::<Vec<_>>(), [15]);
    assert_eq!(store.flow(flow).await.unwrap().tasks, 4);
    // Context past its bound is refused; a write that shrinks a flow
    // already past a lowered bound is not; without bounds nothing is
    // checked (one host reserves exactly).
    let twelve = store.transition(running(12)).await.unwrap();
    let past = effects(Vec::new(), vec![set("k2", "vvv")], bounds(4, 10));
    let refused = store.apply(complete(twelve.id, past)).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::OverFlowLimit { limit: FlowLimit::ContextBytes, total: 14, bound: 10, .. }),
        "{refused:?}"
    );
    assert_eq!(store.context_get(flow, "k2").await, None);
    let shrink = effects(Vec::new(), vec![set("key2", "v"), ("k".into(), None)], bounds(4, 3));
    store.apply(complete(twelve.id, shrink)).await.unwrap();
    assert_eq!(store.context_keys(flow, "").await, ["key2"]);
    let fifteen = store.transition(running(15)).await.unwrap();
    let unchecked = effects(vec![child_of(1, 17, None)], vec![set("big", "0123456789")], None);
    store.apply(complete(fifteen.id, unchecked)).await.unwrap();
    assert_eq!(store.flow(flow).await.unwrap().tasks, 5);
}

async fn cancelled_flow(store: impl Backend) {
    let root = task_in(&store, 1, TaskState::Running).await;
    let cancel = |stored: Option<FlowRecord>| {
        assert!(stored.is_none());
        let flow = FlowRecord {
            state: FlowState::Cancelled,
            finished_at_ms: Some(1),
            ..FlowRecord::new(Uuid::from_u128(1), 0)
        };
        Ok(FlowUpdate { flow, tasks: Vec::new() })
    };
    store.flow_change(root.id, cancel).await.unwrap();
    let effects = Effects { flow_id: root.id, children: vec![child_of(1, 20, None)], ..Effects::default() };
    let applied = store.apply(Change::new(root.id, TaskState::Completed, "done").effects(effects)).await.unwrap();
    assert!(!applied.effects_applied);
    assert_eq!(applied.record.state, TaskState::Completed);
    assert!(store.get(Uuid::from_u128(20)).await.is_none());
}

async fn transition_table(store: impl Backend) {
    let mut n = 0;
    for from in TaskState::ALL {
        for to in TaskState::ALL {
            n += 1;
            let rec = task_in(&store, n, from).await;
            let result = store.transition(Change::new(rec.id, to, "probe")).await;
            if machine::allowed(from, to) {
                let done = result.unwrap_or_else(|e| panic!("{from} -> {to} refused: {e}"));
                assert_eq!((done.state, done.version), (to, rec.version + 1));
                assert_eq!(done.history.last().unwrap().from, Some(from));
            } else {
                match result {
                    Err(StoreError::IllegalTransition { from: f, to: t, .. }) => {
                        assert_eq!((f, t), (from, to))
                    }
                    other => panic!("{from} -> {to} should be refused, got {other:?}"),
                }
                // Nothing was written.
                assert_eq!(store.get(rec.id).await.unwrap(), rec);
            }
        }
    }
}

async fn stale_version(store: impl Backend) {
    let rec = task_in(&store, 1, TaskState::Pending).await;
    let started = store.transition(Change::new(rec.id, TaskState::Running, "start").expect_version(1)).await.unwrap();
    let stale = store.transition(Change::new(rec.id, TaskState::Completed, "late").expect_version(1)).await;
    assert!(matches!(stale, Err(StoreError::VersionMismatch { expected: 1, found: 2, .. })), "{stale:?}");
    assert_eq!(store.get(rec.id).await.unwrap(), started);
    let missing = store.transition(Change::new(Uuid::from_u128(999), TaskState::Running, "x")).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");
}

async fn idempotency(store: impl Backend) {
    let first = store.submit(record(1, Some("order-7")), b"a".to_vec()).await.unwrap();
    let again = store.submit(record(2, Some("order-7")), b"b".to_vec()).await.unwrap();
    assert!(first.created && !again.created);
    assert_eq!(again.record.id, Uuid::from_u128(1));
    assert!(store.get(Uuid::from_u128(2)).await.is_none());
    assert_eq!(store.input(Uuid::from_u128(1)).await.unwrap(), b"a");
    assert_eq!(store.all().await.len(), 1);
}

/// A client's key and a flow's key for a child are apart, even when the
/// client spells its key as the engine spells a child's.
async fn key_namespaces(store: impl Backend) {
    let key = format!("flow:{}:step-1", Uuid::from_u128(1));
    let client = store.submit(record(5, Some(&key)), Vec::new()).await.unwrap();
    assert!(client.created);
    assert_eq!(store.child_by_key(Uuid::from_u128(1), &key).await, None, "the client claimed no child's key");
    // The flow's child with that key is created, and found by its flow only.
    let root = task_in(&store, 1, TaskState::Running).await;
    let effects = Effects { flow_id: root.id, children: vec![child_of(1, 10, Some(&key))], ..Effects::default() };
    let applied = store.apply(Change::new(root.id, TaskState::Completed, "done").effects(effects)).await.unwrap();
    assert_eq!(applied.created.len(), 1);
    assert_eq!(store.child_by_key(Uuid::from_u128(1), &key).await, Some(Uuid::from_u128(10)));
    assert_eq!(store.child_by_key(Uuid::from_u128(2), &key).await, None);
    // The client's key still names the client's task.
    let again = store.submit(record(6, Some(&key)), Vec::new()).await.unwrap();
    assert_eq!((again.created, again.record.id), (false, Uuid::from_u128(5)));
}

/// Random submissions (some keyed), transitions (some stale, some
/// illegal) and completions with children and context writes, checked
/// against a model as they go and, after a reopen, against what the
/// store holds.
async fn model<S: Reopen>(store: S) -> S {
    let mut model: HashMap<u128, (TaskState, u64)> = HashMap::new();
    // Task → its flow; flow → its context and its member tasks.
    let mut flow_of: HashMap<u128, u128> = HashMap::new();
    let mut context: HashMap<u128, HashMap<String, Vec<u8>>> = HashMap::new();
    let mut members: HashMap<u128, Vec<u128>> = HashMap::new();
    let mut next_child = 1_000_000u128;
    let mut rng = fastrand::Rng::with_seed(7);
    for step in 0..3000u128 {
        if model.is_empty() || rng.u8(0..4) == 0 {
            let key = rng.bool().then(|| format!("k{}", rng.u8(0..50)));
            let submitted = store.submit(record(step, key.as_deref()), step.to_le_bytes().to_vec()).await.unwrap();
            let id = submitted.record.id.as_u128();
            model.entry(id).or_insert((TaskState::Pending, 1));
            flow_of.entry(id).or_insert(id);
            continue;
        }
        // Sorted: the map's own order differs from run to run, and the
        // run must be the same every time for its seed.
        let mut ids: Vec<u128> = model.keys().copied().collect();
        ids.sort_unstable();
        let id = ids[rng.usize(0..ids.len())];
        let to = TaskState::ALL[rng.usize(0..TaskState::ALL.len())];
        let (state, version) = model[&id];
        let stale = rng.u8(0..10) == 0;
        let expect = if stale { version + 1 } else { version };
        let mut change = Change::new(Uuid::from_u128(id), to, "model").expect_version(expect);
        let flow = flow_of[&id];
        let mut children = Vec::new();
        let key = format!("k{}", rng.u8(0..5));
        if rng.u8(0..3) == 0 {
            for _ in 0..rng.usize(0..3) {
                next_child += 1;
                children.push(child_of(flow, next_child, None));
            }
            let context = vec![(key.clone(), Some(step.to_le_bytes().to_vec()))];
            change = change.effects(Effects {
                flow_id: Uuid::from_u128(flow),
                children: children.clone(),
                context,
                stop_repeating: false,
                bounds: None,
            });
        }
        if to == TaskState::Completed {
            change = change.output(step.to_le_bytes().to_vec());
        }
        if to.is_terminal() || to == TaskState::Retrying {
            let dropped = crate::sandbox::Dropped { lines: 1, bytes: step as u64, after_seq: 0 };
            change = change.log(1, &crate::sandbox::AttemptLog { lines: Vec::new(), dropped: Some(dropped) });
        }
        let had_effects = change.effects.is_some();
        let result = store.apply(change).await;
        let legal = machine::allowed(state, to) && !stale;
        assert_eq!(result.is_ok(), legal, "{state} -> {to} (stale: {stale}): {:?}", result.map(|a| a.record));
        if legal {
            model.insert(id, (to, version + 1));
            let applied = result.unwrap();
            if to == TaskState::Completed && had_effects {
                assert_eq!(applied.created.len(), children.len());
                for (child, _) in children {
                    model.insert(child.id.as_u128(), (TaskState::Pending, 1));
                    flow_of.insert(child.id.as_u128(), flow);
                    members.entry(flow).or_default().push(child.id.as_u128());
                }
                context.entry(flow).or_default().insert(key, step.to_le_bytes().to_vec());
            } else {
                assert!(applied.created.is_empty());
            }
        }
    }
    let store = store.reopen().await;
    let all = store.all().await;
    for rec in &all {
        assert_eq!(model.get(&rec.id.as_u128()), Some(&(rec.state, rec.version)), "task {}", rec.id);
        assert_eq!(rec.history.len() as u64, rec.version - 1);
    }
    assert_eq!(all.len(), model.len());
    for (flow, values) in &context {
        let keys = store.context_keys(Uuid::from_u128(*flow), "").await;
        let mut expected: Vec<&String> = values.keys().collect();
        expected.sort();
        assert_eq!(keys.iter().collect::<Vec<_>>(), expected);
        for (key, value) in values {
            assert_eq!(store.context_get(Uuid::from_u128(*flow), key).await.as_ref(), Some(value));
        }
    }
    for (flow, tasks) in &members {
        let stored: Vec<u128> = store.flow_tasks(Uuid::from_u128(*flow)).await.iter().map(|t| t.id.as_u128()).collect();
        assert_eq!(stored[0], *flow, "the root comes first");
        assert_eq!(&stored[1..], tasks.as_slice(), "flow {flow}");
    }
    assert!(!members.is_empty() && !context.is_empty(), "the run exercised effects");
    // A listing by state agrees with the model.
    for state in TaskState::ALL {
        let listed = store.in_state(state).await;
        let modelled: BTreeSet<Uuid> =
            model.iter().filter(|(_, (s, _))| *s == state).map(|(id, _)| Uuid::from_u128(*id)).collect();
        assert_eq!(listed, modelled, "{state}");
    }
    store
}
