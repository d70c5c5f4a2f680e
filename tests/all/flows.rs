//! Flows: children and joins from inside plugins, declared series/parallel
//! flows, repeaters (stop signal, cron across a restart), retries that do
//! not duplicate children, every flow limit, context isolation, a fork
//! bomb, and the flow API over HTTP with `taskhost flow`; each test on
//! both store backends.

use crate::engine::{engine_on, task};
use crate::stores::{Backend, on_both_stores};
use serde_json::{Value, json};
use std::time::Duration;
use taskhost::engine::{Engine, EngineConfig, FlowLimits, FlowSpec, FlowView, NewTask};
use taskhost::store::{FlowState, TaskState};
use taskhost_test_artifacts::{FLOW_PROBE, FORK_BOMB, MAP_REDUCE, PIPELINE};
use uuid::Uuid;

/// An engine on a new store of `backend` with the test plugins and the
/// flows' ones, after `tweak`.
pub(crate) async fn flow_engine(
    backend: Backend,
    tweak: impl FnOnce(&mut EngineConfig),
) -> (Engine, tempfile::TempDir) {
    let (engine, dir) = engine_on(backend, tweak).await;
    for artifact in [FLOW_PROBE, FORK_BOMB, MAP_REDUCE, PIPELINE] {
        engine.add_plugin(artifact.name, artifact.bytes(), None, true).await.unwrap();
    }
    (engine, dir)
}

/// Runs a flow-probe script as a new flow's root task; returns the flow id.
pub(crate) async fn probe(engine: &Engine, script: Value) -> Uuid {
    engine.submit(task("flow-probe", &script.to_string())).await.unwrap().record.id
}

pub(crate) async fn ended(engine: &Engine, flow: Uuid) -> FlowView {
    let view = engine.wait_flow(flow, Duration::from_secs(60)).await.unwrap();
    assert_ne!(view.flow.state, FlowState::Running, "flow {flow} still running: {:#?}", view.flow);
    view
}

async fn output(engine: &Engine, id: Uuid) -> Value {
    serde_json::from_slice(&engine.output(id).await.unwrap().expect("an output")).unwrap()
}

on_both_stores! {
    async fn a_join_receives_every_child_output_in_order(backend) {
        let (engine, _dir) = flow_engine(backend, |_| {}).await;
        let mut actions: Vec<Value> =
            (0..24).map(|i| json!({"submit": {"plugin": "uppercase", "input": format!("part {i}")}})).collect();
        actions.push(json!({"join": "all", "then": {"plugin": "flow-probe", "input": r#"["joined"]"#}}));
        let flow = probe(&engine, Value::Array(actions)).await;
        let view = ended(&engine, flow).await;
        assert_eq!(view.flow.state, FlowState::Completed);
        assert_eq!(view.tasks.len(), 26);
        // The join ran last, so its output is the flow's result.
        let join = view.tasks.iter().find(|t| !t.after.is_empty()).unwrap();
        assert_eq!(view.flow.result_task, Some(join.id));
        let joined = output(&engine, join.id).await[0].clone();
        let outputs: Vec<&str> = joined.as_array().unwrap().iter().map(|o| o["output"].as_str().unwrap()).collect();
        let expected: Vec<String> = (0..24).map(|i| format!("PART {i}")).collect();
        assert_eq!(outputs, expected);
        assert!(joined.as_array().unwrap().iter().all(|o| o["status"] == "completed"));
        // Every child started after its parent completed, and the join after
        // every child ended.
        let root = &view.tasks[0];
        let last_child_end = view.tasks[1..25].iter().map(|t| t.finished_at_ms.unwrap()).max().unwrap();
        assert!(view.tasks[1..25].iter().all(|t| t.started_at_ms >= root.finished_at_ms));
        assert!(join.started_at_ms.unwrap() >= last_child_end);
        assert!(view.tasks[1..].iter().all(|t| t.parent_id == Some(root.id) && t.flow_id == flow && t.depth == 1));
    }

    async fn cancelling_a_flow_reaches_every_unfinished_task(backend) {
        let (engine, _dir) = flow_engine(backend, |_| {}).await;
        let mut actions: Vec<Value> = (0..6).map(|_| json!({"submit": {"plugin": "sleep", "input": "20000"}})).collect();
        actions.push(json!({"submit": {"plugin": "uppercase", "input": "later", "delay_ms": 60000}}));
        actions.push(json!({"join": "all", "then": {"plugin": "uppercase", "input": "never"}}));
        let flow = probe(&engine, Value::Array(actions)).await;
        // Wait until the sleepers run.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while engine.flow(flow).await.unwrap().tasks.iter().filter(|t| t.state == TaskState::Running).count() < 6 {
            assert!(std::time::Instant::now() < deadline, "the children never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let asked = std::time::Instant::now();
        let view = engine.cancel_flow(flow).await.unwrap();
        assert!(asked.elapsed() < Duration::from_secs(5), "cancel took {:?}", asked.elapsed());
        assert_eq!(view.flow.state, FlowState::Cancelled);
        let states: Vec<TaskState> = view.tasks.iter().map(|t| t.state).collect();
        assert_eq!(states[0], TaskState::Completed, "the root had completed");
        assert!(states[1..].iter().all(|s| *s == TaskState::Cancelled), "{states:?}");
        assert_eq!(states.len(), 9);
        let again = engine.cancel_flow(flow).await.unwrap_err();
        assert!(again.to_string().contains("already ended (cancelled)"), "{again}");
    }

    async fn declared_series_and_parallel_steps_pass_outputs_along(backend) {
        let (engine, _dir) = flow_engine(backend, |_| {}).await;
        let spec: FlowSpec = serde_json::from_value(json!({
            "name": "shout",
            "input": "hello",
            "steps": [
                {"id": "first", "plugin": "uppercase"},
                {"parallel": [{"id": "left", "plugin": "uppercase"}, {"id": "right", "plugin": "uppercase"}]},
                {"id": "gather", "plugin": "uppercase"}
            ]
        }))
        .unwrap();
        let view = engine.submit_flow(spec).await.unwrap();
        let view = ended(&engine, view.flow.id).await;
        assert_eq!(view.flow.state, FlowState::Completed);
        let steps: Vec<&str> = view.tasks.iter().map(|t| t.step.as_deref().unwrap()).collect();
        assert_eq!(steps, ["first", "left", "right", "gather"]);
        // Two predecessors are gathered into a JSON array, in `after` order.
        assert_eq!(view.output.as_deref(), Some(&br#"["HELLO","HELLO"]"#[..]));

        // A failed step skips what depends on it, and the flow fails.
        let spec: FlowSpec = serde_json::from_value(json!({
            "steps": [{"id": "boom", "plugin": "fail", "input": "permanent:no"}, {"id": "after", "plugin": "uppercase"}]
        }))
        .unwrap();
        let view = ended(&engine, engine.submit_flow(spec).await.unwrap().flow.id).await;
        assert_eq!(view.flow.state, FlowState::Failed);
        assert_eq!(view.tasks[1].state, TaskState::Cancelled);
        assert!(view.tasks[1].history.last().unwrap().reason.contains("step `boom` ended failed"));
        assert!(view.flow.error.as_deref().unwrap().contains("step `boom` failed: plugin error: no"), "{:?}", view.flow);

        // Bad specs are refused and create nothing.
        for (spec, message) in [
            (json!({"steps": {"plugin": "nope"}}), "step `step-1`: unknown plugin"),
            (json!({"steps": [{"id": "a", "plugin": "uppercase", "after": ["a"]}]}), "cycle through a"),
            (json!({"steps": {"plugin": "uppercase"}, "repeat": {"cron": "every tuesday"}}), "not a cron expression"),
        ] {
            let spec: FlowSpec = serde_json::from_value(spec).unwrap();
            let error = engine.submit_flow(spec).await.unwrap_err().to_string();
            assert!(error.contains(message), "{error}");
        }
    }

    async fn a_repeater_runs_until_a_plugin_signals_stop(backend) {
        let (engine, _dir) = flow_engine(backend, |_| {}).await;
        let spec: FlowSpec = serde_json::from_value(json!({
            "steps": {"plugin": "flow-probe", "input": [{"count_until": 4}]},
            "repeat": {"until_stop": true, "max_iterations": 50}
        }))
        .unwrap();
        let view = ended(&engine, engine.submit_flow(spec).await.unwrap().flow.id).await;
        assert_eq!(view.flow.state, FlowState::Completed);
        assert_eq!((view.flow.iteration, view.tasks.len()), (3, 4), "stopped after the 4th iteration");
        let iterations: Vec<u32> = view.tasks.iter().map(|t| t.iteration).collect();
        assert_eq!(iterations, [0, 1, 2, 3]);
        assert_eq!(output(&engine, view.tasks[3].id).await, json!([4]));
        assert!(view.flow.stop_requested);
    }

    async fn a_cron_repeater_survives_a_restart_without_double_firing(backend) {
        let dir = tempfile::tempdir().unwrap();
        let store = backend.new_store();
        let config = || EngineConfig {
            data_dir: dir.path().to_owned(),
            store_url: store.clone(),
            concurrency: 4,
            sandbox: taskhost::SandboxConfig { pool_instances: 16, ..Default::default() },
            ..EngineConfig::default()
        };
        let engine = Engine::open(config()).await.unwrap();
        engine.add_plugin("uppercase", taskhost_test_artifacts::UPPERCASE.bytes(), None, true).await.unwrap();
        let spec: FlowSpec = serde_json::from_value(json!({
            "steps": {"plugin": "uppercase", "input": "tick"},
            "repeat": {"cron": "* * * * * *", "max_iterations": 5}
        }))
        .unwrap();
        let flow = engine.submit_flow(spec).await.unwrap().flow.id;
        // Let two iterations fire, then stop the host and stay down past a fire
        // time.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while engine.flow(flow).await.unwrap().tasks.iter().filter(|t| t.state == TaskState::Completed).count() < 2 {
            assert!(std::time::Instant::now() < deadline, "the cron flow never fired twice");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        engine.close().await;
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let engine = Engine::open(config()).await.unwrap();
        let view = ended(&engine, flow).await;
        assert_eq!(view.flow.state, FlowState::Completed);
        assert_eq!(view.tasks.len(), 5, "one task per iteration: {:#?}", view.tasks);
        let iterations: Vec<u32> = view.tasks.iter().map(|t| t.iteration).collect();
        assert_eq!(iterations, [0, 1, 2, 3, 4]);
        // Every iteration was scheduled on a whole second, each later than the
        // one before: the downtime skipped fire times, never doubled one.
        let due: Vec<u64> = view.tasks.iter().map(|t| t.next_run_at_ms.unwrap()).collect();
        assert!(due.iter().all(|d| d % 1000 == 0), "{due:?}");
        assert!(due.windows(2).all(|w| w[1] > w[0]), "{due:?}");
        assert!(due.windows(2).any(|w| w[1] - w[0] >= 2000), "the downtime should have skipped a second: {due:?}");
        for t in &view.tasks {
            assert!(t.started_at_ms.unwrap() >= t.next_run_at_ms.unwrap(), "fired early: {t:#?}");
        }
    }

    async fn a_retried_parent_does_not_duplicate_children(backend) {
        let (engine, _dir) = flow_engine(backend, |_| {}).await;
        let actions = json!([
            {"submit": {"plugin": "uppercase", "input": "one"}},
            {"submit": {"plugin": "uppercase", "input": "two", "key": "second"}},
            {"submit": {"plugin": "uppercase", "input": "two again", "key": "second"}},
            {"set": ["progress", "submitted"]},
            {"fail_before_attempt": [3, "flaky upstream"]}
        ]);
        let root = engine
            .submit(NewTask { max_attempts: Some(3), ..task("flow-probe", &actions.to_string()) })
            .await
            .unwrap()
            .record
            .id;
        let view = ended(&engine, root).await;
        assert_eq!(view.tasks[0].attempts, 3, "the parent failed twice after submitting");
        assert_eq!(view.tasks.len(), 3, "children of failed attempts were never created: {:#?}", view.tasks);
        let ids = output(&engine, root).await;
        assert_eq!(ids[1], ids[2], "the same key in one attempt returns the same id");
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for t in &view.tasks[1..] {
            inputs.push(engine.output(t.id).await.unwrap().unwrap());
        }
        assert_eq!(inputs, [b"ONE".to_vec(), b"TWO".to_vec()]);
        assert_eq!(view.flow.state, FlowState::Completed);
    }

    async fn every_flow_limit_is_refused_cleanly(backend) {
        let limits = FlowLimits {
            children_per_task: 3,
            max_depth: 2,
            tasks_per_flow: 6,
            context_bytes: 64,
            submissions_per_sec: 1_000,
        };
        let (engine, _dir) = flow_engine(backend, |c| c.flow_limits = limits).await;
        let run = |actions: Value| {
            let engine = engine.clone();
            async move {
                let root = probe(&engine, actions).await;
                let view = ended(&engine, root).await;
                (view, output(&engine, root).await)
            }
        };
        // Children per task.
        let (view, out) = run(json!([{"fanout": {"n": 5, "plugin": "uppercase", "input": "x"}}])).await;
        assert_eq!(out[0]["submitted"], 3);
        let refused = out[0]["refused"].as_array().unwrap();
        assert_eq!(refused.len(), 2);
        assert!(refused[0].as_str().unwrap().contains("limit exceeded: a task may submit at most 3 children"));
        assert_eq!(view.tasks.len(), 4);
        // Depth: root (0) → child (1) → grandchild (2) → refused.
        let level3 = json!([{"submit": {"plugin": "uppercase"}}]).to_string();
        let level2 = json!([{"submit": {"plugin": "flow-probe", "input": level3}}]).to_string();
        let (view, _) = run(json!([{"submit": {"plugin": "flow-probe", "input": level2}}])).await;
        assert_eq!(view.tasks.len(), 3);
        let deepest = output(&engine, view.tasks[2].id).await;
        assert!(deepest[0]["error"].as_str().unwrap().contains("3 submissions deep; the limit is 2"), "{deepest}");
        // Tasks per flow: the fork bomb stops at 6 (before its depth limit).
        let bomb = engine.submit(task("fork-bomb", "")).await.unwrap().record.id;
        let view = ended(&engine, bomb).await;
        assert_eq!(view.tasks.len(), 6);
        assert!(view.tasks.iter().all(|t| t.state == TaskState::Completed));
        let mut outputs: Vec<String> = Vec::new();
        for t in &view.tasks {
            outputs.push(String::from_utf8(engine.output(t.id).await.unwrap().unwrap()).unwrap());
        }
        assert!(outputs.iter().any(|o| o.contains("the flow already has 6 tasks, its limit")), "{outputs:#?}");
        // Context bytes (keys plus values).
        let big = "v".repeat(40);
        let (_, out) = run(json!([{"set": ["a", big]}, {"set": ["b", big]}, {"keys": ""}])).await;
        assert_eq!(out[0], "ok");
        assert!(out[1]["error"].as_str().unwrap().contains("would hold 82 bytes; its limit is 64 bytes"), "{out}");
        assert_eq!(out[2], json!(["a"]));
        // Bad submissions name the problem.
        let (_, out) = run(json!([
            {"submit": {"plugin": "no-such-plugin"}},
            {"submit": {"plugin": "uppercase", "priority": 12}},
            {"get": "0190a1b2-0000-7000-8000-000000000000"},
            {"join": ["not-an-id"], "then": {"plugin": "uppercase"}}
        ]))
        .await;
        assert!(out[0]["error"].as_str().unwrap().contains("unknown plugin `no-such-plugin`"), "{out}");
        assert!(out[1]["error"].as_str().unwrap().contains("priority 12 is out of range"), "{out}");
        assert!(out[2]["error"].as_str().unwrap().contains("no task 0190a1b2-0000-7000-8000-000000000000 in this flow"));
        assert!(out[3]["error"].as_str().unwrap().contains("`not-an-id` is not a task id"), "{out}");
        // Operators see every refusal by its limit.
        let metrics = engine.metrics_text();
        for line in [
            r#"taskhost_flow_limit_refusals_total{limit="children_per_task"} 2"#,
            r#"taskhost_flow_limit_refusals_total{limit="context_bytes"} 1"#,
        ] {
            assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
        }
        // (The fork bomb also ran into its depth limit.)
        for limit in ["depth", "tasks_per_flow"] {
            assert!(metrics.contains(&format!(r#"taskhost_flow_limit_refusals_total{{limit="{limit}"}}"#)), "{metrics}");
        }
        // Submissions per second.
        let (engine, _dir) = flow_engine(backend, |c| c.flow_limits.submissions_per_sec = 4).await;
        let root = probe(&engine, json!([{"fanout": {"n": 10, "plugin": "uppercase"}}])).await;
        ended(&engine, root).await;
        let out = output(&engine, root).await;
        assert_eq!(out[0]["submitted"], 4);
        assert!(out[0]["refused"][0].as_str().unwrap().contains("faster than 4 tasks per second"), "{out}");
        // The host is fine.
        let t = engine.submit(task("uppercase", "still here")).await.unwrap().record.id;
        assert_eq!(engine.wait(t, Duration::from_secs(10)).await.unwrap().state, TaskState::Completed);
    }

    /// A flow's submissions per second hold across its tasks' attempts, on
    /// either store: five children each try to submit ten more, and all of
    /// them together get the flow's rate (on PostgreSQL the database keeps
    /// the flow's bucket, since its tasks may run on any host; a bucket per
    /// attempt would admit five more to each: 30 in all).
    async fn a_flows_rate_holds_across_its_tasks(backend) {
        let on = backend.name();
        let (engine, _dir) = flow_engine(backend, |c| c.flow_limits.submissions_per_sec = 5).await;
        let fanout = json!([{"fanout": {"n": 10, "plugin": "uppercase"}}]).to_string();
        let child = json!({"submit": {"plugin": "flow-probe", "input": fanout}});
        let root = probe(&engine, json!([child, child, child, child, child])).await;
        let view = ended(&engine, root).await;
        let created = view.tasks.iter().find(|t| t.id == root).unwrap().created_at_ms;
        let children: Vec<_> = view.tasks.iter().filter(|t| t.plugin == "flow-probe" && t.id != root).collect();
        assert_eq!(children.len(), 5, "{on}");
        // Every submission of the flow came between the root's creation
        // and the last child's end.
        let last = children.iter().map(|t| t.finished_at_ms.unwrap()).max().unwrap();
        let window = (last.saturating_sub(created) + 1) as f64 / 1000.0;
        let mut submitted = 5;
        let mut refusals = Vec::new();
        for t in &children {
            let out = output(&engine, t.id).await;
            submitted += out[0]["submitted"].as_u64().unwrap();
            refusals.extend(out[0]["refused"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()));
        }
        // The burst (the root's five) and what refilled meanwhile.
        let most = 5.0 + 5.0 * window + 1.0;
        assert!((submitted as f64) <= most, "{on}: {submitted} submitted within {window:.2} s; at most {most:.1}");
        assert!(refusals.iter().any(|r| r.contains("faster than 5 tasks per second")), "{on}: {refusals:?}");
    }

    async fn context_is_shared_within_a_flow_and_isolated_between_flows(backend) {
        let (engine, _dir) = flow_engine(backend, |_| {}).await;
        let reader = json!([{"get_ctx": "k"}, {"keys": ""}]).to_string();
        let a =
            probe(&engine, json!([{"set": ["k", "from a"]}, {"submit": {"plugin": "flow-probe", "input": reader}}])).await;
        let a_view = ended(&engine, a).await;
        let b = probe(
            &engine,
            json!([{"get_ctx": "k"}, {"set": ["k", "from b"]}, {"get_ctx": "k"}, {"delete": "k"}, {"keys": ""}]),
        )
        .await;
        ended(&engine, b).await;
        // A's child saw A's value; B saw nothing of A, its own write at once,
        // and its delete.
        assert_eq!(output(&engine, a_view.tasks[1].id).await, json!(["from a", ["k"]]));
        assert_eq!(output(&engine, b).await, json!([null, "ok", "from b", true, []]));
        // A failed attempt's writes are never committed.
        let failing = json!([{"set": ["k", "lost"]}, {"fail_before_attempt": [9, "always"]}]).to_string();
        let c = engine.submit(NewTask { max_attempts: Some(1), ..task("flow-probe", &failing) }).await.unwrap().record.id;
        ended(&engine, c).await;
        let check = probe(&engine, json!([{"keys": ""}])).await;
        ended(&engine, check).await;
        assert_eq!(output(&engine, check).await, json!([[]]));
    }

    async fn a_fork_bomb_is_contained_and_other_queues_keep_their_share(backend) {
        let _quiet = crate::timing().await;
        let (engine, _dir) = flow_engine(backend, |c| {
            c.concurrency = 4;
            c.flow_limits.tasks_per_flow = 3_000;
        })
        .await;
        let bomb = engine.submit(NewTask { queue: Some("bomb".into()), ..task("fork-bomb", "") }).await.unwrap().record.id;
        // Let the bomb build a backlog, then submit ordinary work.
        while engine.flow(bomb).await.unwrap().tasks.len() < 200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let work: Vec<Uuid> = engine
            .submit_batch((0..40).map(|_| NewTask { queue: Some("work".into()), ..task("sleep", "20") }).collect())
            .await
            .into_iter()
            .map(|r| r.unwrap().record.id)
            .collect();
        let mut runs = Vec::new();
        for id in &work {
            let record = engine.wait(*id, Duration::from_secs(60)).await.unwrap();
            assert_eq!(record.state, TaskState::Completed);
            runs.push((record.started_at_ms.unwrap(), record.finished_at_ms.unwrap()));
        }
        let view = ended(&engine, bomb).await;
        assert_eq!(view.tasks.len(), 3_000, "the bomb stopped at its flow's task limit");
        assert!(view.tasks.iter().all(|t| t.state == TaskState::Completed));
        // While the work ran, it had a fair share of the workers: at least a
        // third of the busy worker time (an even split is a half).
        let (from, to) = (runs.iter().map(|r| r.0).min().unwrap(), runs.iter().map(|r| r.0).max().unwrap());
        let busy = |s: u64, f: u64| f.min(to).saturating_sub(s.max(from));
        let work_busy: u64 = runs.iter().map(|r| busy(r.0, r.1)).sum();
        let bomb_busy: u64 = view.tasks.iter().filter_map(|t| Some(busy(t.started_at_ms?, t.finished_at_ms?))).sum();
        let share = work_busy as f64 / (work_busy + bomb_busy).max(1) as f64;
        assert!(share >= 0.33, "ordinary work got {share:.2} of the workers beside the fork bomb");
        // And the host still answers.
        let t = engine.submit(task("uppercase", "ok")).await.unwrap().record.id;
        assert_eq!(engine.wait(t, Duration::from_secs(10)).await.unwrap().state, TaskState::Completed);
    }

    async fn the_pipeline_example_repeats_its_three_stages(backend) {
        let (engine, _dir) = flow_engine(backend, |_| {}).await;
        let input = json!({"stage": "a", "round": 0, "rounds": 3, "text": "  The Quick  Brown Fox "});
        let root = engine.submit(task("pipeline", &input.to_string())).await.unwrap().record.id;
        let view = ended(&engine, root).await;
        assert_eq!(view.flow.state, FlowState::Completed);
        assert_eq!(view.tasks.len(), 9, "A, B and C, three times");
        // Each stage was created by the one before it.
        for pair in view.tasks.windows(2) {
            assert_eq!(pair[1].parent_id, Some(pair[0].id));
        }
        let result = engine.output(view.flow.result_task.unwrap()).await.unwrap().unwrap();
        assert_eq!(String::from_utf8(result).unwrap(), "round-000,round-001,round-002");
    }

    async fn map_reduce_counts_a_real_text_exactly(backend) {
        let (engine, _dir) = flow_engine(backend, |_| {}).await;
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let input = json!({"text": {"text": text, "chunk_lines": 25}});
        let root = engine.submit(task("map-reduce", &input.to_string())).await.unwrap().record.id;
        let view = ended(&engine, root).await;
        assert_eq!(view.flow.state, FlowState::Completed);
        let chunks = text.lines().count().div_ceil(25);
        assert_eq!(view.tasks.len(), 1 + chunks + 1);
        let counts: std::collections::BTreeMap<String, u64> =
            serde_json::from_slice(&view.output.clone().unwrap()).unwrap();
        // The same count done here, in one pass.
        let mut expected = std::collections::BTreeMap::<String, u64>::new();
        for word in text.split(|c: char| !c.is_alphanumeric() && c != '\'').filter(|w| !w.is_empty()) {
            *expected.entry(word.to_lowercase()).or_default() += 1;
        }
        assert_eq!(counts, expected);
        assert!(counts["the"] > 50);
    }

    async fn flows_over_http_and_in_the_terminal(backend) {
        let (engine, dir) = flow_engine(backend, |_| {}).await;
        let (base, token) = crate::serve_api(&engine, dir.path()).await;
        let http = crate::authed(&token);
        let post = |path: &str, body: Value| http.post(format!("{base}{path}")).json(&body).send();
        // Declare a flow: two parallel steps and a join.
        let spec = json!({"name": "demo", "input": "hi", "steps": [
            {"parallel": [{"id": "a", "plugin": "uppercase"}, {"id": "b", "plugin": "uppercase"}]},
            {"id": "both", "plugin": "uppercase"}
        ]});
        let response = post("/v1/flows", spec).await.unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let created: Value = response.json().await.unwrap();
        let id = created["id"].as_str().unwrap().to_owned();
        assert_eq!((created["name"].as_str(), created["tasks"]["total"].as_u64()), (Some("demo"), Some(3)));
        ended(&engine, id.parse().unwrap()).await;
        let view: Value = http.get(format!("{base}/v1/flows/{id}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(view["state"], "completed");
        assert_eq!(view["output"], json!(["HI", "HI"]));
        assert_eq!(view["tasks"]["by_state"]["completed"], 3);
        let steps: Vec<&str> = view["tree"].as_array().unwrap().iter().map(|n| n["step"].as_str().unwrap()).collect();
        assert_eq!(steps, ["a", "b", "both"]);
        assert!(view["tree"][2]["run_ms"].is_u64());
        // The same flow in the terminal.
        let shown = crate::client_cli(&base, &token, &["flow", &id, "--server", &base]).await;
        assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
        let text = String::from_utf8(shown.stdout).unwrap();
        assert!(text.starts_with(&format!("flow {} completed (demo)  3 tasks", view["id"].as_str().unwrap())), "{text}");
        assert_eq!(text.lines().filter(|l| l.contains("✔") && l.contains("uppercase")).count(), 3, "{text}");
        assert!(text.contains("[both] completed"), "{text}");
        // A code-created flow shows its children under their parent; cancel
        // over HTTP.
        let actions = json!([{"submit": {"plugin": "sleep", "input": "20000"}}]).to_string();
        let root = engine.submit(task("flow-probe", &actions)).await.unwrap().record.id;
        while engine.flow(root).await.unwrap().tasks.len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cancelled: Value = post(&format!("/v1/flows/{root}/cancel"), json!({})).await.unwrap().json().await.unwrap();
        assert_eq!(cancelled["state"], "cancelled");
        assert_eq!(cancelled["tree"][0]["children"][0]["state"], "cancelled");
        // Bad requests say what is wrong.
        let bad = post("/v1/flows", json!({"steps": [{"plugin": "uppercase", "after": ["ghost"]}]})).await.unwrap();
        assert_eq!(bad.status().as_u16(), 400);
        let body: Value = bad.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("`ghost`, which is not a step"), "{body}");
        let bad = post("/v1/flows", json!({"stepz": []})).await.unwrap();
        let body: Value = bad.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("unknown field `stepz`"), "{body}");
        let missing = http.get(format!("{base}/v1/flows/{}", Uuid::now_v7())).send().await.unwrap();
        assert_eq!(missing.status().as_u16(), 404);

        // A result that is not JSON comes as `output_base64`, as in a task's
        // record; a failed step's node has the task record's error object.
        let spec = json!({"input": "hi", "steps": [
            {"id": "up", "plugin": "uppercase"},
            {"id": "bad", "plugin": "fail", "input": "permanent:bad input", "after": ["up"]}
        ]});
        let created: Value = post("/v1/flows", spec).await.unwrap().json().await.unwrap();
        let id = created["id"].as_str().unwrap().to_owned();
        ended(&engine, id.parse().unwrap()).await;
        let view: Value = http.get(format!("{base}/v1/flows/{id}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(view["state"], "failed");
        assert_eq!(view["output_base64"], "SEk=", "{view}");
        assert!(view.get("output").is_none() && view.get("output_text").is_none(), "{view}");
        assert!(view["error"].as_str().unwrap().starts_with("step `bad` failed: "), "{view}");
        let node = &view["tree"][1];
        assert_eq!((node["step"].as_str(), node["state"].as_str()), (Some("bad"), Some("failed")));
        let error = &node["error"];
        assert_eq!((error["message"].as_str(), error["retryable"].as_bool()), (Some("bad input"), Some(false)), "{node}");
        assert!(error["class"].is_string() && error["backtrace"].is_null(), "{node}");
        let typed: taskhost::wire::Flow = serde_json::from_value(view.clone()).unwrap();
        assert_eq!(typed.output.bytes().as_deref(), Some(&b"HI"[..]));
        // The terminal shows the node's error as `class: message`.
        let shown = crate::client_cli(&base, &token, &["flow", &id, "--server", &base]).await;
        let text = String::from_utf8(shown.stdout).unwrap();
        let class = error["class"].as_str().unwrap();
        let line = format!("  {class}: bad input");
        assert!(text.lines().any(|l| l.contains("fail [bad] failed") && l.ends_with(&line)), "{text}");
        assert!(text.contains("  error: step `bad` failed: "), "{text}");
    }

    async fn flows_are_listed_newest_first_paged_and_filtered_by_state(backend) {
        let (engine, dir) = flow_engine(backend, |_| {}).await;
        let (base, token) = crate::serve_api(&engine, dir.path()).await;
        let http = crate::authed(&token);
        let get = |path: String| {
            let http = http.clone();
            async move {
                let response = http.get(path).send().await.unwrap();
                (response.status().as_u16(), response.json::<Value>().await.unwrap())
            }
        };
        // Declares the flow `spec` over HTTP: its id.
        let declare = |spec: Value| {
            let (http, url) = (http.clone(), format!("{base}/v1/flows"));
            async move {
                let view: Value = http.post(url).json(&spec).send().await.unwrap().json().await.unwrap();
                view["id"].as_str().unwrap().parse::<Uuid>().unwrap()
            }
        };
        // A declared flow, a flow grown by a task's children, a lone task (no
        // flow) and a declared flow whose step fails.
        let declared = declare(json!({"name": "first", "input": "hi", "steps": [{"plugin": "uppercase"}]})).await;
        ended(&engine, declared).await;
        let grown = probe(&engine, json!([{"fanout": {"n": 2, "plugin": "uppercase", "input": "x"}}])).await;
        ended(&engine, grown).await;
        engine.submit(task("uppercase", "lone")).await.unwrap();
        let failing = declare(json!({"steps": [{"plugin": "flow-probe", "input": "not json", "max_attempts": 1}]})).await;
        ended(&engine, failing).await;

        let (status, page) = get(format!("{base}/v1/flows")).await;
        assert_eq!(status, 200, "{page}");
        let ids: Vec<&str> = page["flows"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [failing.to_string(), grown.to_string(), declared.to_string()], "newest first, no lone task");
        assert_eq!(page["next_cursor"], Value::Null);
        let first = &page["flows"][2];
        assert_eq!((first["name"].as_str(), first["state"].as_str()), (Some("first"), Some("completed")));
        assert_eq!((first["plugin"].as_str(), first["tasks"].as_u64()), (Some("uppercase"), Some(1)));
        assert_eq!(page["flows"][1]["tasks"], 3, "the root and its two children");
        assert_eq!(page["flows"][0]["state"], "failed");

        // Paged one at a time, the same flows in the same order.
        let mut paged = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let query = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
            let (_, page) = get(format!("{base}/v1/flows?limit=1{query}")).await;
            paged.extend(page["flows"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap().to_owned()));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(paged, ids);
        // By state.
        let (_, done) = get(format!("{base}/v1/flows?state=completed")).await;
        assert_eq!(done["flows"].as_array().unwrap().len(), 2, "{done}");
        // Bad queries are refused, naming what is wrong.
        for (query, says) in
            [("state=done", "unknown flow state `done`"), ("limit=0", "limit 0 is out of range"), ("cursor=x", "x")]
        {
            let (status, body) = get(format!("{base}/v1/flows?{query}")).await;
            assert_eq!(status, 400, "{query}: {body}");
            assert!(body["error"]["message"].as_str().unwrap().contains(says), "{query}: {body}");
        }
    }
}
