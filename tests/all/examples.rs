use crate::{failure, output, run, run_as};
use taskhost::{FailureClass, LogLevel, TaskMeta};
use taskhost_test_artifacts::{FAIL, HELLO_TASK, HELLO_TASK_RAW, UPPERCASE, WORD_COUNT};

#[tokio::test]
async fn uppercase_transforms_text() {
    let report = run(UPPERCASE, "hello, wörld", None).await;
    assert_eq!(output(&report), "HELLO, WÖRLD");
    assert!(report.fuel_consumed.unwrap() > 0);
}

#[tokio::test]
async fn uppercase_rejects_non_utf8_input_permanently() {
    let request = taskhost::TaskRequest { input: vec![0xff, 0xfe], ..Default::default() };
    let report = crate::sandbox().run(&crate::plugin(UPPERCASE), request).await;
    let failure = failure(&report);
    assert_eq!(failure.class, FailureClass::PluginError);
    assert!(!failure.retryable);
    assert!(failure.message.contains("not valid UTF-8"), "{}", failure.message);
}

#[tokio::test]
async fn word_count_counts_a_small_text_exactly() {
    let report = run(WORD_COUNT, r#"{"text": "The cat and the hat. The end!", "top": 2}"#, None).await;
    let counts: serde_json::Value = serde_json::from_str(&output(&report)).unwrap();
    assert_eq!(counts, serde_json::json!({"words": 7, "unique": 5, "top": [["the", 3], ["and", 1]]}));
}

#[tokio::test]
async fn word_count_over_a_real_text() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../LICENSE")).unwrap();
    // An independent count: whitespace-separated tokens that contain a letter
    // or digit. The plugin also splits on punctuation, so it sees at least
    // as many words.
    let tokens = text.split_whitespace().filter(|t| t.chars().any(char::is_alphanumeric)).count();
    let input = serde_json::json!({"text": text, "top": 3}).to_string();
    let counts: serde_json::Value = serde_json::from_str(&output(&run(WORD_COUNT, &input, None).await)).unwrap();
    let words = counts["words"].as_u64().unwrap() as usize;
    assert!(words >= tokens && words < tokens * 2, "plugin counted {words}, whitespace tokens {tokens}");
    assert_eq!(counts["top"][0][0], "the");
}

#[tokio::test]
async fn word_count_reports_bad_json_as_permanent() {
    let report = run(WORD_COUNT, r#"{"txt": 1}"#, None).await;
    let failure = failure(&report);
    assert_eq!((failure.class, failure.retryable), (FailureClass::PluginError, false));
    assert!(failure.message.contains("missing field `text`"), "{}", failure.message);
}

#[tokio::test]
async fn hello_task_sees_its_task_info_and_logs() {
    let meta = TaskMeta { id: "task-42".into(), attempt: 3, queue: "emails".into(), priority: 0 };
    let report = run_as(HELLO_TASK, "Ada", meta).await;
    assert_eq!(
        output(&report),
        "hello, Ada! this is task task-42 (attempt 3) on queue emails, run by hello-task@1.0.0"
    );
    let logs: Vec<_> = report.logs.iter().map(|r| (r.level, r.message.as_str())).collect();
    assert_eq!(logs, [(LogLevel::Info, "greeting Ada"), (LogLevel::Debug, "attempt 3 on queue emails")]);
}

/// A plugin written with plain wit-bindgen behaves exactly like the SDK one.
#[tokio::test]
async fn raw_wit_bindgen_plugin_matches_the_sdk_plugin() {
    let sandbox = crate::sandbox();
    let sdk = sandbox.load("hello", "2", &HELLO_TASK.bytes()).unwrap();
    let raw = sandbox.load("hello", "2", &HELLO_TASK_RAW.bytes()).unwrap();
    for input in ["Grace", "", "  "] {
        let request = || taskhost::TaskRequest { input: input.as_bytes().to_vec(), ..Default::default() };
        let a = sandbox.run(&sdk, request()).await;
        let b = sandbox.run(&raw, request()).await;
        assert_eq!(a.result, b.result, "input {input:?}");
        let strip = |r: &taskhost::TaskReport| r.logs.iter().map(|l| (l.level, l.message.clone())).collect::<Vec<_>>();
        assert_eq!(strip(&a), strip(&b), "input {input:?}");
    }
}

#[tokio::test]
async fn plugin_errors_keep_their_retryability_and_message() {
    let failure_of = |report: taskhost::TaskReport| report.result.unwrap_err();
    let retry = failure_of(run(FAIL, "retryable:database busy", None).await);
    assert_eq!((retry.class, retry.retryable), (FailureClass::PluginError, true));
    assert_eq!(retry.message, "database busy");
    assert_eq!(retry.to_string(), "plugin error (retryable): database busy");
    let permanent = failure_of(run(FAIL, "permanent:bad order id", None).await);
    assert_eq!((permanent.class, permanent.retryable), (FailureClass::PluginError, false));
    assert_eq!(permanent.to_string(), "plugin error (permanent): bad order id");
}

/// A plugin built against the contract's first release (0.1.0) still runs
/// on this host (0.1.1): wasmtime links 0.1.x imports semver-compatibly,
/// and releases only add interfaces.
#[tokio::test]
async fn a_plugin_built_against_wit_0_1_0_still_runs() {
    let bytes = taskhost_test_artifacts::WIT_0_1_0.bytes();
    let imports = String::from_utf8_lossy(&bytes);
    assert!(imports.contains("taskhost:plugin/log@0.1.0"), "the fixture imports the old release");
    let plugin = crate::sandbox().load("old", "1", &bytes).unwrap();
    let request = taskhost::TaskRequest { input: b"hello".to_vec(), ..Default::default() };
    let report = crate::sandbox().run(&plugin, request).await;
    assert_eq!(crate::output(&report), "hello from old");
    assert_eq!(report.logs[0].message, "built against 0.1.0");
}

/// An example script from `plugins/scripts/`, as its file name and text.
fn script_example(file: &str) -> (String, String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/scripts").join(file);
    (file.to_owned(), std::fs::read_to_string(path).unwrap())
}

#[tokio::test]
async fn the_json_transform_script_sums_orders_per_customer() {
    let (name, source) = script_example("transform.js");
    let input = br#"{"orders": [
        {"id": 1, "customer": "ada", "items": [{"sku": "a", "qty": 2, "price": 350}]},
        {"id": 2, "customer": "bob", "items": [{"sku": "b", "qty": 1, "price": 1999}]},
        {"id": 3, "customer": "ada", "items": [{"sku": "c", "qty": 3, "price": 100}, {"sku": "d", "qty": 1, "price": 5}]}
    ]}"#;
    let report = crate::scripts::run_script(&name, &source, input, None).await;
    let output: serde_json::Value = serde_json::from_str(&output(&report)).unwrap();
    assert_eq!(
        output,
        serde_json::json!({"currency": "EUR", "customers": [
            {"customer": "bob", "orders": 1, "items": 1, "total": 1999},
            {"customer": "ada", "orders": 2, "items": 6, "total": 1005},
        ]})
    );
    assert_eq!(report.logs[0].message, "3 orders from 2 customers");
    // A malformed order fails for good, naming it.
    let bad = br#"{"orders": [{"id": 7, "customer": "cy", "items": [{"qty": 1.5, "price": 1}]}]}"#;
    let f = failure(&crate::scripts::run_script(&name, &source, bad, None).await).clone();
    assert!(!f.retryable && f.message.contains("order 7: qty and price must be integers"), "{f}");
}

#[tokio::test]
async fn the_csv_report_script_summarises_sales_exactly() {
    let (name, source) = script_example("report.py");
    let csv = b"date,region,amount\n2026-01-05,north,10.50\n2026-01-20,south,3.25\n2026-02-01,north,7.00\n\
                2026-02-14,north,1.10\n";
    let report = crate::scripts::run_script(&name, &source, csv, None).await;
    let output: serde_json::Value = serde_json::from_str(&output(&report)).unwrap();
    assert_eq!(
        output,
        serde_json::json!({
            "regions": {
                "north": {"rows": 3, "total": "18.60", "mean": "6.20", "median": "7.00"},
                "south": {"rows": 1, "total": "3.25", "mean": "3.25", "median": "3.25"},
            },
            "months": {"2026-01": "13.75", "2026-02": "8.10"},
        })
    );
    assert_eq!(report.logs[0].message, "4 rows, 2 regions");
    // A bad row fails for good, naming its line; a missing column too.
    let f = failure(&crate::scripts::run_script(&name, &source, b"date,region,amount\n2026-13-05,n,1\n", None).await)
        .clone();
    assert!(!f.retryable && f.message.contains("line 2: month must be in 1..12"), "{f}");
    let f = failure(&crate::scripts::run_script(&name, &source, b"day,region\n", None).await).clone();
    assert!(!f.retryable && f.message.contains("the CSV has no column amount, date"), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fan_out_script_counts_words_across_child_tasks() {
    use taskhost::scripts::Language;
    use taskhost::store::TaskState;
    let (engine, _dir) = crate::engine::engine_with(|_| {}).await;
    let (_, source) = script_example("fanout.js");
    engine.add_script_plugin("fanout", Language::JavaScript, source.into_bytes(), None, true).await.unwrap();
    // 120 lines of "alpha beta N" (N = 0..6): 360 words, 9 distinct.
    let text: Vec<String> = (0..120).map(|i| format!("Alpha beta {}", i % 7)).collect();
    let input = serde_json::json!({"text": text.join("\n"), "chunk": 50}).to_string();
    let id = engine.submit(crate::engine::task("fanout", &input)).await.unwrap().record.id;
    let (record, join) = crate::scripts::finished(&engine, id).await;
    assert_eq!(record.state, TaskState::Completed, "{:?}", record.error);
    let logs = engine.task_logs(&record, None).unwrap();
    assert_eq!(logs.lines.first().map(|l| l.text.as_str()), Some("120 lines in 3 chunks"));
    let (merged, output) = crate::scripts::finished(&engine, join.parse().unwrap()).await;
    assert_eq!(merged.state, TaskState::Completed, "{:?}", merged.error);
    let output: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!((output["words"].as_u64(), output["unique"].as_u64()), (Some(360), Some(9)), "{output}");
    assert_eq!(output["top"][0], serde_json::json!(["alpha", 120]));
    assert_eq!(output["top"][1], serde_json::json!(["beta", 120]));
}
