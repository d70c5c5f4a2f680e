//! The engine on both store backends, as a whole: each test in `on_both!`
//! runs once on a redb file and once on a PostgreSQL database of the
//! throwaway cluster (see `testing.rs`); the others here are PostgreSQL's
//! own (hosts serving together, leases, routing by model). Tests of one
//! component on both sit beside it.

use super::testing::{Harness, Script, input, on_both};
use super::{EngineConfig, EngineError, NewTask};
use crate::store::{FlowRecord, FlowState, FlowUpdate, QueueConfig, Retention, TaskState};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// Settings both backends' engines share.
fn tweak(config: &mut EngineConfig) {
    config.retention = Retention::forever();
}

fn task(plugin: &str, script: &Script) -> NewTask {
    NewTask { plugin: plugin.into(), input: input(script), ..NewTask::default() }
}

const WAIT: Duration = Duration::from_secs(20);

on_both! {
    tweak = tweak;

    async fn a_host_serving_alone_runs_tasks_whatever_models_they_need(h) {
        // No other host could take them: they run here (and a call to a
        // model this host lacks fails, as on redb).
        h.runner.needs.lock().unwrap().push(("embed".into(), vec!["minilm".into()]));
        let id = h.engine.submit(task("embed", &Script::Complete(b"ran".to_vec()))).await.unwrap().record.id;
        assert_eq!(h.engine.wait(id, WAIT).await.unwrap().state, TaskState::Completed);
        assert_eq!(h.runner.calls(id), 1);
    }

    async fn tasks_complete_with_their_outputs_and_a_key_answers_with_its_task(h) {
        let mut ids = Vec::new();
        for i in 0..20u8 {
            ids.push(h.engine.submit(task("echo", &Script::Complete(vec![b'a' + i]))).await.unwrap().record.id);
        }
        for (i, id) in ids.iter().enumerate() {
            let done = h.engine.wait(*id, WAIT).await.unwrap();
            assert_eq!(done.state, TaskState::Completed, "{done:?}");
            assert_eq!(h.engine.output(*id).await.unwrap(), Some(vec![b'a' + i as u8]));
        }
        let keyed = NewTask { idempotency_key: Some("k".into()), ..task("echo", &Script::Complete(b"1".to_vec())) };
        let first = h.engine.submit(keyed.clone()).await.unwrap();
        let again = h.engine.submit(keyed).await.unwrap();
        assert!(first.created && !again.created);
        assert_eq!(first.record.id, again.record.id);
        let (listed, _) = h.engine.list(&Default::default()).await.unwrap();
        assert_eq!(listed.len(), 21, "every task is listed once");
        assert_eq!(h.engine.store().task_count().await.unwrap(), 21);
    }

    async fn the_host_lists_itself_with_its_load(h) {
        let running = h.engine.submit(task("echo", &Script::RunUntilCancelled)).await.unwrap().record.id;
        let deadline = std::time::Instant::now() + WAIT;
        let list = loop {
            let list = h.engine.hosts().await.unwrap();
            if list.hosts.iter().any(|host| host.report.as_ref().is_some_and(|r| r.load.busy == 1)) {
                break list;
            }
            assert!(std::time::Instant::now() < deadline, "the running task never showed: {list:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(list.hosts.len(), 1, "one host serves the store: {list:?}");
        let host = &list.hosts[0];
        assert!(host.this && host.live, "{host:?}");
        assert_eq!(host.id, h.shared.host);
        let report = host.report.as_ref().unwrap();
        assert_eq!(report.version, env!("CARGO_PKG_VERSION"));
        assert_eq!((report.load.slots, report.load.busy), (4, 1));
        assert!(report.load.memory_reserved_bytes > 0, "the running task's memory is reserved: {report:?}");
        assert!(report.models.is_empty());
        h.engine.cancel(running).await.unwrap();
    }

    async fn an_idle_host_starts_a_task_in_its_submissions_commit(h) {
        // PostgreSQL decides it in that commit: nothing else startable,
        // no cap on the queue or tenant (redb's scheduler decides the same).
        let held = QueueConfig { concurrency: Some(1), ..QueueConfig::default() };
        h.engine.set_queue("held", held).await.unwrap();
        let mut events = h.engine.store().subscribe(None);
        let on = |queue: &str, s: Script| NewTask { queue: Some(queue.into()), ..task("echo", &s) };
        let first = h.engine.submit(on("default", Script::AwaitGate(b"a".to_vec()))).await.unwrap().record;
        assert_eq!((first.state, first.attempts, first.version), (TaskState::Running, 1, 2), "{first:?}");
        let moves: Vec<_> = first.history.iter().map(|t| (t.from, t.to, t.attempt)).collect();
        assert_eq!(moves, [(None, TaskState::Pending, 0), (Some(TaskState::Pending), TaskState::Running, 1)]);
        for (from, to, attempt) in moves {
            let event = tokio::time::timeout(WAIT, events.live.recv()).await.unwrap().unwrap();
            assert_eq!((event.id, event.from, event.to, event.attempt), (first.id, from, to, attempt));
        }
        // A capped queue's task, its queue under its cap: redb's scheduler
        // starts it, knowing every task running; PostgreSQL leaves it to a
        // claim, which counts the queue's running tasks under its lock.
        let capped = h.engine.submit(on("held", Script::AwaitGate(b"b".to_vec()))).await.unwrap().record;
        let shared = h.engine.store().queues_tasks();
        let expected = if shared { TaskState::Pending } else { TaskState::Running };
        assert_eq!(capped.state, expected, "its queue has a cap");
        h.wait_state(capped.id, TaskState::Running).await;
        let waiting = h.engine.submit(on("held", Script::Complete(b"c".to_vec()))).await.unwrap().record;
        assert_eq!(waiting.state, TaskState::Pending);
        // A task held by its queue's cap would not be claimed next: a
        // submission of another queue starts with its commit beside it.
        let beside = h.engine.submit(on("default", Script::Complete(b"d".to_vec()))).await.unwrap().record;
        assert_eq!(beside.state, TaskState::Running, "the waiting task is held by its queue's cap");
        assert_eq!(h.engine.wait(beside.id, WAIT).await.unwrap().state, TaskState::Completed);
        h.runner.gate.add_permits(2);
        for id in [first.id, capped.id, waiting.id, beside.id] {
            assert_eq!(h.engine.wait(id, WAIT).await.unwrap().state, TaskState::Completed);
            assert_eq!(h.runner.calls(id), 1, "each ran once");
        }
        assert_eq!(h.engine.output(first.id).await.unwrap(), Some(b"a".to_vec()));
        // Idle again (on PostgreSQL, once a claim found nothing waiting):
        // the next starts with its commit.
        let deadline = std::time::Instant::now() + WAIT;
        while h.shared.backlogged.load(std::sync::atomic::Ordering::Relaxed) {
            assert!(std::time::Instant::now() < deadline, "a claim never found the host idle");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let next = h.engine.submit(on("default", Script::Complete(b"e".to_vec()))).await.unwrap().record;
        assert_eq!(next.state, TaskState::Running);
        assert_eq!(h.engine.wait(next.id, WAIT).await.unwrap().state, TaskState::Completed);
    }

    async fn a_failing_task_is_retried_and_its_attempts_counted(h) {
        let id = h.engine.submit(task("echo", &Script::FailTimes(2, b"ok".to_vec()))).await.unwrap().record.id;
        let done = h.engine.wait(id, WAIT).await.unwrap();
        assert_eq!((done.state, done.attempts), (TaskState::Completed, 3), "{done:?}");
        let once = NewTask { max_attempts: Some(1), ..task("echo", &Script::FailTimes(5, Vec::new())) };
        let id = h.engine.submit(once).await.unwrap().record.id;
        let done = h.engine.wait(id, WAIT).await.unwrap();
        assert_eq!((done.state, done.attempts), (TaskState::Failed, 1), "{done:?}");
        assert!(done.error.is_some());
    }

    async fn a_delayed_task_is_cancelled_and_a_running_one_interrupted(h) {
        let later = NewTask { delay_ms: Some(60_000), ..task("echo", &Script::Complete(Vec::new())) };
        let id = h.engine.submit(later).await.unwrap().record.id;
        assert_eq!(h.engine.cancel(id).await.unwrap().state, TaskState::Cancelled);
        let running = h.engine.submit(task("echo", &Script::RunUntilCancelled)).await.unwrap().record.id;
        h.wait_state(running, TaskState::Running).await;
        assert_eq!(h.engine.cancel(running).await.unwrap().state, TaskState::Cancelled);
        let refused = h.engine.cancel(running).await.unwrap_err();
        assert!(matches!(refused, EngineError::Conflict(_)), "{refused}");
    }

    // A flow's cancel marks the flow, then cancels its tasks one by one:
    // a task that becomes startable in between (here `b`, released by `a`
    // ending on its own after the mark) is cancelled before it runs.
    async fn a_task_of_a_cancelled_flow_never_starts(h) {
        let spec = serde_json::json!({
            "input": Script::AwaitGate(b"a".to_vec()),
            "steps": {"series": [{"id": "a", "plugin": "echo"}, {"id": "b", "plugin": "echo"}]},
        });
        let view = h.engine.submit_flow(serde_json::from_value(spec).unwrap()).await.unwrap();
        let step = |id: &str| view.tasks.iter().find(|t| t.step.as_deref() == Some(id)).unwrap().id;
        let (a, b) = (step("a"), step("b"));
        h.wait_state(a, TaskState::Running).await;
        let unfinished = h.engine.inner.flows.cancel(view.flow.id).await.unwrap();
        assert_eq!(unfinished.len(), 2, "{unfinished:?}");
        h.runner.gate.add_permits(1);
        assert_eq!(h.engine.wait(a, WAIT).await.unwrap().state, TaskState::Completed);
        let b = h.engine.wait(b, WAIT).await.unwrap();
        assert_eq!((b.state, b.attempts), (TaskState::Cancelled, 0), "{b:?}");
        assert_eq!(b.history.last().unwrap().reason, "cancelled with its flow before it ran");
        assert_eq!(h.runner.calls(b.id), 0, "it never ran");
        let done = h.engine.wait_flow(view.flow.id, WAIT).await.unwrap();
        assert_eq!(done.flow.state, FlowState::Cancelled, "{:?}", done.flow);
        // A failed task of the cancelled flow is not re-submitted (it
        // would be cancelled as it started).
        let flow = view.flow.id;
        let (mut failed, input) = crate::store::tests::child_of(flow.as_u128(), 7, None);
        failed.state = TaskState::Failed;
        failed.finished_at_ms = Some(crate::store::now_ms());
        h.shared
            .store
            .flow_change(flow, move |stored| {
                let mut record = stored.expect("the cancelled flow's record");
                record.tasks += 1;
                Ok(FlowUpdate { flow: record, tasks: vec![(failed, input)] })
            })
            .await
            .unwrap();
        let refused = h.engine.resubmit(Uuid::from_u128(7)).await.unwrap_err().to_string();
        assert!(refused.contains("its flow") && refused.contains("was cancelled"), "{refused}");
    }

    async fn retention_deletes_what_ended_past_it_and_keeps_the_rest(h) {
        let mut ended = Vec::new();
        for _ in 0..5 {
            let id = h.engine.submit(task("echo", &Script::Complete(b"x".to_vec()))).await.unwrap().record.id;
            h.engine.wait(id, WAIT).await.unwrap();
            ended.push(id);
        }
        let spec = serde_json::json!({
            "input": Script::Complete(b"f".to_vec()),
            "steps": {"series": [{"id": "a", "plugin": "echo"}, {"id": "b", "plugin": "echo"}]},
        });
        let flow = h.engine.submit_flow(serde_json::from_value(spec).unwrap()).await.unwrap().flow.id;
        h.engine.wait_flow(flow, WAIT).await.unwrap();
        let waiting = NewTask { delay_ms: Some(60_000), ..task("echo", &Script::Complete(Vec::new())) };
        let pending = h.engine.submit(waiting).await.unwrap().record.id;
        assert_eq!(h.engine.expire().await.unwrap(), 0, "nothing is past a retention of forever");
        // Keep nothing ended from now on: every ended unit goes, whole.
        let shared = &h.shared;
        let zero = crate::store::QueueConfig { retain_for_ms: Some(0), weight: 1, ..Default::default() };
        h.engine.set_queue("default", zero).await.unwrap();
        let deleted = h.engine.expire().await.unwrap();
        assert_eq!(deleted, 5, "the lone ended tasks go (the flow follows the host's retention)");
        for id in ended {
            assert!(shared.store.get(id).await.unwrap().is_none(), "task {id} was kept");
        }
        assert!(h.engine.flow(flow).await.is_ok(), "the flow is kept by the host's retention");
        assert_eq!(h.engine.get(pending).await.unwrap().state, TaskState::Pending, "what has not ended stays");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_engine_on_one_postgresql_database_is_refused_while_the_first_runs() {
    let url = taskhost_test_postgres::cluster().database("engine_sole");
    let first = Harness::on_url(url.clone(), tweak).await.unwrap();
    let refused = Harness::on_url(url.clone(), tweak).await.err().expect("a second engine is refused");
    let message = format!("{refused:#}");
    assert!(message.contains("another taskhost host serves this PostgreSQL database"), "{message}");
    // The refused host changed nothing: the first goes on.
    let id = first.engine.submit(task("echo", &Script::Complete(b"on".to_vec()))).await.unwrap().record.id;
    assert_eq!(first.engine.wait(id, WAIT).await.unwrap().state, TaskState::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_whose_lock_connection_fails_is_told_and_another_may_start() {
    let url = taskhost_test_postgres::cluster().database("engine_sole_lost");
    let first = Harness::on_url(url.clone(), tweak).await.unwrap();
    let store = first.engine.store();
    let lost = tokio::spawn(async move { store.lost().await });
    // The server ends the lock's session, as a restart or a cut would.
    let admin = crate::store::postgres::PgStore::connect(&url, 1).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks AS l JOIN pg_database AS d ON d.oid = l.database
         WHERE d.datname = current_database() AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
           AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended('taskhost sole engine', 0)",
    )
    .fetch_all(admin.pool())
    .await
    .unwrap();
    assert_eq!(ended, [true], "one session held the engine lock");
    let why = tokio::time::timeout(Duration::from_secs(10), lost).await.expect("the loss is told").unwrap();
    assert!(why.contains("the connection holding the engine lock failed"), "{why}");
    // The lock is free: another host may start (its operator stops the first).
    Harness::on_url(url, tweak).await.unwrap();
}

/// PostgreSQL's sessions are cut while their commits wait (on a lock
/// taken for the purpose): the writes that fail (starts, outcomes, group
/// commits) are settled by reading the tasks again, so every task still
/// ends, and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_whose_writes_fail_on_a_cut_connection_still_end() {
    let url = taskhost_test_postgres::cluster().database("engine_cut_connections");
    let h = Harness::on_url(url.clone(), tweak).await.unwrap();
    let admin = crate::store::postgres::PgStore::connect(&url, 2).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..40 {
        let t = NewTask { max_attempts: Some(20), ..task("echo", &Script::Sleep(30, b"ok".to_vec())) };
        ids.push(h.engine.submit(t).await.unwrap().record.id);
    }
    // Writes of the tasks wait behind this lock; reads go on.
    let mut lock = admin.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE taskhost_tasks IN EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let waiting = "SELECT pid FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let pids: Vec<i32> = loop {
        let pids: Vec<i32> = sqlx::query_scalar(waiting).fetch_all(admin.pool()).await.unwrap();
        if !pids.is_empty() {
            break pids;
        }
        assert!(std::time::Instant::now() < deadline, "no write waited on the lock");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    for pid in &pids {
        sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(admin.pool()).await.unwrap();
    }
    lock.rollback().await.unwrap();
    for id in ids {
        let done = h.engine.wait(id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(done.state, TaskState::Completed, "{done:?}");
    }
}

/// A row whose record cannot be decoded is set aside when a host starts,
/// as a claim would set it aside, and the host starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_starts_past_an_undecodable_row_and_sets_it_aside() {
    let url = taskhost_test_postgres::cluster().database("engine_bad_row");
    let store = crate::store::postgres::PgStore::connect(&url, 2).await.unwrap();
    let good = crate::store::tests::record(1, None);
    let bad = crate::store::tests::record(2, None);
    store.submit(good.clone(), b"in".to_vec()).await.unwrap();
    store.submit(bad.clone(), b"in".to_vec()).await.unwrap();
    sqlx::query("UPDATE taskhost_tasks SET record = '\\xff00' WHERE id = $1")
        .bind(bad.id)
        .execute(store.pool())
        .await
        .unwrap();
    let h = Harness::on_url(url, tweak).await.unwrap();
    let set_aside = store.quarantined().await.unwrap();
    assert_eq!(set_aside.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [bad.id]);
    // The good one was recovered and runs.
    assert_eq!(h.engine.wait(good.id, WAIT).await.unwrap().state, TaskState::Completed);
}

/// On PostgreSQL each host writes its heartbeat: the list shows every
/// host's row, aged on the database's clock (a quiet one not live), this
/// host's own report fresh; a host that stops removes its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_sharing_a_database_are_listed_with_their_heartbeats() {
    let url = taskhost_test_postgres::cluster().database("engine_hosts");
    let h = Harness::on_url(url.clone(), tweak).await.unwrap();
    let me = h.shared.host.clone();
    let other = crate::store::postgres::PgStore::connect(&url, 1).await.unwrap();
    // Two other hosts' heartbeats, as they write them: one now, one that
    // went quiet a minute ago.
    let list = h.engine.hosts().await.unwrap();
    let report = serde_json::to_value(list.hosts[0].report.clone().unwrap()).unwrap();
    other.beat("host-live", &report).await.unwrap();
    other.beat("host-quiet", &serde_json::json!({"not": "a report"})).await.unwrap();
    sqlx::query(
        "UPDATE taskhost_hosts SET heartbeat_at = clock_timestamp() - interval '1 minute' WHERE host = 'host-quiet'",
    )
    .execute(other.pool())
    .await
    .unwrap();
    // This host's own row is written at start, and every 2 s.
    let deadline = std::time::Instant::now() + WAIT;
    while !other.hosts().await.unwrap().iter().any(|row| row.host == me) {
        assert!(std::time::Instant::now() < deadline, "this host's heartbeat was never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = h.engine.hosts().await.unwrap();
    let by_id: std::collections::HashMap<_, _> = list.hosts.iter().map(|host| (host.id.as_str(), host)).collect();
    assert_eq!(by_id.len(), 3, "{list:?}");
    let live = by_id["host-live"];
    assert!(live.live && !live.this && live.report.is_some(), "{live:?}");
    let quiet = by_id["host-quiet"];
    assert!(!quiet.live && quiet.heartbeat_age_ms >= 60_000, "{quiet:?}");
    assert!(quiet.report.is_none(), "a report this build cannot read is shown as none: {quiet:?}");
    assert!(by_id[me.as_str()].this && by_id[me.as_str()].live);
    // A host that stops removes its heartbeat.
    h.engine.clone().close().await;
    let rows: Vec<String> = other.hosts().await.unwrap().into_iter().map(|row| row.host).collect();
    assert_eq!(rows, ["host-live", "host-quiet"]);
}

/// On PostgreSQL a running task's lease is renewed while it runs; once it
/// is lost (lapsed here, as behind a host stopped past its lease), the
/// attempt is stopped, its outcome is refused, the task is taken back
/// with its attempt counted, and it runs again under a new lease, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_whose_lease_is_lost_is_stopped_and_its_task_runs_again() {
    let url = taskhost_test_postgres::cluster().database("engine_lost_lease");
    let h = Harness::on_url(url.clone(), tweak).await.unwrap();
    let admin = crate::store::postgres::PgStore::connect(&url, 1).await.unwrap();
    let t = task("echo", &Script::RunUntilCancelledOnce(b"again".to_vec()));
    let submitted = h.engine.submit(t).await.unwrap().record;
    // Started in its submission's commit (the host is idle), under a lease
    // that commit wrote.
    assert_eq!(submitted.state, TaskState::Running);
    let id = submitted.id;
    let lease = || async {
        sqlx::query_as::<_, (i64, f64)>(
            "SELECT token, extract(epoch FROM expires_at - clock_timestamp())::float8 FROM taskhost_leases
             WHERE task_id = $1",
        )
        .bind(id)
        .fetch_one(admin.pool())
        .await
        .unwrap()
    };
    let (token, _) = lease().await;
    // Renewed every 2 s to a whole lease (15 s) from then: left to run
    // alone, it would be down to 12 s.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let (renewed, left) = lease().await;
    assert_eq!(renewed, token, "the same lease");
    assert!(left > 12.5, "renewed: {left} s left");
    sqlx::query("UPDATE taskhost_leases SET expires_at = clock_timestamp() - interval '1 second' WHERE task_id = $1")
        .bind(id)
        .execute(admin.pool())
        .await
        .unwrap();
    let done = h.engine.wait(id, WAIT).await.unwrap();
    assert_eq!((done.state, done.attempts), (TaskState::Completed, 2), "{done:?}");
    assert_eq!(h.engine.output(id).await.unwrap().as_deref(), Some(&b"again"[..]));
    assert_eq!(h.runner.calls(id), 2);
    let moves: Vec<(TaskState, &str)> = done.history.iter().map(|m| (m.to, m.reason.as_str())).collect();
    assert_eq!(moves.iter().filter(|(to, _)| *to == TaskState::Running).count(), 2, "{moves:?}");
    assert!(
        !moves.iter().any(|(to, _)| *to == TaskState::Cancelled),
        "the lost attempt's outcome is refused: {moves:?}"
    );
    let reaped = moves.iter().skip(1).any(|(to, why)| *to == TaskState::Pending && why.contains("lost its lease"));
    assert!(reaped, "taken back: {moves:?}");
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM taskhost_leases").fetch_one(admin.pool()).await.unwrap();
    assert_eq!(leases, 0);
    // The lost lease was given up with its attempt's refused outcome, and
    // is forgotten once the database no longer lists it (checked every 2 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while crate::sync::lock(&h.shared.leases).len() != 0 {
        assert!(std::time::Instant::now() < deadline, "this host still holds a lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A claim of this host's that committed though its answer never came
/// (made here by another connection under this host's name, as a claim
/// whose connection failed while it committed): the host finds it by its
/// lease and runs it, once, under that lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_answer_was_lost_is_found_by_its_lease_and_run() {
    let (h, url, blocker) = blocked_host("engine_lost_claim").await;
    let other = crate::store::postgres::PgStore::connect(&url, 1).await.unwrap();
    let mut record = crate::store::tests::record(7, None);
    record.plugin = "echo".into();
    other.submit(record.clone(), input(&Script::Complete(b"found".to_vec()))).await.unwrap();
    let claimed = other.claim(&h.shared.host, 1, Duration::from_secs(15)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    h.runner.gate.add_permits(1);
    assert_eq!(h.engine.wait(blocker, WAIT).await.unwrap().state, TaskState::Completed);
    // Within a lease (15 s): taken back by a reap instead, it would run as
    // attempt 2.
    let done = h.engine.wait(record.id, WAIT).await.unwrap();
    assert_eq!((done.state, done.attempts), (TaskState::Completed, 1), "{done:?}");
    assert!(done.history.iter().all(|m| !m.reason.contains("lost its lease")), "{:?}", done.history);
    assert_eq!(h.engine.output(record.id).await.unwrap().as_deref(), Some(&b"found"[..]));
    assert_eq!(h.runner.calls(record.id), 1);
}

/// A host on a new PostgreSQL database `name` with one slot and no claim
/// ahead, its slot taken by a task that waits for the runner's gate: while
/// it waits, this host claims nothing, so another connection's claims (as
/// another host's) take what is submitted. The harness, the database's
/// URL and the waiting task.
async fn blocked_host(name: &str) -> (Harness, String, uuid::Uuid) {
    let url = taskhost_test_postgres::cluster().database(name);
    let h = Harness::on_url(url.clone(), |c| {
        tweak(c);
        c.concurrency = 1;
        c.claim_ahead = 0;
    })
    .await
    .unwrap();
    let blocker = h.engine.submit(task("echo", &Script::AwaitGate(b"b".to_vec()))).await.unwrap().record.id;
    h.wait_state(blocker, TaskState::Running).await;
    (h, url, blocker)
}

/// Lapsed leases are taken back by the leader alone: a host serving
/// beside a leader (another connection joined first, as a host would)
/// leaves a lapsed lease where it is, beat after beat; once that leader's
/// session ends, this host leads at its next check and takes the task
/// back, and it runs again here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_takes_back_lapsed_leases() {
    let url = taskhost_test_postgres::cluster().database("engine_leader_reaps");
    let other = crate::store::postgres::PgStore::connect(&url, 2).await.unwrap();
    let ghost = other.join_many_hosts("ghost", Duration::from_secs(15)).await.unwrap();
    assert!(ghost.term().is_some(), "the first to join leads");
    let h = Harness::on_url(url.clone(), |c| {
        tweak(c);
        c.many_hosts = true;
        c.concurrency = 1;
        c.claim_ahead = 0;
    })
    .await
    .unwrap();
    let pg = h.shared.store.postgres().unwrap();
    assert!(pg.leads().is_none(), "the other leads");
    // This host's one slot waits; the ghost claims a new task under a
    // lease that lapses at once.
    let blocker = h.engine.submit(task("echo", &Script::AwaitGate(b"b".to_vec()))).await.unwrap().record.id;
    h.wait_state(blocker, TaskState::Running).await;
    let id = h.engine.submit(task("echo", &Script::Complete(b"back".to_vec()))).await.unwrap().record.id;
    let claimed = other.claim("ghost", 1, Duration::from_millis(1)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    // Two beats (every 2 s) of this host's: the lapsed lease stays.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let leases = || async {
        sqlx::query_scalar::<_, String>("SELECT host FROM taskhost_leases WHERE task_id = $1")
            .bind(id)
            .fetch_all(other.pool())
            .await
            .unwrap()
    };
    assert_eq!(leases().await, ["ghost"], "a host that does not lead reaps nothing");
    assert_eq!(h.engine.get(id).await.unwrap().state, TaskState::Running);
    // The leader's session ends: this host leads within a check, reaps,
    // and runs the task once its slot is free.
    drop(ghost);
    h.runner.gate.add_permits(1);
    let done = h.engine.wait(id, WAIT).await.unwrap();
    assert_eq!((done.state, done.attempts), (TaskState::Completed, 2), "{done:?}");
    assert!(done.history.iter().any(|m| m.reason.contains("host `ghost` lost its lease")), "{:?}", done.history);
    assert!(pg.leads().is_some(), "this host leads now");
    assert!(leases().await.is_empty());
}

/// The steps of a flow ended by another host (another connection that
/// claims and finishes them under its own leases, as a second host
/// would): the host that ends the last one finishes the flow, from the
/// store's count of its unended tasks (this host's book saw only its own
/// end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_whose_other_steps_another_host_ended_is_finished_by_the_host_that_ends_its_last() {
    let (h, url, blocker) = blocked_host("engine_flow_across_hosts").await;
    let spec = serde_json::json!({
        "input": Script::Complete(b"step".to_vec()),
        "steps": {"parallel": [{"id": "a", "plugin": "echo"}, {"id": "b", "plugin": "echo"}, {"id": "c", "plugin": "echo"}]},
    });
    let flow = h.engine.submit_flow(serde_json::from_value(spec).unwrap()).await.unwrap().flow.id;
    let other = crate::store::postgres::PgStore::connect(&url, 2).await.unwrap();
    let claimed = other.claim("another-host", 2, Duration::from_secs(15)).await.unwrap();
    assert_eq!(claimed.len(), 2, "{claimed:?}");
    for c in &claimed {
        assert_eq!(c.record.flow_id, flow);
        let outcome = crate::store::postgres::Outcome::completed(b"elsewhere".to_vec());
        assert_eq!(other.finish(&c.lease, outcome).await.unwrap().state, TaskState::Completed);
    }
    assert_eq!(other.flow_unfinished(flow).await.unwrap(), Some(1));
    h.runner.gate.add_permits(1);
    let done = h.engine.wait_flow(flow, WAIT).await.unwrap();
    assert_eq!(done.flow.state, FlowState::Completed, "{:?}", done.flow);
    assert_eq!(done.tasks.len(), 3);
    assert!(done.tasks.iter().all(|t| t.state == TaskState::Completed), "{:?}", done.tasks);
    assert_eq!(other.flow_unfinished(flow).await.unwrap(), Some(0));
    assert_eq!(h.engine.wait(blocker, WAIT).await.unwrap().state, TaskState::Completed);
}

/// A task running on another host is cancelled through its lease: the
/// cancel commits at once, that host's outcome is refused (fenced), and
/// nothing of its lease is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_running_on_another_host_is_cancelled_through_its_lease() {
    let (h, url, blocker) = blocked_host("engine_cancel_across_hosts").await;
    let id = h.engine.submit(task("echo", &Script::Complete(b"never".to_vec()))).await.unwrap().record.id;
    let other = crate::store::postgres::PgStore::connect(&url, 2).await.unwrap();
    let claimed = other.claim("another-host", 1, Duration::from_secs(15)).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.record.id).collect::<Vec<_>>(), [id]);
    let started = std::time::Instant::now();
    let cancelled = h.engine.cancel(id).await.unwrap();
    assert_eq!(cancelled.state, TaskState::Cancelled, "{cancelled:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "it did not wait out the cancel: {:?}", started.elapsed());
    let refused = other.finish(&claimed[0].lease, crate::store::postgres::Outcome::completed(b"late".to_vec())).await;
    assert!(matches!(refused, Err(crate::store::postgres::PgError::Fenced { .. })), "{refused:?}");
    assert_eq!(other.renew(&[claimed[0].lease.clone()], Duration::from_secs(15)).await.unwrap(), [id], "lost");
    let now = h.engine.get(id).await.unwrap();
    assert_eq!((now.state, now.output_len), (TaskState::Cancelled, None), "{now:?}");
    h.runner.gate.add_permits(1);
    assert_eq!(h.engine.wait(blocker, WAIT).await.unwrap().state, TaskState::Completed);
    assert_eq!(h.runner.calls(id), 0, "it never ran here");
}

/// Another host ends a flow's last step and stops before it records the
/// flow's end: the store noted the flow as its count reached zero, and
/// this host's periodic check records the end once the note is old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_whose_last_step_ended_on_a_host_that_stopped_first_is_finished_by_another() {
    let (h, url, blocker) = blocked_host("engine_flow_noted_end").await;
    let spec = serde_json::json!({
        "input": Script::Complete(b"step".to_vec()),
        "steps": {"parallel": [{"id": "a", "plugin": "echo"}, {"id": "b", "plugin": "echo"}]},
    });
    let flow = h.engine.submit_flow(serde_json::from_value(spec).unwrap()).await.unwrap().flow.id;
    let other = crate::store::postgres::PgStore::connect(&url, 2).await.unwrap();
    let claimed = other.claim("another-host", 2, Duration::from_secs(15)).await.unwrap();
    assert_eq!(claimed.len(), 2, "{claimed:?}");
    for c in &claimed {
        let outcome = crate::store::postgres::Outcome::completed(b"elsewhere".to_vec());
        other.finish(&c.lease, outcome).await.unwrap();
    }
    // That host stops here. Its note stands until this host acts on it.
    let noted = other.flow_ends_noted(Duration::ZERO, 10).await.unwrap();
    assert_eq!(noted.iter().map(|n| n.flow).collect::<Vec<_>>(), [flow]);
    assert!(other.flow_ends_noted(Duration::from_secs(60), 10).await.unwrap().is_empty());
    let started = std::time::Instant::now();
    let done = h.engine.wait_flow(flow, WAIT).await.unwrap();
    assert_eq!(done.flow.state, FlowState::Completed, "{:?}", done.flow);
    assert!(started.elapsed() >= Duration::from_secs(3), "recorded by the check, not at once: {:?}", started.elapsed());
    assert!(other.flow_ends_noted(Duration::ZERO, 10).await.unwrap().is_empty(), "the flow's end cleared its note");
    h.runner.gate.add_permits(1);
    assert_eq!(h.engine.wait(blocker, WAIT).await.unwrap().state, TaskState::Completed);
}

/// Two hosts serving one database together (`many_hosts`): one leads, a
/// host serving alone is refused beside them, and the tasks and a flow's
/// steps submitted to either run on both, each once, every wait answered
/// by either host.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_serving_together_share_the_work_and_run_each_task_once() {
    let url = taskhost_test_postgres::cluster().database("engine_many_hosts");
    let (a, b) = two_hosts_on(&url).await;
    let leading = [&a, &b].iter().filter(|h| h.shared.store.postgres().unwrap().leads().is_some()).count();
    assert_eq!(leading, 1, "one of them leads");
    let refused = Harness::on_url(url.clone(), tweak).await.err().expect("a host serving alone is refused");
    assert!(format!("{refused:#}").contains("another taskhost host serves this PostgreSQL database"), "{refused:#}");
    let mut ids = Vec::new();
    for i in 0..120u8 {
        let on = if i % 2 == 0 { &a } else { &b };
        let new = task("echo", &Script::Sleep(5, vec![i]));
        ids.push((i, on.engine.submit(new).await.unwrap().record.id));
    }
    let spec = serde_json::json!({
        "input": Script::Sleep(5, b"step".to_vec()),
        "steps": {"series": [
            {"parallel": (0..12).map(|i| serde_json::json!({"id": format!("p{i}"), "plugin": "echo"})).collect::<Vec<_>>()},
            {"id": "last", "plugin": "echo"},
        ]},
    });
    let flow = a.engine.submit_flow(serde_json::from_value(spec).unwrap()).await.unwrap().flow.id;
    for (i, id) in &ids {
        // Waited for on the host it was not submitted to.
        let other = if i % 2 == 0 { &b } else { &a };
        let done = other.engine.wait(*id, WAIT).await.unwrap();
        assert_eq!((done.state, done.attempts), (TaskState::Completed, 1), "{done:?}");
        assert_eq!(other.engine.output(*id).await.unwrap(), Some(vec![*i]));
        assert_eq!(a.runner.calls(*id) + b.runner.calls(*id), 1, "task {id} ran once");
    }
    let done = b.engine.wait_flow(flow, WAIT).await.unwrap();
    assert_eq!(done.flow.state, FlowState::Completed, "{:?}", done.flow);
    assert_eq!(done.tasks.len(), 13);
    let ran = |h: &Harness| ids.iter().filter(|(_, id)| h.runner.calls(*id) == 1).count();
    assert!(ran(&a) > 0 && ran(&b) > 0, "both hosts ran tasks: {} and {}", ran(&a), ran(&b));
    // Each counts every host's tasks (`/healthz`, `/metrics`) within a
    // beat: the 133 completed, whichever host ended them, and none left.
    let counted = |h: &Harness| -> HashMap<TaskState, i64> {
        h.engine.state_counts().into_iter().filter(|(_, n)| *n != 0).collect()
    };
    let all = HashMap::from([(TaskState::Completed, 133)]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while (counted(&a) != all || counted(&b) != all) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((counted(&a), counted(&b)), (all.clone(), all), "both hosts count every host's tasks");
}

/// Fairness across hosts: two queues with equal work, one's tasks all
/// submitted to host a and the other's to host b, the first queue's
/// first, all due at once, finish together, each host running tasks of
/// both (in submission order the first queue would end about when half
/// the work was done).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queues_with_equal_work_finish_together_whichever_host_runs_them() {
    let url = taskhost_test_postgres::cluster().database("engine_fair_hosts");
    let host = || {
        Harness::on_url(url.clone(), |c| {
            tweak(c);
            c.many_hosts = true;
            c.concurrency = 2;
            c.claim_ahead = 1;
        })
    };
    let (a, b) = (host().await.unwrap(), host().await.unwrap());
    let due = crate::store::now_ms() + 1_000;
    let mut ids: Vec<(&str, uuid::Uuid)> = Vec::new();
    for (queue, on) in [("first", &a), ("second", &b)] {
        let batch = (0..80u8)
            .map(|i| NewTask {
                queue: Some(queue.into()),
                run_at_ms: Some(due),
                ..task("echo", &Script::Sleep(15, vec![i]))
            })
            .collect();
        for submitted in on.engine.submit_batch(batch).await {
            ids.push((queue, submitted.unwrap().record.id));
        }
    }
    let mut ends: HashMap<&str, u64> = HashMap::new();
    let mut first_start = u64::MAX;
    for (queue, id) in &ids {
        let done = a.engine.wait(*id, WAIT).await.unwrap();
        assert_eq!(done.state, TaskState::Completed, "{done:?}");
        first_start = first_start.min(done.started_at_ms.unwrap());
        let end = ends.entry(queue).or_default();
        *end = (*end).max(done.finished_at_ms.unwrap());
    }
    let (first, second) = (ends["first"], ends["second"]);
    let span = first.max(second) - first_start;
    assert!(span >= 400, "too short to judge: {span} ms");
    let apart = first.abs_diff(second);
    assert!(apart * 5 <= span, "the queues ended {apart} ms apart in a {span} ms run");
    for (h, name) in [(&a, "a"), (&b, "b")] {
        for queue in ["first", "second"] {
            let ran = ids.iter().filter(|(q, id)| *q == queue && h.runner.calls(*id) == 1).count();
            assert!(ran > 0, "host {name} ran no task of queue `{queue}`");
        }
    }
}

/// Two hosts serving the throwaway cluster's database `name` together.
async fn two_hosts_together(name: &str) -> (Harness, Harness) {
    two_hosts_on(&taskhost_test_postgres::cluster().database(name)).await
}

/// Two hosts serving the database at `url` together.
async fn two_hosts_on(url: &str) -> (Harness, Harness) {
    let together = |c: &mut EngineConfig| {
        tweak(c);
        c.many_hosts = true;
    };
    let a = Harness::on_url(url.to_owned(), together).await.unwrap();
    let b = Harness::on_url(url.to_owned(), together).await.unwrap();
    (a, b)
}

/// Routing by capability: serving together, a host leaves the tasks of
/// plugins that need models it does not serve (its runner says which) to
/// the hosts that serve them, whichever host they were submitted to; other
/// plugins' tasks run on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_serving_together_leave_the_tasks_they_cannot_serve_to_those_that_can() {
    let (a, b) = two_hosts_together("engine_routing").await;
    // As host a's registry has it; host b's has no manifest, so b takes
    // them (neither serves a model here).
    a.runner.needs.lock().unwrap().push(("embed".into(), vec!["minilm".into()]));
    let mut embeds = Vec::new();
    let mut echoes = Vec::new();
    for i in 0..60u8 {
        let on = if i % 2 == 0 { &a } else { &b };
        embeds.push(on.engine.submit(task("embed", &Script::Sleep(5, vec![i]))).await.unwrap().record.id);
        echoes.push(on.engine.submit(task("echo", &Script::Sleep(5, vec![i]))).await.unwrap().record.id);
    }
    for id in embeds.iter().chain(&echoes) {
        let done = a.engine.wait(*id, WAIT).await.unwrap();
        assert_eq!((done.state, done.attempts), (TaskState::Completed, 1), "{done:?}");
        assert_eq!(a.runner.calls(*id) + b.runner.calls(*id), 1, "task {id} ran once");
    }
    let ran = |h: &Harness, ids: &[uuid::Uuid]| ids.iter().filter(|id| h.runner.calls(**id) == 1).count();
    assert_eq!(ran(&a, &embeds), 0, "host a serves no `embed` task, not even those submitted to it");
    assert_eq!(ran(&b, &embeds), 60);
    assert!(ran(&a, &echoes) > 0 && ran(&b, &echoes) > 0, "{} and {}", ran(&a, &echoes), ran(&b, &echoes));
    // Host a lists the plugin as unserved: no live host serves `minilm`.
    let listed = a.engine.hosts().await.unwrap();
    assert_eq!(listed.hosts.len(), 2, "{listed:?}");
    assert_eq!(listed.unserved, [crate::wire::UnservedPlugin::new("embed".into(), vec!["minilm".into()])]);
}

/// Serving together, hosts count the bytes a tenant keeps (its
/// `max_stored_bytes`) from the database's totals, each adding its own
/// changes: what one host admitted and completed counts on the other
/// within a beat or two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_serving_together_count_the_bytes_tenants_keep_together() {
    let (a, b) = two_hosts_together("engine_tenant_bytes").await;
    let mut ids = Vec::new();
    for i in 0..10u8 {
        ids.push(a.engine.submit(task("echo", &Script::Complete(vec![i; 100]))).await.unwrap().record.id);
    }
    for id in &ids {
        assert_eq!(a.engine.wait(*id, WAIT).await.unwrap().state, TaskState::Completed);
    }
    let mut kept = 0;
    for id in &ids {
        let record = a.engine.get(*id).await.unwrap();
        kept += record.input_len + record.output_len.unwrap();
    }
    assert!(kept > 1000, "{kept}");
    let deadline = std::time::Instant::now() + WAIT;
    let of = |h: &Harness| h.shared.tenants.stored_of("default");
    while (of(&a), of(&b)) != (kept, kept) {
        assert!(std::time::Instant::now() < deadline, "host a counts {}, host b {}, of {kept}", of(&a), of(&b));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serving together, attempts of one flow on two hosts may each fit the
/// flow's task limit alone and not together (each host reserves against
/// the stored total and its own reservations): the attempt that commits
/// second is refused as it commits, runs again without its attempt
/// counted, and is told the limit. Here the other host's commit is made
/// through the store while this host's attempt waits at the gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attempt_whose_children_no_longer_fit_its_flow_runs_again_and_is_told_the_limit() {
    children_that_no_longer_fit_run_again("engine_flow_bounds", true).await;
}

/// One host on PostgreSQL too: its book keeps a flow only while its
/// attempts hold it (see `flows/book.rs`), and tasks may join the flow
/// without a reservation of this host's (a repeater's next iteration, or
/// as here, written beside it): the commit checks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_host_on_postgresql_checks_a_flows_task_limit_as_it_commits() {
    children_that_no_longer_fit_run_again("engine_flow_bounds_alone", false).await;
}

async fn children_that_no_longer_fit_run_again(database: &str, many_hosts: bool) {
    let url = taskhost_test_postgres::cluster().database(database);
    let h = Harness::on_url(url, |c| {
        tweak(c);
        c.many_hosts = many_hosts;
        c.flow_limits.tasks_per_flow = 5;
    })
    .await
    .unwrap();
    let root = h.engine.submit(task("grow", &Script::GrowThenGate(3))).await.unwrap().record.id;
    let deadline = std::time::Instant::now() + WAIT;
    while h.runner.grown.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the attempt never submitted its children");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Its three fit (1 + 3 of 5); another host's attempt commits two
    // children of the flow meanwhile.
    let others: Vec<_> = (0..2).map(|n| crate::store::tests::child_of(root.as_u128(), 1_000 + n, None)).collect();
    h.shared
        .store
        .flow_change(root, move |stored| {
            let mut flow = stored.unwrap_or_else(|| FlowRecord::new(root, crate::store::now_ms()));
            flow.tasks += 2;
            Ok(FlowUpdate { flow, tasks: others })
        })
        .await
        .unwrap();
    h.runner.gate.add_permits(2);
    let done = h.engine.wait(root, WAIT).await.unwrap();
    assert_eq!(done.state, TaskState::Completed, "{done:?}");
    assert_eq!((h.runner.calls(root), done.attempts), (2, 1), "ran twice; the refused attempt is not counted");
    let back = |t: &&crate::store::Transition| t.from == Some(TaskState::Running) && t.to == TaskState::Pending;
    let again = done.history.iter().find(back).expect("moved back to pending");
    assert!(again.reason.contains("to 6 tasks, over its limit of 5"), "{}", again.reason);
    // The second attempt was told the limit once two more had fitted.
    let grown = h.runner.grown.lock().unwrap().clone();
    assert_eq!(grown.len(), 2);
    let (_, submitted, refused) = &grown[1];
    assert_eq!(*submitted, 2, "{refused:?}");
    assert!(refused.len() == 1 && refused[0].contains("already has 5 tasks"), "{refused:?}");
    assert_eq!(h.engine.flow(root).await.unwrap().tasks.len(), 5);
    // Once its attempts ended, the book keeps nothing of the flow.
    assert_ne!(h.engine.wait_flow(root, WAIT).await.unwrap().flow.state, FlowState::Running);
    let deadline = std::time::Instant::now() + WAIT;
    while h.engine.inner.flows.book().knows(root) {
        assert!(std::time::Instant::now() < deadline, "the book still holds the ended flow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serving together, a tenant's `submit_per_sec` holds across the hosts:
/// submissions to both draw from one bucket in the database (each host's
/// own bucket would admit its burst on each); a quota set again starts it
/// full.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_serving_together_admit_a_tenants_rate_between_them() {
    let (a, b) = two_hosts_together("engine_tenant_rate").await;
    let quotas = crate::store::TenantQuotas { submit_per_sec: Some(2), submit_burst: Some(4), ..Default::default() };
    a.engine.put_tenant("acme", quotas.clone(), "test").await.unwrap();
    b.shared.tenants.reload().await.unwrap();
    let acme = |i| NewTask { queue: Some("acme/default".into()), ..task("acme/echo", &Script::Complete(vec![i])) };
    let started = std::time::Instant::now();
    let mut admitted = 0;
    for i in 0..12u8 {
        let on = if i % 2 == 0 { &a } else { &b };
        match on.engine.submit(acme(i)).await {
            Ok(_) => admitted += 1,
            Err(EngineError::QuotaExceeded { quota: "submit_per_sec", retry_after_secs: Some(1), .. }) => {}
            Err(other) => panic!("{other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst, and what refilled meanwhile (a host's own bucket each
    // would admit 8 in well under a second).
    assert!(admitted >= 4 && f64::from(admitted) <= 5.0 + 2.0 * elapsed, "{admitted} admitted in {elapsed:.2} s");
    // Set again, the quota starts from a full bucket.
    a.engine.put_tenant("acme", quotas.clone(), "test").await.unwrap();
    for i in 0..4 {
        a.engine.submit(acme(i)).await.unwrap();
    }
    // Submissions at once (waiting for each other's draws) admit no more.
    a.engine.put_tenant("acme", quotas, "test").await.unwrap();
    b.shared.tenants.reload().await.unwrap();
    let started = std::time::Instant::now();
    let at_once = (0..16u8).map(|i| if i % 2 == 0 { &a } else { &b }.engine.submit(acme(i)));
    let answers = futures::future::join_all(at_once).await;
    for refused in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert!(matches!(refused, EngineError::QuotaExceeded { quota: "submit_per_sec", .. }), "{refused}");
    }
    let admitted = answers.iter().filter(|a| a.is_ok()).count() as f64;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(admitted >= 4.0 && admitted <= 5.0 + 2.0 * elapsed, "{admitted} admitted at once in {elapsed:.2} s");
}

/// Serving together, a host whose connection listening for the others'
/// events is cut tells its subscribers (events sent meanwhile are lost to
/// it), listens again and goes on hearing them; a host that says it could
/// not send some of its events makes the others tell theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_that_cannot_hear_the_others_tells_its_subscribers_and_listens_again() {
    let url = taskhost_test_postgres::cluster().database("engine_unheard");
    let (a, b) = two_hosts_on(&url).await;
    // Host a runs every task: host b hears of them only from a.
    b.runner.needs.lock().unwrap().push(("echo".into(), vec!["minilm".into()]));
    let mut feed = b.shared.store.subscribe(None);
    let admin = crate::store::postgres::PgStore::connect(&url, 1).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN%taskhost_events%' AND pid <> pg_backend_pid()",
    )
    .fetch_all(admin.pool())
    .await
    .unwrap();
    assert_eq!(ended, [true, true], "each host listened on a session of its own");
    tokio::time::timeout(WAIT, feed.losses.changed()).await.expect("host b's subscribers are told").unwrap();
    // It listens again: a task host a runs after that shows on b's feed
    // (one sent before b listened again may be lost, as told).
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut ids = Vec::new();
    'heard: loop {
        let id = a.engine.submit(task("echo", &Script::Complete(vec![1]))).await.unwrap().record.id;
        ids.push(id);
        assert_eq!(a.engine.wait(id, WAIT).await.unwrap().state, TaskState::Completed);
        let pause = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(event) = tokio::time::timeout_at(pause.min(deadline), feed.live.recv()).await {
            let event = event.unwrap();
            if event.id == id && event.to == TaskState::Completed {
                break 'heard;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "host b's feed never heard host a again");
    }
    assert!(ids.iter().all(|id| b.runner.calls(*id) == 0), "host a ran them all");
    // Told once when the connection was made again at once (twice when
    // it was not: when found lost, and once listening again).
    let told = *feed.losses.borrow_and_update();
    assert!((1..=2).contains(&told), "told {told} times");
    // A host that says it could not send some of its events: b tells too.
    sqlx::query("SELECT pg_notify('taskhost_events', '{\"h\":\"host-c\",\"e\":[],\"l\":5}')")
        .execute(admin.pool())
        .await
        .unwrap();
    tokio::time::timeout(WAIT, feed.losses.changed()).await.expect("told of host c's loss").unwrap();
    assert_eq!(*feed.losses.borrow(), told + 1);
}

/// Serving together, each host's event feed carries every host's events:
/// tasks submitted to either host and run on host a alone (host b leaves
/// their plugin to others) show on host b's feed created, started and
/// completed, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_serving_together_each_carry_every_hosts_events() {
    let (a, b) = two_hosts_together("engine_shared_events").await;
    b.runner.needs.lock().unwrap().push(("echo".into(), vec!["minilm".into()]));
    let mut feed = b.shared.store.subscribe(None);
    let mut ids = Vec::new();
    for i in 0..10u8 {
        let on = if i % 2 == 0 { &a } else { &b };
        ids.push(on.engine.submit(task("echo", &Script::Complete(vec![i]))).await.unwrap().record.id);
    }
    for id in &ids {
        assert_eq!(a.engine.wait(*id, WAIT).await.unwrap().state, TaskState::Completed);
        assert_eq!((a.runner.calls(*id), b.runner.calls(*id)), (1, 0), "host a ran it");
    }
    let mut seen: std::collections::HashMap<(uuid::Uuid, TaskState), usize> = Default::default();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < ids.len() * 3 {
        let event = tokio::time::timeout_at(deadline, feed.live.recv())
            .await
            .unwrap_or_else(|_| panic!("host b's feed lacks events; it has {seen:?}"))
            .unwrap();
        if ids.contains(&event.id) {
            *seen.entry((event.id, event.to)).or_default() += 1;
        }
    }
    for id in &ids {
        for state in [TaskState::Pending, TaskState::Running, TaskState::Completed] {
            assert_eq!(seen.get(&(*id, state)), Some(&1), "task {id} {state:?} once on host b's feed");
        }
    }
}
