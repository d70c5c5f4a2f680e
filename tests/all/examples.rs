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
