//! Hostile plugins against every limit. After each, a normal task on the
//! same sandbox must still succeed.

use crate::{failure, output, run};
use std::time::Duration;
use taskhost::{FailureClass, Limits};
use taskhost_test_artifacts::{ALLOC_FOREVER, HUGE_OUTPUT, LOG_FLOOD, PANIC, RECURSE, SPIN, UPPERCASE};

async fn host_still_serves() {
    assert_eq!(output(&run(UPPERCASE, "still alive", None).await), "STILL ALIVE");
}

fn limits() -> Limits {
    Limits::default()
}

#[tokio::test]
async fn spinning_forever_exhausts_fuel() {
    let report = run(SPIN, "", Some(Limits { fuel: 50_000_000, ..limits() })).await;
    let failure = failure(&report);
    assert_eq!(failure.class, FailureClass::FuelExhausted, "{failure}");
    assert_eq!(report.fuel_consumed, Some(50_000_000));
    host_still_serves().await;
}

#[tokio::test]
async fn spinning_forever_times_out() {
    let limits = Limits { fuel: u64::MAX / 2, timeout: Duration::from_millis(200), ..limits() };
    let report = run(SPIN, "", Some(limits)).await;
    assert_eq!(failure(&report).class, FailureClass::Timeout, "{}", failure(&report));
    assert!(report.elapsed >= Duration::from_millis(200), "{:?}", report.elapsed);
    assert!(failure(&report).message.contains("200 ms"));
    host_still_serves().await;
}

#[tokio::test]
async fn allocating_forever_hits_the_memory_limit() {
    let report = run(ALLOC_FOREVER, "", Some(Limits { memory_bytes: 32 << 20, ..limits() })).await;
    let failure = failure(&report);
    // The guest aborts with `unreachable` after the refused growth; the
    // limiter's record classifies it.
    assert_eq!(failure.class, FailureClass::MemoryLimitExceeded, "{failure}");
    assert!(failure.message.contains("its limit is 33554432"), "{}", failure.message);
    host_still_serves().await;
}

#[tokio::test]
async fn memory_limit_below_the_initial_memory_fails_at_instantiation() {
    let report = run(UPPERCASE, "x", Some(Limits { memory_bytes: 64 << 10, ..limits() })).await;
    assert_eq!(failure(&report).class, FailureClass::MemoryLimitExceeded, "{}", failure(&report));
    host_still_serves().await;
}

#[tokio::test]
async fn recursing_forever_overflows_the_stack() {
    let report = run(RECURSE, "", None).await;
    assert_eq!(failure(&report).class, FailureClass::StackOverflow, "{}", failure(&report));
    host_still_serves().await;
}

#[tokio::test]
async fn huge_output_is_refused() {
    let report = run(HUGE_OUTPUT, "20000000", None).await;
    let failure = failure(&report);
    assert_eq!(failure.class, FailureClass::OutputTooLarge);
    assert!(failure.message.contains("20000000 bytes; the limit is 16777216"), "{}", failure.message);
    // The same output passes under a larger cap: the limit is what refused it.
    let bigger = Limits { max_output_bytes: 32 << 20, ..limits() };
    assert_eq!(run(HUGE_OUTPUT, "20000000", Some(bigger)).await.result.unwrap().len(), 20_000_000);
    host_still_serves().await;
}

#[tokio::test]
async fn flooding_any_stream_is_stopped_at_its_cap() {
    let cap = 64 << 10;
    for stream in ["log", "stdout", "stderr"] {
        let report = run(LOG_FLOOD, stream, Some(Limits { max_log_bytes: cap, ..limits() })).await;
        let failure = failure(&report);
        assert_eq!(failure.class, FailureClass::OutputTooLarge, "{stream}: {failure}");
        assert!(
            failure.message.starts_with(&format!("{stream} exceeded its cap of {cap} bytes")),
            "{}",
            failure.message
        );
        let kept: usize =
            report.logs.iter().map(|l| l.message.len()).sum::<usize>() + report.stdout.len() + report.stderr.len();
        assert!(kept as u64 <= cap, "{stream}: kept {kept} bytes over a {cap}-byte cap");
        assert!(kept > 0, "{stream}: nothing was captured before the cap");
    }
    host_still_serves().await;
}

#[tokio::test]
async fn a_panic_is_a_trap_with_message_and_backtrace() {
    let report = run(PANIC, "order 7", None).await;
    let failure = failure(&report);
    assert_eq!(failure.class, FailureClass::Trap);
    assert!(failure.message.contains("unreachable"), "{}", failure.message);
    assert!(failure.message.contains(r#"guest panicked: plugin gave up on "order 7""#), "{}", failure.message);
    let backtrace = failure.backtrace.as_deref().expect("a trap keeps its wasm backtrace");
    assert!(backtrace.contains("panic"), "{backtrace}");
    assert!(String::from_utf8_lossy(&report.stderr).contains("panicked at"));
    host_still_serves().await;
}

#[tokio::test]
async fn every_hostile_plugin_in_a_row_then_normal_work() {
    let tight = Limits { fuel: 20_000_000, memory_bytes: 16 << 20, timeout: Duration::from_secs(5), ..limits() };
    let cases = [
        (SPIN, "", FailureClass::FuelExhausted),
        (ALLOC_FOREVER, "", FailureClass::MemoryLimitExceeded),
        (RECURSE, "", FailureClass::StackOverflow),
        (PANIC, "x", FailureClass::Trap),
        (HUGE_OUTPUT, "17000000", FailureClass::MemoryLimitExceeded),
        (LOG_FLOOD, "log", FailureClass::OutputTooLarge),
    ];
    for (artifact, input, class) in cases {
        let report = run(artifact, input, Some(tight.clone())).await;
        assert_eq!(failure(&report).class, class, "{}: {}", artifact.name, failure(&report));
    }
    host_still_serves().await;
}
