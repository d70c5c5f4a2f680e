//! Script benchmarks, printed as one table per measure: the JavaScript
//! and Python runners beside a compiled Rust plugin.
//! 1. instantiate + run + drop per task: a trivial task, and a word count
//!    over 2 KB of text (the same algorithm and output in both);
//! 2. host memory per live instance;
//! 3. getting each runner ready: pre-initialise (JavaScript) and compile
//!    at first use, versus loading the cached artifact.
//!
//! Run: `cargo bench -p taskhost --bench scripts` (or `./dev.sh bench`).
//! Figures are medians; machines are noisy, so compare the ratios.

#[path = "common/measure.rs"]
mod measure;

use measure::{median, ms, ratio, rss_kib, us};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskhost::scripts::{Language, Script};
use taskhost::{Plugin, Sandbox, SandboxConfig, TaskRequest};
use taskhost_test_artifacts::{TRIVIAL, WORD_COUNT};

const CALLS: usize = 5_000;
const HELD: usize = 500;
/// Python instances are larger: fewer are held at once.
const HELD_PYTHON: usize = 100;
const READY_RUNS: usize = 5;

const TRIVIAL_JS: &str = "export default (input) => input;";
const WORD_COUNT_JS: &str = r#"
export default (input) => {
  const { text, top = 5 } = input.json();
  const counts = new Map();
  let words = 0;
  for (const word of text.split(/[^\p{L}\p{N}']+/u)) {
    if (!word) continue;
    const w = word.toLowerCase();
    counts.set(w, (counts.get(w) ?? 0) + 1);
    words++;
  }
  const best = [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)).slice(0, top);
  return { words, unique: counts.size, top: best };
};
"#;
const TRIVIAL_PY: &str = "def run(input):\n    return input\n";
const WORD_COUNT_PY: &str = r#"
import re

def run(input):
    request = input.json()
    counts = {}
    words = 0
    for word in re.split(r"(?:[^\w']|_)+", request["text"]):
        if not word:
            continue
        w = word.lower()
        counts[w] = counts.get(w, 0) + 1
        words += 1
    best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: request.get("top", 5)]
    return {"words": words, "unique": len(counts), "top": [list(kv) for kv in best]}
"#;

/// A script of a language.
type Source = Option<(Language, &'static str)>;
const JS: Language = Language::JavaScript;
const PY: Language = Language::Python;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(bench());
}

async fn bench() {
    println!("taskhost scripts benchmark ({} CPUs)\n", std::thread::available_parallelism().map_or(1, |n| n.get()));
    let sandbox = Sandbox::new(SandboxConfig::default()).expect("building the sandbox");
    let rust_trivial = sandbox.load("trivial", "1", &TRIVIAL.bytes()).unwrap();
    let rust_words = sandbox.load("word-count", "1", &WORD_COUNT.bytes()).unwrap();
    let runner = sandbox.load_runner(JS).await.unwrap();
    let unprepared = sandbox.load_runner_without_snapshot(JS).unwrap();
    let python = sandbox.load_runner(PY).await.unwrap();

    let text = include_str!("../../README.md").chars().take(2048).collect::<String>();
    let words_input = serde_json::json!({ "text": text }).to_string().into_bytes();
    let rust_out = once(&sandbox, &rust_words, None, &words_input).await;
    let js_out = once(&sandbox, &runner, Some((JS, WORD_COUNT_JS)), &words_input).await;
    let py_out = once(&sandbox, &python, Some((PY, WORD_COUNT_PY)), &words_input).await;
    let parse = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
    assert_eq!(parse(&rust_out), parse(&js_out), "the JavaScript word count disagrees");
    assert_eq!(parse(&rust_out), parse(&py_out), "the Python word count disagrees");

    let rust = per_task(&sandbox, &rust_trivial, None, b"x").await;
    let rows = [
        ("trivial", "Rust component", rust),
        ("trivial", "JavaScript, pre-initialised", per_task(&sandbox, &runner, Some((JS, TRIVIAL_JS)), b"x").await),
        (
            "trivial",
            "JavaScript, not pre-initialised",
            per_task(&sandbox, &unprepared, Some((JS, TRIVIAL_JS)), b"x").await,
        ),
        ("trivial", "Python (componentize-py)", per_task(&sandbox, &python, Some((PY, TRIVIAL_PY)), b"x").await),
    ];
    let rust_wc = per_task(&sandbox, &rust_words, None, &words_input).await;
    let wc_rows = [
        ("word count, 2 KB", "Rust component", rust_wc),
        (
            "word count, 2 KB",
            "JavaScript, pre-initialised",
            per_task(&sandbox, &runner, Some((JS, WORD_COUNT_JS)), &words_input).await,
        ),
        (
            "word count, 2 KB",
            "Python (componentize-py)",
            per_task(&sandbox, &python, Some((PY, WORD_COUNT_PY)), &words_input).await,
        ),
    ];
    println!("1. instantiate + run + drop per task ({CALLS} tasks each after a warm-up)\n");
    println!("| task | plugin | median | p99 | vs Rust |");
    println!("|---|---|---:|---:|---:|");
    for (task, plugin, (median, p99)) in rows {
        println!("| {task} | {plugin} | {} | {} | {:.1}x |", us(median), us(p99), ratio(median, rust.0));
    }
    for (task, plugin, (median, p99)) in wc_rows {
        println!("| {task} | {plugin} | {} | {} | {:.1}x |", us(median), us(p99), ratio(median, rust_wc.0));
    }

    drop((rust_trivial, rust_words, runner, unprepared, python, sandbox));
    let holder = Sandbox::new(SandboxConfig { pool_instances: HELD as u32 + 24, ..SandboxConfig::default() }).unwrap();
    let rust = holder.load("trivial", "1", &TRIVIAL.bytes()).unwrap();
    let js = holder.load_runner(JS).await.unwrap();
    let python = holder.load_runner(PY).await.unwrap();
    println!(
        "\n2. host memory per live instance ({HELD} alive at once, {HELD_PYTHON} for Python, each after running its \
         trivial task; RSS added / instances)\n"
    );
    println!("| plugin | per instance | component |");
    println!("|---|---:|---:|");
    for (name, plugin, source, count) in [
        ("Rust component (trivial)", &rust, None, HELD),
        ("JavaScript runner, pre-initialised", &js, Some((JS, TRIVIAL_JS)), HELD),
        ("Python runner", &python, Some((PY, TRIVIAL_PY)), HELD_PYTHON),
    ] {
        let before = rss_kib();
        let run = Some((&b"x"[..], request(source, b"").script));
        let (held, during) = holder.hold_ran_instances(plugin, count, run, |held| (held, rss_kib())).await;
        assert_eq!(held, count, "every instance ran");
        let per = during.saturating_sub(before) as f64 / held as f64;
        println!("| {name} | {per:.0} KiB | {:.0} KiB |", plugin.size() as f64 / 1024.0);
    }

    println!("\n3. getting each runner ready ({READY_RUNS} runs each, median)\n");
    println!("| runner | step | median | vs cached |");
    println!("|---|---|---:|---:|");
    for (language, first_step) in [(JS, "pre-initialise + compile (first use)"), (PY, "compile (first use)")] {
        let mut first = Vec::new();
        let mut cached = Vec::new();
        for _ in 0..READY_RUNS {
            let t = Instant::now();
            let plugin = holder.load_runner(language).await.unwrap();
            first.push(t.elapsed());
            let artifact = plugin.serialize().unwrap();
            let t = Instant::now();
            // SAFETY: the artifact was serialised by this sandbox just now.
            let loaded = unsafe { holder.load_serialized("runner", "1", &artifact, artifact.len()) }.unwrap();
            cached.push(t.elapsed());
            drop(loaded);
        }
        let (first, cached) = (median(first), median(cached));
        println!("| {language} | {first_step} | {} | {:.0}x |", ms(first), ratio(first, cached));
        println!("| {language} | load the cached artifact | {} | 1x |", ms(cached));
    }
}

fn request(source: Source, input: &[u8]) -> TaskRequest {
    let script = source.map(|(language, text)| {
        let name = format!("bench.{}", language.extension());
        Arc::new(Script::new(language, name, text.as_bytes().to_vec()).unwrap())
    });
    TaskRequest { input: input.to_vec(), script, ..TaskRequest::default() }
}

async fn once(sandbox: &Sandbox, plugin: &Plugin, script: Source, input: &[u8]) -> Vec<u8> {
    sandbox.run(plugin, request(script, input)).await.result.expect("the task ran")
}

/// Median and p99 of instantiate + run + drop.
async fn per_task(sandbox: &Sandbox, plugin: &Plugin, script: Source, input: &[u8]) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(CALLS);
    for i in 0..CALLS + CALLS / 10 {
        let request = request(script, input);
        let t = Instant::now();
        let report = sandbox.run(plugin, request).await;
        let elapsed = t.elapsed();
        report.result.expect("the task ran");
        if i >= CALLS / 10 {
            times.push(elapsed);
        }
    }
    times.sort();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}
