//! The durable engine in-process: idempotency, priority, fairness, retry
//! schedule, cancellation, delays, the dead-letter set, queue limits; each
//! test on both store backends.

use crate::stores::{Backend, on_both_stores};
use std::time::{Duration, Instant};
use taskhost::engine::{Engine, EngineConfig, NewTask, RetryPolicy};
use taskhost::store::{QueueConfig, TaskRecord, TaskState};
use taskhost::{SandboxConfig, units};
use taskhost_test_artifacts::{FAIL, SLEEP, SPIN, UPPERCASE};

/// An engine on a redb file with the test plugins, after `tweak`.
pub(crate) async fn engine_with(tweak: impl FnOnce(&mut EngineConfig)) -> (Engine, tempfile::TempDir) {
    engine_on(Backend::Redb, tweak).await
}

/// An engine on a new store of `backend` with the test plugins, after
/// `tweak`.
pub(crate) async fn engine_on(backend: Backend, tweak: impl FnOnce(&mut EngineConfig)) -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig {
        data_dir: dir.path().to_owned(),
        store_url: backend.new_store(),
        sandbox: SandboxConfig { pool_instances: 64, ..SandboxConfig::default() },
        concurrency: 8,
        retry: RetryPolicy { base: Duration::from_millis(40), cap: Duration::from_millis(200) },
        ..EngineConfig::default()
    };
    tweak(&mut config);
    let engine = Engine::open(config).await.unwrap();
    for artifact in [SLEEP, FAIL, SPIN, UPPERCASE] {
        engine.add_plugin(artifact.name, artifact.bytes(), None, true).await.unwrap();
    }
    (engine, dir)
}

pub(crate) fn task(plugin: &str, input: &str) -> NewTask {
    NewTask { plugin: plugin.into(), input: input.as_bytes().to_vec(), ..NewTask::default() }
}

async fn finish(engine: &Engine, id: uuid::Uuid) -> TaskRecord {
    let record = engine.wait(id, Duration::from_secs(30)).await.unwrap();
    assert!(record.state.is_terminal(), "task {id} still {} after 30 s", record.state);
    record
}

on_both_stores! {
    async fn a_task_runs_to_completion_with_its_history(backend) {
        let (engine, _dir) = engine_on(backend, |_| {}).await;
        let submitted = engine.submit(task("uppercase", "durable")).await.unwrap();
        let record = finish(&engine, submitted.record.id).await;
        assert_eq!(record.state, TaskState::Completed);
        assert_eq!(engine.output(record.id).await.unwrap().unwrap(), b"DURABLE");
        let path: Vec<_> = record.history.iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            path,
            [
                (None, TaskState::Pending),
                (Some(TaskState::Pending), TaskState::Running),
                (Some(TaskState::Running), TaskState::Completed)
            ]
        );
        assert_eq!((record.attempts, record.plugin_version.as_str()), (1, "1"));
    }

    async fn an_idempotency_key_never_makes_a_second_task(backend) {
        let (engine, _dir) = engine_on(backend, |_| {}).await;
        let keyed = || NewTask { idempotency_key: Some("invoice-42".into()), ..task("uppercase", "x") };
        let first = engine.submit(keyed()).await.unwrap();
        let results = engine.submit_batch((0..20).map(|_| keyed()).collect()).await;
        for result in results {
            let again = result.unwrap();
            assert!(!again.created);
            assert_eq!(again.record.id, first.record.id);
        }
        let (all, _) = engine.list(&Default::default()).await.unwrap();
        assert_eq!(all.len(), 1);
    }

    async fn higher_priority_runs_first_then_fifo(backend) {
        let (engine, _dir) = engine_on(backend, |c| c.concurrency = 1).await;
        // Hold the only worker while the others queue up.
        let blocker = engine.submit(task("sleep", "300")).await.unwrap().record.id;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut ids = Vec::new();
        for priority in [0u8, 5, 9, 5, 0, 9] {
            let t = NewTask { priority: Some(priority), ..task("sleep", "15") };
            ids.push((priority, engine.submit(t).await.unwrap().record.id));
        }
        finish(&engine, blocker).await;
        let mut started = Vec::new();
        for (priority, id) in &ids {
            started.push((finish(&engine, *id).await.started_at_ms.unwrap(), *priority, *id));
        }
        started.sort();
        let order: Vec<_> = started.iter().map(|(_, p, id)| (*p, *id)).collect();
        let mut expected = ids.clone();
        expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        assert_eq!(order, expected);
    }

    async fn retryable_failures_back_off_with_jitter_within_bounds(backend) {
        let _quiet = crate::timing().await;
        let policy = RetryPolicy { base: Duration::from_millis(40), cap: Duration::from_millis(200) };
        let (engine, _dir) = engine_on(backend, |c| c.retry = policy).await;
        let mut delays = Vec::new();
        for _ in 0..4 {
            let t = NewTask { max_attempts: Some(4), ..task("fail", "retryable:upstream busy") };
            let record = finish(&engine, engine.submit(t).await.unwrap().record.id).await;
            assert_eq!((record.state, record.attempts), (TaskState::Failed, 4));
            let error = record.error.as_ref().unwrap();
            assert_eq!(
                (error.class.as_str(), error.retryable, error.message.as_str()),
                ("plugin error", true, "upstream busy")
            );
            let h = &record.history;
            let retries: Vec<_> = h.iter().enumerate().filter(|(_, t)| t.to == TaskState::Retrying).collect();
            assert_eq!(retries.len(), 3, "{h:#?}");
            for (i, retry) in retries {
                // The next start comes after the backoff, which is within the
                // ceiling for that attempt.
                let next_start = &h[i + 1];
                assert_eq!((next_start.from, next_start.to), (Some(TaskState::Retrying), TaskState::Running));
                let waited = next_start.at_ms - retry.at_ms;
                let ceiling = policy.ceiling(retry.attempt).as_millis() as u64;
                assert!(waited <= ceiling + 100, "attempt {} waited {waited} ms, ceiling {ceiling} ms", retry.attempt);
                delays.push(waited);
            }
            assert!(h.last().unwrap().reason.contains("attempts exhausted"));
        }
        delays.sort();
        delays.dedup();
        assert!(delays.len() > 3, "backoff shows no jitter: {delays:?}");
    }

    async fn permanent_failures_are_not_retried(backend) {
        let (engine, _dir) = engine_on(backend, |_| {}).await;
        let t = NewTask { max_attempts: Some(5), ..task("fail", "permanent:bad input") };
        let record = finish(&engine, engine.submit(t).await.unwrap().record.id).await;
        assert_eq!((record.state, record.attempts), (TaskState::Failed, 1));
        // Deterministic limits are not retried either.
        let t = NewTask { max_attempts: Some(5), fuel: Some(1_000_000), ..task("spin", "") };
        let record = finish(&engine, engine.submit(t).await.unwrap().record.id).await;
        assert_eq!((record.state, record.attempts), (TaskState::Failed, 1));
        assert_eq!(record.error.unwrap().class, "fuel exhausted");
    }

    async fn cancelling_a_running_task_interrupts_it_within_100ms(backend) {
        let _quiet = crate::timing().await;
        let (engine, _dir) = engine_on(backend, |_| {}).await;
        let t = NewTask { fuel: Some(100_000_000_000), timeout_ms: Some(60_000), ..task("spin", "") };
        let id = engine.submit(t).await.unwrap().record.id;
        while engine.get(id).await.unwrap().state != TaskState::Running {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let asked = Instant::now();
        let record = engine.cancel(id).await.unwrap();
        let took = asked.elapsed();
        assert_eq!(record.state, TaskState::Cancelled);
        assert!(took < Duration::from_millis(100), "cancel took {took:?}");
        assert_eq!(record.history.last().unwrap().from, Some(TaskState::Running));
        // Cancelling again is a conflict, not a crash.
        let again = engine.cancel(id).await.unwrap_err();
        assert!(again.to_string().contains("already ended (cancelled)"), "{again}");
    }

    async fn a_delayed_task_waits_and_can_be_cancelled_before_it_runs(backend) {
        let (engine, _dir) = engine_on(backend, |_| {}).await;
        let delayed = NewTask { delay_ms: Some(250), ..task("uppercase", "later") };
        let record = engine.submit(delayed).await.unwrap().record;
        let done = finish(&engine, record.id).await;
        assert!(done.started_at_ms.unwrap() >= record.created_at_ms + 250);
        let never = NewTask { delay_ms: Some(60_000), ..task("uppercase", "never") };
        let id = engine.submit(never).await.unwrap().record.id;
        let cancelled = engine.cancel(id).await.unwrap();
        assert_eq!((cancelled.state, cancelled.attempts), (TaskState::Cancelled, 0));
    }

    async fn the_dead_letter_set_can_be_resubmitted(backend) {
        let (engine, _dir) = engine_on(backend, |_| {}).await;
        let t = NewTask { max_attempts: Some(1), ..task("fail", "retryable:down") };
        let id = engine.submit(t).await.unwrap().record.id;
        assert_eq!(finish(&engine, id).await.state, TaskState::Failed);
        let filter = taskhost::engine::ListFilter { state: Some(TaskState::Failed), ..Default::default() };
        assert_eq!(engine.list(&filter).await.unwrap().0.len(), 1);
        let again = engine.resubmit(id).await.unwrap();
        assert_eq!((again.state, again.attempts), (TaskState::Pending, 0));
        let done = finish(&engine, id).await;
        assert_eq!((done.state, done.attempts), (TaskState::Failed, 1));
        assert!(done.history.iter().any(|t| t.reason.contains("re-submitted")));
        // Only failed tasks can be re-submitted.
        let ok = engine.submit(task("uppercase", "x")).await.unwrap().record.id;
        finish(&engine, ok).await;
        assert!(engine.resubmit(ok).await.unwrap_err().to_string().contains("only failed tasks"));
    }

    async fn a_queue_concurrency_limit_is_respected(backend) {
        let (engine, _dir) = engine_on(backend, |c| c.concurrency = 8).await;
        engine
            .set_queue("serial", QueueConfig { concurrency: Some(1), weight: 1, ..QueueConfig::default() })
            .await
            .unwrap();
        let batch = (0..5).map(|_| NewTask { queue: Some("serial".into()), ..task("sleep", "30") }).collect();
        let ids: Vec<_> = engine.submit_batch(batch).await.into_iter().map(|r| r.unwrap().record.id).collect();
        let mut spans = Vec::new();
        for id in ids {
            let r = finish(&engine, id).await;
            spans.push((r.started_at_ms.unwrap(), r.finished_at_ms.unwrap()));
        }
        spans.sort();
        for pair in spans.windows(2) {
            assert!(pair[1].0 >= pair[0].1, "tasks of a concurrency-1 queue overlapped: {spans:?}");
        }
    }

    async fn bad_submissions_are_refused_and_write_nothing(backend) {
        let (engine, _dir) = engine_on(backend, |_| {}).await;
        let cases = [
            (NewTask { priority: Some(10), ..task("uppercase", "") }, "priority 10 is out of range"),
            (task("missing", ""), "unknown plugin `missing`"),
            (task("uppercase@7", ""), "has no live version `7` (live: 1)"),
            (NewTask { queue: Some("bad queue!".into()), ..task("uppercase", "") }, "invalid queue name"),
            (NewTask { max_attempts: Some(0), ..task("uppercase", "") }, "max_attempts 0 is out of range"),
            (NewTask { memory_bytes: Some(1 << 40), ..task("uppercase", "") }, "memory_bytes 1024 GiB is over the most"),
            (NewTask { delay_ms: Some(1), run_at_ms: Some(1), ..task("uppercase", "") }, "either delay_ms or run_at"),
            (NewTask { callback_url: Some("http://127.0.0.1:9/".into()), ..task("uppercase", "") }, "a loopback address"),
        ];
        for (bad, expected) in cases {
            let err = engine.submit(bad).await.unwrap_err();
            assert!(err.to_string().contains(expected), "{err} (expected {expected:?})");
        }
        assert!(engine.list(&Default::default()).await.unwrap().0.is_empty());
        assert_eq!(units::format_size(1 << 40), "1024 GiB");
    }

    /// Three backlogged queues with very different task lengths share the
    /// workers by run time: while all three still have work, each is charged a
    /// third of the worker time, whatever its task count. Worker time is read
    /// from `taskhost_worker_seconds_total` as the queues run: it counts each
    /// attempt's run and its commits, which a busy disk makes a large part of a
    /// 10 ms task (the records' start and end times leave the commits out, so
    /// they cannot judge fairness on a slow machine). The counter is checked
    /// against the wall clock, so it cannot pass by counting nothing.
    /// (Completion times are not compared: the simulation in `engine::scheduler`
    /// covers finishing together exactly.) On PostgreSQL each claim shares
    /// run time by what the queues' tasks cost this host (see
    /// `store/postgres/fair.rs`).
    async fn backlogged_queues_share_workers_by_run_time(backend) {
        let _quiet = crate::timing().await;
        let (engine, _dir) = engine_on(backend, |c| c.concurrency = 3).await;
        let start_at = std::time::SystemTime::now() + Duration::from_millis(300);
        let run_at_ms = start_at.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let plan = [("short", 96, 10), ("medium", 32, 30), ("long", 16, 60)];
        let mut batch = Vec::new();
        for (queue, count, ms) in plan {
            for _ in 0..count {
                batch.push(NewTask {
                    queue: Some(queue.into()),
                    run_at_ms: Some(run_at_ms),
                    ..task("sleep", &ms.to_string())
                });
            }
        }
        let ids: Vec<_> = engine.submit_batch(batch).await.into_iter().map(|r| r.unwrap().record).collect();
        // Worker seconds per queue, sampled every 5 ms until every task ended.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (engine, done) = (engine.clone(), done.clone());
            let queues = plan.map(|(q, _, _)| q);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let text = engine.metrics_text();
                    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
                    let charged = queues.map(|q| {
                        let series = format!("taskhost_worker_seconds_total{{tenant=\"default\",queue=\"{q}\"}}");
                        crate::metric_value(&text, &series)
                    });
                    samples.push((at.as_millis() as u64, charged));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                samples
            })
        };
        let mut runs = Vec::new();
        for record in ids {
            let record = finish(&engine, record.id).await;
            assert_eq!(record.state, TaskState::Completed);
            runs.push((record.queue.clone(), record.started_at_ms.unwrap()));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = sampler.await.unwrap();
        // The contended window ends when the first queue starts its last task.
        let window_end =
            plan.iter().map(|(q, _, _)| runs.iter().filter(|r| r.0 == *q).map(|r| r.1).max().unwrap()).min().unwrap();
        assert!(window_end > run_at_ms + 200, "window too short to judge: {} ms", window_end - run_at_ms);
        let (at_ms, charged) = samples.iter().rev().find(|(at, _)| *at <= window_end).unwrap();
        assert!(*at_ms > run_at_ms + 200, "no sample well inside the window: the last before its end is at {at_ms}");
        let window_ms = (at_ms - run_at_ms) as f64;
        let busy: Vec<f64> = charged.iter().map(|s| s * 1000.0).collect();
        let total: f64 = busy.iter().sum();
        // Three workers were busy all along, so at least half of their time is
        // in (attempts still running at the sample are not counted yet; an
        // outcome's commit overlaps the slot's next attempt, so there is no
        // upper bound of the same kind).
        assert!(
            total >= 0.5 * 3.0 * window_ms,
            "worker time (ms) per queue {busy:?} is too little for 3 busy workers over {window_ms} ms"
        );
        let (min, max) = busy.iter().fold((f64::MAX, 0f64), |(a, b), s| (a.min(*s), b.max(*s)));
        assert!((max - min) / max <= 0.25, "worker time (ms) per queue {busy:?} in a {window_ms} ms window");
    }
}
