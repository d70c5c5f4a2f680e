//! Retention on both backends: which ended units a sweep finds (by count,
//! by age, passing over a task that waits for its callback's outcome) and
//! what deleting them removes (a lone task with all it kept, a whole flow,
//! a repeating flow's old iterations), and that a unit opened again after
//! it was found stays. redb's copies end with the file's integrity check.

use super::catalog::Catalog;
use super::*;
use crate::store::retention::{CALLBACK_GRACE_MS, Expired, Removed, Retention};
use crate::store::tests::task_in;
use std::collections::HashSet;

/// What the tests ask of retention, answered by either backend.
pub(crate) trait Retain: Backend + Catalog + Sized {
    async fn expired_now(&self, rule: impl Fn(&str) -> Retention, now: u64, limit: usize) -> Vec<Expired>;
    async fn delete_now(&self, expired: Vec<Expired>) -> Removed;
    async fn task_by_key_now(&self, key: &str) -> Option<Uuid>;
    /// Ends the test: redb's file passes its integrity check.
    async fn consistent(self);
}

impl Retain for Store {
    async fn expired_now(&self, rule: impl Fn(&str) -> Retention, now: u64, limit: usize) -> Vec<Expired> {
        self.expired(rule, now, limit).unwrap()
    }
    async fn delete_now(&self, expired: Vec<Expired>) -> Removed {
        self.delete_expired(expired).await.unwrap()
    }
    async fn task_by_key_now(&self, key: &str) -> Option<Uuid> {
        self.task_by_key(key).unwrap()
    }
    async fn consistent(self) {
        let path = self.path().to_owned();
        drop(self);
        let report = crate::store::check::check(&path).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

impl Retain for PgStore {
    async fn expired_now(&self, rule: impl Fn(&str) -> Retention, now: u64, limit: usize) -> Vec<Expired> {
        self.expired_past(rule, now, limit, &HashSet::new()).await.unwrap()
    }
    async fn delete_now(&self, expired: Vec<Expired>) -> Removed {
        self.delete_expired(expired).await.unwrap()
    }
    async fn task_by_key_now(&self, key: &str) -> Option<Uuid> {
        self.task_by_key(key).await.unwrap()
    }
    async fn consistent(self) {}
}

pub(crate) fn keep(count: u64) -> impl Fn(&str) -> Retention {
    move |_| Retention::new(None, Some(count))
}

pub(crate) fn ids(found: &[Expired]) -> Vec<u128> {
    found.iter().map(|e| e.id).collect()
}

/// A completed task outside any flow, with an idempotency key, an output
/// and a transcript.
pub(crate) async fn completed(store: &impl Retain, n: u128) -> TaskRecord {
    let key = format!("key-{n}");
    let rec = store.submit(record(n, Some(&key)), b"input".to_vec()).await.unwrap().record;
    store.transition(Change::new(rec.id, TaskState::Running, "start")).await.unwrap();
    let log = crate::sandbox::Transcript::new(1024);
    log.write(crate::sandbox::Stream::Stdout, b"hello\n");
    let done = Change::new(rec.id, TaskState::Completed, "done").output(b"output".to_vec()).log(1, &log.finish());
    store.transition(done).await.unwrap()
}

on_both! {
    past_the_count_the_oldest_lone_tasks_go_with_all_they_kept => past_the_count_the_oldest_lone_tasks_go_with_all_they_kept;
    by_age_only_what_ended_long_enough_ago_goes => by_age_only_what_ended_long_enough_ago_goes;
    a_task_retried_after_it_was_found_is_kept => a_task_retried_after_it_was_found_is_kept;
    a_task_waiting_for_its_callback_is_passed_over => a_task_waiting_for_its_callback_is_passed_over;
    a_flow_goes_whole_once_it_ended => a_flow_goes_whole_once_it_ended;
    a_repeating_flows_old_iterations_go_and_the_latest_stay => a_repeating_flows_old_iterations_go_and_the_latest_stay;
    a_lone_task_cancelled_as_a_flow_after_it_ended_is_listed_once => a_lone_task_cancelled_as_a_flow_after_it_ended_is_listed_once;
}

async fn past_the_count_the_oldest_lone_tasks_go_with_all_they_kept(store: impl Retain) {
    for n in 1..=5 {
        completed(&store, n).await;
    }
    task_in(&store, 6, TaskState::Running).await;
    let found = store.expired_now(keep(2), now_ms(), 100).await;
    assert_eq!(ids(&found), [1, 2, 3], "the oldest three of five ended tasks");
    assert_eq!(ids(&store.expired_now(keep(2), now_ms(), 2).await), [1, 2], "at most the limit");
    let removed = store.delete_now(found).await;
    assert_eq!((removed.tasks.len(), removed.flows, removed.kept), (3, 0, 0));
    let bytes = b"input".len() + b"output".len();
    assert!(
        removed
            .tasks
            .iter()
            .all(|(q, s, t, b)| q == "q" && *s == TaskState::Completed && t == "default" && *b as usize > bytes),
        "{:?}",
        removed.tasks
    );
    for n in 1..=3u128 {
        let id = Uuid::from_u128(n);
        assert!(store.get(id).await.is_none());
        assert!(store.input(id).await.is_none() && store.output(id).await.is_none());
        assert!(store.attempt_log(id, 1).await.is_none());
        assert_eq!(store.task_by_key_now(&format!("key-{n}")).await, None, "the key is free again");
    }
    for n in 4..=6u128 {
        assert!(store.get(Uuid::from_u128(n)).await.is_some());
    }
    assert!(store.attempt_log(Uuid::from_u128(4), 1).await.is_some());
    assert!(store.expired_now(keep(2), now_ms(), 100).await.is_empty());
    let listed = store.all().await;
    assert_eq!(listed.iter().map(|t| t.id.as_u128()).collect::<Vec<_>>(), [4, 5, 6]);
    store.consistent().await;
}

async fn by_age_only_what_ended_long_enough_ago_goes(store: impl Retain) {
    completed(&store, 1).await;
    let ended = store.get(Uuid::from_u128(1)).await.unwrap().finished_at_ms.unwrap();
    let for_a_minute = |_: &str| Retention::new(Some(60_000), None);
    assert!(store.expired_now(for_a_minute, ended + 59_999, 10).await.is_empty());
    assert_eq!(ids(&store.expired_now(for_a_minute, ended + 60_000, 10).await), [1]);
    assert!(store.expired_now(|_| Retention::forever(), u64::MAX, 10).await.is_empty());
}

async fn a_task_retried_after_it_was_found_is_kept(store: impl Retain) {
    let failed = task_in(&store, 1, TaskState::Failed).await;
    let found = store.expired_now(keep(1), now_ms(), 10).await;
    assert!(found.is_empty(), "one ended task is within a count of one");
    task_in(&store, 2, TaskState::Cancelled).await;
    let found = store.expired_now(keep(1), now_ms(), 10).await;
    assert_eq!(ids(&found), [1]);
    store.transition(Change::new(failed.id, TaskState::Pending, "retried")).await.unwrap();
    let removed = store.delete_now(found).await;
    assert_eq!((removed.tasks.len(), removed.kept), (0, 1));
    assert_eq!(store.get(failed.id).await.unwrap().state, TaskState::Pending);
    assert!(store.expired_now(keep(1), now_ms(), 10).await.is_empty(), "a retried task is not listed");
    store.consistent().await;
}

async fn a_task_waiting_for_its_callback_is_passed_over(store: impl Retain) {
    let mut rec = record(1, None);
    rec.callback_url = Some("https://example.com/hook".into());
    let rec = store.submit(rec, Vec::new()).await.unwrap().record;
    store.transition(Change::new(rec.id, TaskState::Cancelled, "stop")).await.unwrap();
    task_in(&store, 2, TaskState::Cancelled).await;
    assert_eq!(ids(&store.expired_now(keep(1), now_ms(), 10).await), Vec::<u128>::new());
    let later = now_ms() + CALLBACK_GRACE_MS;
    assert_eq!(ids(&store.expired_now(keep(1), later, 10).await), [1], "not past the grace");
    Catalog::put_callback_outcome(&store, rec.id, crate::store::CallbackOutcome::delivered(1)).await;
    let found = store.expired_now(keep(1), now_ms(), 10).await;
    assert_eq!(ids(&found), [1]);
    assert_eq!(store.delete_now(found).await.tasks.len(), 1);
    assert!(Catalog::callback_outcome(&store, rec.id).await.is_none());
}

async fn a_flow_goes_whole_once_it_ended(store: impl Retain) {
    let root = task_in(&store, 1, TaskState::Running).await;
    let effects = Effects {
        flow_id: root.id,
        children: vec![child_of(1, 10, Some("a")), child_of(1, 11, None)],
        context: vec![("k".into(), Some(b"v".to_vec()))],
        stop_repeating: false,
        bounds: None,
    };
    store.apply(Change::new(root.id, TaskState::Completed, "done").effects(effects)).await.unwrap();
    let everything = |_: &str| Retention::new(Some(0), None);
    assert!(store.expired_now(everything, now_ms(), 10).await.is_empty(), "a running flow is no unit yet");
    for n in [10, 11] {
        let id = Uuid::from_u128(n);
        store.transition(Change::new(id, TaskState::Running, "start")).await.unwrap();
        store.transition(Change::new(id, TaskState::Completed, "done").output(b"o".to_vec())).await.unwrap();
    }
    assert!(store.expired_now(everything, now_ms(), 10).await.is_empty(), "not until the flow record ended");
    let end = |stored: Option<FlowRecord>| {
        let flow = stored.unwrap();
        let flow = FlowRecord { state: FlowState::Completed, finished_at_ms: Some(now_ms()), ..flow };
        Ok(FlowUpdate { flow, tasks: Vec::new() })
    };
    store.flow_change(root.id, end).await.unwrap();
    let found = store.expired_now(everything, now_ms(), 10).await;
    assert_eq!(found, [Expired { group: "@flows".into(), ended_at_ms: found[0].ended_at_ms, id: 1 }]);
    let removed = store.delete_now(found).await;
    assert_eq!((removed.tasks.len(), removed.flows), (3, 1));
    assert!(store.flow(root.id).await.is_none());
    assert!(store.flow_tasks(root.id).await.is_empty());
    assert_eq!(store.context_get(root.id, "k").await, None);
    assert_eq!(store.child_by_key(root.id, "a").await, None);
    assert_eq!(store.all().await.len() as u64, 0);
    store.consistent().await;
}

async fn a_repeating_flows_old_iterations_go_and_the_latest_stay(store: impl Retain) {
    let f = Uuid::from_u128(100);
    for i in 0..4u32 {
        let key = format!("k{i}");
        let (mut task, input) = child_of(100, 200 + u128::from(i), Some(&key));
        task.iteration = i;
        let id = task.id;
        store
            .flow_change(f, move |stored| {
                let mut flow = stored.unwrap_or_else(|| FlowRecord {
                    repeat: Some(crate::store::Repeat {
                        kind: crate::store::RepeatKind::UntilStop,
                        max_iterations: None,
                    }),
                    ..FlowRecord::new(f, 0)
                });
                flow.iteration = i;
                Ok(FlowUpdate { flow, tasks: vec![(task, input)] })
            })
            .await
            .unwrap();
        store.transition(Change::new(id, TaskState::Running, "start")).await.unwrap();
        store.transition(Change::new(id, TaskState::Completed, "done")).await.unwrap();
        // (Each iteration ends before the next starts, a tick later.)
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let now = |_: &str| Retention::new(Some(0), None);
    let found = store.expired_now(now, now_ms(), 10).await;
    assert_eq!(found.len(), 3, "one entry each time an iteration ended: {found:?}");
    assert!(found.iter().all(|e| e.group == "@iterations" && e.id == 100));
    let removed = store.delete_now(found).await;
    assert_eq!(removed.tasks.len(), 2, "{removed:?}");
    let left: Vec<u32> = store.flow_tasks(f).await.iter().map(|t| t.iteration).collect();
    assert_eq!(left, [2, 3], "the iteration before the current one and the current one stay");
    // The old iterations' keys are gone with them; the flow still runs.
    assert_eq!(store.child_by_key(f, "k0").await, None);
    assert_eq!(store.child_by_key(f, "k1").await, None);
    assert_eq!(store.child_by_key(f, "k3").await, Some(Uuid::from_u128(203)));
    assert_eq!(store.flow(f).await.unwrap().state, FlowState::Running);
    assert!(store.expired_now(now, now_ms(), 10).await.is_empty());
    store.consistent().await;
}

async fn a_lone_task_cancelled_as_a_flow_after_it_ended_is_listed_once(store: impl Retain) {
    let done = task_in(&store, 1, TaskState::Completed).await;
    let cancel = |stored: Option<FlowRecord>| {
        assert!(stored.is_none());
        let flow = FlowRecord {
            state: FlowState::Cancelled,
            finished_at_ms: Some(now_ms()),
            ..FlowRecord::new(Uuid::from_u128(1), 0)
        };
        Ok(FlowUpdate { flow, tasks: Vec::new() })
    };
    store.flow_change(done.id, cancel).await.unwrap();
    let found = store.expired_now(|_| Retention::new(Some(0), None), now_ms(), 10).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].group, "@flows");
    store.consistent().await;
}
