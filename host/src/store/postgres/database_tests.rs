//! The PostgreSQL store against a real, throwaway PostgreSQL
//! (`taskhost-test-postgres`): migrations, idempotency, claims, leases and
//! fencing, with several stores standing for several hosts.

use super::*;
use crate::FailureClass;
use crate::store::StoredFailure;
use crate::store::postgres::Term;
use crate::store::postgres::batch::{Done, PgOp};
use crate::store::tests::record;
use crate::store::{Listing, QueueConfig, StoreError, Submitted, TaskQuery, TaskRecord, TaskState};
use std::collections::{HashMap, HashSet};

async fn store(name: &str) -> (PgStore, String) {
    let url = taskhost_test_postgres::cluster().database(name);
    (PgStore::connect(&url, 4).await.unwrap(), url)
}

/// `n` hosts' stores on the database `url` names, connected at once.
async fn hosts(url: &str, n: usize) -> Vec<PgStore> {
    futures::future::join_all((0..n).map(|_| PgStore::connect(url, 2))).await.into_iter().map(Result::unwrap).collect()
}

/// `n` pending tasks, the `i`th of priority `priority(i)`.
async fn submit(store: &PgStore, n: u128, priority: impl Fn(u128) -> u8) -> Vec<TaskRecord> {
    let mut records = Vec::new();
    for i in 1..=n {
        let mut r = record(i, None);
        r.priority = priority(i);
        assert!(store.submit(r.clone(), b"in".to_vec()).await.unwrap().created);
        records.push(r);
    }
    records
}

const LEASE: Duration = Duration::from_secs(30);

/// Makes task `id`'s lease lapse now, as time would (no sleeping on a
/// loaded machine).
async fn lapse(store: &PgStore, id: Uuid) {
    let lapsed = sqlx::query(
        "UPDATE taskhost_leases SET expires_at = clock_timestamp() - interval '1 second' WHERE task_id = $1",
    )
    .bind(id)
    .execute(store.pool())
    .await
    .unwrap();
    assert_eq!(lapsed.rows_affected(), 1);
}

/// Submits task 1, claims it and completes it growing `children` in its
/// flow: the root, and the tasks the completion created.
async fn grow_flow(store: &PgStore, children: Vec<(TaskRecord, Vec<u8>)>) -> (TaskRecord, Vec<TaskRecord>) {
    use crate::store::{Change, Effects};
    let root = record(1, None);
    store.submit(root.clone(), Vec::new()).await.unwrap();
    let claimed = store.claim("a", 1, LEASE).await.unwrap().remove(0);
    assert_eq!(claimed.record.id, root.id);
    let grow = Effects { flow_id: root.id, children, ..Effects::default() };
    let done = Change::new(root.id, TaskState::Completed, "done").effects(grow);
    let applied = store.finish_changes(vec![(claimed.lease, done)]).await.unwrap().remove(0).unwrap();
    (root, applied.created)
}

/// Two completions of one flow committed in one transaction: the second's
/// check of the flow's bounds counts the first's context writes, kept in
/// memory until the transaction's flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_earlier_effects_count_against_a_flows_bounds() {
    use crate::store::tests::child_of;
    use crate::store::{Change, Effects, FlowBounds, FlowLimit};
    let url = taskhost_test_postgres::cluster().database("pg_flow_bounds_batch");
    let store = PgStore::connect(&url, 4).await.unwrap();
    let (root, _) = grow_flow(&store, vec![child_of(1, 11, None), child_of(1, 12, None)]).await;
    let claimed = store.claim("a", 2, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let bounds = Some(FlowBounds { tasks: 4, context_bytes: 10 });
    let done = |id, children, key: &str, value: &str| {
        let context = vec![(key.to_owned(), Some(value.as_bytes().to_vec()))];
        let effects = Effects { flow_id: root.id, children, context, bounds, ..Effects::default() };
        Change::new(id, TaskState::Completed, "done").effects(effects)
    };
    let (first, second) = (&claimed[0], &claimed[1]);
    let answers = store
        .finish_changes(vec![
            (first.lease.clone(), done(first.record.id, vec![child_of(1, 13, None)], "a", "12345678")),
            (second.lease.clone(), done(second.record.id, Vec::new(), "b", "12")),
        ])
        .await
        .unwrap();
    assert_eq!(answers[0].as_ref().unwrap().created.len(), 1);
    match &answers[1] {
        Err(PgError::Record(StoreError::OverFlowLimit {
            limit: FlowLimit::ContextBytes,
            total: 12,
            bound: 10,
            ..
        })) => {}
        other => panic!("{other:?}"),
    }
    let flow = store.flow(root.id).await.unwrap().unwrap();
    assert_eq!(flow.tasks, 4);
    assert_eq!(store.context_size(root.id).await.unwrap(), 9);
    assert_eq!(store.get(second.record.id).await.unwrap().unwrap().state, TaskState::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_starting_at_once_migrate_once() {
    let url = taskhost_test_postgres::cluster().database("migrate");
    let hosts = futures::future::join_all((0..4).map(|_| PgStore::connect(&url, 1))).await;
    for host in &hosts {
        assert!(host.is_ok(), "{host:?}");
    }
    let store = hosts.into_iter().next().unwrap().unwrap();
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(store.pool())
        .await
        .unwrap();
    // Every host's start succeeded (without the lock, concurrent
    // `CREATE TABLE`s fail), and every migration is applied.
    assert_eq!(applied, PgStore::schema_versions());
    // A later start finds nothing to do.
    PgStore::connect(&url, 1).await.unwrap();
    let again: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(store.pool()).await.unwrap();
    assert_eq!(again as usize, applied.len());
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_are_named_without_the_password() {
    for (url, secret) in [
        ("mysql://u:pw1@db/x", "pw1"),
        ("postgres://db/x?user=u&password=pw2&sslmode=bogus", "pw2"),
        ("postgres://u:pa/pw3@db/x", "pw3"),
    ] {
        let refused = PgStore::connect(url, 1).await.unwrap_err().to_string();
        assert!(refused.contains("is not a PostgreSQL URL"), "{refused}");
        assert!(!refused.contains(secret), "{refused}");
    }
    let missing = taskhost_test_postgres::cluster().dir().join("nowhere");
    let url = format!("postgres://u:secret@localhost:5432/x?host={}", missing.display());
    let unreachable = PgStore::connect(&url, 1).await.unwrap_err().to_string();
    assert!(unreachable.starts_with("cannot connect to PostgreSQL at socket directory"), "{unreachable}");
    assert!(!unreachable.contains("secret"), "{unreachable}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_seen_before_returns_the_first_task() {
    let (store, _) = store("keys").await;
    let first = record(1, Some("k"));
    assert!(store.submit(first.clone(), b"a".to_vec()).await.unwrap().created);
    let again = store.submit(record(2, Some("k")), b"b".to_vec()).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.record.id, first.id);
    assert_eq!(store.get(Uuid::from_u128(2)).await.unwrap().map(|r| r.id), None, "nothing else was written");
    assert_eq!(store.state_counts().await.unwrap(), [(TaskState::Pending, 1)]);
    // Eight submissions of a new key at once: one task.
    let racing = futures::future::join_all((10..18).map(|n| {
        let store = store.clone();
        async move { store.submit(record(n, Some("raced")), Vec::new()).await.unwrap() }
    }))
    .await;
    assert_eq!(racing.iter().filter(|s| s.created).count(), 1);
    assert!(racing.iter().all(|s| s.record.id == racing.iter().find(|s| s.created).unwrap().record.id));
    assert_eq!(store.state_counts().await.unwrap(), [(TaskState::Pending, 2)]);
    // A task a flow grew keeps its key in its flow's namespace: the same
    // key is a new task there, and again the same task.
    let (child, input) = crate::store::tests::child_of(1, 3, Some("k"));
    let grown = store.submit(child.clone(), input.clone()).await.unwrap();
    assert!(grown.created);
    let (twin, _) = crate::store::tests::child_of(1, 4, Some("k"));
    assert_eq!(store.submit(twin, input).await.unwrap().record.id, child.id);
    assert_eq!(store.child_by_key(child.flow_id, "k").await.unwrap(), Some(child.id));
    assert_eq!(store.task_by_key("k").await.unwrap(), Some(first.id));
}

/// Many submissions in one transaction: keys seen before, and keys
/// repeated within the batch, answer with the task that has them.
#[tokio::test]
async fn many_submissions_commit_together_and_keys_hold_within_the_batch() {
    let (store, _) = store("submit_all").await;
    assert!(store.submit(record(1, Some("old")), Vec::new()).await.unwrap().created);
    let batch: Vec<(TaskRecord, Vec<u8>)> =
        [(2, Some("old")), (3, None), (4, Some("new")), (5, Some("new")), (6, None)]
            .into_iter()
            .map(|(n, key)| (record(n, key), n.to_le_bytes().to_vec()))
            .collect();
    let answers = store.submit_all(batch).await.unwrap();
    let seen: Vec<(u128, bool)> = answers.iter().map(|s| (s.record.id.as_u128(), s.created)).collect();
    assert_eq!(seen, [(1, false), (3, true), (4, true), (4, false), (6, true)]);
    assert_eq!(store.state_counts().await.unwrap(), [(TaskState::Pending, 4)]);
    assert_eq!(store.get(Uuid::from_u128(5)).await.unwrap().map(|r| r.id), None);
    assert_eq!(store.claim("a", 10, LEASE).await.unwrap().len(), 4);
    // Two hosts' batches sharing keys in opposite orders, at once: each
    // key once, no deadlock.
    let keyed = |from: u128, keys: [&str; 3]| -> Vec<(TaskRecord, Vec<u8>)> {
        keys.iter().zip(from..).map(|(key, n)| (record(n, Some(key)), Vec::new())).collect()
    };
    let (a, b) = (keyed(10, ["x", "y", "z"]), keyed(20, ["z", "y", "x"]));
    let (a, b) = tokio::join!(store.submit_all(a), store.submit_all(b));
    let (a, b) = (a.unwrap(), b.unwrap());
    let created = a.iter().chain(&b).filter(|s| s.created).count();
    assert_eq!(created, 3, "{a:?} {b:?}");
    for (x, y) in a.iter().zip(b.iter().rev()) {
        assert_eq!(x.record.id, y.record.id, "one task per key");
    }
}

/// Three hosts claiming at once take every startable task exactly once,
/// each batch highest priority first, and leave a task not yet due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_claim_disjoint_batches_highest_priority_first() {
    let (store, url) = store("claims").await;
    let submitted = submit(&store, 300, |i| (i % 10) as u8).await;
    let mut later = record(1_000, None);
    later.next_run_at_ms = Some(crate::store::now_ms() + 3_600_000);
    store.submit(later.clone(), Vec::new()).await.unwrap();
    let hosts = hosts(&url, 3).await;
    let claims = futures::future::join_all(hosts.into_iter().enumerate().map(|(n, host)| async move {
        let mut batches = Vec::new();
        loop {
            let batch = host.claim(&format!("host-{n}"), 10, LEASE).await.unwrap();
            if batch.is_empty() {
                return batches;
            }
            batches.push(batch);
        }
    }))
    .await;
    let mut seen = HashSet::new();
    let mut tokens = HashSet::new();
    for batches in &claims {
        for batch in batches {
            let priorities: Vec<u8> = batch.iter().map(|c| c.record.priority).collect();
            assert!(priorities.windows(2).all(|w| w[0] >= w[1]), "{priorities:?}");
            for Claimed { record, lease, .. } in batch {
                assert!(seen.insert(record.id), "task {} claimed twice", record.id);
                assert!(tokens.insert(lease.token), "token {} given twice", lease.token);
                assert_eq!((record.state, record.attempts, record.version), (TaskState::Running, 1, 2));
                assert_eq!(record.history.last().unwrap().reason, "started");
            }
        }
    }
    assert_eq!(seen.len(), submitted.len(), "every due task claimed");
    assert!(!seen.contains(&later.id), "a task not yet due is not claimed");
    assert!(claims.iter().filter(|batches| !batches.is_empty()).count() >= 2, "the hosts shared the work");
    let stored = store.get(submitted[0].id).await.unwrap().unwrap();
    assert_eq!((stored.state, stored.attempts), (TaskState::Running, 1), "the claim is what is stored");
}

/// An outcome commits once, under a live lease; the same lease cannot
/// write again.
#[tokio::test]
async fn an_outcome_commits_once_under_its_lease() {
    let (store, _) = store("finish").await;
    submit(&store, 1, |_| 0).await;
    let Claimed { record, lease, .. } = store.claim("a", 1, LEASE).await.unwrap().remove(0);
    let done = |output: &[u8]| Outcome::completed(output.to_vec());
    let finished = store.finish(&lease, done(b"out")).await.unwrap();
    assert_eq!((finished.state, finished.output_len, finished.version), (TaskState::Completed, Some(3), 3));
    assert!(finished.finished_at_ms.is_some());
    let again = store.finish(&lease, done(b"twice")).await.unwrap_err();
    assert!(matches!(again, PgError::Fenced { id, .. } if id == record.id), "{again}");
    assert_eq!(store.output(record.id).await.unwrap().as_deref(), Some(&b"out"[..]));
    assert_eq!(store.get(record.id).await.unwrap().unwrap().version, 3, "the refused write changed nothing");
}

/// A claim reads each small input with its record (up to 16 KiB), so its
/// attempt reads nothing more; a larger one is left to be read when the
/// attempt starts.
#[tokio::test]
async fn a_claim_reads_small_inputs_with_their_records() {
    let (store, _) = store("claim_inputs").await;
    let big = vec![7u8; super::fair::INLINE_INPUT + 1];
    let inputs = [Vec::new(), b"small".to_vec(), vec![1u8; super::fair::INLINE_INPUT], big.clone()];
    for (i, input) in inputs.iter().enumerate() {
        assert!(store.submit(record(i as u128 + 1, None), input.clone()).await.unwrap().created);
    }
    let claimed = store.claim("a", 4, LEASE).await.unwrap();
    let by_id: HashMap<Uuid, Option<Vec<u8>>> = claimed.into_iter().map(|c| (c.record.id, c.input)).collect();
    let expected: Vec<Option<Vec<u8>>> = vec![Some(Vec::new()), Some(b"small".to_vec()), Some(inputs[2].clone()), None];
    let got: Vec<Option<Vec<u8>>> = (1..=4).map(|i| by_id[&Uuid::from_u128(i)].clone()).collect();
    assert_eq!(got, expected);
    assert_eq!(store.input(Uuid::from_u128(4)).await.unwrap(), Some(big), "the large one is read as before");
}

/// Outcomes committed together: each as alone, a fenced one refused
/// without holding back the others.
#[tokio::test]
async fn outcomes_commit_together_and_a_fenced_one_writes_nothing() {
    let (store, _) = store("finish_all").await;
    submit(&store, 3, |_| 0).await;
    let claimed = store.claim("a", 3, LEASE).await.unwrap();
    lapse(&store, claimed[1].record.id).await;
    let done = |output: &[u8]| Outcome::completed(output.to_vec());
    let mut outcomes: Vec<(Lease, Outcome)> =
        claimed.iter().map(|c| (c.lease.clone(), done(c.record.id.as_bytes()))).collect();
    outcomes.push((claimed[0].lease.clone(), done(b"twice")));
    let answers = store.finish_all(outcomes).await.unwrap();
    let states: Vec<Result<TaskState, bool>> =
        answers.iter().map(|a| a.as_ref().map(|r| r.state).map_err(|e| matches!(e, PgError::Fenced { .. }))).collect();
    assert_eq!(states, [Ok(TaskState::Completed), Err(true), Ok(TaskState::Completed), Err(true)]);
    for (i, c) in claimed.iter().enumerate() {
        let output = store.output(c.record.id).await.unwrap();
        let expected = (i != 1).then(|| c.record.id.as_bytes().to_vec());
        assert_eq!(output, expected, "task {i}");
    }
    assert_eq!(
        store.get(claimed[1].record.id).await.unwrap().unwrap().state,
        TaskState::Running,
        "left for the reaper"
    );
}

/// A host whose lease lapsed (it stopped, or its network was cut) loses
/// the task: any host takes it back with the attempt counted, another
/// claims it under a larger token, and the first host's renewal and
/// outcome are refused, before and after the takeover. Out of attempts,
/// it fails.
#[tokio::test]
async fn a_lapsed_lease_is_taken_back_and_its_old_holder_fenced() {
    let (store, _) = store("leases").await;
    let mut task = record(1, None);
    task.max_attempts = 2;
    store.submit(task.clone(), Vec::new()).await.unwrap();
    let done = |output: &[u8]| Outcome::completed(output.to_vec());
    let first = store.claim("a", 1, LEASE).await.unwrap().remove(0);
    assert!(store.reap(10).await.unwrap().is_empty(), "a live lease is not taken back");
    assert!(store.renew(std::slice::from_ref(&first.lease), LEASE).await.unwrap().is_empty(), "renewed while live");
    let running = |lease: &Lease| {
        let store = &store;
        let lease = lease.clone();
        async move { store.running_under(&lease).await.unwrap().map(|r| r.id) }
    };
    assert_eq!(running(&first.lease).await, Some(task.id), "it runs under its live lease");
    let other = Lease { token: first.lease.token + 1, ..first.lease.clone() };
    assert_eq!(running(&other).await, None, "not under another token");
    lapse(&store, task.id).await;
    assert_eq!(running(&first.lease).await, None, "not once its lease lapsed");
    // Lapsed, not yet taken back: the holder may neither renew nor finish.
    assert_eq!(store.renew(std::slice::from_ref(&first.lease), LEASE).await.unwrap(), [task.id]);
    let fenced = store.finish(&first.lease, done(b"lapsed")).await.unwrap_err();
    assert!(matches!(fenced, PgError::Fenced { .. }), "{fenced}");
    let reaped = store.reap(10).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!((reaped[0].state, reaped[0].attempts), (TaskState::Pending, 1), "its attempt counted");
    assert!(reaped[0].history.last().unwrap().reason.contains("host `a` lost its lease"), "{:?}", reaped[0].history);

    // Taken over: the old lease is refused though the task holds a live one.
    let second = store.claim("b", 1, LEASE).await.unwrap().remove(0);
    assert!(second.lease.token > first.lease.token);
    assert_eq!(running(&first.lease).await, None, "not once taken over");
    assert_eq!(running(&second.lease).await, Some(task.id));
    assert_eq!(second.record.attempts, 2);
    assert_eq!(store.renew(std::slice::from_ref(&first.lease), LEASE).await.unwrap(), [task.id]);
    let fenced = store.finish(&first.lease, done(b"stale")).await.unwrap_err();
    assert!(matches!(fenced, PgError::Fenced { .. }), "{fenced}");
    assert_eq!(store.output(task.id).await.unwrap(), None, "the stale outcomes wrote nothing");
    assert!(
        store.renew(std::slice::from_ref(&second.lease), LEASE).await.unwrap().is_empty(),
        "the new holder's is live"
    );

    // The second holder dies on the last attempt: the task fails.
    lapse(&store, task.id).await;
    let reaped = store.reap(10).await.unwrap();
    let error = reaped[0].error.clone().unwrap();
    assert_eq!((reaped[0].state, error.class), (TaskState::Failed, FailureClass::HostError));
    assert!(error.message.contains("attempts exhausted"), "{}", error.message);
    assert!(store.claim("c", 10, LEASE).await.unwrap().is_empty(), "a failed task is not claimed");
}

/// A completion that carries a flow's effects (children and a context
/// write) from a holder whose lease lapsed, or was taken over, writes
/// none of them: no child, no context, no flow, no output. The same
/// completion under the live lease commits them all.
#[tokio::test]
async fn a_fenced_completion_writes_none_of_its_children_or_context() {
    use crate::store::{Change, Effects};
    let (store, _) = store("fenced_effects").await;
    let root = record(1, None);
    store.submit(root.clone(), Vec::new()).await.unwrap();
    let done = || {
        let effects = Effects {
            flow_id: root.id,
            children: vec![crate::store::tests::child_of(1, 11, None), crate::store::tests::child_of(1, 12, Some("k"))],
            context: vec![("progress".into(), Some(b"half".to_vec()))],
            ..Effects::default()
        };
        Change::new(root.id, TaskState::Completed, "done").output(b"out".to_vec()).effects(effects)
    };
    let first = store.claim("a", 1, LEASE).await.unwrap().remove(0);
    lapse(&store, root.id).await;
    let nothing_written = |when: &'static str| {
        let store = &store;
        async move {
            assert_eq!(store.flow_tasks(root.id).await.unwrap().len(), 1, "{when}: only the root");
            for child in [11, 12] {
                assert!(store.get(Uuid::from_u128(child)).await.unwrap().is_none(), "{when}: child {child}");
            }
            assert_eq!(store.context_get(root.id, "progress").await.unwrap(), None, "{when}");
            assert_eq!(store.output(root.id).await.unwrap(), None, "{when}");
        }
    };
    // Lapsed.
    let answer = store.finish_changes(vec![(first.lease.clone(), done())]).await.unwrap().remove(0);
    assert!(matches!(answer, Err(PgError::Fenced { .. })), "{answer:?}");
    nothing_written("lapsed").await;
    // Taken back and claimed by another host: still refused.
    assert_eq!(store.reap(10).await.unwrap().len(), 1);
    let second = store.claim("b", 1, LEASE).await.unwrap().remove(0);
    let answer = store.finish_changes(vec![(first.lease, done())]).await.unwrap().remove(0);
    assert!(matches!(answer, Err(PgError::Fenced { .. })), "{answer:?}");
    nothing_written("taken over").await;
    assert_eq!(store.get(root.id).await.unwrap().unwrap().state, TaskState::Running, "the new holder's");
    // The live holder's completion commits them all.
    let applied = store.finish_changes(vec![(second.lease, done())]).await.unwrap().remove(0).unwrap();
    assert_eq!(applied.created.len(), 2);
    assert_eq!(store.flow_tasks(root.id).await.unwrap().len(), 3);
    assert_eq!(store.context_get(root.id, "progress").await.unwrap().as_deref(), Some(&b"half"[..]));
    assert_eq!(store.output(root.id).await.unwrap().as_deref(), Some(&b"out"[..]));
}

/// A retrying outcome waits out its backoff before it is claimed again.
#[tokio::test]
async fn a_retrying_task_is_claimed_again_once_due() {
    let (store, _) = store("retry").await;
    let [task] = submit(&store, 1, |_| 0).await.try_into().unwrap();
    let first = store.claim("a", 1, LEASE).await.unwrap().remove(0);
    let failure =
        StoredFailure { class: FailureClass::Trap, retryable: true, message: "try again".into(), backtrace: None };
    let retry_at_ms = Some(crate::store::now_ms() + 3_600_000);
    let outcome =
        Outcome { to: TaskState::Retrying, reason: "retrying".into(), output: None, error: Some(failure), retry_at_ms };
    let retrying = store.finish(&first.lease, outcome).await.unwrap();
    assert_eq!((retrying.state, retrying.next_run_at_ms), (TaskState::Retrying, retry_at_ms));
    assert!(store.claim("a", 1, LEASE).await.unwrap().is_empty(), "not due for an hour");
    // Its backoff over:
    sqlx::query("UPDATE taskhost_tasks SET due_at_ms = 0 WHERE id = $1")
        .bind(task.id)
        .execute(store.pool())
        .await
        .unwrap();
    let again = store.claim("a", 1, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].record.state, again[0].record.attempts), (TaskState::Running, 2));
}

/// Of three hosts asking at once, one leads; it keeps its term while it
/// renews; once its lease lapses (it stopped) another leads under a
/// larger term, and the old term no longer passes a duty's check.
/// Two processes serving together under one host id (a copied data
/// directory) would share their leases and the lead: a second is refused
/// while the first is live, joins once the first has left, and ends the
/// session of one whose heartbeat is older than the lease (frozen, or its
/// machine gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_id_serves_from_one_process_at_a_time() {
    let url = taskhost_test_postgres::cluster().database("pg_host_ids");
    let store = PgStore::connect(&url, 4).await.unwrap();
    let lease = MIN_LEASE;
    let first = store.join_many_hosts("h", lease).await.unwrap();
    store.beat("h", &serde_json::json!({})).await.unwrap();
    let beside = store.join_many_hosts("other", lease).await.unwrap();
    let refused = store.join_many_hosts("h", lease).await.unwrap_err();
    assert!(matches!(&refused, PgError::HostIdInUse { host, .. } if host == "h"), "{refused:?}");
    let said = refused.to_string();
    assert!(said.contains("as host `h` (its last heartbeat ") && said.contains(" s ago)"), "{said}");
    drop(first);
    let second = store.join_many_hosts("h", lease).await.expect("joins once the first has left");
    sqlx::query("UPDATE taskhost_hosts SET heartbeat_at = clock_timestamp() - interval '1 hour' WHERE host = 'h'")
        .execute(store.pool())
        .await
        .unwrap();
    let third = store.join_many_hosts("h", lease).await.expect("takes the id from a holder gone quiet");
    let why = tokio::time::timeout(Duration::from_secs(10), second.lost()).await.expect("the quiet holder stops");
    assert!(why.contains("failed"), "{why}");
    drop((beside, third));
}

/// Among hosts serving together, a leader whose process died (its
/// session ended) is replaced at the next check, not a lease later; a
/// live leader keeps the lead, check after check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leaders_lead_is_taken_at_the_next_check_not_a_lease_later() {
    use super::sole::CHECK_EVERY;
    let url = taskhost_test_postgres::cluster().database("pg_dead_leader");
    let store = PgStore::connect(&url, 4).await.unwrap();
    let lease = Duration::from_secs(120);
    let first = store.join_many_hosts("a", lease).await.unwrap();
    let term = first.term().expect("the first to join leads");
    let second = store.join_many_hosts("b", lease).await.unwrap();
    tokio::time::sleep(CHECK_EVERY * 2 + Duration::from_millis(500)).await;
    assert_eq!((first.term(), second.term()), (Some(term), None), "a live leader keeps the lead");
    drop(first);
    let died = std::time::Instant::now();
    let taken = loop {
        if let Some(taken) = second.term() {
            break taken;
        }
        assert!(died.elapsed() < CHECK_EVERY * 3, "the lead was not taken within a check or two");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(taken.0 > term.0, "under a new term: {taken:?} after {term:?}");
    let leader = store.leader().await.unwrap().unwrap();
    assert_eq!((leader.host.as_str(), leader.live), ("b", true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_leads_at_a_time_and_another_takes_over_once_its_lease_lapses() {
    let (store, url) = store("leader").await;
    assert_eq!(store.leader().await.unwrap(), None);
    let hosts = hosts(&url, 3).await;
    let name = |n: usize| format!("host-{n}");
    let names: Vec<String> = (0..3).map(name).collect();
    let terms = futures::future::join_all(hosts.iter().zip(&names).map(|(h, n)| h.lead(n, LEASE))).await;
    let terms: Vec<Option<Term>> = terms.into_iter().map(Result::unwrap).collect();
    assert_eq!(terms.iter().flatten().count(), 1, "{terms:?}");
    let first = terms.iter().position(Option::is_some).unwrap();
    let term = terms[first].unwrap();
    assert_eq!(hosts[first].lead(&name(first), LEASE).await.unwrap(), Some(term), "renewed, same term");
    for (n, host) in hosts.iter().enumerate().filter(|(n, _)| *n != first) {
        assert_eq!(host.lead(&name(n), LEASE).await.unwrap(), None, "host {n} while {first} leads");
    }
    let mut txn = store.pool().begin().await.unwrap();
    assert!(PgStore::leads(&mut txn, term).await.unwrap());
    txn.commit().await.unwrap();

    // The leader stops: its lease lapses.
    sqlx::query("UPDATE taskhost_leader SET expires_at = clock_timestamp() - interval '1 second'")
        .execute(store.pool())
        .await
        .unwrap();
    let lapsed = store.leader().await.unwrap().unwrap();
    assert_eq!((lapsed.host.as_str(), lapsed.live), (name(first).as_str(), false));
    let next = (first + 1) % 3;
    let new_term = hosts[next].lead(&name(next), LEASE).await.unwrap().expect("the lapsed lease is taken");
    assert!(new_term > term);
    let mut txn = store.pool().begin().await.unwrap();
    assert!(!PgStore::leads(&mut txn, term).await.unwrap(), "the old term is fenced");
    assert!(PgStore::leads(&mut txn, new_term).await.unwrap());
    txn.commit().await.unwrap();
    assert_eq!(hosts[first].lead(&name(first), LEASE).await.unwrap(), None, "the old leader, resumed, follows");
    let now = store.leader().await.unwrap().unwrap();
    assert_eq!((now.host, now.term, now.live), (name(next), new_term, true));
}

/// Two hosts completing tasks of one flow at once, each completion growing
/// a task and writing the flow's context: the flow's record loses no
/// update (each completion waits for the other's hold on the flow), and
/// every task and context key is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_completing_tasks_of_one_flow_at_once_lose_no_update() {
    use crate::store::tests::child_of;
    use crate::store::{Change, Effects};
    let (a, url) = store("one_flow").await;
    let b = PgStore::connect(&url, 4).await.unwrap();
    let (root, grown) = grow_flow(&a, (0..20).map(|i| child_of(1, 100 + i, None)).collect()).await;
    assert_eq!(grown.len(), 20);
    let before = a.flow(root.id).await.unwrap().unwrap();
    assert_eq!(before.tasks, 21, "the root and what it grew");
    // Each host claims half of the children and completes them one by one,
    // both at once.
    let (mine, theirs) = tokio::join!(a.claim("a", 10, LEASE), b.claim("b", 10, LEASE));
    let complete = |store: PgStore, claimed: Vec<Claimed>| async move {
        for (i, c) in claimed.into_iter().enumerate() {
            let n = c.record.id.as_u128();
            let effects = Effects {
                flow_id: root.id,
                children: vec![child_of(1, 1000 + n, None)],
                context: vec![(format!("k{n}"), Some(i.to_le_bytes().to_vec()))],
                stop_repeating: false,
                bounds: None,
            };
            let change = Change::new(c.record.id, TaskState::Completed, "done").effects(effects);
            let [answer] = store.finish_changes(vec![(c.lease, change)]).await.unwrap().try_into().unwrap();
            assert_eq!(answer.unwrap().created.len(), 1);
        }
    };
    tokio::join!(complete(a.clone(), mine.unwrap()), complete(b.clone(), theirs.unwrap()));
    let flow = b.flow(root.id).await.unwrap().unwrap();
    assert_eq!((flow.tasks, flow.version), (41, before.version + 20), "no completion's flow update was lost");
    assert_eq!(a.flow_tasks(root.id).await.unwrap().len(), 41);
    assert_eq!(a.context_keys(root.id, "k").await.unwrap().len(), 20);
}

/// `n` pending tasks in `queue`, ids from `first`.
async fn submit_to(store: &PgStore, queue: &str, first: u128, n: u128) {
    let tasks = (first..first + n)
        .map(|i| {
            let mut r = record(i, None);
            r.queue = queue.into();
            (r, Vec::new())
        })
        .collect();
    assert!(store.submit_all(tasks).await.unwrap().iter().all(|s| s.created));
}

/// Two queues with equal work, one submitted wholly before the other,
/// claimed and completed by three hosts at once in small batches: they
/// finish together, whichever host took their tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_with_equal_work_finish_together_across_hosts() {
    let (first, url) = store("fair").await;
    submit_to(&first, "early", 1, 300).await;
    submit_to(&first, "late", 1001, 300).await;
    let ended = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let host = |name: &'static str| {
        let (url, ended) = (url.clone(), ended.clone());
        async move {
            let store = PgStore::connect(&url, 2).await.unwrap();
            loop {
                let claimed = store.claim(name, 7, LEASE).await.unwrap();
                if claimed.is_empty() {
                    return;
                }
                let outcomes = claimed.iter().map(|c| (c.lease.clone(), Outcome::completed(Vec::new()))).collect();
                for done in store.finish_all(outcomes).await.unwrap() {
                    ended.lock().unwrap().push(done.unwrap().queue);
                }
            }
        }
    };
    tokio::join!(host("a"), host("b"), host("c"));
    let ended = ended.lock().unwrap().clone();
    assert_eq!(ended.len(), 600);
    // When the first queue has its last task completed, the other has
    // nearly all of its own.
    let first_done = ended
        .iter()
        .scan((0, 0), |n, q| {
            if q == "early" {
                n.0 += 1
            } else {
                n.1 += 1
            }
            Some(*n)
        })
        .find(|(early, late)| *early == 300 || *late == 300)
        .unwrap();
    assert!(first_done.0.min(first_done.1) >= 270, "completed (early, late) when one queue ended: {first_done:?}");
}

/// A queue's concurrency limit holds across hosts claiming at once, and
/// weights share a claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queues_limit_holds_across_hosts_and_weights_share_a_claim() {
    let (store, url) = store("caps").await;
    store.set_queue("capped", &QueueConfig { concurrency: Some(2), ..QueueConfig::default() }).await.unwrap();
    store.set_queue("heavy", &QueueConfig { weight: 3, ..QueueConfig::default() }).await.unwrap();
    assert_eq!(store.queues().await.unwrap().iter().map(|(q, _)| q.as_str()).collect::<Vec<_>>(), ["capped", "heavy"]);
    submit_to(&store, "capped", 1, 20).await;
    let hosts = hosts(&url, 3).await;
    let running_capped = || async {
        store.state_counts().await.unwrap().iter().find(|(s, _)| *s == TaskState::Running).map_or(0, |(_, n)| *n)
    };
    for _ in 0..3 {
        let claims =
            futures::future::join_all(hosts.iter().enumerate().map(|(i, h)| h.claim(["a", "b", "c"][i], 10, LEASE)))
                .await;
        let claimed: Vec<Claimed> = claims.into_iter().flat_map(Result::unwrap).collect();
        assert!(claimed.len() <= 2, "{} claimed at once", claimed.len());
        assert_eq!(running_capped().await, 2, "the limit is filled, never passed");
        // One ends: one more may start, on any host.
        let first = claimed.into_iter().next().unwrap();
        store.finish(&first.lease, Outcome::completed(Vec::new())).await.unwrap();
        let again = futures::future::join_all(hosts.iter().map(|h| h.claim("x", 10, LEASE))).await;
        assert_eq!(again.into_iter().map(|c| c.unwrap().len()).sum::<usize>(), 1);
        // Complete everything running for the next round.
        let leases: Vec<Uuid> =
            sqlx::query_scalar("SELECT task_id FROM taskhost_leases").fetch_all(store.pool()).await.unwrap();
        for id in leases {
            lapse(&store, id).await;
        }
        store.reap(100).await.unwrap();
    }
    // Weights: a claim of 40 across a queue of weight 3 and one of weight 1.
    sqlx::query("DELETE FROM taskhost_tasks").execute(store.pool()).await.unwrap();
    submit_to(&store, "heavy", 100, 100).await;
    submit_to(&store, "light", 300, 100).await;
    let claimed = store.claim("a", 40, LEASE).await.unwrap();
    let heavy = claimed.iter().filter(|c| c.record.queue == "heavy").count();
    assert_eq!((heavy, claimed.len() - heavy), (30, 10));
    // A queue short of its share leaves the rest to the others.
    let claimed = store.claim("a", 200, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 160);
    // Queues whose tasks all wait for their due time take no share.
    let later: Vec<(TaskRecord, Vec<u8>)> = (1000..1030)
        .map(|i| {
            let mut r = record(i, None);
            r.queue = format!("later-{i}");
            r.next_run_at_ms = Some(u64::MAX / 4);
            (r, Vec::new())
        })
        .collect();
    store.submit_all(later).await.unwrap();
    submit_to(&store, "now", 2000, 20).await;
    let claimed = store.claim("a", 10, LEASE).await.unwrap();
    assert_eq!(claimed.iter().filter(|c| c.record.queue == "now").count(), 10);
}

/// A claim is shared equally among tenants first, then among a tenant's
/// queues by weight: a tenant with four queues takes no more than one
/// with a single queue, and what one cannot use goes to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_share_a_claim_equally_whatever_their_queues() {
    let (store, _) = store("tenant_shares").await;
    for (i, queue) in ["big/a", "big/b", "big/c", "big/d"].into_iter().enumerate() {
        submit_to(&store, queue, 1000 * (i as u128 + 1), 50).await;
    }
    submit_to(&store, "small/only", 9000, 50).await;
    let claimed = store.claim("a", 40, LEASE).await.unwrap();
    let count = |prefix: &str| claimed.iter().filter(|c| c.record.queue.starts_with(prefix)).count();
    assert_eq!((count("big/"), count("small/")), (20, 20), "by queue it would be 32 and 8");
    for queue in ["big/a", "big/b", "big/c", "big/d"] {
        assert_eq!(claimed.iter().filter(|c| c.record.queue == queue).count(), 5, "{queue}");
    }
    // Small has 30 left: a claim of 100 takes them and gives big the rest.
    let claimed = store.claim("a", 100, LEASE).await.unwrap();
    assert_eq!((claimed.len(), claimed.iter().filter(|c| c.record.queue.starts_with("small/")).count()), (100, 30));
}

/// A claim that leaves some plugins' tasks to other hosts (they need
/// models the claiming host does not serve) takes none of them, however
/// urgent, and their queue takes no share of it: the claim goes whole to
/// what the host can run; a host that leaves nothing takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_leaves_the_plugins_it_cannot_serve_to_other_hosts() {
    let (store, _) = store("claim_leaving").await;
    let of = |plugin: &str, queue: &str, ids: std::ops::Range<u128>, priority: u8| -> Vec<(TaskRecord, Vec<u8>)> {
        ids.map(|i| {
            let mut r = record(i, None);
            (r.plugin, r.queue, r.priority) = (plugin.into(), queue.into(), priority);
            (r, i.to_le_bytes().to_vec())
        })
        .collect()
    };
    // Queue `gpu` holds only the embedding plugin's tasks; queue `mixed`
    // its most urgent ones beside the echo plugin's.
    store.submit_all(of("t/embed", "gpu", 0..20, 0)).await.unwrap();
    store.submit_all(of("t/embed", "mixed", 100..110, 9)).await.unwrap();
    store.submit_all(of("t/echo", "mixed", 200..230, 0)).await.unwrap();
    let leave = vec!["t/embed".to_owned(), "t/other".to_owned()];
    let claimed = store.claim_leaving("cpu-host", 20, LEASE, &leave).await.unwrap();
    assert_eq!(claimed.len(), 20, "the whole claim goes to the echo tasks");
    assert!(claimed.iter().all(|c| c.record.plugin == "t/echo"), "{:?}", claimed.iter().map(|c| &c.record.plugin));
    // Each read with its own input, as a claim leaving nothing reads them.
    let own_input = |c: &Claimed| c.input.as_deref() == Some(&c.record.id.as_u128().to_le_bytes()[..]);
    assert!(claimed.iter().all(own_input));
    let claimed = store.claim_leaving("cpu-host", 50, LEASE, &leave).await.unwrap();
    assert_eq!(claimed.len(), 10, "the echo tasks' rest, nothing of `t/embed`");
    assert!(store.claim_leaving("cpu-host", 50, LEASE, &leave).await.unwrap().is_empty());
    // A host that leaves nothing takes them all, the urgent first.
    let claimed = store.claim("gpu-host", 50, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 30);
    assert!(claimed.iter().all(|c| c.record.plugin == "t/embed"));
    assert!(claimed.iter().all(own_input));
    let mixed: Vec<u8> = claimed.iter().filter(|c| c.record.queue == "mixed").map(|c| c.record.priority).collect();
    assert_eq!(mixed, vec![9; 10]);
}

/// A claim that leaves some plugins looks only so deep in a queue for
/// tasks it may take (each claim's cost bounded whatever the backlog of
/// left tasks): behind more left tasks than that, it finds none until
/// another host takes some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_leaves_plugins_looks_a_bounded_depth_into_a_queue() {
    let (store, _) = store("claim_lookahead").await;
    let of = |plugin: &str, ids: std::ops::Range<u128>, priority: u8| -> Vec<(TaskRecord, Vec<u8>)> {
        ids.map(|i| {
            let mut r = record(i, None);
            (r.plugin, r.priority) = (plugin.into(), priority);
            (r, Vec::new())
        })
        .collect()
    };
    let deep = super::fair::LOOKAHEAD as u128 + 10;
    store.submit_all(of("embed", 0..deep, 9)).await.unwrap();
    store.submit_all(of("echo", deep..deep + 5, 0)).await.unwrap();
    let leave = ["embed".to_owned()];
    assert!(store.claim_leaving("cpu", 10, LEASE, &leave).await.unwrap().is_empty(), "all behind the lookahead");
    assert_eq!(store.claim("gpu", 20, LEASE).await.unwrap().len(), 20);
    let claimed = store.claim_leaving("cpu", 10, LEASE, &leave).await.unwrap();
    assert_eq!(claimed.len(), 5);
    assert!(claimed.iter().all(|c| c.record.plugin == "echo"));
}

/// A tenant's running limit holds across its queues and across hosts
/// claiming at once; other tenants' queues take the rest of the claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_limit_holds_across_its_queues_and_hosts() {
    use crate::store::{TenantQuotas, TenantRecord};
    let (store, url) = store("tenant_caps").await;
    let quotas = TenantQuotas { max_running: Some(3), ..TenantQuotas::default() };
    store.put_tenant("acme", &TenantRecord::new("root".into(), quotas)).await.unwrap();
    // A tenant without a running limit is not capped.
    store.put_tenant("free", &TenantRecord::new("root".into(), TenantQuotas::default())).await.unwrap();
    submit_to(&store, "acme/a", 1, 20).await;
    submit_to(&store, "acme/b", 100, 20).await;
    submit_to(&store, "free/c", 200, 100).await;
    submit_to(&store, "plain", 300, 100).await;
    let hosts = hosts(&url, 3).await;
    let running_of = |tenant: &'static str| {
        let store = store.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM taskhost_tasks WHERE state = 'running' AND queue LIKE $1 || '/%'",
            )
            .bind(tenant)
            .fetch_one(store.pool())
            .await
            .unwrap();
            n
        }
    };
    let mut acme_queues = HashSet::new();
    for round in 0..4 {
        let claims =
            futures::future::join_all(hosts.iter().enumerate().map(|(i, h)| h.claim(["a", "b", "c"][i], 8, LEASE)))
                .await;
        let claimed: Vec<Claimed> = claims.into_iter().flat_map(Result::unwrap).collect();
        assert_eq!(running_of("acme").await, 3, "round {round}: acme's limit is filled, never passed");
        assert!(claimed.len() > 3, "round {round}: the others take the rest ({})", claimed.len());
        acme_queues
            .extend(claimed.iter().filter(|c| c.record.queue.starts_with("acme/")).map(|c| c.record.queue.clone()));
        // Everything of acme running ends: three more of acme may start.
        for c in claimed {
            store.finish(&c.lease, Outcome::completed(Vec::new())).await.unwrap();
        }
    }
    assert_eq!(acme_queues.len(), 2, "both of acme's queues got turns: {acme_queues:?}");
    assert!(running_of("free").await == 0 && running_of("acme").await == 0);
    // Lifting the limit lets the tenant take a whole claim.
    store.put_tenant("acme", &TenantRecord::new("root".into(), TenantQuotas::default())).await.unwrap();
    sqlx::query("DELETE FROM taskhost_tasks WHERE queue NOT LIKE 'acme/%'").execute(store.pool()).await.unwrap();
    assert_eq!(store.claim("a", 8, LEASE).await.unwrap().len(), 8);
}

/// A flow edited on one host while another ends the flow's root: neither
/// waits for the other in a cycle (the edit reads the root without its
/// row lock), so both commit, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_edit_beside_its_roots_outcome_never_deadlocks() {
    use crate::store::{Change, FlowRecord, FlowUpdate};
    let (a, url) = store("edit_and_end").await;
    let b = PgStore::connect(&url, 4).await.unwrap();
    for n in 1..=30u128 {
        a.submit(record(n, None), Vec::new()).await.unwrap();
        let claimed = a.claim("a", 1, LEASE).await.unwrap().remove(0);
        let id = claimed.record.id;
        let edit = move |stored: Option<FlowRecord>| {
            let flow = stored.unwrap_or_else(|| FlowRecord::new(id, 0));
            Ok(FlowUpdate { flow, tasks: Vec::new() })
        };
        let done = Change::new(id, TaskState::Completed, "done");
        let (edited, ended) = tokio::join!(b.flow_change(id, edit), a.finish_changes(vec![(claimed.lease, done)]));
        edited.unwrap();
        let [ended] = ended.unwrap().try_into().unwrap();
        assert_eq!(ended.unwrap().record.state, TaskState::Completed);
    }
}

/// Moving a running task out of running without its lease (cancelling
/// it, say) ends the lease too: no reaper takes the task back later, and
/// its queue can be claimed from as before.
#[tokio::test]
async fn a_task_moved_out_of_running_loses_its_lease() {
    use crate::store::Change;
    let (store, _) = store("moved_out").await;
    submit(&store, 2, |_| 0).await;
    let claimed = store.claim("a", 1, LEASE).await.unwrap().remove(0);
    store.transition(Change::new(claimed.record.id, TaskState::Cancelled, "cancelled")).await.unwrap();
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM taskhost_leases").fetch_one(store.pool()).await.unwrap();
    assert_eq!(leases, 0);
    assert!(store.reap(10).await.unwrap().is_empty());
    let refused = store.finish(&claimed.lease, Outcome::completed(Vec::new())).await.unwrap_err();
    assert!(matches!(refused, PgError::Fenced { .. }), "{refused}");
    assert_eq!(store.claim("a", 5, LEASE).await.unwrap().len(), 1);
}

/// An outcome refused after its first write (its flow's record cannot be
/// decoded) leaves nothing behind and keeps its lease; the outcome
/// committed beside it is whole.
#[tokio::test]
async fn an_outcome_refused_halfway_writes_nothing_and_its_neighbour_commits() {
    use crate::store::tests::child_of;
    use crate::store::{Change, Effects};
    let (store, _) = store("halfway").await;
    let root = record(1, None);
    store.submit(root.clone(), Vec::new()).await.unwrap();
    let claimed = store.claim("a", 1, LEASE).await.unwrap().remove(0);
    let grow = Effects { flow_id: root.id, children: vec![child_of(1, 2, None)], ..Effects::default() };
    let done = Change::new(root.id, TaskState::Completed, "done").effects(grow);
    store.finish_changes(vec![(claimed.lease, done)]).await.unwrap();
    store.submit(record(3, None), Vec::new()).await.unwrap();
    let claimed = store.claim("a", 2, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 2);
    sqlx::query("UPDATE taskhost_flows SET record = '\\xff'::bytea").execute(store.pool()).await.unwrap();
    let changes = claimed
        .iter()
        .map(|c| {
            let effects = Effects {
                flow_id: c.record.flow_id,
                context: vec![("k".into(), Some(b"v".to_vec()))],
                ..Effects::default()
            };
            let change = Change::new(c.record.id, TaskState::Completed, "done").output(b"out".to_vec());
            let change = if c.record.is_flow_root() { change } else { change.effects(effects) };
            (c.lease.clone(), change)
        })
        .collect();
    let answers = store.finish_changes(changes).await.unwrap();
    for (c, answer) in claimed.iter().zip(answers) {
        let stored = store.get(c.record.id).await.unwrap().unwrap();
        if c.record.is_flow_root() {
            assert_eq!(answer.unwrap().record.state, TaskState::Completed);
            assert_eq!(store.output(c.record.id).await.unwrap().as_deref(), Some(&b"out"[..]));
        } else {
            assert!(matches!(answer, Err(PgError::Record(StoreError::Corrupt(_)))), "{answer:?}");
            assert_eq!(stored, c.record, "nothing of the refused outcome was written");
            assert_eq!(store.output(c.record.id).await.unwrap(), None);
            assert!(store.renew(std::slice::from_ref(&c.lease), LEASE).await.unwrap().is_empty(), "its lease is live");
        }
    }
}

/// A task row whose record cannot be decoded is set aside by the first
/// claim or reap that reads it, with why, instead of failing every host's
/// claims; the tasks beside it are claimed as ever.
#[tokio::test]
async fn a_record_that_cannot_be_decoded_is_quarantined_not_claimed_forever() {
    let (store, _) = store("quarantine").await;
    submit(&store, 4, |_| 0).await;
    let damaged = [Uuid::from_u128(2), Uuid::from_u128(3)];
    sqlx::query("UPDATE taskhost_tasks SET record = '\\xffff'::bytea WHERE id = $1")
        .bind(damaged[0])
        .execute(store.pool())
        .await
        .unwrap();
    let claimed = store.claim("a", 10, LEASE).await.unwrap();
    let ids: Vec<Uuid> = claimed.iter().map(|c| c.record.id).collect();
    assert_eq!(ids, [Uuid::from_u128(1), Uuid::from_u128(3), Uuid::from_u128(4)]);
    let quarantined = store.quarantined().await.unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].0, damaged[0]);
    assert!(quarantined[0].1.contains("corrupt record"), "{quarantined:?}");
    assert!(store.claim("b", 10, LEASE).await.unwrap().is_empty(), "never read again");
    // An outcome for a task quarantined while it ran says so.
    sqlx::query("UPDATE taskhost_tasks SET record = '\\xffff'::bytea WHERE id = $1")
        .bind(claimed[2].record.id)
        .execute(store.pool())
        .await
        .unwrap();
    let refused = store.finish(&claimed[2].lease, Outcome::completed(Vec::new())).await.unwrap_err();
    assert!(matches!(refused, PgError::Quarantined { id, .. } if id == claimed[2].record.id), "{refused}");
    let claimed = &claimed[..2];
    assert_eq!(store.state_counts().await.unwrap(), [(TaskState::Running, 2)]);
    // A running task whose record is damaged while it runs: its reap sets
    // it aside (and its lease goes), and the others are taken back.
    sqlx::query("UPDATE taskhost_tasks SET record = '\\xffff'::bytea WHERE id = $1")
        .bind(damaged[1])
        .execute(store.pool())
        .await
        .unwrap();
    for c in claimed {
        lapse(&store, c.record.id).await;
    }
    let reaped: Vec<Uuid> = store.reap(10).await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(reaped, [Uuid::from_u128(1)]);
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM taskhost_leases").fetch_one(store.pool()).await.unwrap();
    assert_eq!(leases, 0);
    assert_eq!(store.quarantined().await.unwrap().len(), 3);
    // A claim that finds only a damaged task still sets it aside.
    let lone = record(9, None);
    store.submit(lone.clone(), Vec::new()).await.unwrap();
    sqlx::query("UPDATE taskhost_tasks SET record = '\\xffff'::bytea WHERE id = $1")
        .bind(lone.id)
        .execute(store.pool())
        .await
        .unwrap();
    let _ = store.claim("c", 10, LEASE).await.unwrap();
    assert_eq!(store.quarantined().await.unwrap().len(), 4, "committed though nothing was claimed");
    counts_agree(&store).await;
}

/// A host waiting for work wakes when another host commits startable work
/// (a submission; a retry), and not for a commit that makes nothing
/// startable (a claim, a completion, a keyed submission that names a
/// stored task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_host_wakes_when_another_commits_startable_work() {
    use super::Wakeup;
    use tokio::time::timeout;
    let (a, url) = store("wakeups").await;
    let b = PgStore::connect(&url, 4).await.unwrap();
    let mut waiting = a.wakeups().await.unwrap();
    // Long enough for a notification on loopback, which arrives in
    // milliseconds; this is a check that none came, not a timing.
    let quiet = Duration::from_millis(300);
    let soon = Duration::from_secs(10);
    assert!(timeout(quiet, waiting.next()).await.is_err(), "nothing woke it yet");
    b.submit(record(1, None), Vec::new()).await.unwrap();
    assert_eq!(timeout(soon, waiting.next()).await.unwrap().unwrap(), Wakeup::Work);
    let claimed = b.claim("b", 1, LEASE).await.unwrap().remove(0);
    assert!(timeout(quiet, waiting.next()).await.is_err(), "a claim makes nothing startable");
    let retry =
        Outcome { to: TaskState::Retrying, reason: "flaky".into(), output: None, error: None, retry_at_ms: Some(0) };
    b.finish(&claimed.lease, retry).await.unwrap();
    assert_eq!(timeout(soon, waiting.next()).await.unwrap().unwrap(), Wakeup::Work);
    let claimed = a.claim("a", 1, LEASE).await.unwrap().remove(0);
    a.finish(&claimed.lease, Outcome::completed(Vec::new())).await.unwrap();
    assert!(timeout(quiet, waiting.next()).await.is_err(), "a completion makes nothing startable");
    // A keyed submission wakes it once it made a task; naming that task
    // again, it makes none.
    assert!(b.submit(record(20, Some("k")), Vec::new()).await.unwrap().created);
    assert_eq!(timeout(soon, waiting.next()).await.unwrap().unwrap(), Wakeup::Work);
    assert!(!b.submit(record(21, Some("k")), Vec::new()).await.unwrap().created);
    assert!(timeout(quiet, waiting.next()).await.is_err(), "a submission that made no task");
    // Many commits while nobody waits: one wake-up, not a backlog.
    for n in 2..12 {
        b.submit(record(n, None), Vec::new()).await.unwrap();
    }
    // However late the reader takes in the ten, they wake it at most twice
    // (one waiting, one taken in after that was read), not ten times.
    let mut woken = 0;
    while let Ok(wakeup) = timeout(Duration::from_secs(1), waiting.next()).await {
        assert_eq!(wakeup.unwrap(), Wakeup::Work);
        woken += 1;
    }
    assert!((1..=2).contains(&woken), "the ten commits woke it {woken} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_asking_for_a_new_secret_at_once_all_get_the_same() {
    let (first, url) = store("secret_race").await;
    let mut hosts = vec![first];
    for _ in 0..5 {
        hosts.push(PgStore::connect(&url, 2).await.unwrap());
    }
    let secrets = futures::future::join_all(hosts.iter().map(|h| h.secret("callbacks/default"))).await;
    let secrets: HashSet<Vec<u8>> = secrets.into_iter().map(Result::unwrap).collect();
    assert_eq!(secrets.len(), 1, "every host signs with the one stored secret");
    assert_eq!(secrets.into_iter().next().unwrap().len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_changes_from_several_hosts_at_once_lose_nothing() {
    let (first, url) = store("plugin_race").await;
    let mut hosts = vec![first];
    for _ in 0..3 {
        hosts.push(PgStore::connect(&url, 2).await.unwrap());
    }
    let version = |n: usize| crate::store::PluginVersion {
        version: n.to_string(),
        digest: format!("d{}", n % 2),
        size: 1,
        created_at_ms: 1,
        script: None,
    };
    // Sixteen uploads to one name, four per host, sharing two digests.
    let uploads = (0..16).map(|n| hosts[n % 4].put_plugin_version("p", version(n), vec![u8::try_from(n % 2).unwrap()]));
    for done in futures::future::join_all(uploads).await {
        done.unwrap();
    }
    let plugins = hosts[0].plugins().await.unwrap();
    let mut versions: Vec<usize> = plugins[0].1.versions.iter().map(|v| v.version.parse().unwrap()).collect();
    versions.sort_unstable();
    assert_eq!(versions, (0..16).collect::<Vec<_>>(), "no host's upload overwrote another's");
    let blobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM taskhost_blobs").fetch_one(hosts[0].pool()).await.unwrap();
    assert_eq!(blobs, 2);

    hosts[3]
        .edit_plugin("p", |entry| {
            entry.versions.clear();
            vec!["d0".into(), "d1".into()]
        })
        .await
        .unwrap();
    assert_eq!(hosts[0].blob("d0").await.unwrap(), None);
    assert_eq!(hosts[0].blob("d1").await.unwrap(), None);

    // A version added with d0 while another host removes the only other
    // version that has d0: whichever commits first, the bytes stay for the
    // new one.
    hosts[0].put_plugin_version("q", version(0), vec![0]).await.unwrap();
    let (added, dropped) = tokio::join!(
        hosts[1].put_plugin_version("r", version(2), vec![0]),
        hosts[2].edit_plugin("q", |entry| {
            entry.versions.clear();
            vec!["d0".into()]
        })
    );
    added.unwrap();
    dropped.unwrap();
    assert_eq!(hosts[0].blob("d0").await.unwrap(), Some(vec![0]), "plugin r references d0");

    // Two hosts numbering an upload alike: the same bytes are the same
    // version; other bytes under a number taken are refused, naming it.
    hosts[1].put_plugin_version("r", version(2), vec![0]).await.unwrap();
    let mut other = version(2);
    other.digest = "d9".into();
    let refused = hosts[3].put_plugin_version("r", other, vec![9]).await.unwrap_err();
    assert!(refused.to_string().contains("version 2 of plugin r was just stored with other bytes"), "{refused}");
    let plugins = hosts[0].plugins().await.unwrap();
    let r = &plugins.iter().find(|(name, _)| name == "r").unwrap().1;
    assert_eq!(r.versions.iter().map(|v| (v.version.as_str(), v.digest.as_str())).collect::<Vec<_>>(), [("2", "d0")]);
    assert_eq!(hosts[0].blob("d9").await.unwrap(), None, "nothing of the refused upload was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_from_before_the_listings_table_are_filled_on_connect() {
    let (store, url) = store("fill_listing").await;
    let mut records = Vec::new();
    for i in 1..=5u128 {
        let mut r = record(i, None);
        r.input_len = 2;
        assert!(store.submit(r.clone(), b"in".to_vec()).await.unwrap().created);
        records.push(r);
    }
    // As a store of schema 6 left them when migration 7 ran: no listing
    // rows, and the mark of what to fill; and one record that cannot be
    // decoded.
    sqlx::query("DELETE FROM taskhost_listed").execute(store.pool()).await.unwrap();
    sqlx::query("INSERT INTO taskhost_listed_fill SELECT id FROM taskhost_tasks ORDER BY id DESC LIMIT 1")
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE taskhost_tasks SET record = '\\x00ff'::bytea WHERE id = $1")
        .bind(records[4].id)
        .execute(store.pool())
        .await
        .unwrap();
    let by_plugin = TaskQuery { plugin: Some("p".into()), ..TaskQuery::default() };
    let listing = Listing { limit: 10, ..Listing::default() };
    assert!(store.list_page(&by_plugin, &listing).await.unwrap().tasks.is_empty());

    let store = PgStore::connect(&url, 2).await.unwrap();
    let listed: Vec<Uuid> = store.list_page(&by_plugin, &listing).await.unwrap().tasks.iter().map(|r| r.id).collect();
    assert_eq!(listed, [records[0].id, records[1].id, records[2].id, records[3].id]);
    let iteration: Vec<Uuid> = store.iteration_tasks(records[0].id, 0).await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(iteration, [records[0].id], "a root is found in its flow's first iteration");
    assert_eq!(store.quarantined().await.unwrap().len(), 1, "the undecodable task is set aside");
    let marks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM taskhost_listed_fill").fetch_one(store.pool()).await.unwrap();
    assert_eq!(marks, 0, "the fill is done once");
    // Their bytes count for their tenant as they are listed (migration
    // 14 counted only the tasks listed then): those of the four decoded.
    let totals = store.add_tenant_bytes("h", 1, &HashMap::new(), None).await.unwrap();
    assert_eq!(totals, HashMap::from([("default".to_owned(), 8)]));
}

/// The bytes tenants keep: migration 14 counts what is stored (inputs,
/// outputs, transcripts, by the plugin's tenant); hosts adding their
/// changes at once lose none of them; a batch sent again (its answer was
/// lost) is added once; totals are signed sums, read as zero while below
/// it, so a deletion counted before its admission is not lost; a host
/// serving alone replaces them with its own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bytes_tenants_keep_are_counted_across_hosts() {
    let (store, url) = store("tenant_bytes").await;
    let mut kept = HashMap::<String, u64>::new();
    for (n, plugin, input) in [(1u128, "p", 10usize), (2, "acme/p", 300), (3, "acme/q", 7), (4, "p", 0)] {
        let mut r = record(n, None);
        (r.plugin, r.input_len) = (plugin.into(), input as u64);
        assert!(store.submit(r, vec![b'x'; input]).await.unwrap().created);
        *kept.entry(crate::tenant::tenant_of(plugin).to_owned()).or_default() += input as u64;
    }
    let claimed = store.claim("a", 10, LEASE).await.unwrap();
    for c in &claimed {
        store.finish(&c.lease, Outcome::completed(vec![b'o'; 5])).await.unwrap();
        *kept.get_mut(crate::tenant::tenant_of(&c.record.plugin)).unwrap() += 5;
    }
    sqlx::query("INSERT INTO taskhost_logs (task_id, attempt, log) VALUES ($1, 1, '\\x010203'::bytea)")
        .bind(Uuid::from_u128(2))
        .execute(store.pool())
        .await
        .unwrap();
    *kept.get_mut("acme").unwrap() += 3;
    // The migration's count, run again over what is stored now.
    let migration = include_str!("../../../migrations/postgres/0014_tenant_bytes.sql");
    let count = &migration[migration.find("INSERT INTO taskhost_tenant_bytes (").unwrap()..];
    sqlx::query("DELETE FROM taskhost_tenant_bytes").execute(store.pool()).await.unwrap();
    sqlx::query(count).execute(store.pool()).await.unwrap();
    let read = |store: &PgStore| {
        let store = store.clone();
        async move { store.add_tenant_bytes("reader", 1, &HashMap::new(), None).await.unwrap() }
    };
    assert_eq!(read(&store).await, kept);

    // Eight hosts add at once, each to both tenants and a new one.
    let hosts = hosts(&url, 8).await;
    let batch =
        |i: usize| HashMap::from([("default".to_owned(), 100), ("acme".to_owned(), -1), (format!("t{}", i % 2), 1)]);
    let adds = hosts.iter().enumerate().map(|(i, h)| async move {
        assert_eq!(h.tenant_bytes_sent(&format!("h{i}")).await.unwrap(), 0);
        h.add_tenant_bytes(&format!("h{i}"), 1, &batch(i), None).await.unwrap()
    });
    futures::future::join_all(adds).await;
    let totals = read(&store).await;
    assert_eq!(totals["default"], kept["default"] + 800);
    assert_eq!(totals["acme"], kept["acme"] - 8);
    // Host h0's batch 1 again (its answer was lost): added once.
    assert_eq!(hosts[0].add_tenant_bytes("h0", 1, &batch(0), None).await.unwrap(), totals);
    assert_eq!(hosts[0].tenant_bytes_sent("h0").await.unwrap(), 1);
    // Retention's deletion of t1's bytes counted before the admissions
    // that stored them: read as zero, then the admissions bring it back.
    let deleted = store.add_tenant_bytes("leader", 1, &HashMap::from([("t1".to_owned(), -104)]), None).await.unwrap();
    assert_eq!((deleted["t0"], deleted["t1"]), (4, 0), "read as zero while below it");
    let admitted = store.add_tenant_bytes("late", 1, &HashMap::from([("t1".to_owned(), 110)]), None).await.unwrap();
    assert_eq!(admitted["t1"], 10, "the deletion still counts");
    // A host serving alone counts anew.
    store.recount_tenant_bytes(&HashMap::from([("default".to_owned(), 42)])).await.unwrap();
    assert_eq!(read(&store).await, HashMap::from([("default".to_owned(), 42)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_from_many_callers_commit_together_each_settled_alone() {
    let (store, _) = store("committer").await;
    let committer = store.committer(CommitConfig { queue: 32, batch: 64, workers: 2, fence: None });
    // 300 submissions at once, the last 100 repeating keys of the first
    // 100 keyed ones.
    let submissions = (1..=300u128).map(|n| {
        let key = (n > 100).then(|| format!("k{}", (n - 101) % 100));
        let committer = committer.clone();
        tokio::spawn(async move { committer.submit(record(n, key.as_deref()), b"in".to_vec()).await.unwrap() })
    });
    let answers: Vec<Submitted> =
        futures::future::join_all(submissions).await.into_iter().map(Result::unwrap).collect();
    let created = answers.iter().filter(|a| a.created).count();
    assert_eq!(created, 200, "each key's first submission creates its task; a repeat finds it");
    let mut by_key: HashMap<String, HashSet<Uuid>> = HashMap::new();
    for answer in &answers {
        if let Some(key) = &answer.record.idempotency_key {
            by_key.entry(key.clone()).or_default().insert(answer.record.id);
        }
    }
    assert!(by_key.len() == 100 && by_key.values().all(|ids| ids.len() == 1), "one task per key");
    let (batches, operations) = committer.committed();
    assert_eq!(operations, 300);
    assert!(batches < 300, "operations waiting together commit together ({batches} batches)");

    // Transitions at once, every other one with a stale version: those
    // are refused and their neighbours in the same batches commit.
    let ids: Vec<Uuid> = answers.iter().filter(|a| a.created).map(|a| a.record.id).collect();
    let changes = ids.iter().enumerate().map(|(i, id)| {
        let version = if i % 2 == 0 { 1 } else { 7 };
        let change = Change::new(*id, TaskState::Cancelled, "t").expect_version(version);
        let committer = committer.clone();
        tokio::spawn(async move { committer.transition(change).await })
    });
    let results: Vec<_> = futures::future::join_all(changes).await.into_iter().map(Result::unwrap).collect();
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.is_ok(), i % 2 == 0, "transition {i}: {result:?}");
    }
    let cancelled = store.state_counts().await.unwrap().into_iter().find(|(s, _)| *s == TaskState::Cancelled);
    assert_eq!(cancelled, Some((TaskState::Cancelled, 100)));

    // In one batch: a submission of an id stored already, and two of a new
    // id: the first of those is stored, the others are refused (their
    // writes discarded), and their neighbours commit.
    let again = |n: u128| PgOp::Submit { record: Box::new(record(n, None)), input: b"again".to_vec(), claim: None };
    let answers = store.commit_ops(vec![again(1), again(500), again(500), again(501)], None).await.unwrap();
    let refused = |a: &Result<Done, PgError>| matches!(a, Err(PgError::Record(StoreError::Refused(_))));
    assert!(refused(&answers[0]) && refused(&answers[2]), "{answers:?}");
    assert!(matches!(&answers[1], Ok(Done::Submitted(s, None)) if s.created), "{answers:?}");
    assert!(matches!(&answers[3], Ok(Done::Submitted(s, None)) if s.created), "{answers:?}");
    assert_eq!(store.input(Uuid::from_u128(1)).await.unwrap().unwrap(), b"in", "the stored task is unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_and_cancels_racing_across_hosts_each_end_a_task_once() {
    let (a, url) = store("committer_race").await;
    let b = PgStore::connect(&url, 4).await.unwrap();
    submit(&a, 60, |_| 0).await;
    let claimed = a.claim("a", 60, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 60);
    let (finishing, cancelling) = (
        a.committer(CommitConfig { queue: 64, batch: 16, workers: 2, fence: None }),
        b.committer(CommitConfig::default()),
    );
    // Host a finishes every task (each outcome twice: the second under the
    // same lease is fenced) while host b cancels them, in batches of both
    // hosts at once: none may fail for a deadlock.
    let mut calls = Vec::new();
    for c in &claimed {
        for _ in 0..2 {
            let (committer, lease) = (finishing.clone(), c.lease.clone());
            calls.push(tokio::spawn(async move {
                committer.finish(lease, Outcome::completed(b"out".to_vec())).await.map(|r| r.state)
            }));
        }
        let (committer, id) = (cancelling.clone(), c.record.id);
        calls.push(tokio::spawn(async move {
            committer.transition(Change::new(id, TaskState::Cancelled, "cancelled")).await.map(|a| a.record.state)
        }));
    }
    let answers: Vec<_> = futures::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();
    for (i, task) in answers.chunks(3).enumerate() {
        for answer in task {
            assert!(
                !matches!(answer, Err(PgError::BatchFailed { .. } | PgError::Database(_))),
                "task {i}: no batch fails: {answer:?}"
            );
        }
        let completed = task[..2].iter().filter(|a| matches!(a, Ok(TaskState::Completed))).count();
        let cancelled = matches!(task[2], Ok(TaskState::Cancelled));
        assert!(completed <= 1, "task {i}: one outcome per lease: {task:?}");
        let id = claimed[i].record.id;
        let stored = a.get(id).await.unwrap().unwrap();
        // Completed then cancelled is refused (a final state); cancelled
        // first voids the lease, so no outcome commits after it.
        match stored.state {
            TaskState::Completed => assert!(completed == 1 && !cancelled, "task {i}: {task:?}"),
            TaskState::Cancelled => assert!(completed == 0 && cancelled, "task {i}: {task:?}"),
            other => panic!("task {i} ended {other:?}"),
        }
    }
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM taskhost_leases").fetch_one(a.pool()).await.unwrap();
    assert_eq!(leases, 0, "every lease ended with its task");
    counts_agree(&b).await;
}

/// A host holding the engine lock that stopped renewing its lease (frozen:
/// its lock's session lives on) is taken over by a starting host: its
/// session is ended, the lead moves under a new term, and a commit fenced
/// by the old term writes nothing. While the lease is live, the second
/// host is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_engine_is_taken_over_and_its_commits_are_refused() {
    let (store, url) = store("deposed").await;
    // Host a, frozen: the lock and the lead taken by hand, never renewed.
    let mut frozen = store.pool().acquire().await.unwrap().detach();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended('taskhost sole engine', 0))")
        .fetch_one(&mut frozen)
        .await
        .unwrap();
    assert!(locked);
    let old = PgStore::take_lead(&mut frozen, "a", MIN_LEASE).await.unwrap();
    let b = PgStore::connect(&url, 4).await.unwrap();
    let refused = b.hold_sole_engine("b", MIN_LEASE).await.unwrap_err();
    assert!(matches!(refused, PgError::InUse), "{refused:?}");
    // a's lease lapses.
    sqlx::query("UPDATE taskhost_leader SET expires_at = clock_timestamp() - interval '1 second'")
        .execute(store.pool())
        .await
        .unwrap();
    let sole = b.hold_sole_engine("b", MIN_LEASE).await.unwrap();
    assert!(sole.term() > old);
    let leader = b.leader().await.unwrap().unwrap();
    assert_eq!((leader.host.as_str(), leader.term, leader.live), ("b", sole.term(), true));
    // a's session was ended; its commits, fenced by its term, write nothing.
    assert!(sqlx::query("SELECT 1").execute(&mut frozen).await.is_err(), "a's lock session was ended");
    let fenced = store.committer(CommitConfig { fence: Some(old), ..CommitConfig::default() });
    let refused = fenced.submit(record(1, None), b"in".to_vec()).await.unwrap_err();
    assert!(
        matches!(&refused, PgError::BatchFailed { transient: false, why } if why.contains("no longer the engine")),
        "{refused:?}"
    );
    assert!(store.get(record(1, None).id).await.unwrap().is_none(), "nothing of a's was written");
    // b's commits go through.
    let current = b.committer(CommitConfig { fence: Some(sole.term()), ..CommitConfig::default() });
    assert!(current.submit(record(2, None), b"in".to_vec()).await.unwrap().created);
    // So are its claims: a's, fenced by its old term, take nothing; b's take
    // the task.
    let refused = store.claim_fenced("a", 10, MIN_LEASE, Some(old), &[], &Default::default()).await.unwrap_err();
    assert!(matches!(refused, PgError::Deposed), "{refused:?}");
    let claimed = b.claim_fenced("b", 10, MIN_LEASE, Some(sole.term()), &[], &Default::default()).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.record.id).collect::<Vec<_>>(), [record(2, None).id]);
    // The lock is b's: a third host is refused.
    let c = PgStore::connect(&url, 2).await.unwrap();
    assert!(matches!(c.hold_sole_engine("c", MIN_LEASE).await, Err(PgError::InUse)));
    // Renewals keep b's lease live: 3 s on, more than 3 s of it is left.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let left = b.leader().await.unwrap().unwrap();
    assert!(left.live && left.left > Duration::from_millis(3500), "{left:?}");
    // A commit in flight under b's term holds off a takeover until it
    // ends; then b's term stands replaced.
    let txn = b.begin_fenced(Some(sole.term())).await.unwrap();
    let mut taker = c.pool().acquire().await.unwrap().detach();
    let taking = tokio::spawn(async move { PgStore::take_lead(&mut taker, "c", MIN_LEASE).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!taking.is_finished(), "a takeover waits for the commit in flight");
    txn.commit().await.unwrap();
    let newer = taking.await.unwrap().unwrap();
    assert!(newer > sole.term());
    let refused = b.begin_fenced(Some(sole.term())).await.unwrap_err();
    assert!(matches!(refused, PgError::Deposed), "{refused:?}");
}

/// A fenced transaction begun while a takeover is in flight waits for it
/// and then sees it: refused as deposed, nothing open on its connection;
/// a term whose lease lapsed is refused as lapsed; the term that leads
/// begins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_begin_waits_for_a_takeover_in_flight_and_is_refused_after_it() {
    let (store, url) = store("fenced_begin").await;
    let mut conn = store.pool().acquire().await.unwrap().detach();
    let term = PgStore::take_lead(&mut conn, "a", MIN_LEASE).await.unwrap();
    drop(store.begin_fenced(Some(term)).await.unwrap());
    // One connection: a refusal must leave it fit for the next use.
    let a = PgStore::connect(&url, 1).await.unwrap();
    // A takeover in flight: the fence held exclusively, the row written.
    let mut taker = store.pool().begin().await.unwrap();
    // The name `take_lead` locks: `taskhost_fence` must wait on the same.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(super::leader::FENCE)
        .execute(&mut *taker)
        .await
        .unwrap();
    sqlx::query("UPDATE taskhost_leader SET host = 'b', term = nextval('taskhost_leader_terms')")
        .execute(&mut *taker)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let a = a.clone();
        async move { a.begin_fenced(Some(term)).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a fenced begin waits for the takeover in flight");
    taker.commit().await.unwrap();
    let refused = waiting.await.unwrap().unwrap_err();
    assert!(matches!(refused, PgError::Deposed), "{refused:?}");
    let left: i32 = sqlx::query_scalar("SELECT 7").fetch_one(a.pool()).await.unwrap();
    assert_eq!(left, 7, "the refused connection is fit for use");
    let newer: i64 = sqlx::query_scalar("SELECT term FROM taskhost_leader").fetch_one(a.pool()).await.unwrap();
    let mut txn = a.begin_fenced(Some(Term(newer))).await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *txn).await.unwrap();
    txn.commit().await.unwrap();
    // The new term's lease lapses: its commits wait for a renewal.
    sqlx::query("UPDATE taskhost_leader SET expires_at = clock_timestamp() - interval '1 second'")
        .execute(a.pool())
        .await
        .unwrap();
    let lapsed = a.begin_fenced(Some(Term(newer))).await.unwrap_err();
    assert!(matches!(lapsed, PgError::Lapsed), "{lapsed:?}");
    let refused = a.begin_fenced(Some(term)).await.unwrap_err();
    assert!(matches!(refused, PgError::Deposed), "{refused:?}");
    // Unfenced, it begins as ever.
    drop(a.begin_fenced(None).await.unwrap());
}

/// A transaction begun waking the hosts wakes them when it commits, and
/// only then: not when it rolls back, nor when its fence refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waking_begin_wakes_the_hosts_only_if_its_transaction_commits() {
    use super::Wakeup;
    use tokio::time::timeout;
    let (store, _url) = store("waking_begin").await;
    let mut waiting = store.wakeups().await.unwrap();
    // Long enough for a notification on loopback, which arrives in
    // milliseconds; this is a check that none came, not a timing.
    let quiet = Duration::from_millis(300);
    let mut conn = store.pool().acquire().await.unwrap().detach();
    let term = PgStore::take_lead(&mut conn, "a", MIN_LEASE).await.unwrap();
    for fence in [None, Some(term)] {
        let txn = store.begin_waking(fence).await.unwrap();
        assert!(timeout(quiet, waiting.next()).await.is_err(), "nothing before the commit");
        txn.rollback().await.unwrap();
        assert!(timeout(quiet, waiting.next()).await.is_err(), "a rollback wakes nobody");
        store.begin_waking(fence).await.unwrap().commit().await.unwrap();
        let woken = timeout(Duration::from_secs(10), waiting.next()).await;
        assert_eq!(woken.unwrap().unwrap(), Wakeup::Work, "fence {fence:?}");
    }
    sqlx::query("UPDATE taskhost_leader SET host = 'b', term = nextval('taskhost_leader_terms')")
        .execute(store.pool())
        .await
        .unwrap();
    let refused = store.begin_waking(Some(term)).await.unwrap_err();
    assert!(matches!(refused, PgError::Deposed), "{refused:?}");
    assert!(timeout(quiet, waiting.next()).await.is_err(), "a refused begin wakes nobody");
}

/// Sessions of this database waiting for the engine lock.
async fn queued_on_the_engine_lock(store: &PgStore) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks AS l JOIN pg_database AS d ON d.oid = l.database
         WHERE d.datname = current_database() AND l.locktype = 'advisory' AND NOT l.granted
           AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended('taskhost sole engine', 0)",
    )
    .fetch_one(store.pool())
    .await
    .unwrap()
}

/// A standby waits while a host holds the database, told who leads, and
/// takes over within a poll once the holder stops (its connection ends);
/// of two standbys, one takes over and the other waits on, for it. A
/// standby told to stop stops waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_once_the_holder_stops_and_only_one_does() {
    let (store, url) = store("standby").await;
    let a = store.hold_sole_engine("a", MIN_LEASE).await.unwrap();
    let stand_by = |name: &'static str| {
        let url = url.clone();
        let (standby, seen) = Standby::new();
        let waiting = tokio::spawn({
            let standby = standby.clone();
            async move {
                let store = PgStore::connect(&url, 2).await.unwrap();
                let sole = store.stand_by_for_sole_engine(name, MIN_LEASE, &standby).await?;
                Ok::<_, PgError>((name, sole, store))
            }
        });
        (waiting, standby, seen)
    };
    let ((b, _, mut seen), (c, _, _)) = (stand_by("b"), stand_by("c"));
    tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|s| matches!(s, StandbyState::Held(Some(_)))))
        .await
        .expect("told who leads")
        .unwrap();
    match &*seen.borrow() {
        StandbyState::Held(Some(leader)) => assert_eq!((leader.host.as_str(), leader.live), ("a", true)),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(STANDBY_POLL * 2).await;
    assert!(!b.is_finished() && !c.is_finished(), "standbys wait while a holds the database");
    // Each is queued on the lock, to be granted it the moment a's session ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let queued = queued_on_the_engine_lock(&store).await;
        if queued == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{queued} standbys queued on the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // a stops: one standby takes over within a poll or two, the other waits on.
    let stopped = std::time::Instant::now();
    drop(a);
    while !b.is_finished() && !c.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Well within a lease (it comes from the lock's queue: no lease lapsed).
    assert!(stopped.elapsed() < MIN_LEASE, "took over after {:?}", stopped.elapsed());
    let (first, second) = if b.is_finished() { (b.await, c) } else { (c.await, b) };
    let (name, sole, taker) = first.unwrap().unwrap();
    let leader = taker.leader().await.unwrap().unwrap();
    assert_eq!((leader.host.as_str(), leader.term, leader.live), (name, sole.term(), true));
    tokio::time::sleep(STANDBY_POLL * 4).await;
    assert!(!second.is_finished(), "the other standby waits on for {name}");
    drop(sole);
    let (next, sole, _) =
        tokio::time::timeout(Duration::from_secs(10), second).await.expect("the second took over").unwrap().unwrap();
    assert_ne!(next, name);
    assert!(sole.term() > leader.term);
    // A standby told to stop stops waiting, and takes nothing over.
    let (waiting, standby, _) = stand_by("d");
    tokio::time::sleep(STANDBY_POLL * 2).await;
    standby.stop();
    let stood_down = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("it stopped").unwrap();
    assert!(matches!(stood_down, Err(PgError::StoodDown)), "{:?}", stood_down.map(|(n, ..)| n));
    assert_eq!(taker.leader().await.unwrap().unwrap().term, sole.term());
}

/// A standby whose connection is cut (the server ended its session, as a
/// restart would) connects again and goes on waiting, then takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_loses_its_connection_connects_again() {
    let (store, url) = store("standby_reconnects").await;
    let a = store.hold_sole_engine("a", MIN_LEASE).await.unwrap();
    let (standby, mut seen) = Standby::new();
    let waiting = tokio::spawn({
        let standby = standby.clone();
        async move {
            let store = PgStore::connect(&url, 2).await.unwrap();
            store.stand_by_for_sole_engine("b", MIN_LEASE, &standby).await.map(|sole| (sole, store))
        }
    });
    let held = |s: &StandbyState| matches!(s, StandbyState::Held(Some(_)));
    tokio::time::timeout(Duration::from_secs(5), seen.wait_for(held)).await.unwrap().unwrap();
    // End every session of this database but the holder's and ours.
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND pid <> (SELECT pid FROM taskhost_leader)",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(!ended.is_empty(), "the standby's session was ended");
    tokio::time::timeout(Duration::from_secs(5), seen.wait_for(|s| *s == StandbyState::Looking))
        .await
        .expect("it noticed")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), seen.wait_for(held)).await.expect("it looks again").unwrap();
    assert!(!waiting.is_finished(), "it waits on");
    drop(a);
    let (sole, b) = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("took over").unwrap().unwrap();
    assert_eq!(b.leader().await.unwrap().unwrap().term, sole.term());
}

/// A standby that froze while queued on the lock (its process alive, its
/// runtime stopped) and is granted it when the holder stops cannot keep
/// it: the server ends its idle session after a lease, and the next
/// standby takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard held across awaits is the freeze: it stops the other runtime.
#[allow(clippy::await_holding_lock)]
async fn a_frozen_standby_granted_the_lock_lets_it_go_after_a_lease() {
    use std::sync::{Arc, Mutex};
    let (store, url) = store("standby_frozen").await;
    let a = store.hold_sole_engine("a", MIN_LEASE).await.unwrap();
    let until_queued = |n: i64| {
        let store = &store;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while queued_on_the_engine_lock(store).await != n {
                assert!(std::time::Instant::now() < deadline, "{n} standbys never queued");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Standby f, first in the lock's queue, on a runtime of its own that
    // the test freezes by holding `freeze`.
    let freeze = Arc::new(Mutex::new(()));
    let (f, _) = Standby::new();
    let frozen = std::thread::spawn({
        let (freeze, f, url) = (freeze.clone(), f.clone(), url.clone());
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let store = PgStore::connect(&url, 2).await.unwrap();
                let freezer = async {
                    loop {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        drop(freeze.lock().unwrap());
                    }
                };
                tokio::select! {
                    waited = store.stand_by_for_sole_engine("f", MIN_LEASE, &f) => waited.map(drop),
                    () = freezer => unreachable!(),
                }
            })
        }
    });
    until_queued(1).await;
    let (g, _) = Standby::new();
    let waiting = tokio::spawn({
        let (g, url) = (g.clone(), url.clone());
        async move {
            let store = PgStore::connect(&url, 2).await.unwrap();
            store.stand_by_for_sole_engine("g", MIN_LEASE, &g).await.map(|sole| (sole, store))
        }
    });
    until_queued(2).await;
    let held = freeze.lock().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // a stops: the lock goes to f's session, which nobody reads now.
    let stopped = std::time::Instant::now();
    drop(a);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiting.is_finished(), "the frozen standby was granted the lock first");
    let (sole, taker) =
        tokio::time::timeout(MIN_LEASE + Duration::from_secs(6), waiting).await.expect("g took over").unwrap().unwrap();
    let took = stopped.elapsed();
    assert!(took >= MIN_LEASE, "f held the lock for a lease first: {took:?}");
    assert_eq!(taker.leader().await.unwrap().unwrap().term, sole.term());
    drop(held);
    f.stop();
    let f_ended = tokio::task::spawn_blocking(move || frozen.join().unwrap()).await.unwrap();
    assert!(f_ended.is_err(), "f took nothing over");
}

/// Whether task `n` is blocked, and the dependencies it waits for.
async fn waits_of(store: &PgStore, n: u128) -> (bool, Vec<Uuid>) {
    let id = Uuid::from_u128(n);
    let blocked: bool = sqlx::query_scalar("SELECT blocked FROM taskhost_tasks WHERE id = $1")
        .bind(id)
        .fetch_one(store.pool())
        .await
        .unwrap();
    let deps: Vec<Uuid> = sqlx::query_scalar("SELECT dep FROM taskhost_waits WHERE task = $1 ORDER BY dep")
        .bind(id)
        .fetch_all(store.pool())
        .await
        .unwrap();
    (blocked, deps)
}

/// Claims up to 10 tasks for `host` and gives their numbers.
async fn claim_ids(store: &PgStore, host: &str) -> (Vec<u128>, Vec<Claimed>) {
    let mut claimed = store.claim(host, 10, LEASE).await.unwrap();
    claimed.sort_by_key(|c| c.record.id);
    (claimed.iter().map(|c| c.record.id.as_u128()).collect(), claimed)
}

/// A task that joins others of its flow is claimed by no host until each
/// of them ended (completed, failed, cancelled or quarantined); one
/// waiting for a task that ends in the same transaction, or for one that
/// does not exist, waits for nothing; a waiting task cancelled leaves no
/// wait behind; and the tasks it released wake idle hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_task_is_claimed_once_every_task_it_waits_for_ended() {
    use crate::store::Change;
    use crate::store::tests::child_of;
    let (a, url) = store("joins").await;
    let b = PgStore::connect(&url, 4).await.unwrap();
    let joining = |n: u128, after: &[u128]| {
        let (mut child, input) = child_of(1, n, None);
        child.after = after.iter().map(|&d| Uuid::from_u128(d)).collect();
        (child, input)
    };
    // 100, 101 and 104 plain; 102 joins 100 and 101; 103 joins the root,
    // which ends with this commit; 105 joins a task that does not exist;
    // 106 joins 104, whose record will be damaged (quarantined: it never
    // ends); 107 joins 100 and is cancelled while it waits.
    let children = vec![
        joining(100, &[]),
        joining(101, &[]),
        joining(102, &[100, 101]),
        joining(103, &[1]),
        joining(104, &[]),
        joining(105, &[999]),
        joining(106, &[104]),
        joining(107, &[100]),
    ];
    assert_eq!(grow_flow(&a, children).await.1.len(), 8);
    assert_eq!(waits_of(&a, 102).await, (true, vec![Uuid::from_u128(100), Uuid::from_u128(101)]));
    assert_eq!(waits_of(&a, 106).await, (true, vec![Uuid::from_u128(104)]));
    for free in [100, 103, 105] {
        assert_eq!(waits_of(&a, free).await, (false, vec![]), "task {free}");
    }
    let cancel = Change::new(Uuid::from_u128(107), TaskState::Cancelled, "cancelled");
    a.transition(cancel).await.unwrap();
    assert_eq!(waits_of(&a, 107).await, (false, vec![]), "a cancelled task waits for nothing");
    sqlx::query("UPDATE taskhost_tasks SET record = '\\xffff'::bytea WHERE id = $1")
        .bind(Uuid::from_u128(104))
        .execute(a.pool())
        .await
        .unwrap();

    // The damaged 104 is set aside by the claim that reads it; 106 waits
    // on for it.
    let (mut first, mut held) = claim_ids(&a, "a").await;
    let (more, more_held) = claim_ids(&a, "a").await;
    first.extend(more);
    held.extend(more_held);
    first.sort_unstable();
    assert_eq!(first, [100, 101, 103, 105], "102 and 106 wait; 104 is quarantined");
    assert_eq!(a.quarantined().await.unwrap().len(), 1);
    assert_eq!(waits_of(&a, 106).await, (true, vec![Uuid::from_u128(104)]));
    let held: HashMap<u128, Claimed> = held.into_iter().map(|c| (c.record.id.as_u128(), c)).collect();

    // 100 completes: 102 still waits for 101.
    let mut wakeups = b.wakeups().await.unwrap();
    a.finish(&held[&100].lease, Outcome::completed(Vec::new())).await.unwrap();
    assert_eq!(waits_of(&a, 102).await, (true, vec![Uuid::from_u128(101)]));
    assert!(b.claim("b", 10, LEASE).await.unwrap().is_empty());
    // 101 fails: 102 may start, and an idle host hears of it.
    let failed =
        Outcome { to: TaskState::Failed, reason: "failed".into(), output: None, error: None, retry_at_ms: None };
    let _ = tokio::time::timeout(Duration::from_millis(200), wakeups.next()).await;
    a.finish(&held[&101].lease, failed).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), wakeups.next()).await;
    assert!(heard.is_ok(), "the release woke the listening host");
    assert_eq!(waits_of(&a, 102).await, (false, vec![]));
    assert_eq!(claim_ids(&b, "b").await.0, [102]);
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT task FROM taskhost_waits").fetch_all(a.pool()).await.unwrap();
    assert_eq!(left, [Uuid::from_u128(106)], "no wait outlives what it waited for but the quarantined one's");
}

/// A task waiting for another is cancelled on one host while another host
/// completes what it waits for, the two interleaved the way that would
/// deadlock were a task's row locked before its flow: the completion
/// queues on the flow first, the cancel second, and the completion, once
/// it holds the flow, unblocks the waiting task's row. Both commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_waiting_task_beside_its_dependency_ending_never_deadlocks() {
    use crate::store::Change;
    use crate::store::tests::child_of;
    let (a, url) = store("joins_race").await;
    let b = PgStore::connect(&url, 4).await.unwrap();
    let dep = child_of(1, 100, None);
    let (mut waiting, input) = child_of(1, 200, None);
    waiting.after = vec![dep.0.id];
    let (root, _) = grow_flow(&a, vec![dep, (waiting, input)]).await;
    let [dep] = a.claim("a", 10, LEASE).await.unwrap().try_into().unwrap();

    // A third session holds the flow while both queue on it.
    let mut holder = a.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(super::txn::flow_lock(root.id))
        .execute(&mut *holder)
        .await
        .unwrap();
    let waiting_on_locks = |n: i64| {
        let pool = a.pool().clone();
        async move {
            for _ in 0..200 {
                let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE NOT granted")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                if waiting >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("fewer than {n} sessions wait for a lock");
        }
    };
    let complete = tokio::spawn({
        let a = a.clone();
        async move { a.finish(&dep.lease, Outcome::completed(Vec::new())).await }
    });
    waiting_on_locks(1).await;
    let cancel = tokio::spawn({
        let b = b.clone();
        async move { b.transition(Change::new(Uuid::from_u128(200), TaskState::Cancelled, "cancelled")).await }
    });
    waiting_on_locks(2).await;
    holder.commit().await.unwrap();
    let (completed, cancelled) =
        tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(complete, cancel) }).await.unwrap();
    assert_eq!(completed.unwrap().unwrap().state, TaskState::Completed);
    assert_eq!(cancelled.unwrap().unwrap().record.state, TaskState::Cancelled);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM taskhost_waits").fetch_one(a.pool()).await.unwrap();
    assert_eq!(left, 0);
}

/// The joins of startable tasks stored before migration 11 are written on
/// connect, from their records: a task whose dependency has not ended is
/// blocked, one whose dependency ended is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_from_before_the_waits_table_are_written_on_connect() {
    use crate::store::tests::child_of;
    let (store, url) = store("fill_waits").await;
    let root = record(1, None);
    store.submit(root, Vec::new()).await.unwrap();
    let mut written = Vec::new();
    for (n, after) in [(10, vec![]), (11, vec![1]), (12, vec![13]), (13, vec![])] {
        let (mut child, input) = child_of(1, n, None);
        child.after = after.into_iter().map(Uuid::from_u128).collect();
        written.push(store.submit(child, input).await.unwrap().record);
    }
    // 10 ends; 11 waits for the root, 12 for 13.
    let done = Change::new(Uuid::from_u128(10), TaskState::Cancelled, "cancelled");
    store.transition(done).await.unwrap();
    assert_eq!(waits_of(&store, 11).await, (true, vec![Uuid::from_u128(1)]));
    // As a store of schema 10 left them when migration 11 ran.
    sqlx::query("DELETE FROM taskhost_waits").execute(store.pool()).await.unwrap();
    sqlx::query("UPDATE taskhost_tasks SET blocked = false").execute(store.pool()).await.unwrap();
    sqlx::query("INSERT INTO taskhost_waits_fill SELECT id, NULL FROM taskhost_tasks ORDER BY id DESC LIMIT 1")
        .execute(store.pool())
        .await
        .unwrap();
    // The root is cancelled meanwhile (its end releases nothing: no wait
    // names it yet).
    store.transition(Change::new(Uuid::from_u128(1), TaskState::Cancelled, "cancelled")).await.unwrap();

    let store = PgStore::connect(&url, 2).await.unwrap();
    assert_eq!(waits_of(&store, 11).await, (false, vec![]), "its dependency ended");
    assert_eq!(waits_of(&store, 12).await, (true, vec![Uuid::from_u128(13)]));
    let marks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM taskhost_waits_fill").fetch_one(store.pool()).await.unwrap();
    assert_eq!(marks, 0, "the fill is done once");
    let mut claimed: Vec<u128> =
        store.claim("a", 10, LEASE).await.unwrap().iter().map(|c| c.record.id.as_u128()).collect();
    claimed.sort_unstable();
    assert_eq!(claimed, [11, 13]);
}

/// Flow `flow`'s count as kept (`None`: NULL), and its unended tasks
/// (one quarantined before it ended never ends) counted from the tasks.
async fn counts_of(store: &PgStore, flow: Uuid) -> (Option<i64>, i64) {
    let kept: Option<i64> = sqlx::query_scalar("SELECT unfinished FROM taskhost_flows WHERE id = $1")
        .bind(flow)
        .fetch_one(store.pool())
        .await
        .unwrap();
    let truth: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM taskhost_tasks
         WHERE (state IN ('pending', 'running', 'retrying') OR (state = 'quarantined' AND NOT quarantined_ended))
           AND (id = $1 OR id IN (SELECT task_id FROM taskhost_flow_tasks WHERE flow_id = $1))",
    )
    .bind(flow)
    .fetch_one(store.pool())
    .await
    .unwrap();
    (kept, truth)
}

/// A flow's count of unended tasks, kept by the transactions that write
/// its tasks, matches its tasks after every step of a random run of
/// claims, completions that grow children, failures, cancels, reaps and
/// re-submissions; a task of it quarantined stays counted (it never
/// ends); a count not known is taken from the tasks when read; a declared
/// flow's tasks are counted when its record is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flows_count_of_unended_tasks_follows_every_change_of_its_tasks() {
    use crate::store::tests::child_of;
    use crate::store::{Change, Effects, FlowRecord, FlowUpdate};
    let (s, _) = store("flow_counts").await;
    let root = record(1, None);
    s.submit(root.clone(), Vec::new()).await.unwrap();
    assert_eq!(s.flow_unfinished(root.id).await.unwrap(), None, "a flow that has not grown has no count");
    let mut next = 100u128;
    let mut grow = |n: usize| -> Effects {
        let children = (0..n).map(|_| {
            next += 1;
            child_of(1, next, None)
        });
        Effects { flow_id: root.id, children: children.collect(), ..Effects::default() }
    };
    let first = s.claim("a", 1, LEASE).await.unwrap().remove(0);
    let done = Change::new(root.id, TaskState::Completed, "done").effects(grow(4));
    s.finish_changes(vec![(first.lease, done)]).await.unwrap().remove(0).unwrap();
    assert_eq!(counts_of(&s, root.id).await, (Some(4), 4), "made with the flow's record");

    let mut rng = fastrand::Rng::with_seed(16);
    let mut running: Vec<Claimed> = Vec::new();
    let one_in = |s: &PgStore, state: &'static str| {
        let pool = s.pool().clone();
        async move {
            sqlx::query_scalar::<_, Uuid>("SELECT id FROM taskhost_tasks WHERE state = $1 ORDER BY id LIMIT 1")
                .bind(state)
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    };
    let mut seen = HashSet::new();
    for step in 0..200 {
        // Claims and completions that grow most often, so work never runs out.
        let what = [0, 0, 0, 1, 1, 1, 2, 3, 4, 5][rng.usize(0..10)];
        match what {
            0 => {
                let claimed = s.claim("a", rng.usize(1..4), LEASE).await.unwrap();
                if claimed.is_empty() {
                    continue;
                }
                running.extend(claimed);
            }
            1 | 2 if !running.is_empty() => {
                let c = running.swap_remove(rng.usize(0..running.len()));
                let change = if what == 1 {
                    Change::new(c.record.id, TaskState::Completed, "done").effects(grow(rng.usize(0..4)))
                } else {
                    Change::new(c.record.id, TaskState::Failed, "failed")
                };
                s.finish_changes(vec![(c.lease, change)]).await.unwrap().remove(0).unwrap();
            }
            3 => {
                let Some(id) = one_in(&s, "pending").await else { continue };
                s.transition(Change::new(id, TaskState::Cancelled, "cancelled")).await.unwrap();
            }
            4 if !running.is_empty() => {
                let c = running.swap_remove(rng.usize(0..running.len()));
                lapse(&s, c.record.id).await;
                assert_eq!(s.reap(10).await.unwrap().len(), 1);
            }
            5 => {
                let Some(id) = one_in(&s, "failed").await else { continue };
                s.transition(Change::new(id, TaskState::Pending, "again")).await.unwrap();
            }
            _ => continue,
        }
        seen.insert(what);
        let (kept, truth) = counts_of(&s, root.id).await;
        assert_eq!(kept, Some(truth), "step {step} ({what})");
    }
    assert_eq!(seen.len(), 6, "every kind of change ran: {seen:?}");

    // A pending task of the flow damaged: the claim that reads it sets it
    // aside, and it stays counted.
    s.submit(child_of(1, 9_999, None).0, Vec::new()).await.unwrap();
    for c in running.drain(..) {
        s.finish(&c.lease, Outcome::completed(Vec::new())).await.unwrap();
    }
    sqlx::query("UPDATE taskhost_tasks SET record = '\\xffff'::bytea WHERE id = $1")
        .bind(Uuid::from_u128(9_999))
        .execute(s.pool())
        .await
        .unwrap();
    for c in s.claim("a", 1_000, LEASE).await.unwrap() {
        s.finish(&c.lease, Outcome::completed(Vec::new())).await.unwrap();
    }
    assert_eq!(s.quarantined().await.unwrap().len(), 1);
    assert_eq!(counts_of(&s, root.id).await, (Some(1), 1), "the quarantined task never ends");
    assert_eq!(s.flow_unfinished(root.id).await.unwrap(), Some(1));
    // One damaged after it ended stays ended.
    let ended = one_in(&s, "completed").await.unwrap();
    sqlx::query("UPDATE taskhost_tasks SET record = '\\xffff'::bytea WHERE id = $1")
        .bind(ended)
        .execute(s.pool())
        .await
        .unwrap();
    let refused = s.transition(Change::new(ended, TaskState::Pending, "again")).await.unwrap_err();
    assert!(matches!(refused, PgError::Quarantined { .. }), "{refused}");
    assert_eq!(s.quarantined().await.unwrap().len(), 2);
    // A count not known (a flow from before it was kept) is taken from the
    // tasks when read, and kept.
    sqlx::query("UPDATE taskhost_flows SET unfinished = NULL WHERE id = $1")
        .bind(root.id)
        .execute(s.pool())
        .await
        .unwrap();
    assert_eq!(s.flow_unfinished(root.id).await.unwrap(), Some(1));
    assert_eq!(counts_of(&s, root.id).await, (Some(1), 1), "counted again and kept");

    // A declared flow: its record and first tasks made at once.
    let declared = Uuid::from_u128(50_000);
    let edit = move |_: Option<FlowRecord>| {
        let tasks = (0..3).map(|i| child_of(50_000, 50_001 + i, None)).collect();
        Ok(FlowUpdate { flow: FlowRecord::new(declared, 0), tasks })
    };
    s.flow_change(declared, edit).await.unwrap();
    assert_eq!(counts_of(&s, declared).await, (Some(3), 3), "counted as its record was made");
}

/// Shared token buckets: a draw takes what the bucket holds, up to what it
/// asks; hosts drawing at once admit the rate between them; a forgotten
/// bucket starts full; only refilled buckets are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_bucket_admits_its_rate_across_hosts() {
    let (store, url) = store("rate_buckets").await;
    // Nothing worth counting refills during the test (one token in 1,000
    // s); burst 5: a new bucket is full.
    let slow = 0.001;
    let drawn = store.draw_tokens("k", slow, 5.0, 3).await.unwrap();
    assert_eq!(drawn.granted, 3);
    let drawn = store.draw_tokens("k", slow, 5.0, 3).await.unwrap();
    assert_eq!(drawn.granted, 2, "what is left, not what was asked: {drawn:?}");
    let drawn = store.draw_tokens("k", slow, 5.0, 3).await.unwrap();
    assert_eq!(drawn.granted, 0, "{drawn:?}");
    assert!(drawn.left < 1.0 && drawn.left >= 0.0, "{drawn:?}");
    store.forget_bucket("k").await.unwrap();
    assert_eq!(store.draw_tokens("k", slow, 5.0, 9).await.unwrap().granted, 5, "full again, up to its burst");

    // Four hosts drawing one token at a time as fast as they can for
    // 600 ms admit the burst and the rate, not four times either.
    let (rate, burst) = (50.0, 10.0);
    let hosts = futures::future::join_all((0..4).map(|_| PgStore::connect(&url, 2))).await;
    let started = std::time::Instant::now();
    let drawing = hosts.into_iter().map(|host| {
        let host = host.unwrap();
        async move {
            let mut granted = 0;
            while started.elapsed() < Duration::from_millis(600) {
                granted += host.draw_tokens("shared", rate, burst, 1).await.unwrap().granted;
            }
            granted
        }
    });
    let granted: u32 = futures::future::join_all(drawing).await.into_iter().sum();
    let elapsed = started.elapsed().as_secs_f64();
    let most = burst + rate * elapsed;
    assert!(f64::from(granted) <= most + 1.0, "{granted} granted in {elapsed:.2} s; at most {most:.0}");
    assert!(f64::from(granted) >= burst + rate * 0.1, "{granted} granted in {elapsed:.2} s");

    // Refilled buckets go, a drained slow one stays.
    store.draw_tokens("quick", 1_000.0, 1.0, 1).await.unwrap();
    store.draw_tokens("slow", 0.001, 100.0, 50).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let gone = store.drop_full_buckets().await.unwrap();
    let left: Vec<String> =
        sqlx::query_scalar("SELECT key FROM taskhost_rate_buckets ORDER BY key").fetch_all(store.pool()).await.unwrap();
    assert!(left.contains(&"slow".to_owned()) && !left.contains(&"quick".to_owned()), "{left:?} ({gone} went)");
}

/// Each queue's tasks by state, counted from the tasks themselves.
async fn counted_from_tasks(store: &PgStore) -> Vec<(String, TaskState, u64)> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT queue, state, count(*) FROM taskhost_tasks WHERE state <> 'quarantined' GROUP BY queue, state",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let mut counted: Vec<_> =
        rows.into_iter().map(|(q, s, n)| (q, super::reads::state_named(&s).unwrap(), n as u64)).collect();
    counted.sort();
    counted
}

/// The database's counts by queue and state agree with its tasks.
async fn counts_agree(store: &PgStore) {
    let mut kept = store.counts_by_queue().await.unwrap();
    kept.sort();
    assert_eq!(kept, counted_from_tasks(store).await, "the counts kept, and the tasks counted");
}

/// The rows of the counts table.
async fn count_rows(store: &PgStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM taskhost_state_counts").fetch_one(store.pool()).await.unwrap()
}

/// The database counts tasks by queue and state from every write, of any
/// host and of any kind (submissions, claims, outcomes, cancels, a lapsed
/// lease taken back, a task set aside, a deletion), while folds run beside
/// the writers and never stall them; folded, the table holds a row per
/// queue and state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_counts_by_state_follow_every_hosts_writes_while_folds_run() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (a, url) = store("state_counts").await;
    let stores = hosts(&url, 2).await;
    let (b, folder) = (stores[0].clone(), stores[1].clone());
    submit_to(&a, "q1", 1, 200).await;
    submit_to(&b, "q2", 1_001, 200).await;
    assert_eq!(
        a.state_counts().await.unwrap(),
        [(TaskState::Pending, 400)],
        "submissions of both hosts, read by either"
    );
    let done = Arc::new(AtomicBool::new(false));
    let folding = tokio::spawn({
        let (folder, done) = (folder.clone(), done.clone());
        async move {
            let mut folds = 0u32;
            while !done.load(Ordering::Relaxed) {
                folder.fold_state_counts().await.unwrap();
                folds += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            folds
        }
    });
    // Both hosts claim in small batches and end each task one of three
    // ways, or leave it running.
    let taken = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let work = |store: PgStore, host: &'static str| {
        let taken = taken.clone();
        async move {
            loop {
                let claimed = store.claim(host, 7, LEASE).await.unwrap();
                if claimed.is_empty() {
                    return;
                }
                for c in claimed {
                    match taken.fetch_add(1, Ordering::Relaxed) % 4 {
                        0 => drop(store.finish(&c.lease, Outcome::completed(b"out".to_vec())).await.unwrap()),
                        1 => {
                            let cancel = Change::new(c.record.id, TaskState::Cancelled, "cancelled");
                            store.transition(cancel).await.unwrap();
                        }
                        2 => {
                            let failed = Outcome {
                                to: TaskState::Failed,
                                reason: "failed".into(),
                                output: None,
                                error: None,
                                retry_at_ms: None,
                            };
                            store.finish(&c.lease, failed).await.unwrap();
                        }
                        _ => {}
                    }
                }
            }
        }
    };
    futures::future::join(work(a.clone(), "a"), work(b.clone(), "b")).await;
    done.store(true, Ordering::Relaxed);
    assert!(folding.await.unwrap() > 0, "folds ran beside the writers");
    counts_agree(&a).await;
    let running = |store: &PgStore| {
        let store = store.clone();
        async move { store.state_counts().await.unwrap().into_iter().find(|(s, _)| *s == TaskState::Running) }
    };
    assert_eq!(running(&b).await, Some((TaskState::Running, 100)), "a quarter left running");

    // A lapsed lease taken back; a task set aside; tasks deleted.
    let held: Vec<Uuid> = sqlx::query_scalar("SELECT task_id FROM taskhost_leases ORDER BY task_id LIMIT 2")
        .fetch_all(a.pool())
        .await
        .unwrap();
    lapse(&a, held[0]).await;
    assert_eq!(b.reap(10).await.unwrap().len(), 1);
    sqlx::query("UPDATE taskhost_tasks SET record = '\\xffff'::bytea WHERE id = $1")
        .bind(held[1])
        .execute(a.pool())
        .await
        .unwrap();
    lapse(&a, held[1]).await;
    b.reap(10).await.unwrap();
    assert_eq!(b.quarantined().await.unwrap().len(), 1);
    sqlx::query("DELETE FROM taskhost_tasks WHERE state = 'cancelled' AND queue = 'q1'")
        .execute(a.pool())
        .await
        .unwrap();
    counts_agree(&b).await;

    // Folded, a row per queue and state is left (none for a count at
    // zero), and the totals stay.
    let mut before = a.counts_by_queue().await.unwrap();
    folder.fold_state_counts().await.unwrap();
    let mut after = a.counts_by_queue().await.unwrap();
    before.sort();
    after.sort();
    assert_eq!(after, before, "a fold keeps the totals");
    let states: i64 =
        sqlx::query_scalar("SELECT count(*) FROM (SELECT DISTINCT queue, state FROM taskhost_tasks) AS s")
            .fetch_one(a.pool())
            .await
            .unwrap();
    assert_eq!(count_rows(&a).await, states, "one row per queue and state in use");
}

/// A database from before the counts (schema 15) is counted by migration
/// 16 from the tasks stored then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_16_counts_the_tasks_stored_before_it() {
    let (store, url) = store("state_counts_migration").await;
    submit_to(&store, "old", 1, 5).await;
    let claimed = store.claim("a", 2, LEASE).await.unwrap();
    store.finish(&claimed[0].lease, Outcome::completed(Vec::new())).await.unwrap();
    // As schema 15 left it: no counts, no triggers, migration 16 not run.
    for undo in [
        "DROP TABLE taskhost_state_counts",
        "DROP FUNCTION taskhost_count_states CASCADE",
        "DROP FUNCTION taskhost_count_none CASCADE",
        "DELETE FROM _sqlx_migrations WHERE version = 16",
    ] {
        sqlx::query(undo).execute(store.pool()).await.unwrap();
    }
    submit_to(&store, "older", 11, 3).await;

    let store = PgStore::connect(&url, 2).await.unwrap();
    counts_agree(&store).await;
    assert_eq!(
        store.state_counts().await.unwrap(),
        [(TaskState::Pending, 6), (TaskState::Running, 1), (TaskState::Completed, 1)]
    );
    submit_to(&store, "old", 21, 1).await;
    counts_agree(&store).await;
    // Emptied at once, counted empty.
    sqlx::query("TRUNCATE taskhost_tasks CASCADE").execute(store.pool()).await.unwrap();
    assert_eq!(store.state_counts().await.unwrap(), []);
    counts_agree(&store).await;
    // A count driven below zero (tasks deleted with the triggers off)
    // reads as none, and the others are still read.
    sqlx::query("INSERT INTO taskhost_state_counts VALUES (0, 'q', 'completed', -3), (0, 'q', 'pending', 2)")
        .execute(store.pool())
        .await
        .unwrap();
    let mut read = store.counts_by_queue().await.unwrap();
    read.sort();
    assert_eq!(read, [("q".to_owned(), TaskState::Pending, 2), ("q".to_owned(), TaskState::Completed, 0)]);
}

/// A submission asking to start with its commit (`at_submit.rs`) starts,
/// under a lease of its own, only while no other task is startable and its
/// queue and tenant have no running limit; within a batch, a startable task
/// written before it counts. A task started so is claimed by no one else,
/// and its outcome commits under its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_starts_in_its_commit_only_when_a_claim_would_take_it_next() {
    use crate::store::postgres::ClaimAtSubmit;
    use crate::store::{TenantQuotas, TenantRecord};
    let (store, _) = store("at_submit").await;
    let ask = || Some(ClaimAtSubmit { host: "a".into(), lease: LEASE });
    let op = |n: u128, queue: &str, claim: Option<ClaimAtSubmit>| {
        let mut r = record(n, None);
        r.queue = queue.into();
        PgOp::Submit { record: Box::new(r), input: b"in".to_vec(), claim }
    };
    let started = |a: &Result<Done, PgError>| match a {
        Ok(Done::Submitted(s, lease)) => {
            assert!(s.created);
            assert_eq!(lease.is_some(), s.record.state == TaskState::Running, "{s:?}");
            lease.clone()
        }
        other => panic!("{other:?}"),
    };
    // Idle: started, attempt 1, with a live lease; no claim finds it.
    let answers = store.commit_ops(vec![op(1, "default", ask())], None).await.unwrap();
    let lease = started(&answers[0]).expect("started with its commit");
    let one = store.get(Uuid::from_u128(1)).await.unwrap().unwrap();
    assert_eq!((one.state, one.attempts), (TaskState::Running, 1));
    assert_eq!(store.leases_of("a").await.unwrap(), vec![lease.clone()]);
    assert!(store.claim("b", 10, LEASE).await.unwrap().is_empty());
    // In one batch: a task not asking (pending, startable) comes first, so
    // the asks after it wait; so does an ask of a capped queue or tenant.
    store.set_queue("capped", &QueueConfig { concurrency: Some(5), ..QueueConfig::default() }).await.unwrap();
    let quotas = TenantQuotas { max_running: Some(5), ..TenantQuotas::default() };
    store.put_tenant("acme", &TenantRecord::new("root".into(), quotas)).await.unwrap();
    for (n, queue) in [(2, "capped"), (3, "acme/q")] {
        let answers = store.commit_ops(vec![op(n, queue, ask())], None).await.unwrap();
        assert!(started(&answers[0]).is_none(), "{queue} is capped: {answers:?}");
        let claimed = store.claim("b", 1, LEASE).await.unwrap();
        assert_eq!(claimed.len(), 1, "task {n} waits for a claim");
        store.finish(&claimed[0].lease, Outcome::completed(Vec::new())).await.unwrap();
    }
    let answers = store.commit_ops(vec![op(4, "default", None), op(5, "default", ask())], None).await.unwrap();
    assert!(started(&answers[0]).is_none() && started(&answers[1]).is_none(), "behind task 4: {answers:?}");
    // Outside the batch too: task 4 and 5 wait, so a later ask waits.
    let answers = store.commit_ops(vec![op(6, "default", ask())], None).await.unwrap();
    assert!(started(&answers[0]).is_none());
    assert_eq!(store.claim("b", 10, LEASE).await.unwrap().len(), 3);
    // Nothing startable again: an ask starts, before a task that does
    // not ask in the same batch (it was not there yet).
    let answers = store.commit_ops(vec![op(7, "default", ask()), op(8, "default", None)], None).await.unwrap();
    assert!(started(&answers[0]).is_some() && started(&answers[1]).is_none());
    // A task waiting for its due time is not startable: an ask starts.
    assert_eq!(store.claim("b", 10, LEASE).await.unwrap().len(), 1, "task 8");
    let mut later = record(9, None);
    later.next_run_at_ms = Some(crate::store::now_ms() + 600_000);
    assert!(store.submit(later, Vec::new()).await.unwrap().created);
    let answers = store.commit_ops(vec![op(10, "default", ask())], None).await.unwrap();
    assert!(started(&answers[0]).is_some(), "a delayed task does not wait before it");
    // An ask due later waits for its time, whatever it asked.
    let mut due_later = record(11, None);
    due_later.next_run_at_ms = Some(crate::store::now_ms() + 600_000);
    let ask_later = PgOp::Submit { record: Box::new(due_later), input: Vec::new(), claim: ask() };
    let answers = store.commit_ops(vec![ask_later], None).await.unwrap();
    assert!(started(&answers[0]).is_none());
    // Task 1's outcome commits under its lease, once.
    store.finish(&lease, Outcome::completed(b"out".to_vec())).await.unwrap();
    assert_eq!(store.get(Uuid::from_u128(1)).await.unwrap().unwrap().state, TaskState::Completed);
    let again = store.finish(&lease, Outcome::completed(Vec::new())).await.unwrap_err();
    assert!(matches!(again, PgError::Fenced { .. }), "{again}");
}

/// Tasks held by their queue's or tenant's running limit would not be
/// claimed next: a submission of another queue starts with its commit
/// beside them (as on redb, `Scheduler::claim_now`). Once the limit leaves
/// room, they come first again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_held_by_its_cap_does_not_keep_a_submission_from_starting_in_its_commit() {
    use crate::store::postgres::ClaimAtSubmit;
    use crate::store::{TenantQuotas, TenantRecord};
    let (store, _) = store("at_submit_capped").await;
    let op = |n: u128, queue: &str, ask: bool| {
        let mut r = record(n, None);
        r.queue = queue.into();
        let claim = ask.then(|| ClaimAtSubmit { host: "a".into(), lease: LEASE });
        PgOp::Submit { record: Box::new(r), input: b"in".to_vec(), claim }
    };
    let starts = |answers: &[Result<Done, PgError>]| match &answers[0] {
        Ok(Done::Submitted(s, lease)) => {
            assert!(s.created);
            lease.is_some()
        }
        other => panic!("{other:?}"),
    };
    store.set_queue("one", &QueueConfig { concurrency: Some(1), ..QueueConfig::default() }).await.unwrap();
    let quotas = TenantQuotas { max_running: Some(1), ..TenantQuotas::default() };
    store.put_tenant("t", &TenantRecord::new("root".into(), quotas)).await.unwrap();
    // Each limit reached by a running task, with a task waiting behind it.
    let mut running = Vec::new();
    for (n, queue) in [(1, "one"), (3, "t/q")] {
        store.commit_ops(vec![op(n, queue, false), op(n + 1, queue, false)], None).await.unwrap();
        let claimed = store.claim("b", 10, LEASE).await.unwrap();
        assert_eq!(claimed.len(), 1, "{queue}'s limit: one runs, one waits");
        running.push(claimed[0].lease.clone());
    }
    assert!(starts(&store.commit_ops(vec![op(5, "other", true)], None).await.unwrap()), "tasks 2 and 4 wait anyway");
    // Each limit leaves room in turn: its waiting task is startable again,
    // so a submission waits behind it. The queue's running task ends in
    // the submission's own batch (the read before it saw the queue full),
    // the tenant's in a commit before.
    for (lease, waiting, n, together) in [(&running[0], 2, 6, true), (&running[1], 4, 7, false)] {
        let ended = PgOp::Finish(lease.clone(), Outcome::completed(Vec::new()).into_change(lease.task));
        let ops = if together {
            vec![ended, op(n, "other", true)]
        } else {
            store.commit_ops(vec![ended], None).await.unwrap();
            vec![op(n, "other", true)]
        };
        let answers = store.commit_ops(ops, None).await.unwrap();
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        assert!(!starts(&answers[answers.len() - 1..]), "task {waiting} first");
        let mut claimed: Vec<u128> =
            store.claim("b", 10, LEASE).await.unwrap().iter().map(|c| c.record.id.as_u128()).collect();
        claimed.sort_unstable();
        assert_eq!(claimed, [waiting, n]);
    }
}
