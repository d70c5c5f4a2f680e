//! The PostgreSQL store against a real, throwaway PostgreSQL
//! (`taskhost-test-postgres`): migrations, idempotency, claims, leases and
//! fencing, with several stores standing for several hosts.

use super::*;
use crate::FailureClass;
use crate::store::StoredFailure;
use crate::store::postgres::Term;
use crate::store::tests::record;
use crate::store::{TaskRecord, TaskState};
use std::collections::HashSet;

async fn store(name: &str) -> (PgStore, String) {
    let url = taskhost_test_postgres::cluster().database(name);
    (PgStore::connect(&url, 4).await.unwrap(), url)
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
    let hosts = futures::future::join_all((0..3).map(|_| PgStore::connect(&url, 2))).await;
    let claims = futures::future::join_all(hosts.into_iter().enumerate().map(|(n, host)| async move {
        let host = host.unwrap();
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
            for Claimed { record, lease } in batch {
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
    let Claimed { record, lease } = store.claim("a", 1, LEASE).await.unwrap().remove(0);
    let done = |output: &[u8]| Outcome::completed(output.to_vec());
    let finished = store.finish(&lease, done(b"out")).await.unwrap();
    assert_eq!((finished.state, finished.output_len, finished.version), (TaskState::Completed, Some(3), 3));
    assert!(finished.finished_at_ms.is_some());
    let again = store.finish(&lease, done(b"twice")).await.unwrap_err();
    assert!(matches!(again, PgError::Fenced { id, .. } if id == record.id), "{again}");
    assert_eq!(store.output(record.id).await.unwrap().as_deref(), Some(&b"out"[..]));
    assert_eq!(store.get(record.id).await.unwrap().unwrap().version, 3, "the refused write changed nothing");
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
    lapse(&store, task.id).await;
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_leads_at_a_time_and_another_takes_over_once_its_lease_lapses() {
    let (store, url) = store("leader").await;
    assert_eq!(store.leader().await.unwrap(), None);
    let hosts: Vec<PgStore> = futures::future::join_all((0..3).map(|_| PgStore::connect(&url, 2)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
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
    let root = record(1, None);
    a.submit(root.clone(), Vec::new()).await.unwrap();
    let claimed = a.claim("a", 1, LEASE).await.unwrap().remove(0);
    let children: Vec<(TaskRecord, Vec<u8>)> = (0..20).map(|i| child_of(1, 100 + i, None)).collect();
    let grow = Effects { flow_id: root.id, children, ..Effects::default() };
    let done = Change::new(root.id, TaskState::Completed, "done").effects(grow);
    let [grown] = a.finish_changes(vec![(claimed.lease, done)]).await.unwrap().try_into().unwrap();
    assert_eq!(grown.unwrap().created.len(), 20);
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
