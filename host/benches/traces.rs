//! What OpenTelemetry traces cost, in one table: in-process engine
//! throughput of trivial tasks (submit → completed, every transition
//! durably committed) with traces off (the default), on with every span
//! exported as OTLP/HTTP protobuf to a receiver on loopback, and on for
//! tasks whose caller's trace is not sampled (spans built, not recorded);
//! medians of 5 interleaved rounds after a warm-up, with the ratio to off. Then the cost
//! of one span call when traces are off, the whole of what each task
//! pays for them then.
//!
//! Run: `cargo bench -p taskhost --bench traces` (or `./dev.sh bench`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use taskhost::SandboxConfig;
use taskhost::engine::{Engine, EngineConfig, NewTask};
use taskhost::trace::{TraceParent, Traces};
use taskhost_test_artifacts::TRIVIAL;

mod common;

const TASKS: usize = 40_000;
const ROUNDS: usize = 5;
/// Span calls timed for the off path.
const CALLS: u32 = 10_000_000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(bench());
}

/// A receiver that decodes every export and answers 200: the spans it got.
async fn receiver() -> (String, Arc<AtomicU64>) {
    let spans = Arc::new(AtomicU64::new(0));
    let counted = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let counted = counted.clone();
            async move {
                use prost::Message;
                let request =
                    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body).unwrap();
                let n: usize = request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
                counted.fetch_add(n as u64, Ordering::Relaxed);
                [("content-type", "application/x-protobuf")]
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

/// A row: its name, where spans go, and the tasks it submits.
type Setting = (&'static str, Traces, fn() -> NewTask);

fn unsampled() -> NewTask {
    let parent = TraceParent { trace_id: 0x5eed, span_id: 0x5eed, sampled: false };
    NewTask { trace: Some(parent), ..common::trivial() }
}

async fn throughput(traces: Traces, make: fn() -> NewTask) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        data_dir: dir.path().to_owned(),
        sandbox: SandboxConfig { pool_instances: 1024, ..SandboxConfig::default() },
        traces: traces.clone(),
        ..EngineConfig::default()
    };
    let engine = Engine::open(config).await.unwrap();
    engine.add_plugin("trivial", TRIVIAL.bytes(), None, true).await.unwrap();
    let rate = TASKS as f64 / common::submit_and_complete(&engine, TASKS, make).await.as_secs_f64();
    engine.close().await;
    rate
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn bench() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("taskhost traces benchmark ({cpus} CPUs, {TASKS} trivial tasks per round, median of {ROUNDS})\n");
    let (url, received) = receiver().await;
    let on = Traces::otlp(&url).unwrap();
    let settings: [Setting; 3] = [
        ("traces off (default)", Traces::off(), common::trivial),
        ("traces on, every span recorded and exported", on.clone(), common::trivial),
        ("traces on, the caller's trace not sampled", on.clone(), unsampled),
    ];
    // A warm-up round, not counted (page cache, allocator, CPU clocks).
    let warm = throughput(Traces::off(), common::trivial).await;
    eprintln!("(warm-up: {warm:.0} tasks/s)");
    let mut rates = vec![Vec::new(); settings.len()];
    for round in 0..ROUNDS {
        for (i, (name, traces, make)) in settings.iter().enumerate() {
            let rate = throughput(traces.clone(), *make).await;
            eprintln!("(round {}: {name}: {rate:.0} tasks/s)", round + 1);
            rates[i].push(rate);
        }
    }
    // Everything buffered is sent before the bytes are read.
    let flushed = on.clone();
    tokio::task::spawn_blocking(move || flushed.shutdown()).await.unwrap();
    let exported = received.load(Ordering::Relaxed) as f64 / (TASKS * ROUNDS) as f64;
    let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    println!("| setting | tasks/s | vs off |");
    println!("|---|---:|---:|");
    for ((name, ..), rate) in settings.iter().zip(&medians) {
        println!("| {name} | {rate:.0} | {:.2}x |", rate / medians[0]);
    }
    println!(
        "\nspans received per task, every span exported: {exported:.2} of 5 (the exporter's queue, \
         OTEL_BSP_MAX_QUEUE_SIZE, drops what it cannot hold)"
    );

    // The off path: what every span site costs when traces are off.
    let off = Traces::off();
    let parent = Some(TraceParent { trace_id: 1, span_id: 1, sampled: true });
    let started = Instant::now();
    for i in 0..CALLS {
        let mut span = std::hint::black_box(&off).child("attempt", std::hint::black_box(parent));
        span.set_with(|set| set("taskhost.task.attempt", i64::from(i).into()));
        span.end();
    }
    let per_call = started.elapsed().as_secs_f64() * 1e9 / f64::from(CALLS);
    let per_task_us = 1e6 / medians[0];
    println!(
        "\ntraces off: one span site (start, an attribute, end) costs {per_call:.1} ns; a task passes 5 of them \
         (submit, queue wait, attempt, instantiate, commit): {:.4}% of the {per_task_us:.0} us each task takes here",
        5.0 * per_call / (per_task_us * 1000.0) * 100.0
    );
}
