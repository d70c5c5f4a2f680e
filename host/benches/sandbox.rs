//! Sandbox benchmarks, printed as one table:
//! 1. instantiate + call + drop of a trivial plugin, pooling + InstancePre
//!    versus on-demand allocation and relinking;
//! 2. CPU kernels (sort 1M integers; SHA-256 of 1 MiB) natively, in the
//!    sandbox with epoch interruption only, and with fuel metering;
//! 3. host memory with 1,000 tasks instantiated at once.
//!
//! Run: `cargo bench -p taskhost --bench sandbox` (or `./dev.sh bench`).
//! Figures are medians; machines are noisy, so compare the ratios.

#[path = "common/measure.rs"]
mod measure;

use measure::{median, ms, ratio, rss_kib, status_kib, us};
use std::time::{Duration, Instant};
use taskhost::{Limits, Plugin, Sandbox, SandboxConfig, TaskRequest};
use taskhost_test_artifacts::{CPU_KERNEL, TRIVIAL};

const CALLS: usize = 20_000;
const KERNELS: &[&str] = &["sort 1000000", "sha256 1048576"];
const KERNEL_RUNS: usize = 11;
const HELD: usize = 1_000;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(bench());
}

async fn bench() {
    println!("taskhost sandbox benchmark ({} CPUs)\n", std::thread::available_parallelism().map_or(1, |n| n.get()));

    // 1. Instantiation cost.
    let pooled = sandbox(SandboxConfig::default());
    let on_demand = sandbox(SandboxConfig { pooling: false, ..SandboxConfig::default() });
    let trivial_pooled = load(&pooled, TRIVIAL.bytes());
    let trivial_on_demand = load(&on_demand, TRIVIAL.bytes());
    let fast = per_call(&pooled, &trivial_pooled, false).await;
    let rows = [
        ("pooling + InstancePre (default)", fast),
        ("pooling, relink every call", per_call(&pooled, &trivial_pooled, true).await),
        ("on-demand + InstancePre", per_call(&on_demand, &trivial_on_demand, false).await),
        ("on-demand, relink every call", per_call(&on_demand, &trivial_on_demand, true).await),
    ];
    println!("1. instantiate + call + drop, trivial plugin ({CALLS} calls each)\n");
    println!("| setup | median | p99 | vs default |");
    println!("|---|---:|---:|---:|");
    for (name, (median, p99)) in rows {
        println!("| {name} | {} | {} | {:.2}x |", us(median), us(p99), ratio(median, fast.0));
    }

    // 2. CPU-bound kernels.
    let epoch_only = sandbox(SandboxConfig { fuel_metering: false, pool_instances: 8, ..SandboxConfig::default() });
    let fueled = sandbox(SandboxConfig { pool_instances: 8, ..SandboxConfig::default() });
    println!("\n2. CPU kernels, native vs sandboxed ({KERNEL_RUNS} runs each, median)\n");
    println!("| kernel | native | epoch only | epoch + fuel | epoch / native | fuel / native | fuel / epoch |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for spec in KERNELS {
        let expected = taskhost_bench_kernels::run(spec).unwrap();
        let native = median_of(KERNEL_RUNS, || {
            let t = Instant::now();
            assert_eq!(std::hint::black_box(taskhost_bench_kernels::run(spec)).unwrap(), expected);
            t.elapsed()
        });
        let epoch_time = kernel(&epoch_only, spec, &expected).await;
        let fuel_time = kernel(&fueled, spec, &expected).await;
        println!(
            "| {spec} | {} | {} | {} | {:.2}x | {:.2}x | {:.2}x |",
            ms(native),
            ms(epoch_time),
            ms(fuel_time),
            ratio(epoch_time, native),
            ratio(fuel_time, native),
            ratio(fuel_time, epoch_time)
        );
    }

    // 3. Memory with many live instances.
    drop((pooled, on_demand));
    let holder = sandbox(SandboxConfig { pool_instances: HELD as u32 + 24, ..SandboxConfig::default() });
    let trivial = load(&holder, TRIVIAL.bytes());
    let before = rss_kib();
    let (held, during) = holder.hold_instances(&trivial, HELD, |held| (held, rss_kib())).await;
    println!("\n3. host memory with {HELD} tasks instantiated at once\n");
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| instances alive | {held} |");
    println!("| RSS before | {:.1} MiB |", before as f64 / 1024.0);
    println!("| RSS with all alive | {:.1} MiB |", during as f64 / 1024.0);
    println!("| added per instance | {:.1} KiB |", (during.saturating_sub(before)) as f64 / held.max(1) as f64);
    println!("| peak RSS of the process (VmHWM) | {:.1} MiB |", hwm_kib() as f64 / 1024.0);
}

fn sandbox(config: SandboxConfig) -> Sandbox {
    Sandbox::new(config).expect("building the sandbox")
}

fn load(sandbox: &Sandbox, bytes: Vec<u8>) -> Plugin {
    sandbox.load("bench", "1", &bytes).expect("loading the plugin")
}

/// Median and p99 of instantiate + call + drop.
async fn per_call(sandbox: &Sandbox, plugin: &Plugin, relink: bool) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(CALLS);
    for i in 0..CALLS + CALLS / 10 {
        let request = TaskRequest { input: b"x".to_vec(), ..TaskRequest::default() };
        let t = Instant::now();
        let report =
            if relink { sandbox.run_relinking(plugin, request).await } else { sandbox.run(plugin, request).await };
        let elapsed = t.elapsed();
        assert_eq!(report.result.as_deref(), Ok(&b"x"[..]));
        if i >= CALLS / 10 {
            times.push(elapsed); // the first 10% warm up
        }
    }
    times.sort();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

async fn kernel(sandbox: &Sandbox, spec: &str, expected: &str) -> Duration {
    let plugin = load(sandbox, CPU_KERNEL.bytes());
    let limits = Limits { fuel: u64::MAX / 2, ..Limits::default() };
    let mut times = Vec::new();
    for _ in 0..KERNEL_RUNS {
        let request =
            TaskRequest { input: spec.as_bytes().to_vec(), limits: Some(limits.clone()), ..TaskRequest::default() };
        let t = Instant::now();
        let report = sandbox.run(&plugin, request).await;
        times.push(t.elapsed());
        let output = report.result.expect("the kernel ran");
        assert_eq!(String::from_utf8(output).unwrap(), expected.to_string(), "sandboxed kernel disagrees with native");
    }
    median(times)
}

fn median_of(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    median((0..runs).map(|_| f()).collect())
}

fn hwm_kib() -> u64 {
    status_kib("VmHWM:")
}
