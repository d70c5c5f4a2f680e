//! Inference through the host on real ONNX Runtime with tiny generated
//! models (`tests/models/`): batching across tasks with each caller getting
//! exactly its own rows, signature checks, grants, timeouts and
//! cancellation while queued, a failed batch, the models API and file
//! reload, a missing ONNX Runtime, and the MiniLM semantic-search example.

use crate::engine::{engine_with, task};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskhost::engine::Engine;
use taskhost::inference::Models;
use taskhost::store::TaskState;
use taskhost::{TaskMeta, TaskRequest};
use taskhost_test_artifacts::{EMBED, INFER_PROBE, SEMANTIC_SEARCH, UPPERCASE};

fn model_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models").join(format!("{name}.onnx"))
}

/// Writes a models file into `dir`: `(name, model file, extra TOML lines)`.
pub(crate) fn models_file(dir: &Path, models: &[(&str, &str, &str)]) -> PathBuf {
    let mut text = String::new();
    for (name, file, extra) in models {
        text.push_str(&format!("[models.{name}]\npath = {:?}\n{extra}\n", model_path(file)));
    }
    let path = dir.join("models.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn open(dir: &Path, models: &[(&str, &str, &str)]) -> Models {
    Models::open(Some(models_file(dir, models))).unwrap()
}

/// Runs the probe as plugin `as_plugin` with `models` behind `inference`.
async fn probe_as(models: &Models, as_plugin: &str, script: Value) -> Value {
    let plugin = if as_plugin == INFER_PROBE.name {
        crate::plugin(INFER_PROBE)
    } else {
        crate::sandbox().load(as_plugin, "1", &INFER_PROBE.bytes()).unwrap()
    };
    let request = TaskRequest {
        input: script.to_string().into_bytes(),
        meta: TaskMeta::default(),
        inference: Some(Arc::new(models.clone())),
        ..TaskRequest::default()
    };
    let report = crate::sandbox().run(&plugin, request).await;
    serde_json::from_str(&crate::output(&report)).unwrap()
}

async fn probe(models: &Models, script: Value) -> Value {
    probe_as(models, INFER_PROBE.name, script).await
}

pub(crate) fn affine_call(rows: &[[f32; 4]]) -> Value {
    let values: Vec<f32> = rows.iter().flatten().copied().collect();
    json!({"model": "affine", "inputs": [{"name": "x", "type": "f32", "shape": [rows.len(), 4], "values": values}]})
}

/// `(kind, message)` of a probe result that must be an error.
fn error(result: &Value) -> (String, String) {
    let e = &result["error"];
    assert!(e.is_object(), "expected an error, got {result}");
    (e["kind"].as_str().unwrap().to_owned(), e["message"].as_str().unwrap().to_owned())
}

const PROBE_ONLY: &str = r#"plugins = ["infer-probe"]"#;

fn metric(text: &str, name: &str, model: &str) -> f64 {
    crate::metric_value(text, &format!("taskhost_inference_{name}{{model=\"{model}\"}}"))
}

pub(crate) async fn engine_serving(models: &Models, concurrency: usize) -> (Engine, tempfile::TempDir) {
    let models = models.clone();
    let (engine, dir) = engine_with(move |c| {
        c.models = Some(models);
        c.concurrency = concurrency;
    })
    .await;
    for artifact in [INFER_PROBE, EMBED, SEMANTIC_SEARCH] {
        engine.add_plugin(artifact.name, artifact.bytes(), None, true).await.unwrap();
    }
    (engine, dir)
}

#[tokio::test]
async fn concurrent_calls_from_many_tasks_run_as_one_batch_and_each_gets_its_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    // 16 tasks of 1 or 2 rows: 24 rows fill exactly one batch; the long
    // delay means nothing runs until all are queued.
    let models = open(
        dir.path(),
        &[("affine", "affine", "max_batch = 24\nmax_delay = \"10s\"\ntimeout = \"60s\"\nplugins = [\"*\"]")],
    );
    // This test runs on a single-threaded runtime: 16 tasks can only wait
    // together if a waiting task holds no thread.
    let (engine, _data) = engine_serving(&models, 32).await;
    let mut ids = Vec::new();
    for i in 0..16u32 {
        let rows: Vec<[f32; 4]> = (0..1 + i % 2).map(|r| [i as f32, r as f32, -(i as f32), 0.5]).collect();
        let id = engine.submit(task("infer-probe", &affine_call(&rows).to_string())).await.unwrap().record.id;
        ids.push((id, rows));
    }
    for (id, rows) in ids {
        let record = engine.wait(id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(record.state, TaskState::Completed, "{record:?}");
        let out: Value = serde_json::from_slice(&engine.output(id).await.unwrap().unwrap()).unwrap();
        let y = &out["ok"][0];
        assert_eq!(y["shape"], json!([rows.len(), 4]), "{out}");
        let expected: Vec<f64> = rows.iter().flatten().map(|&x| f64::from(2.0 * x + 1.0)).collect();
        assert_eq!(y["values"], json!(expected), "task {id} got rows that are not its own");
    }
    let text = engine.metrics_text();
    assert_eq!(metric(&text, "batch_rows_count", "affine"), 1.0, "{text}");
    assert_eq!(metric(&text, "batch_rows_sum", "affine"), 24.0);
    assert_eq!(metric(&text, "requests_total", "affine"), 16.0);
}

#[tokio::test]
async fn preferred_batch_sizes_go_without_waiting_for_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let settings = "max_batch = 16\nmax_delay = \"10s\"\npreferred_batch = [4]\ntimeout = \"5s\"\nplugins = [\"*\"]";
    let models = open(dir.path(), &[("affine", "affine", settings)]);
    let calls = (0..4).map(|i| probe(&models, affine_call(&[[i as f32; 4]])));
    let started = Instant::now();
    let results = futures::future::join_all(calls).await;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["ok"][0]["values"], json!(vec![2.0 * i as f64 + 1.0; 4]), "{r}");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());
}

#[tokio::test]
async fn inputs_are_checked_against_the_model_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let models = open(
        dir.path(),
        &[
            ("affine", "affine", "max_batch = 4\nmax_delay = \"0ms\"\nplugins = [\"*\"]"),
            ("mask", "mask", PROBE_ONLY),
            ("fixed", "fixed", PROBE_ONLY),
        ],
    );
    let x = |ty: &str, shape: Value, values: Value| json!({"name": "x", "type": ty, "shape": shape, "values": values});
    let call = |model: &str, inputs: Value| json!({"model": model, "inputs": inputs});
    let cases = [
        (
            call("affine", json!([x("f64", json!([1, 4]), json!([1, 2, 3, 4]))])),
            "input `x` is f64; the model expects f32 (x f32[?, 4])",
        ),
        (
            call("affine", json!([x("f32", json!([1, 3]), json!([1, 2, 3]))])),
            "input `x` has shape [1, 3]; the model expects x f32[?, 4]",
        ),
        (
            call("affine", json!([x("f32", json!([4]), json!([1, 2, 3, 4]))])),
            "has shape [4]; the model expects x f32[?, 4]",
        ),
        (
            call("affine", json!([x("f32", json!([5, 4]), json!(vec![0; 20]))])),
            "the call has 5 rows; the model takes at most 4 per call",
        ),
        (call("affine", json!([x("f32", json!([0, 4]), json!([]))])), "the batch is empty"),
        (
            call("affine", json!([{"name": "x", "type": "f32", "shape": [1, 4], "bytes": vec![0; 15]}])),
            "has 15 bytes of data; shape [1, 4] of f32 needs 16",
        ),
        (call("affine", json!([])), "input `x` is missing (x f32[?, 4])"),
        (
            call(
                "affine",
                json!([x("f32", json!([1, 4]), json!(vec![0; 4])), {"name": "z", "type": "f32", "shape": [1], "values": [1]}]),
            ),
            "it has no input `z`; its inputs are: x f32[?, 4]",
        ),
        (
            call(
                "mask",
                json!([{"name": "ids", "type": "i64", "shape": [1, 2], "values": [1, 2]}, {"name": "keep", "type": "bool", "shape": [1, 2], "bytes": [1, 2]}]),
            ),
            "input `keep` is bool but holds the byte 2",
        ),
        (
            call(
                "mask",
                json!([{"name": "ids", "type": "i64", "shape": [1, 2], "values": [1, 2]}, {"name": "keep", "type": "bool", "shape": [1, 3], "values": [1, 0, 1]}]),
            ),
            "inputs disagree on dimension `seq`: `ids` has 2, `keep` has 3",
        ),
        (
            call(
                "mask",
                json!([{"name": "ids", "type": "i64", "shape": [1, 2], "values": [1, 2]}, {"name": "keep", "type": "bool", "shape": [2, 2], "values": [1, 0, 1, 1]}]),
            ),
            "inputs disagree on the batch size",
        ),
        (
            call("fixed", json!([x("f32", json!([2, 3]), json!(vec![0; 6]))])),
            "has shape [2, 3]; the model expects x f32[1, 3]",
        ),
    ];
    for (script, expected) in cases {
        let (kind, message) = error(&probe(&models, script.clone()).await);
        assert_eq!(kind, "invalid-input", "{script}: {message}");
        assert!(message.contains(expected), "{script}\n  got: {message}\n  expected: {expected}");
    }
    // Nothing reached ONNX Runtime: no batch ran.
    let ok = probe(&models, call("mask", json!([{"name": "ids", "type": "i64", "shape": [2, 3], "values": [1, 2, 3, 4, 5, 6]}, {"name": "keep", "type": "bool", "shape": [2, 3], "values": [1, 0, 1, 0, 0, 1]}]))).await;
    assert_eq!(
        ok["ok"][0],
        json!({"name": "out", "type": "i64", "shape": [2, 3], "values": [1.0, 0.0, 3.0, 0.0, 0.0, 6.0]})
    );
    let fixed = probe(&models, call("fixed", json!([x("f32", json!([1, 3]), json!([1, 2, 3]))]))).await;
    assert_eq!(fixed["ok"][0]["values"], json!([2.0, 3.0, 4.0]));
    let (kind, message) = error(&probe(&models, call("nope", json!([]))).await);
    assert_eq!(kind, "unknown-model");
    assert!(message.contains("models this plugin may use: affine, fixed, mask"), "{message}");
}

#[tokio::test]
async fn a_plugin_not_granted_a_model_cannot_see_or_run_it() {
    let dir = tempfile::tempdir().unwrap();
    let models = open(dir.path(), &[("affine", "affine", PROBE_ONLY), ("fixed", "fixed", r#"plugins = ["*"]"#)]);
    let (kind, message) = error(&probe_as(&models, "intruder", affine_call(&[[1.0; 4]])).await);
    assert_eq!(kind, "not-permitted");
    assert!(message.contains("plugin `intruder` may not use model `affine`"), "{message}");
    let listed = probe_as(&models, "intruder", json!({"list": true})).await;
    assert_eq!(
        listed["models"].as_array().unwrap().iter().map(|m| m["name"].clone()).collect::<Vec<_>>(),
        [json!("fixed")]
    );
    let granted = probe(&models, json!({"list": true})).await;
    assert_eq!(granted["models"].as_array().unwrap().len(), 2);
    assert_eq!(
        granted["models"][0],
        json!({"name": "affine", "batched": true, "max_rows": 32, "device": "cpu", "inputs": ["x"]})
    );
    assert!(probe(&models, affine_call(&[[1.0; 4]])).await["ok"].is_array());
}

#[tokio::test]
async fn a_failed_batch_is_reported_to_every_caller_and_the_model_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let models = open(
        dir.path(),
        &[("lookup", "lookup", "max_batch = 2\nmax_delay = \"10s\"\ntimeout = \"60s\"\nplugins = [\"*\"]")],
    );
    let call =
        |i: i64| json!({"model": "lookup", "inputs": [{"name": "idx", "type": "i64", "shape": [1, 1], "values": [i]}]});
    let (good, bad) = tokio::join!(probe(&models, call(1)), probe(&models, call(7)));
    for result in [good, bad] {
        let (kind, message) = error(&result);
        assert_eq!(kind, "backend");
        assert!(
            message.contains("the batch of 2 rows from 2 calls") && message.contains("out of data bounds"),
            "{message}"
        );
    }
    let (a, b) = tokio::join!(probe(&models, call(0)), probe(&models, call(3)));
    assert_eq!((a["ok"][0]["values"].clone(), b["ok"][0]["values"].clone()), (json!([10.0]), json!([40.0])));
}

#[tokio::test]
async fn a_call_that_waits_past_the_models_timeout_gets_timeout_and_leaves_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let settings = "max_batch = 8\nmax_delay = \"10s\"\ntimeout = \"200ms\"\nplugins = [\"*\"]";
    let models = open(dir.path(), &[("affine", "affine", settings)]);
    let started = Instant::now();
    let (kind, message) = error(&probe(&models, affine_call(&[[1.0; 4]])).await);
    assert_eq!(kind, "timeout");
    assert!(message.contains("no result within its timeout of 200ms"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_until(|| models.model("affine").unwrap().queued == 0, "the timed-out call to leave the queue").await;
}

async fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_task_cancelled_while_its_call_is_queued_drops_out_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let settings = "max_batch = 2\nmax_delay = \"10s\"\ntimeout = \"60s\"\nplugins = [\"*\"]";
    let models = open(dir.path(), &[("affine", "affine", settings)]);
    let (engine, _data) = engine_serving(&models, 8).await;
    let id = engine.submit(task("infer-probe", &affine_call(&[[1.0; 4]]).to_string())).await.unwrap().record.id;
    wait_until(|| models.model("affine").unwrap().queued == 1, "the call to be queued").await;
    let asked = Instant::now();
    engine.cancel(id).await.unwrap();
    let record = engine.wait(id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(record.state, TaskState::Cancelled);
    assert!(asked.elapsed() < Duration::from_secs(5), "cancel took {:?}", asked.elapsed());
    wait_until(|| models.model("affine").unwrap().queued == 0, "the cancelled call to leave the queue").await;
    assert_eq!(metric(&engine.metrics_text(), "withdrawn_total", "affine"), 1.0);
    // The model serves the next calls as before.
    let (a, b) = tokio::join!(probe(&models, affine_call(&[[0.0; 4]])), probe(&models, affine_call(&[[1.0; 4]])));
    assert_eq!(
        (a["ok"][0]["values"].clone(), b["ok"][0]["values"].clone()),
        (json!(vec![1.0; 4]), json!(vec![3.0; 4]))
    );
}

#[tokio::test]
async fn the_models_api_adds_lists_and_removes_models_in_the_models_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.toml");
    std::fs::write(&file, "# kept\n").unwrap();
    let models = Models::open(Some(file.clone())).unwrap();
    let (engine, data) = engine_serving(&models, 8).await;
    let (base, token) = crate::serve_api(&engine, data.path()).await;
    let base = format!("{base}/v1/models");
    let http = crate::authed(&token);
    let post = |body: Value| http.post(&base).json(&body).send();

    let added =
        post(json!({"name": "affine", "path": model_path("affine"), "max_batch": 8, "plugins": ["infer-probe"]}))
            .await
            .unwrap();
    assert_eq!(added.status(), 201);
    let view: Value = added.json().await.unwrap();
    assert_eq!((view["state"].clone(), view["running_on"].clone()), (json!("ready"), json!("cpu")));
    assert_eq!(view["inputs"], json!([{"name": "x", "type": "f32", "shape": [-1, 4]}]));

    for (body, status, expected) in [
        (
            json!({"name": "bad", "path": model_path("affine"), "max_batch": 0}),
            400,
            "`max_batch` is 0; expected 1 to 4096",
        ),
        (json!({"name": "bad", "path": model_path("affine"), "device": "tpu"}), 400, "unknown device `tpu`"),
        (json!({"name": "bad", "path": "/nowhere/m.onnx"}), 422, "model file /nowhere/m.onnx does not exist"),
        (json!({"path": "x.onnx"}), 400, "`name` is missing"),
    ] {
        let response = post(body).await.unwrap();
        assert_eq!(response.status(), status);
        let error: Value = response.json().await.unwrap();
        assert!(error["error"]["message"].as_str().unwrap().contains(expected), "{error}");
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("# kept") && text.contains("[models.affine]") && !text.contains("bad"), "{text}");

    assert!(probe(&models, affine_call(&[[2.0; 4]])).await["ok"].is_array());
    let listed: Value = http.get(&base).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["runtime"]["available"], json!(true));
    assert_eq!(listed["models"][0]["name"], json!("affine"));
    let metrics = http.get(base.replace("/v1/models", "/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"taskhost_inference_model_device{model="affine",device="cpu"} 1"#), "{metrics}");
    assert_eq!(metric(&metrics, "requests_total", "affine"), 1.0);

    assert_eq!(http.delete(format!("{base}/affine")).send().await.unwrap().status(), 200);
    assert_eq!(http.delete(format!("{base}/affine")).send().await.unwrap().status(), 404);
    assert!(!std::fs::read_to_string(&file).unwrap().contains("affine"));
    assert_eq!(error(&probe(&models, affine_call(&[[2.0; 4]])).await).0, "unknown-model");
}

#[tokio::test]
async fn editing_the_models_file_reloads_it_and_a_broken_edit_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.toml");
    let models = Models::open(Some(file.clone())).unwrap();
    models.watch().unwrap();
    assert!(models.view().models.is_empty());
    models_file(dir.path(), &[("affine", "affine", r#"plugins = ["*"]"#)]);
    wait_until(|| models.model("affine").is_some_and(|m| m.state == "ready"), "the new model to load").await;
    std::fs::write(&file, "[models.affine\npath = 3").unwrap();
    wait_until(|| models.view().file_error.is_some(), "the broken file to be reported").await;
    assert!(models.view().file_error.unwrap().contains("models.toml"));
    assert!(probe(&models, affine_call(&[[1.0; 4]])).await["ok"].is_array(), "the model in use was dropped");
    models_file(dir.path(), &[("mask", "mask", r#"plugins = ["*"]"#)]);
    wait_until(|| models.model("affine").is_none() && models.model("mask").is_some(), "the fixed file to apply").await;
    assert!(models.view().file_error.is_none());
}

#[test]
fn without_onnx_runtime_inference_says_why_and_other_tasks_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(dir.path(), &[("affine", "affine", r#"plugins = ["*"]"#)]);
    let run = |plugin: &str, input: &str| {
        let args = ["run", plugin, "--models", file.to_str().unwrap()];
        let env = [("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")];
        crate::cli::taskhost_with_env(&args, &env, input.as_bytes())
    };
    let out = run(INFER_PROBE.path, &affine_call(&[[1.0; 4]]).to_string());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "WARNING: inference is unavailable: ORT_DYLIB_PATH is /nonexistent/libonnxruntime.so, which is not a file"
        ),
        "{stderr}"
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (kind, message) = error(&result);
    assert_eq!(kind, "unavailable");
    assert!(message.contains("ORT_DYLIB_PATH"), "{message}");
    let plain = run(UPPERCASE.path, "still fine");
    assert!(plain.status.success());
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "STILL FINE");
}

#[tokio::test]
async fn the_semantic_search_example_finds_the_nearest_sentences_with_minilm() {
    let minilm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models/all-MiniLM-L6-v2/model.onnx");
    assert!(minilm.is_file(), "{} is missing: run ./dev.sh setup", minilm.display());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.toml");
    std::fs::write(&file, format!("[models.minilm]\npath = {minilm:?}\nplugins = [\"embed\"]\nmax_delay = \"5ms\"\n"))
        .unwrap();
    let models = Models::open(Some(file)).unwrap();
    let (engine, _data) = engine_serving(&models, 16).await;
    let corpus = [
        "The cat sat on the warm windowsill all afternoon.",
        "Dogs are loyal companions and love long walks.",
        "The stock market fell sharply after the interest rate announcement.",
        "Investors moved their savings into government bonds.",
        "Rockets need enormous thrust to escape Earth's gravity.",
        "The telescope captured images of a distant galaxy.",
        "Whisk the eggs with sugar before folding in the flour.",
        "The striker scored twice in the second half.",
    ];
    let queries = ["How do spacecraft leave the planet?", "baking a cake", "football match", "puppies"];
    let input = json!({"corpus": corpus, "queries": queries, "top": 2, "chunk": 2});
    let root = engine.submit(task("semantic-search", &input.to_string())).await.unwrap().record.id;
    let view = engine.wait_flow(root, Duration::from_secs(60)).await.unwrap();
    let answer = view.flow.result_task.expect("a result");
    let out: Value = serde_json::from_slice(&engine.output(answer).await.unwrap().unwrap()).unwrap();
    let nearest: Vec<&str> =
        out["answers"].as_array().unwrap().iter().map(|a| a["nearest"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(nearest, [corpus[4], corpus[6], corpus[7], corpus[1]], "{out:#}");
    // 5 embed tasks (4 chunks + the queries) called the model, 12 rows in all.
    let text = engine.metrics_text();
    assert_eq!(metric(&text, "requests_total", "minilm"), 5.0);
    assert_eq!(metric(&text, "batch_rows_sum", "minilm"), 12.0);
}

#[tokio::test]
async fn a_full_queue_refuses_calls_as_overloaded() {
    let dir = tempfile::tempdir().unwrap();
    let settings = "max_batch = 8\nmax_delay = \"10s\"\nmax_queue = 1\ntimeout = \"5s\"\nplugins = [\"*\"]";
    let models = open(dir.path(), &[("affine", "affine", settings)]);
    let first = tokio::spawn({
        let models = models.clone();
        async move { probe(&models, affine_call(&[[1.0; 4]])).await }
    });
    wait_until(|| models.model("affine").unwrap().queued == 1, "the first call to be queued").await;
    let (kind, message) = error(&probe(&models, affine_call(&[[2.0; 4]])).await);
    assert_eq!(kind, "overloaded");
    assert!(message.contains("has 1 calls waiting, its limit (max_queue)"), "{message}");
    assert_eq!(error(&first.await.unwrap()).0, "timeout");
}

#[test]
fn the_device_a_model_runs_on_is_reported_and_cuda_failures_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let models = open(dir.path(), &[("gpu", "affine", "device = \"cuda:0\""), ("any", "affine", "device = \"auto\"")]);
    let view = models.view();
    let (gpu, any) = (models.model("gpu").unwrap(), models.model("any").unwrap());
    match &view.runtime.cuda_error {
        // This ONNX Runtime has no CUDA (the CPU wheel, as in CI).
        Some(why) => {
            assert_eq!(gpu.state, "failed");
            assert!(gpu.error.as_deref().unwrap().contains("cannot run on cuda:0"), "{gpu:?}");
            assert_eq!(any.running_on.as_deref(), Some("cpu"));
            assert!(any.device_note.as_deref().unwrap().contains(why.as_str()), "{any:?}");
        }
        // A CUDA build: on a usable GPU both run there; without one (or
        // without CUDA's libraries) `cuda:0` fails and `auto` says why.
        None if gpu.state == "ready" => {
            assert_eq!(gpu.running_on.as_deref(), Some("cuda:0"), "{gpu:?}");
            assert_eq!(any.running_on.as_deref(), Some("cuda:0"), "{any:?}");
        }
        None => {
            assert!(gpu.error.as_deref().unwrap().contains("cannot run on cuda:0"), "{gpu:?}");
            assert_eq!(any.running_on.as_deref(), Some("cpu"));
            assert!(any.device_note.as_deref().unwrap().contains("CUDA failed"), "{any:?}");
        }
    }
}

#[tokio::test]
async fn a_plugins_manifest_can_grant_it_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let models = open(dir.path(), &[("affine", "affine", "")]);
    let (engine, _data) = engine_serving(&models, 8).await;
    let run = |engine: Engine| async move {
        let id = engine.submit(task("infer-probe", &affine_call(&[[1.0; 4]]).to_string())).await.unwrap().record.id;
        engine.wait(id, Duration::from_secs(30)).await.unwrap();
        serde_json::from_slice::<Value>(&engine.output(id).await.unwrap().unwrap()).unwrap()
    };
    assert_eq!(error(&run(engine.clone()).await).0, "not-permitted");
    let manifest = taskhost::registry::Manifest { models: vec!["affine".into()], ..Default::default() };
    engine.set_manifest("infer-probe", Some(manifest)).await.unwrap();
    assert_eq!(run(engine).await["ok"][0]["values"], json!(vec![3.0; 4]));
}

/// The intent router example (`plugins/scripts/intent_router.py`): a
/// Python script tokenizes with the model's vocabulary (a directory
/// grant), embeds through the host's MiniLM, and submits the nearest
/// intent's handler as a child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intent_router_script_sends_each_request_to_its_nearest_intent_with_minilm() {
    use taskhost::registry::Manifest;
    use taskhost::scripts::Language;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model_dir = root.join("target/models/all-MiniLM-L6-v2");
    let minilm = model_dir.join("model.onnx");
    assert!(minilm.is_file(), "{} is missing: run ./dev.sh setup", minilm.display());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.toml");
    let config = format!("[models.minilm]\npath = {minilm:?}\nplugins = [\"intent-router\"]\nmax_delay = \"5ms\"\n");
    std::fs::write(&file, config).unwrap();
    let models = Models::open(Some(file)).unwrap();
    let (engine, _data) = engine_serving(&models, 8).await;
    let router = std::fs::read(root.join("plugins/scripts/intent_router.py")).unwrap();
    engine.add_script_plugin("intent-router", Language::Python, router, None, true).await.unwrap();
    for handler in ["refunds", "shipping", "cancellations"] {
        let source = format!("export default (input) => '{handler}: ' + input.json().text;");
        engine.add_script_plugin(handler, Language::JavaScript, source.into_bytes(), None, true).await.unwrap();
    }
    let grant =
        format!("[[dirs]]\nhost = {:?}\nguest = \"/models/minilm\"\nmode = \"ro\"\n", model_dir.display().to_string());
    engine.set_manifest("intent-router", Some(Manifest::parse(&grant).unwrap())).await.unwrap();

    let requests = [
        ("I'd like my money back for the broken blender", "refund", "refunds"),
        ("Has my parcel shipped yet? I need a tracking number", "shipping", "shipping"),
        ("Please end my membership, I no longer want it", "cancel", "cancellations"),
    ];
    for (text, intent, handler) in requests {
        let input = json!({ "text": text }).to_string();
        let id = engine.submit(task("intent-router", &input)).await.unwrap().record.id;
        let view = engine.wait_flow(id, Duration::from_secs(120)).await.unwrap();
        let record = engine.get(id).await.unwrap();
        assert_eq!(record.state, TaskState::Completed, "{text}: {:?}", record.error);
        let out: Value = serde_json::from_slice(&engine.output(id).await.unwrap().unwrap()).unwrap();
        assert_eq!(out["intent"], intent, "{text}: {out}");
        assert!(out["score"].as_f64().unwrap() > 0.3, "{out}");
        let child: uuid::Uuid = out["task"].as_str().unwrap().parse().unwrap();
        assert_eq!(view.flow.result_task, Some(child), "the handler ends the flow");
        let handled = String::from_utf8(engine.output(child).await.unwrap().unwrap()).unwrap();
        assert_eq!(handled, format!("{handler}: {text}"));
    }
    // Without the vocabulary's grant, the router fails for good, saying why.
    engine.set_manifest("intent-router", None).await.unwrap();
    let id = engine.submit(task("intent-router", &json!({"text": "refund"}).to_string())).await.unwrap().record.id;
    let record = engine.wait(id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(record.state, TaskState::Failed);
    let error = record.error.unwrap();
    assert!(!error.retryable && error.message.contains("is not granted"), "{}", error.message);
}

/// Routing by capability on real ONNX Runtime: two engines serve one
/// PostgreSQL database together, only one of them with the model a
/// plugin's manifest names. Every task of that plugin, all submitted to
/// the host without the model, runs where the model is (a call on the
/// other host would answer that it serves no models); while the manifest
/// names a model no live host serves, its tasks wait and the hosts' list
/// names the plugin, and they run once it is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serving_together_a_plugins_tasks_run_only_on_hosts_serving_its_models() {
    use taskhost::registry::Manifest;
    let url = taskhost_test_postgres::cluster().database("inference_routing");
    let dir = tempfile::tempdir().unwrap();
    let models = open(dir.path(), &[("affine", "affine", "max_delay = \"0ms\"\ntimeout = \"30s\"")]);
    let host = |models: Option<Models>| {
        let url = url.clone();
        engine_with(move |c| {
            c.store_url = Some(taskhost::engine::StoreUrl::new(url));
            c.many_hosts = true;
            c.models = models;
        })
    };
    let (gpu, _gpu_dir) = host(Some(models)).await;
    let (cpu, _cpu_dir) = host(None).await;
    gpu.add_plugin(INFER_PROBE.name, INFER_PROBE.bytes(), None, true).await.unwrap();
    let needs =
        |models: &[&str]| Manifest { models: models.iter().map(|m| m.to_string()).collect(), ..Manifest::default() };
    gpu.set_manifest(INFER_PROBE.name, Some(needs(&["affine"]))).await.unwrap();
    // The other host knows the plugin once it read and compiled it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ids = Vec::new();
    for i in 0..24 {
        let call = affine_call(&[[i as f32; 4]]).to_string();
        let id = loop {
            match cpu.submit(task(INFER_PROBE.name, &call)).await {
                Ok(submitted) => break submitted.record.id,
                Err(error) if Instant::now() < deadline => {
                    assert!(error.to_string().contains("unknown plugin"), "{error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("the host never knew the plugin: {error}"),
            }
        };
        ids.push((i, id));
    }
    for (i, id) in ids {
        let record = cpu.wait(id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(record.state, TaskState::Completed, "{record:?}");
        let out: Value = serde_json::from_slice(&cpu.output(id).await.unwrap().unwrap()).unwrap();
        assert_eq!(
            out["ok"][0]["values"],
            json!(vec![2.0 * i as f64 + 1.0; 4]),
            "task {id} ran on a host without the model: {out}"
        );
    }
    let listed = cpu.hosts().await.unwrap();
    assert_eq!(listed.hosts.len(), 2, "{listed:?}");
    assert!(listed.unserved.is_empty(), "{:?}", listed.unserved);

    // A model no host serves: the plugin's tasks wait, and the list says so.
    gpu.set_manifest(INFER_PROBE.name, Some(needs(&["affine", "ranker"]))).await.unwrap();
    let waiting = gpu.submit(task(INFER_PROBE.name, &affine_call(&[[1.0; 4]]).to_string())).await.unwrap().record.id;
    let listed = gpu.hosts().await.unwrap();
    assert_eq!(listed.unserved.len(), 1, "{listed:?}");
    assert_eq!((listed.unserved[0].plugin.as_str(), listed.unserved[0].needs.len()), (INFER_PROBE.name, 2));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(gpu.get(waiting).await.unwrap().state, TaskState::Pending, "no host serves `ranker`");
    gpu.set_manifest(INFER_PROBE.name, Some(needs(&["affine"]))).await.unwrap();
    let record = gpu.wait(waiting, Duration::from_secs(30)).await.unwrap();
    assert_eq!(record.state, TaskState::Completed, "{record:?}");
    let out: Value = serde_json::from_slice(&gpu.output(waiting).await.unwrap().unwrap()).unwrap();
    assert_eq!(out["ok"][0]["values"], json!(vec![3.0; 4]), "{out}");
    cpu.close().await;
    gpu.close().await;
}
