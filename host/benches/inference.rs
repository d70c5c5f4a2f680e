//! Inference benchmark on the real all-MiniLM-L6-v2 (int8 ONNX), printed
//! as two tables in one run:
//!
//! 1. the `embed` example plugin (tokenize in the sandbox, infer on the
//!    host, pool) as whole tasks: tasks/s and p50/p99 latency at 1, 8, 32
//!    and 128 concurrent tasks, with batching off (`max_batch = 1`) and on;
//!    (the models' defaults otherwise: `max_delay = 0`, one instance);
//! 2. the same prepared batches of 1, 8 and 32 rows run three ways: ONNX
//!    Runtime called directly from Rust, the host's path (`Models::call`:
//!    checks, queue, batcher, copies) and the full WIT path (a plugin's
//!    `inference.run`), each the median per call.
//!
//! Needs `./dev.sh setup` (ONNX Runtime and the model). Run:
//! `cargo bench -p taskhost --bench inference` (or `./dev.sh bench`). On a
//! GPU: `ORT_DYLIB_PATH=<onnxruntime-gpu 1.31 libonnxruntime.so>
//! INFERENCE_DEVICE=cuda:0 cargo bench -p taskhost --bench inference` runs
//! every model (and the direct session) on that device;
//! `host/benches/inference_python.py` runs the per-call batches through
//! ONNX Runtime from Python for comparison.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskhost::infer::{Caller, InferenceService, Tensor, TensorType};
use taskhost::inference::Models;
use taskhost::{Plugin, Sandbox, SandboxConfig, TaskMeta, TaskRequest};
use taskhost_test_artifacts::{EMBED, INFER_BENCH};

/// Seconds each concurrency level runs.
const SECONDS: f64 = 4.0;
/// Calls per measurement, and measurements, in the per-call table.
const CALLS: usize = 20;
const ROUNDS: usize = 15;
const PAUSE: Duration = Duration::from_millis(100);

/// Short English sentences of similar length (16 tokens once padded).
const SENTENCES: [&str; 8] = [
    "The cat sat on the warm windowsill.",
    "Dogs love long walks in the park.",
    "Stocks fell after the rate decision.",
    "The rocket reached orbit at dawn.",
    "Whisk the eggs with a little sugar.",
    "The striker scored in extra time.",
    "Rain is expected over the weekend.",
    "She read the letter twice, smiling.",
];

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models/all-MiniLM-L6-v2")
}

fn models(dir: &Path, max_batch: u32) -> Models {
    models_of(dir, "minilm", &model_dir().join("model.onnx"), max_batch)
}

fn models_of(dir: &Path, name: &str, model: &Path, max_batch: u32) -> Models {
    let file = dir.join(format!("models-{name}-{max_batch}.toml"));
    let text = format!(
        "[models.{name}]\npath = {model:?}\ndevice = {:?}\nmax_batch = {max_batch}\nmax_queue = 4096\nplugins = [\"*\"]\n",
        device()
    );
    std::fs::write(&file, text).unwrap();
    let models = Models::open(Some(file)).unwrap();
    let view = models.view();
    assert!(view.runtime.available, "ONNX Runtime is not available: {:?} (run ./dev.sh setup)", view.runtime.error);
    assert_eq!(view.models[0].state, "ready", "{:?}", view.models[0].error);
    assert_eq!(view.models[0].running_on.as_deref(), Some(device().as_str()), "{:?}", view.models[0].device_note);
    models
}

/// `$INFERENCE_DEVICE`, default `cpu`.
fn device() -> String {
    std::env::var("INFERENCE_DEVICE").unwrap_or_else(|_| "cpu".into())
}

fn main() {
    assert!(model_dir().join("model.onnx").is_file(), "the MiniLM model is missing: run ./dev.sh setup");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxConfig { pool_instances: 256, ..SandboxConfig::default() }).unwrap();
    let embed = sandbox.load("embed", "1", &EMBED.bytes()).unwrap();
    let off = models(dir.path(), 1);
    let on = models(dir.path(), 64);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "MiniLM-L6-v2 int8 on ONNX Runtime 1.31, device {} ({cpus} CPU cores); {SECONDS} s per cell, closed loop",
        device()
    );
    println!();
    println!("embed plugin, one sentence per task:");
    println!(
        "{:>11} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} {:>10} | {:>7}",
        "concurrency", "off t/s", "p50 ms", "p99 ms", "on t/s", "p50 ms", "p99 ms", "mean batch", "on/off"
    );
    for concurrency in [1, 8, 32, 128] {
        let a = load(&sandbox, &embed, &off, concurrency).await;
        let b = load(&sandbox, &embed, &on, concurrency).await;
        println!(
            "{concurrency:>11} | {:>9.0} {:>9.2} {:>9.2} | {:>9.0} {:>9.2} {:>9.2} {:>10.1} | {:>6.2}x",
            a.rate,
            a.p50,
            a.p99,
            b.rate,
            b.p50,
            b.p99,
            b.mean_batch,
            b.rate / a.rate
        );
    }
    println!();
    per_call(&sandbox, &on).await;
    println!();
    tiny(dir.path()).await;
    println!();
    match on.runtime().cuda.clone() {
        Ok(()) if device() == "cpu" => println!("CUDA: available; INFERENCE_DEVICE=cuda:0 gives the GPU figures"),
        Ok(()) => {}
        Err(why) => println!("CUDA: not measured here: {why}"),
    }
}

struct Load {
    rate: f64,
    p50: f64,
    p99: f64,
    mean_batch: f64,
}

/// `concurrency` loops each running embed tasks back to back.
async fn load(sandbox: &Sandbox, embed: &Plugin, models: &Models, concurrency: usize) -> Load {
    let service: Arc<dyn InferenceService> = Arc::new(models.clone());
    let before = batches(models);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(SECONDS);
    let loops: Vec<_> = (0..concurrency)
        .map(|i| {
            let (sandbox, embed, service) = (sandbox.clone(), embed.clone(), service.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = i;
                while Instant::now() < until {
                    let input = serde_json::json!({"texts": [SENTENCES[n % SENTENCES.len()]]}).to_string();
                    n += 1;
                    let request = TaskRequest {
                        input: input.into_bytes(),
                        meta: TaskMeta::default(),
                        inference: Some(service.clone()),
                        ..TaskRequest::default()
                    };
                    let t = Instant::now();
                    let report = sandbox.run(&embed, request).await;
                    report.result.expect("embed task");
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for l in loops {
        all.extend(l.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize];
    let (rows, count) = batches(models);
    let mean_batch = (rows - before.0) / (count - before.1).max(1.0);
    Load { rate: all.len() as f64 / elapsed, p50: pct(0.5), p99: pct(0.99), mean_batch }
}

/// (rows, batches) run so far, from the metrics.
fn batches(models: &Models) -> (f64, f64) {
    let mut registry = prometheus_client::registry::Registry::default();
    models.metrics().register_into(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let find = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("inference_batch_rows_{name}{{model=\"minilm\"}} ")))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    (find("sum"), find("count"))
}

fn bert_inputs(rows: u64, seq: u64) -> Vec<Tensor> {
    let n = (rows * seq) as usize;
    let ids: Vec<i64> = (0..n)
        .map(|i| match i as u64 % seq {
            0 => 101,
            p if p == seq - 1 => 102,
            p => 2000 + (p as i64 * 37 + i as i64) % 20000,
        })
        .collect();
    let bytes = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let tensor =
        |name: &str, data: Vec<u8>| Tensor { name: name.into(), ty: TensorType::I64, shape: vec![rows, seq], data };
    vec![
        tensor("input_ids", bytes(&ids)),
        tensor("attention_mask", bytes(&vec![1; n])),
        tensor("token_type_ids", bytes(&vec![0; n])),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Where per-call cost dominates (a model of a few flops), batching
/// removes most of it: calls/s of 32 concurrent callers on the host path.
async fn tiny(dir: &Path) {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models/affine.onnx");
    let rate = |models: Models| async move {
        let until = Instant::now() + Duration::from_secs_f64(SECONDS / 2.0);
        let callers: Vec<_> = (0..32)
            .map(|_| {
                let models = models.clone();
                tokio::spawn(async move {
                    let caller = Caller {
                        plugin: "bench".into(),
                        task: "bench".into(),
                        priority: 0,
                        granted: Vec::new(),
                        trace: Default::default(),
                    };
                    let x = Tensor { name: "x".into(), ty: TensorType::F32, shape: vec![1, 4], data: vec![0; 16] };
                    let mut n = 0u64;
                    while Instant::now() < until {
                        models.call(&caller, "affine", vec![x.clone()]).await.unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for c in callers {
            total += c.await.unwrap();
        }
        total as f64 / (SECONDS / 2.0)
    };
    let off = rate(models_of(dir, "affine", &model, 1)).await;
    let on = rate(models_of(dir, "affine", &model, 64)).await;
    println!("tiny model (tests/models/affine.onnx), 32 concurrent callers on the host path:");
    println!("  batching off {off:>9.0} calls/s | on {on:>9.0} calls/s | on/off {:.2}x", on / off);
}

/// The same batches through ONNX Runtime directly, the host path and the
/// WIT path, one call at a time. The three alternate round by round, so
/// drift (clock speed, other load) hits them alike, with a pause between
/// them so one session's idle threads (ONNX Runtime spins them for a
/// while) do not slow the next; medians over rounds.
async fn per_call(sandbox: &Sandbox, models: &Models) {
    let seq = 16;
    let plugin = sandbox.load("infer-bench", "1", &INFER_BENCH.bytes()).unwrap();
    let env = models.ort_environment().expect("the ONNX Runtime environment");
    let mut builder = ort::session::Session::builder(&env)
        .unwrap()
        .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Level3)
        .unwrap();
    if let Some(gpu) = device().strip_prefix("cuda:") {
        let cuda = ort::ep::CUDA::default().with_device_id(gpu.parse().unwrap()).build().error_on_failure();
        builder = builder.with_execution_providers([cuda]).unwrap();
    }
    let mut session = builder.commit_from_file(model_dir().join("model.onnx")).unwrap();
    let caller = Caller {
        plugin: "bench".into(),
        task: "bench".into(),
        priority: 0,
        granted: Vec::new(),
        trace: Default::default(),
    };
    let service: Arc<dyn InferenceService> = Arc::new(models.clone());
    println!(
        "per call, {seq} tokens a row ({ROUNDS} rounds of {CALLS} calls each way, interleaved; medians; overhead = median of the rounds' ratios):"
    );
    println!(
        "{:>5} | {:>12} | {:>12} {:>9} | {:>12} {:>9}",
        "rows", "direct ms", "host path ms", "overhead", "WIT path ms", "overhead"
    );
    for rows in [1u64, 8, 32] {
        let inputs = bert_inputs(rows, seq);
        let (mut direct, mut host, mut wit) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..=ROUNDS {
            // Direct: the same tensors, ONNX Runtime's own API.
            let t = Instant::now();
            for _ in 0..CALLS {
                let values: Vec<(String, ort::value::DynValue)> = inputs
                    .iter()
                    .map(|t| {
                        let v: Vec<i64> =
                            t.data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
                        let value = ort::value::Tensor::from_array((vec![rows as usize, seq as usize], v)).unwrap();
                        (t.name.clone(), value.into_dyn())
                    })
                    .collect();
                let out = session.run(values).unwrap();
                let (_, hidden) = out["last_hidden_state"].try_extract_tensor::<f32>().unwrap();
                std::hint::black_box(hidden.to_vec());
            }
            let d = t.elapsed().as_secs_f64() * 1e3 / CALLS as f64;
            tokio::time::sleep(PAUSE).await;
            // Host path: the registry from Rust, no sandbox.
            let t = Instant::now();
            for _ in 0..CALLS {
                std::hint::black_box(models.call(&caller, "minilm", inputs.clone()).await.unwrap());
            }
            let h = t.elapsed().as_secs_f64() * 1e3 / CALLS as f64;
            tokio::time::sleep(PAUSE).await;
            // WIT path: one task making CALLS calls from the guest.
            let input = serde_json::json!({"model": "minilm", "rows": rows, "seq": seq, "repeat": CALLS}).to_string();
            let request =
                TaskRequest { input: input.into_bytes(), inference: Some(service.clone()), ..TaskRequest::default() };
            let report = sandbox.run(&plugin, request).await;
            report.result.expect("infer-bench task");
            let w = report.elapsed.as_secs_f64() * 1e3 / CALLS as f64;
            tokio::time::sleep(PAUSE).await;
            if round > 0 {
                direct.push(d);
                host.push(h);
                wit.push(w);
            }
        }
        // Overheads are medians of each round's own ratio: robust to drift
        // between rounds.
        let ratio = |of: &[f64]| median(of.iter().zip(&direct).map(|(x, d)| (x / d - 1.0) * 100.0).collect());
        let (host_over, wit_over) = (ratio(&host), ratio(&wit));
        let (direct, host, wit) = (median(direct), median(host), median(wit));
        println!("{rows:>5} | {direct:>12.3} | {host:>12.3} {host_over:>8.1}% | {wit:>12.3} {wit_over:>8.1}%");
    }
}
