//! Flow benchmark, printed as one table: a fan-out of 10,000 children plus
//! a join that reads all their outcomes, against 10,000 independent tasks
//! submitted from outside, both of the same trivial plugin, both durable.
//! Each round runs on a fresh store; medians over the rounds.
//!
//! Run: `cargo bench -p taskhost --bench flows` (or `./dev.sh bench`).

use serde_json::json;
use std::time::{Duration, Instant};
use taskhost::SandboxConfig;
use taskhost::engine::{Engine, EngineConfig, NewTask};
use taskhost::store::FlowState;
use taskhost_test_artifacts::{FLOW_PROBE, TRIVIAL};

const TASKS: usize = 10_000;
const ROUNDS: usize = 5;

mod common;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(bench());
}

async fn open(dir: &std::path::Path) -> Engine {
    let config = EngineConfig {
        data_dir: dir.to_owned(),
        sandbox: SandboxConfig { pool_instances: 1024, ..SandboxConfig::default() },
        // As in the engine benchmark.
        concurrency: 512,
        ..EngineConfig::default()
    };
    let engine = Engine::open(config).await.unwrap();
    engine.add_plugin("trivial", TRIVIAL.bytes(), None, true).await.unwrap();
    engine.add_plugin("flow-probe", FLOW_PROBE.bytes(), None, true).await.unwrap();
    engine
}

/// 10,000 independent tasks from 64 concurrent submitters, until all
/// completed (as the engine benchmark measures throughput).
async fn independent(engine: &Engine) -> Duration {
    common::submit_and_complete(engine, TASKS, common::trivial).await
}

/// One task submits 10,000 children and a join; until the join ended.
async fn fan_out(engine: &Engine) -> Duration {
    let script = json!([
        {"fanout": {"n": TASKS, "plugin": "trivial", "input": "x"}},
        {"join": "all", "then": {"plugin": "flow-probe", "input": r#"["joined_count"]"#}}
    ]);
    let started = Instant::now();
    let root = NewTask { plugin: "flow-probe".into(), input: script.to_string().into_bytes(), ..NewTask::default() };
    let flow = engine.submit(root).await.unwrap().record.id;
    let view = engine.wait_flow(flow, Duration::from_secs(300)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(view.flow.state, FlowState::Completed);
    assert_eq!(view.tasks.len(), TASKS + 2);
    let joined: serde_json::Value = serde_json::from_slice(&view.output.unwrap()).unwrap();
    assert_eq!(joined[0], json!({"completed": TASKS, "total": TASKS}), "the join saw every child complete");
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn bench() {
    let (mut alone, mut fanned) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for fan in [round % 2 == 0, round % 2 != 0] {
            let dir = tempfile::tempdir().unwrap();
            let engine = open(dir.path()).await;
            if fan {
                fanned.push(fan_out(&engine).await);
            } else {
                alone.push(independent(&engine).await);
            }
            engine.close().await;
        }
        eprintln!("round {}/{ROUNDS} done", round + 1);
    }
    let (a, f) = (median(alone), median(fanned));
    let rate = |d: Duration| TASKS as f64 / d.as_secs_f64();
    println!("\nflows: {TASKS} tasks of a trivial plugin, durable; median of {ROUNDS} rounds, fresh store each\n");
    println!("| workload | time | tasks/s | ratio |");
    println!("|---|---|---|---|");
    println!("| {TASKS} independent tasks (64 submitters) | {:.0} ms | {:.0} | 1.00× |", ms(a), rate(a));
    println!(
        "| fan-out of {TASKS} children + join (one parent) | {:.0} ms | {:.0} | {:.2}× |",
        ms(f),
        rate(f),
        f.as_secs_f64() / a.as_secs_f64()
    );
    println!("\ngoal: fan-out + join ≤ 1.2× the independent tasks' time");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
