//! Store tests on real redb files: the transition table enforced inside
//! write transactions, group-commit isolation between neighbours, and a
//! model-based run with a reopen compared against the model.

use super::*;

pub(crate) fn record(n: u128, key: Option<&str>) -> TaskRecord {
    TaskRecord {
        id: Uuid::from_u128(n),
        version: 1,
        state: TaskState::Pending,
        plugin: "p".into(),
        plugin_version: "1".into(),
        digest: "d".into(),
        queue: "q".into(),
        priority: 0,
        attempts: 0,
        max_attempts: 3,
        limits: StoredLimits {
            fuel: 1,
            memory_bytes: 1,
            timeout_ms: 1,
            max_output_bytes: 1,
            max_log_bytes: 1,
            host_bytes: crate::Limits::default().host_bytes,
        },
        error: None,
        created_at_ms: 0,
        started_at_ms: None,
        finished_at_ms: None,
        next_run_at_ms: None,
        idempotency_key: key.map(str::to_owned),
        parent_id: None,
        callback_url: None,
        input_len: 0,
        output_len: None,
        fuel_used: None,
        host_bytes_used: None,
        history: Vec::new(),
        flow_id: Uuid::from_u128(n),
        depth: 0,
        after: Vec::new(),
        input_from: InputFrom::Own,
        step: None,
        iteration: 0,
        log_keep_bytes: None,
        trace: None,
    }
}

pub(crate) fn child_of(flow: u128, n: u128, key: Option<&str>) -> (TaskRecord, Vec<u8>) {
    let mut child = record(n, key);
    child.flow_id = Uuid::from_u128(flow);
    child.parent_id = Some(Uuid::from_u128(flow));
    child.depth = 1;
    (child, format!("input {n}").into_bytes())
}

#[tokio::test]
async fn a_schema_2_file_is_migrated_on_open() {
    #[derive(serde::Serialize)]
    struct V2<'a> {
        id: Uuid,
        version: u64,
        state: TaskState,
        plugin: &'a str,
        plugin_version: &'a str,
        digest: &'a str,
        queue: &'a str,
        priority: u8,
        attempts: u32,
        max_attempts: u32,
        limits: (u64, u64, u64, u64, u64),
        error: Option<OldFailure>,
        created_at_ms: u64,
        started_at_ms: Option<u64>,
        finished_at_ms: Option<u64>,
        next_run_at_ms: Option<u64>,
        idempotency_key: Option<String>,
        parent_id: Option<Uuid>,
        callback_url: Option<String>,
        input_len: u64,
        output_len: Option<u64>,
        fuel_used: Option<u64>,
        history: Vec<Transition>,
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    let id = Uuid::from_u128(7);
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("schema", 2).unwrap();
        let old = V2 {
            id,
            version: 3,
            state: TaskState::Pending,
            plugin: "p",
            plugin_version: "1",
            digest: "d",
            queue: "q",
            priority: 4,
            attempts: 1,
            max_attempts: 3,
            limits: (1, 2, 3, 4, 5),
            error: Some(old_failure("timeout")),
            created_at_ms: 11,
            started_at_ms: None,
            finished_at_ms: None,
            next_run_at_ms: Some(12),
            idempotency_key: Some("k".into()),
            parent_id: None,
            callback_url: None,
            input_len: 2,
            output_len: None,
            fuel_used: None,
            history: Vec::new(),
        };
        txn.open_table(TASKS).unwrap().insert(id.as_u128(), postcard::to_stdvec(&old).unwrap().as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(&path, true).unwrap();
    let migrated = store.get(id).unwrap().unwrap();
    assert_eq!((migrated.version, migrated.priority, migrated.next_run_at_ms), (3, 4, Some(12)));
    assert_eq!((migrated.flow_id, migrated.depth, migrated.input_from), (id, 0, InputFrom::Own));
    assert_eq!(migrated.error.as_ref().map(|e| e.class), Some(crate::FailureClass::Timeout));
    assert_eq!((migrated.limits.max_log_bytes, migrated.limits.host_bytes), (5, crate::Limits::default().host_bytes));
    drop(store);
    // Reopening finds today's schema and changes nothing.
    assert_eq!(Store::open(&path, true).unwrap().get(id).unwrap().unwrap(), migrated);
}

#[tokio::test]
async fn schema_5_and_6_records_are_read_as_they_are_and_checked_and_repaired_as_todays() {
    for schema in [5u64, 6] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let old = record(9, Some("k"));
        // A schema-6 record: the layout of the build before this one, with
        // no trace or transcript cap at its end.
        let v6 = TaskRecordV6Layout::from(&old);
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("schema", schema).unwrap();
            let bytes = postcard::to_stdvec(&v6).unwrap();
            txn.open_table(TASKS).unwrap().insert(old.id.as_u128(), bytes.as_slice()).unwrap();
            txn.open_table(INPUTS).unwrap().insert(old.id.as_u128(), b"x".as_slice()).unwrap();
            txn.commit().unwrap();
        }
        // Checked as today's layout: its record reads, and the indexes this
        // file lacks are found missing...
        let report = check::check(&path).unwrap();
        assert!(report.problems.iter().any(|p| p.contains("index")), "schema {schema}: {report:?}");
        // ...and repair rebuilds them.
        let repaired = check::repair(&path).unwrap();
        assert!(repaired.lost.is_empty(), "schema {schema}: {repaired:?}");
        let after = check::check(&path).unwrap();
        assert!(after.is_healthy(), "schema {schema}: {after:?} after {repaired:?}");
        let store = Store::open(&path, true).unwrap();
        let read = store.get(old.id).unwrap().unwrap();
        assert_eq!(read, old, "schema {schema}");
        assert_eq!((read.trace, read.log_keep_bytes), (None, None));
        let query = TaskQuery { state: Some(TaskState::Pending), ..TaskQuery::default() };
        assert_eq!(store.list(&query, None, 10).unwrap().0.len(), 1, "found through the rebuilt index");
        assert_eq!(store.task_by_key("k").unwrap(), Some(old.id));
        drop(store);
        let db = redb::Database::open(&path).unwrap();
        let read = db.begin_read().unwrap();
        assert_eq!(read.open_table(META).unwrap().get("schema").unwrap().unwrap().value(), SCHEMA_VERSION);
    }
}

/// A task record exactly as schemas 5 and 6 wrote it (a copy of that
/// build's struct, field for field), for the tests of reading them.
#[derive(serde::Serialize)]
struct TaskRecordV6Layout {
    id: Uuid,
    version: u64,
    state: TaskState,
    plugin: String,
    plugin_version: String,
    digest: String,
    queue: String,
    priority: u8,
    attempts: u32,
    max_attempts: u32,
    limits: StoredLimits,
    error: Option<StoredFailure>,
    created_at_ms: u64,
    started_at_ms: Option<u64>,
    finished_at_ms: Option<u64>,
    next_run_at_ms: Option<u64>,
    idempotency_key: Option<String>,
    parent_id: Option<Uuid>,
    callback_url: Option<String>,
    input_len: u64,
    output_len: Option<u64>,
    fuel_used: Option<u64>,
    host_bytes_used: Option<u64>,
    history: Vec<Transition>,
    flow_id: Uuid,
    depth: u32,
    after: Vec<Uuid>,
    input_from: InputFrom,
    step: Option<String>,
    iteration: u32,
}

impl From<&TaskRecord> for TaskRecordV6Layout {
    fn from(r: &TaskRecord) -> Self {
        let r = r.clone();
        Self {
            id: r.id,
            version: r.version,
            state: r.state,
            plugin: r.plugin,
            plugin_version: r.plugin_version,
            digest: r.digest,
            queue: r.queue,
            priority: r.priority,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            limits: r.limits,
            error: r.error,
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            next_run_at_ms: r.next_run_at_ms,
            idempotency_key: r.idempotency_key,
            parent_id: r.parent_id,
            callback_url: r.callback_url,
            input_len: r.input_len,
            output_len: r.output_len,
            fuel_used: r.fuel_used,
            host_bytes_used: r.host_bytes_used,
            history: r.history,
            flow_id: r.flow_id,
            depth: r.depth,
            after: r.after,
            input_from: r.input_from,
            step: r.step,
            iteration: r.iteration,
        }
    }
}

/// A failure as schemas 2 and 3 wrote it: the class as text.
#[derive(serde::Serialize)]
struct OldFailure {
    class: String,
    retryable: bool,
    message: String,
    backtrace: Option<String>,
}

fn old_failure(class: &str) -> OldFailure {
    OldFailure { class: class.into(), retryable: true, message: "m".into(), backtrace: Some("bt".into()) }
}

/// Writes `record` as schema 3 did: postcard writes a struct as its fields
/// in order, so nested tuples of the same fields give the same bytes, with
/// the failure's class as text.
fn encode_v3(r: &TaskRecord, failure: Option<OldFailure>) -> Vec<u8> {
    let head = (r.id, r.version, r.state, &r.plugin, &r.plugin_version, &r.digest, &r.queue, r.priority);
    let counts = (r.attempts, r.max_attempts, old_limits(&r.limits));
    let times = (r.created_at_ms, r.started_at_ms, r.finished_at_ms, r.next_run_at_ms);
    let rest = (&r.idempotency_key, r.parent_id, &r.callback_url, r.input_len, r.output_len, r.fuel_used, &r.history);
    let flow = (r.flow_id, r.depth, &r.after, r.input_from, &r.step, r.iteration);
    postcard::to_stdvec(&(head, counts, failure, times, rest, flow)).unwrap()
}

/// Limits as schemas 2-4 wrote them (no host budget).
fn old_limits(l: &StoredLimits) -> (u64, u64, u64, u64, u64) {
    (l.fuel, l.memory_bytes, l.timeout_ms, l.max_output_bytes, l.max_log_bytes)
}

/// Writes `record` as schema 4 did: no host budget in the limits, no
/// host bytes used.
fn encode_v4(r: &TaskRecord) -> Vec<u8> {
    let head = (r.id, r.version, r.state, &r.plugin, &r.plugin_version, &r.digest, &r.queue, r.priority);
    let counts = (r.attempts, r.max_attempts, old_limits(&r.limits), &r.error);
    let times = (r.created_at_ms, r.started_at_ms, r.finished_at_ms, r.next_run_at_ms);
    let rest = (&r.idempotency_key, r.parent_id, &r.callback_url, r.input_len, r.output_len, r.fuel_used, &r.history);
    let flow = (r.flow_id, r.depth, &r.after, r.input_from, &r.step, r.iteration);
    postcard::to_stdvec(&(head, counts, times, rest, flow)).unwrap()
}

#[tokio::test]
async fn a_schema_4_file_gains_the_host_budget_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v4.redb");
    let mut failed = record(1, None);
    failed.state = TaskState::Failed;
    failed.error = Some(StoredFailure {
        class: crate::FailureClass::Trap,
        retryable: false,
        message: "m".into(),
        backtrace: None,
    });
    failed.limits.host_bytes = crate::Limits::default().host_bytes;
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("schema", 4).unwrap();
        txn.open_table(TASKS).unwrap().insert(1u128, encode_v4(&failed).as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(&path, true).unwrap();
    assert_eq!(store.get(Uuid::from_u128(1)).unwrap().unwrap(), failed);
    // Indexed on migration (a salvaged schema-4 file has no indexes).
    let failed_only = TaskQuery { state: Some(TaskState::Failed), ..TaskQuery::default() };
    assert_eq!(store.list(&failed_only, None, 10).unwrap().0, std::slice::from_ref(&failed));
    drop(store);
    let db = redb::Database::create(&path).unwrap();
    let schema = db.begin_read().unwrap().open_table(META).unwrap().get("schema").unwrap().unwrap().value();
    assert_eq!(schema, SCHEMA_VERSION);
}

#[tokio::test]
async fn a_schema_3_file_gets_typed_failure_classes_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.redb");
    let mut failed = record(1, None);
    failed.state = TaskState::Failed;
    failed.after = vec![Uuid::from_u128(9)];
    failed.step = Some("s".into());
    let plain = record(2, Some("k"));
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("schema", 3).unwrap();
        {
            let mut tasks = txn.open_table(TASKS).unwrap();
            tasks.insert(1u128, encode_v3(&failed, Some(old_failure("fuel exhausted"))).as_slice()).unwrap();
            tasks.insert(2u128, encode_v3(&plain, None).as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = Store::open(&path, true).unwrap();
    let migrated = store.get(Uuid::from_u128(1)).unwrap().unwrap();
    let error = migrated.error.clone().unwrap();
    assert_eq!((error.class, error.retryable, error.message.as_str()), (crate::FailureClass::FuelExhausted, true, "m"));
    assert_eq!(TaskRecord { error: None, ..migrated.clone() }, failed);
    assert_eq!(store.get(Uuid::from_u128(2)).unwrap().unwrap(), plain);
    // The migration built the indexes.
    let failed_only = TaskQuery { state: Some(TaskState::Failed), ..TaskQuery::default() };
    assert_eq!(store.list(&failed_only, None, 10).unwrap().0, std::slice::from_ref(&migrated));
    let queue = TaskQuery { queue: Some("q".into()), ..TaskQuery::default() };
    assert_eq!(store.list(&queue, None, 10).unwrap().0.len(), 2);
    drop(store);
    assert_eq!(Store::open(&path, true).unwrap().get(Uuid::from_u128(1)).unwrap().unwrap(), migrated);
}

#[tokio::test]
async fn an_unknown_stored_class_refuses_the_migration_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("schema", 3).unwrap();
        let bytes = encode_v3(&record(1, None), Some(old_failure("gremlins")));
        txn.open_table(TASKS).unwrap().insert(1u128, bytes.as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let Err(error) = Store::open(&path, true) else { panic!("the migration must be refused") };
    let error = error.to_string();
    assert!(error.contains("`gremlins` is not a failure class"), "{error}");
    let db = redb::Database::create(&path).unwrap();
    let schema = db.begin_read().unwrap().open_table(META).unwrap().get("schema").unwrap().unwrap().value();
    assert_eq!(schema, 3, "a refused migration leaves the file as it was");
}

/// Drives a fresh task into `state` through allowed transitions, on
/// either backend.
pub(crate) async fn task_in(store: &impl super::matrix::Backend, n: u128, state: TaskState) -> TaskRecord {
    let path: &[TaskState] = match state {
        TaskState::Pending => &[],
        TaskState::Running => &[TaskState::Running],
        TaskState::Retrying => &[TaskState::Running, TaskState::Retrying],
        TaskState::Completed => &[TaskState::Running, TaskState::Completed],
        TaskState::Failed => &[TaskState::Running, TaskState::Failed],
        TaskState::Cancelled => &[TaskState::Cancelled],
    };
    let mut rec = store.submit(record(n, None), b"in".to_vec()).await.unwrap().record;
    for &to in path {
        rec = store.transition(Change::new(rec.id, to, "setup")).await.unwrap();
    }
    assert_eq!(rec.state, state);
    rec
}

/// Many concurrent operations land in shared group commits; the refused
/// ones must not fail their neighbours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_transition_never_fails_its_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.redb"), true).unwrap();
    for n in 0..200 {
        store.submit(record(n, None), Vec::new()).await.unwrap();
    }
    // Even ids: legal (pending -> running). Odd ids: illegal (pending -> completed).
    let ops = (0..200u128).map(|n| {
        let to = if n % 2 == 0 { TaskState::Running } else { TaskState::Completed };
        store.transition(Change::new(Uuid::from_u128(n), to, "mixed"))
    });
    let results = futures::future::join_all(ops).await;
    for (n, result) in results.iter().enumerate() {
        assert_eq!(result.is_ok(), n % 2 == 0, "task {n}: {result:?}");
    }
    for n in 0..200u128 {
        let expected = if n % 2 == 0 { TaskState::Running } else { TaskState::Pending };
        assert_eq!(store.get(Uuid::from_u128(n)).unwrap().unwrap().state, expected);
    }
}

/// Files from before the flows' own key table kept children's keys among
/// the clients': opening moves them, once, and leaves the clients' keys.
#[tokio::test]
async fn flow_keys_kept_among_client_keys_are_moved_once_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    let flow = Uuid::from_u128(1);
    let child_key = format!("flow:{flow}:a");
    let client_key = format!("flow:{flow}:b");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("schema", SCHEMA_VERSION).unwrap();
        let (child, _) = child_of(1, 10, Some(&child_key));
        let client = record(20, Some(&client_key));
        let plain = record(30, Some("order-7"));
        let mut tasks = txn.open_table(TASKS).unwrap();
        let mut keys = txn.open_table(IDEMPOTENCY).unwrap();
        for r in [&child, &client, &plain] {
            tasks.insert(r.id.as_u128(), encode(r).as_slice()).unwrap();
            keys.insert(r.idempotency_key.as_deref().unwrap(), r.id.as_u128()).unwrap();
        }
        drop((tasks, keys));
        txn.commit().unwrap();
    }
    let store = Store::open(&path, true).unwrap();
    assert_eq!(store.child_by_key(flow, &child_key).unwrap(), Some(Uuid::from_u128(10)));
    assert_eq!(store.child_by_key(flow, &client_key).unwrap(), None);
    // The clients' keys stay theirs; the child's is no longer among them.
    for (n, key, existing) in
        [(40, &client_key, Some(20)), (41, &"order-7".to_owned(), Some(30)), (42, &child_key, None)]
    {
        let submitted = store.submit(record(n, Some(key)), Vec::new()).await.unwrap();
        assert_eq!(submitted.created, existing.is_none(), "{key}");
        assert_eq!(submitted.record.id, Uuid::from_u128(existing.unwrap_or(n)), "{key}");
    }
    drop(store);
    // Once: the flag is set, and a reopen changes nothing.
    let store = Store::open(&path, true).unwrap();
    let meta = store.db().unwrap().begin_read().unwrap().open_table(META).unwrap();
    assert_eq!(meta.get(FLOW_KEYS_MOVED).unwrap().map(|v| v.value()), Some(1));
    assert_eq!(store.child_by_key(flow, &child_key).unwrap(), Some(Uuid::from_u128(10)));
    let submitted = store.submit(record(43, Some(&child_key)), Vec::new()).await.unwrap();
    assert_eq!(submitted.record.id, Uuid::from_u128(42));
}

/// Random operations against the store and a model; then the store is
/// reopened from its file and must equal the model. Transitions randomly
/// carry flow effects (children and a context write), which must exist
/// exactly when the transition was a legal completion.
#[tokio::test]
async fn without_group_commit_results_are_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.redb"), false).unwrap();
    let rec = task_in(&store, 1, TaskState::Completed).await;
    assert_eq!(rec.version, 3);
}

/// Every page of `list`, followed to the end, in one vector.
fn list_all(store: &Store, query: &TaskQuery) -> Vec<Uuid> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let (page, more) = store.list(query, after, 7).unwrap();
        out.extend(page.iter().map(|r| r.id));
        if !more {
            return out;
        }
        after = page.last().map(|r| r.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_committer_queue_refuses_submissions_and_loses_nothing_queued() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(&dir.path().join("t.redb"), true, 2).unwrap();
    // Hold the committer inside an administrative write.
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let blocker = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .admin(move |_| {
                    started_tx.send(()).unwrap();
                    released.recv().unwrap();
                    Ok(())
                })
                .await
        })
    };
    tokio::task::spawn_blocking(move || started.recv().unwrap()).await.unwrap();
    let queued: Vec<_> = (1..=2u128)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.submit(record(n, None), Vec::new()).await })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.queued() < 2 {
        assert!(std::time::Instant::now() < deadline, "the two submissions never queued");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let refused = store.submit(record(3, None), Vec::new()).await.unwrap_err();
    assert!(matches!(refused, StoreError::Busy { capacity: 2 }), "{refused}");
    assert!(refused.to_string().contains("2 writes are already waiting"), "{refused}");
    release.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    for q in queued {
        assert!(q.await.unwrap().unwrap().created);
    }
    assert_eq!(store.task_count().unwrap(), 2, "the refused submission wrote nothing");
    assert!(store.submit(record(3, None), Vec::new()).await.unwrap().created, "room again");
}

/// Waits (at most 10 s) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

fn disk() -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(false))
}

fn set(flag: &std::sync::atomic::AtomicBool, full: bool) {
    flag.store(full, std::sync::atomic::Ordering::SeqCst);
}

/// The disk fills while a completion (with output, children and a context
/// write) is being committed: the store turns unwritable, refuses
/// submissions, keeps serving reads, answers nobody before the write is
/// durable, and once there is room writes the held batch, then what
/// queued behind it, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_the_failed_commit_and_writes_it_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.redb");
    let full = disk();
    let store = Store::open_faulty(&path, full.clone(), 64).unwrap();
    let root = task_in(&store, 1, TaskState::Running).await;
    let waiting = store.submit(record(2, Some("two")), b"two".to_vec()).await.unwrap().record;
    assert!(store.write_fault().is_none());

    set(&full, true);
    let done = Change::new(root.id, TaskState::Completed, "done").output(b"out".to_vec()).effects(Effects {
        flow_id: root.id,
        children: vec![child_of(1, 10, Some("c")), child_of(1, 11, None)],
        context: vec![("k".into(), Some(b"v".to_vec()))],
        stop_repeating: false,
        bounds: None,
    });
    let completion = tokio::spawn({
        let store = store.clone();
        async move { store.apply(done).await }
    });
    eventually("the write fault", || store.write_fault().is_some()).await;
    let fault = store.write_fault().unwrap();
    assert!(fault.reason.contains("No space left on device"), "{fault:?}");
    let refused = store.submit(record(3, None), b"three".to_vec()).await.unwrap_err();
    assert!(matches!(refused, StoreError::Unwritable { .. }), "{refused}");
    // Reads go on from the reopened file; the held write is not visible.
    assert_eq!(store.get(root.id).unwrap().unwrap(), root);
    assert_eq!(store.get(waiting.id).unwrap().unwrap(), waiting);
    assert!(store.get(Uuid::from_u128(10)).unwrap().is_none());
    assert!(!completion.is_finished(), "nothing is answered before it is durable");
    // Written meanwhile: waits behind the held batch instead of failing.
    let start = tokio::spawn({
        let store = store.clone();
        async move { store.transition(Change::new(waiting.id, TaskState::Running, "start")).await }
    });

    set(&full, false);
    let applied = completion.await.unwrap().unwrap();
    assert_eq!(applied.record.state, TaskState::Completed);
    let created: Vec<u128> = applied.created.iter().map(|c| c.id.as_u128()).collect();
    assert_eq!(created, [10, 11]);
    assert_eq!(start.await.unwrap().unwrap().state, TaskState::Running);
    assert!(store.write_fault().is_none(), "healthy again once the held batch committed");
    assert!(store.submit(record(3, None), b"three".to_vec()).await.unwrap().created);

    // Everything is in the file, once, indexes included.
    drop(store);
    let store = Store::open(&path, true).unwrap();
    let stored = store.get(root.id).unwrap().unwrap();
    assert_eq!((stored.state, stored.version), (TaskState::Completed, root.version + 1));
    assert_eq!(store.output(root.id).unwrap().as_deref(), Some(&b"out"[..]));
    assert_eq!(store.input(Uuid::from_u128(10)).unwrap().as_deref(), Some(&b"input 10"[..]));
    assert_eq!(store.child_by_key(root.id, "c").unwrap(), Some(Uuid::from_u128(10)));
    assert_eq!(store.context_get(root.id, "k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(store.flow(root.id).unwrap().unwrap().tasks, 3);
    let completed = TaskQuery { state: Some(TaskState::Completed), ..TaskQuery::default() };
    assert_eq!(list_all(&store, &completed), [root.id]);
    let running = TaskQuery { state: Some(TaskState::Running), ..TaskQuery::default() };
    assert_eq!(list_all(&store, &running), [waiting.id]);
    assert_eq!(store.task_count().unwrap(), 5);
}

/// At shutdown nothing waits for the disk: a held write is answered with
/// the error, and the file keeps the last durable state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_answers_a_held_write_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.redb");
    let full = disk();
    let store = Store::open_faulty(&path, full.clone(), 64).unwrap();
    let running = task_in(&store, 1, TaskState::Running).await;
    set(&full, true);
    let outcome = tokio::spawn({
        let store = store.clone();
        async move { store.transition(Change::new(running.id, TaskState::Completed, "done")).await }
    });
    eventually("the write fault", || store.write_fault().is_some()).await;
    store.stop_retrying();
    let error = outcome.await.unwrap().unwrap_err();
    assert!(matches!(error, StoreError::Unwritable { .. }), "{error}");
    drop(store);
    set(&full, false);
    let store = Store::open(&path, true).unwrap();
    assert_eq!(store.get(running.id).unwrap().unwrap(), running, "left for recovery on the next start");
}

/// A plugin upload (an administrative write) that meets a full disk is
/// refused, and the task writes behind it wait and then succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_admin_write_is_refused_and_later_writes_wait_for_room() {
    let dir = tempfile::tempdir().unwrap();
    let full = disk();
    let store = Store::open_faulty(&dir.path().join("t.redb"), full.clone(), 64).unwrap();
    let task = task_in(&store, 1, TaskState::Pending).await;
    set(&full, true);
    let refused = store
        .set_queue("q".into(), QueueConfig { concurrency: Some(1), weight: 1, ..QueueConfig::default() })
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Unwritable { .. }), "{refused}");
    assert!(store.write_fault().is_some());
    let start = tokio::spawn({
        let store = store.clone();
        async move { store.transition(Change::new(task.id, TaskState::Running, "start")).await }
    });
    set(&full, false);
    assert_eq!(start.await.unwrap().unwrap().state, TaskState::Running);
    assert!(store.write_fault().is_none());
    assert!(store.queues().unwrap().is_empty(), "the refused write changed nothing");
}

/// Schema 6 adds inputs by URL: a schema-5 file opens with its records as
/// they were and is marked 6 (so a build of schema 5 refuses it rather
/// than misread a record with an input URL); a newer file is refused.
#[tokio::test]
async fn a_file_of_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v8.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("schema", SCHEMA_VERSION + 1).unwrap();
        txn.commit().unwrap();
    }
    assert!(matches!(
        Store::open(&path, true),
        Err(StoreError::Schema { expected: SCHEMA_VERSION, found }) if found == SCHEMA_VERSION + 1
    ));
}

/// A plugin entry as schemas up to 7 wrote it (versions without a script
/// language), field for field.
#[derive(serde::Serialize)]
struct PluginEntryV7Layout {
    versions: Vec<(String, String, u64, u64)>,
    latest: Option<String>,
    manifest: Option<String>,
}

#[test]
fn schema_7_plugin_entries_are_read_as_components() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    let old = PluginEntryV7Layout {
        versions: vec![("1".into(), "ab".repeat(32), 1234, 5), ("2".into(), "cd".repeat(32), 99, 6)],
        latest: Some("1".into()),
        manifest: Some("models = []".into()),
    };
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("schema", 7u64).unwrap();
        let bytes = postcard::to_stdvec(&old).unwrap();
        txn.open_table(PLUGINS).unwrap().insert("greeter", bytes.as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(&path, true).unwrap();
    let plugins = store.plugins().unwrap();
    assert_eq!(plugins.len(), 1);
    let (name, entry) = &plugins[0];
    assert_eq!(name, "greeter");
    let versions: Vec<_> = entry.versions.iter().map(|v| (v.version.as_str(), v.size, v.script.clone())).collect();
    assert_eq!(versions, [("1", 1234, None), ("2", 99, None)]);
    assert_eq!((entry.latest.as_deref(), entry.manifest.as_deref()), (Some("1"), Some("models = []")));
    drop(store);
    let db = redb::Database::open(&path).unwrap();
    let read = db.begin_read().unwrap();
    assert_eq!(read.open_table(META).unwrap().get("schema").unwrap().unwrap().value(), SCHEMA_VERSION);
}

#[tokio::test]
async fn a_store_is_read_while_its_check_runs_and_written_only_once_it_passed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.redb");
    let marker = b"CHECKED-WHILE-READ".repeat(200);
    {
        let store = Store::open(&path, true).unwrap();
        store.submit(record(1, None), marker.clone()).await.unwrap();
        task_in(&store, 2, TaskState::Completed).await;
    }
    // Healthy: read at once, then the check passes and writes go on.
    {
        let store = Store::open_checking(&path, true).unwrap();
        assert_eq!(store.get(Uuid::from_u128(2)).unwrap().unwrap().state, TaskState::Completed);
        store.checked().unwrap();
        task_in(&store, 3, TaskState::Running).await;
    }
    assert_eq!(Store::open(&path, true).unwrap().get(Uuid::from_u128(3)).unwrap().unwrap().state, TaskState::Running);

    // Every page holding the input (the live one and any older copy),
    // zeroed: the check fails and nothing, not even the open's own marks,
    // reaches the file.
    let bytes = std::fs::read(&path).unwrap();
    let mut damaged = bytes.clone();
    let pages: Vec<usize> = bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker.as_slice())
        .map(|(at, _)| at / 4096)
        .collect();
    assert!(!pages.is_empty(), "the input is in the file");
    for page in pages {
        damaged[page * 4096..(page + 1) * 4096].fill(0);
    }
    std::fs::write(&path, &damaged).unwrap();
    {
        // The open reads no input page: it opens, and reads work while
        // the check runs; once it failed, they are refused as damaged.
        let store = Store::open_checking(&path, true).unwrap();
        match store.get(Uuid::from_u128(2)) {
            Ok(read) => assert_eq!(read.unwrap().state, TaskState::Completed),
            Err(e) => assert!(store.check_failed() && matches!(&e, StoreError::Damaged { .. }), "{e}"),
        }
        let e = store.checked().unwrap_err();
        assert!(matches!(&e, StoreError::Damaged { path: p, .. } if p == &path), "{e}");
        let refused = store.submit(record(4, None), b"in".to_vec()).await.unwrap_err();
        assert!(matches!(refused, StoreError::Damaged { .. }), "{refused}");
        let refused = store.get(Uuid::from_u128(2)).unwrap_err();
        assert!(matches!(refused, StoreError::Damaged { .. }), "a read after the failed check: {refused}");
    }
    assert!(matches!(Store::open(&path, true), Err(StoreError::Damaged { .. })));
    assert_eq!(std::fs::read(&path).unwrap(), damaged, "a file that failed its check is left as it was");
}
