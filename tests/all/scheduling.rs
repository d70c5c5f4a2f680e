//! A long-running guest yields to the executor; cancellation and timeouts
//! also reach a guest parked in a host call.

use crate::{failure, output, plugin, sandbox};
use std::time::{Duration, Instant};
use taskhost::{CancelToken, FailureClass, Limits, TaskRequest};
use taskhost_test_artifacts::{SLEEP, SPIN, UPPERCASE};

fn request(input: &str, limits: Limits, cancel: Option<CancelToken>) -> TaskRequest {
    TaskRequest { input: input.as_bytes().to_vec(), limits: Some(limits), cancel, ..TaskRequest::default() }
}

/// On a single-threaded runtime, a spinning task must not starve a quick
/// one: the quick one finishes while the spinner is still running.
#[test]
fn a_spinning_guest_does_not_starve_other_tasks() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let spin_limits = Limits { fuel: u64::MAX / 2, timeout: Duration::from_millis(800), ..Limits::default() };
        let (spin, quick) = tokio::join!(
            async {
                let r = sandbox().run(&plugin(SPIN), request("", spin_limits, None)).await;
                (r, Instant::now())
            },
            async {
                // Let the spinner start first.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let r = sandbox().run(&plugin(UPPERCASE), request("quick", Limits::default(), None)).await;
                (r, Instant::now())
            }
        );
        assert_eq!(failure(&spin.0).class, FailureClass::Timeout);
        assert_eq!(output(&quick.0), "QUICK");
        assert!(quick.1 < spin.1, "the quick task finished only after the spinner");
    });
}

#[tokio::test]
async fn cancelling_a_running_guest_stops_it_promptly() {
    let cancel = CancelToken::new();
    let limits = Limits { fuel: u64::MAX / 2, timeout: Duration::from_secs(30), ..Limits::default() };
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { sandbox().run(&plugin(SPIN), request("", limits, Some(cancel))).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cancelled_at = Instant::now();
    cancel.cancel();
    let report = task.await.unwrap();
    let latency = cancelled_at.elapsed();
    assert_eq!(failure(&report).class, FailureClass::Cancelled);
    assert!(latency < Duration::from_millis(100), "cancel took {latency:?}");
}

#[tokio::test]
async fn cancelling_a_guest_parked_in_a_host_call() {
    let cancel = CancelToken::new();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { sandbox().run(&plugin(SLEEP), request("60000", Limits::default(), Some(cancel))).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    cancel.cancel();
    let report =
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("cancel did not end the task").unwrap();
    assert_eq!(failure(&report).class, FailureClass::Cancelled);
}

#[tokio::test]
async fn a_guest_sleeping_past_its_timeout_times_out() {
    let limits = Limits { timeout: Duration::from_millis(150), ..Limits::default() };
    let report = sandbox().run(&plugin(SLEEP), request("60000", limits, None)).await;
    assert_eq!(failure(&report).class, FailureClass::Timeout);
    assert!(report.elapsed < Duration::from_secs(5), "{:?}", report.elapsed);
    // A sleep within the budget completes.
    let report = sandbox().run(&plugin(SLEEP), request("20", Limits::default(), None)).await;
    assert_eq!(output(&report), "slept 20 ms");
}

#[tokio::test]
async fn many_tasks_at_once_share_the_pool() {
    let _quiet = crate::timing().await;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            tokio::spawn(async move {
                sandbox().run(&plugin(UPPERCASE), request(&format!("t{i}"), Limits::default(), None)).await
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(output(&task.await.unwrap()), format!("T{i}"));
    }
}
