//! In-memory scheduling: per-queue ready heaps (higher priority first, then
//! FIFO), a timer heap for delayed and retrying tasks, and fair selection
//! across queues. Rebuilt from the store on start; never the source of
//! truth.
//!
//! Fairness is deficit round robin charged by measured run time (the
//! virtual-time form of weighted fair queuing): each queue has a virtual
//! time that grows by `run time / weight` for what it ran; the next task
//! comes from the eligible queue with the least virtual time. Queues with
//! equal amounts of work therefore finish close together whatever their
//! task lengths, which plain per-task round robin cannot give.

use crate::store::QueueConfig;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use uuid::Uuid;

/// A task the scheduler can start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) id: Uuid,
    /// Record version to expect when starting it.
    pub(crate) version: u64,
    pub(crate) priority: u8,
    pub(crate) queue: String,
}

/// What `next` charged a started task up front; `finished` replaces it with
/// the measured cost, so the correction is exact even when the queue's
/// estimate moved while the task ran.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Charge(f64);

#[derive(Debug, PartialEq, Eq)]
struct Ready(Entry);

impl Ord for Ready {
    fn cmp(&self, other: &Self) -> Ordering {
        // Max-heap: higher priority first, then the older (smaller) id.
        self.0.priority.cmp(&other.0.priority).then_with(|| other.0.id.cmp(&self.0.id))
    }
}

impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Default)]
struct Queue {
    ready: BinaryHeap<Ready>,
    delayed: usize,
    running: usize,
    config: QueueConfig,
    /// Run time charged so far, divided by weight (seconds).
    vtime: f64,
    /// Running estimate of one task's run time (seconds).
    avg_cost: f64,
}

impl Queue {
    fn eligible(&self) -> bool {
        !self.ready.is_empty() && self.config.concurrency.is_none_or(|limit| self.running < limit as usize)
    }
}

/// Per-queue counts for metrics and the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct QueueDepth {
    pub(crate) ready: usize,
    pub(crate) delayed: usize,
    pub(crate) running: usize,
}

#[derive(Debug)]
pub(crate) struct Scheduler {
    queues: HashMap<String, Queue>,
    delayed: BinaryHeap<Reverse<(u64, Uuid)>>,
    delayed_entries: HashMap<Uuid, Entry>,
    running: usize,
    max_running: usize,
}

/// Initial guess of a task's run time, before any has been measured.
const INITIAL_COST: f64 = 0.001;

impl Scheduler {
    pub(crate) fn new(max_running: usize) -> Self {
        Self {
            queues: HashMap::new(),
            delayed: BinaryHeap::new(),
            delayed_entries: HashMap::new(),
            running: 0,
            max_running: max_running.max(1),
        }
    }

    fn queue(&mut self, name: &str) -> &mut Queue {
        if !self.queues.contains_key(name) {
            let queue = Queue { avg_cost: INITIAL_COST, ..Queue::default() };
            self.queues.insert(name.to_owned(), queue);
        }
        self.queues.get_mut(name).expect("just inserted")
    }

    pub(crate) fn configure(&mut self, name: &str, config: QueueConfig) {
        self.queue(name).config = config;
    }

    /// Adds a task: ready now, or at `due_ms`.
    pub(crate) fn enqueue(&mut self, entry: Entry, due_ms: Option<u64>, now_ms: u64) {
        match due_ms {
            Some(due) if due > now_ms => {
                self.queue(&entry.queue).delayed += 1;
                self.delayed.push(Reverse((due, entry.id)));
                self.delayed_entries.insert(entry.id, entry);
            }
            _ => self.make_ready(entry),
        }
    }

    fn make_ready(&mut self, entry: Entry) {
        // A queue waking from idle starts at the current fair point, so it
        // cannot spend credit banked while it had nothing to do.
        let floor = self.min_active_vtime();
        let queue = self.queue(&entry.queue);
        if queue.ready.is_empty()
            && queue.running == 0
            && let Some(floor) = floor
        {
            queue.vtime = queue.vtime.max(floor);
        }
        queue.ready.push(Ready(entry));
    }

    fn min_active_vtime(&self) -> Option<f64> {
        self.queues.values().filter(|q| !q.ready.is_empty() || q.running > 0).map(|q| q.vtime).min_by(f64::total_cmp)
    }

    /// Moves due delayed tasks to their ready heaps; returns the next due
    /// time still pending.
    pub(crate) fn promote_due(&mut self, now_ms: u64) -> Option<u64> {
        while let Some(Reverse((due, id))) = self.delayed.peek().copied() {
            if due > now_ms {
                return Some(due);
            }
            self.delayed.pop();
            if let Some(entry) = self.delayed_entries.remove(&id) {
                self.queue(&entry.queue).delayed -= 1;
                self.make_ready(entry);
            }
        }
        None
    }

    /// The next task to start, if a slot is free and a queue has work, with
    /// what its queue was charged for it until it finishes.
    pub(crate) fn next(&mut self) -> Option<(Entry, Charge)> {
        if self.running >= self.max_running {
            return None;
        }
        let (_, queue) = self
            .queues
            .iter_mut()
            .filter(|(_, q)| q.eligible())
            .min_by(|(an, a), (bn, b)| a.vtime.total_cmp(&b.vtime).then_with(|| an.cmp(bn)))?;
        let Ready(entry) = queue.ready.pop()?;
        queue.running += 1;
        // Charge the estimate now so one dispatch round spreads across
        // queues; `finished` corrects it with the measured cost.
        let charge = queue.avg_cost / f64::from(queue.config.weight.max(1));
        queue.vtime += charge;
        self.running += 1;
        Some((entry, Charge(charge)))
    }

    /// A started task ended after `cost_secs` of run time (0 for one that
    /// never ran).
    pub(crate) fn finished(&mut self, queue: &str, charged: Charge, cost_secs: f64) {
        self.running = self.running.saturating_sub(1);
        let q = self.queue(queue);
        q.running = q.running.saturating_sub(1);
        let weight = f64::from(q.config.weight.max(1));
        q.vtime += cost_secs / weight - charged.0;
        if cost_secs > 0.0 {
            q.avg_cost = 0.8 * q.avg_cost + 0.2 * cost_secs;
        }
    }

    pub(crate) fn depths(&self) -> Vec<(String, QueueDepth)> {
        let mut out: Vec<_> = self
            .queues
            .iter()
            .map(|(name, q)| {
                (name.clone(), QueueDepth { ready: q.ready.len(), delayed: q.delayed, running: q.running })
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub(crate) fn config(&self, name: &str) -> Option<QueueConfig> {
        self.queues.get(name).map(|q| q.config.clone())
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(queue: &str, priority: u8, n: u128) -> Entry {
        Entry { id: Uuid::from_u128(n), version: 1, priority, queue: queue.into() }
    }

    #[test]
    fn higher_priority_first_then_fifo() {
        let mut s = Scheduler::new(10);
        for (n, p) in [(1, 0), (2, 5), (3, 5), (4, 9), (5, 0)] {
            s.enqueue(entry("q", p, n), None, 0);
        }
        let order: Vec<u128> = std::iter::from_fn(|| s.next()).map(|(e, _)| e.id.as_u128()).collect();
        assert_eq!(order, [4, 2, 3, 1, 5]);
    }

    #[test]
    fn respects_global_and_queue_limits() {
        let mut s = Scheduler::new(3);
        s.configure("small", QueueConfig { concurrency: Some(1), weight: 1 });
        for n in 0..5 {
            s.enqueue(entry("small", 0, n), None, 0);
            s.enqueue(entry("big", 0, 100 + n), None, 0);
        }
        let started: Vec<_> = std::iter::from_fn(|| s.next()).collect();
        assert_eq!(started.len(), 3);
        assert_eq!(started.iter().filter(|(e, _)| e.queue == "small").count(), 1);
        let (big, charge) = started.iter().find(|(e, _)| e.queue == "big").unwrap();
        s.finished(&big.queue, *charge, 0.001);
        assert!(s.next().is_some());
        assert!(s.next().is_none());
    }

    #[test]
    fn delayed_tasks_wait_for_their_time() {
        let mut s = Scheduler::new(10);
        s.enqueue(entry("q", 0, 1), Some(1_000), 500);
        assert!(s.next().is_none());
        assert_eq!(s.promote_due(999), Some(1_000));
        assert!(s.next().is_none());
        assert_eq!(s.promote_due(1_000), None);
        assert_eq!(s.next().unwrap().0.id.as_u128(), 1);
    }

    #[test]
    fn time_charged_fairness_balances_unequal_task_lengths() {
        // Queue a: tasks of 10 ms; queue b: tasks of 100 ms; one worker.
        // Simulate, charging measured cost: b should get ~half the time.
        let mut s = Scheduler::new(1);
        for n in 0..1000 {
            s.enqueue(entry("a", 0, n), None, 0);
            s.enqueue(entry("b", 0, 10_000 + n), None, 0);
        }
        let (mut time_a, mut time_b) = (0.0, 0.0);
        for _ in 0..400 {
            let (e, charge) = s.next().unwrap();
            let cost = if e.queue == "a" { 0.010 } else { 0.100 };
            if e.queue == "a" {
                time_a += cost
            } else {
                time_b += cost
            }
            s.finished(&e.queue, charge, cost);
        }
        let share = time_a / (time_a + time_b);
        assert!((0.4..0.6).contains(&share), "queue a got {share:.2} of the time");
    }

    #[test]
    fn weights_skew_the_share() {
        let mut s = Scheduler::new(1);
        s.configure("heavy", QueueConfig { concurrency: None, weight: 3 });
        for n in 0..1000 {
            s.enqueue(entry("heavy", 0, n), None, 0);
            s.enqueue(entry("light", 0, 10_000 + n), None, 0);
        }
        let mut heavy = 0;
        for _ in 0..400 {
            let (e, charge) = s.next().unwrap();
            heavy += usize::from(e.queue == "heavy");
            s.finished(&e.queue, charge, 0.01);
        }
        let share = heavy as f64 / 400.0;
        assert!((0.7..0.8).contains(&share), "weight 3 of 4 got {share:.2}");
    }

    /// Runs a discrete-event simulation: `workers` slots, each task of a
    /// queue costing that queue's fixed seconds plus `overhead`; returns when
    /// each queue's last task ended.
    fn simulate(workers: usize, plan: &[(&str, u128, f64)], overhead: f64) -> HashMap<String, f64> {
        let mut s = Scheduler::new(workers);
        for (q, (queue, count, _)) in plan.iter().enumerate() {
            for n in 0..*count {
                s.enqueue(entry(queue, 0, q as u128 * 100_000 + n), None, 0);
            }
        }
        let cost = |queue: &str| plan.iter().find(|p| p.0 == queue).unwrap().2 + overhead;
        let (mut now, mut running, mut done) = (0.0f64, Vec::new(), HashMap::new());
        loop {
            while let Some((e, charge)) = s.next() {
                running.push((now + cost(&e.queue), e, charge));
            }
            let Some(i) = (0..running.len()).min_by(|&a, &b| running[a].0.total_cmp(&running[b].0)) else {
                return done;
            };
            let (at, e, charge) = running.swap_remove(i);
            now = at;
            s.finished(&e.queue, charge, cost(&e.queue));
            done.insert(e.queue.clone(), now);
        }
    }

    #[test]
    fn queues_with_equal_run_time_finish_together_on_several_workers() {
        // Equal total run time per queue, very different task lengths; the
        // spread of finish times must stay within one long task.
        let plan = [("short", 480, 0.010), ("medium", 160, 0.030), ("long", 40, 0.120)];
        let done = simulate(3, &plan, 0.0);
        let (min, max) = done.values().fold((f64::MAX, 0f64), |(a, b), t| (a.min(*t), b.max(*t)));
        assert!(max - min <= 0.120 + 1e-9, "finish times {done:?}");
        // Total work 14.4 s on 3 workers: no slot idles while work remains.
        assert!((max - 4.8).abs() < 0.13, "finish times {done:?}");
    }

    #[test]
    fn per_task_overhead_is_charged_to_the_queue_that_causes_it() {
        // With 2 ms of overhead per task the short queue really uses more
        // worker time (480 x 12 ms vs 40 x 122 ms), so it finishes last:
        // fairness is by time used, not by task count or declared work.
        let plan = [("short", 480, 0.010), ("long", 40, 0.120)];
        let done = simulate(2, &plan, 0.002);
        assert!(done["short"] > done["long"] + 0.3, "finish times {done:?}");
    }
}
