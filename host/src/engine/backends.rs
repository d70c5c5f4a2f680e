//! The engine on both store backends: each test here runs once on a redb
//! file and once on a PostgreSQL database of the throwaway cluster, the
//! same body against the same engine (`both!`). PostgreSQL's copy runs on
//! a multi-threaded runtime, as `taskhost serve` does: a few of its reads
//! wait in place (see `store/db.rs`).

use super::testing::{Harness, Script, input};
use super::{EngineConfig, EngineError, NewTask};
use crate::store::{FlowState, Retention, TaskState};
use std::time::Duration;

/// Runs `$body` with a harness `$h` on each backend; `$name` names the
/// PostgreSQL test's database.
macro_rules! both {
    ($(async fn $name:ident($h:ident) $body:block)*) => {$(
        mod $name {
            use super::*;

            async fn body($h: Harness) $body

            #[tokio::test]
            async fn redb() {
                body(Harness::with_config(tweak).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                body(Harness::postgres(concat!("engine_", stringify!($name)), tweak).await).await;
            }
        }
    )*};
}

/// Settings both backends' engines share.
fn tweak(config: &mut EngineConfig) {
    config.retention = Retention::forever();
}

fn task(plugin: &str, script: &Script) -> NewTask {
    NewTask { plugin: plugin.into(), input: input(script), ..NewTask::default() }
}

const WAIT: Duration = Duration::from_secs(20);

both! {
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

    async fn a_series_flow_passes_outputs_on_and_a_repeating_one_runs_each_iteration(h) {
        let spec = serde_json::json!({
            "input": Script::Complete(b"hi".to_vec()),
            "steps": {"series": [{"id": "a", "plugin": "echo"}, {"id": "b", "plugin": "echo"}]},
        });
        let view = h.engine.submit_flow(serde_json::from_value(spec).unwrap()).await.unwrap();
        let done = h.engine.wait_flow(view.flow.id, WAIT).await.unwrap();
        assert_eq!(done.flow.state, FlowState::Completed, "{:?}", done.flow);
        assert_eq!(done.output.as_deref(), Some(&b"hi"[..]));
        assert_eq!(done.tasks.len(), 2);
        let spec = serde_json::json!({
            "input": Script::Complete(b"x".to_vec()),
            "steps": {"id": "only", "plugin": "echo"},
            "repeat": {"times": 3},
        });
        let view = h.engine.submit_flow(serde_json::from_value(spec).unwrap()).await.unwrap();
        let done = h.engine.wait_flow(view.flow.id, WAIT).await.unwrap();
        assert_eq!((done.flow.state, done.flow.iteration), (FlowState::Completed, 2));
        let iterations: Vec<u32> = done.tasks.iter().map(|t| t.iteration).collect();
        assert_eq!(iterations, [0, 1, 2]);
        let (flows, _) = h.engine.flows_page(None, 10, None, |_| true).await.unwrap();
        assert_eq!(flows.len(), 2, "both flows are listed");
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
