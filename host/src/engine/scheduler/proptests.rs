//! Property tests of the scheduler against a plain model: random
//! operations keep every limit (a queue's from claim to the end of the
//! run, the window from claim to the recorded outcome, with claim-ahead
//! sized by measured run time), dispatch only due tasks in priority-then-
//! FIFO order, never idle while the window has room and a queue could
//! run, and return every task exactly once; backlogged queues get their
//! weight's share.

use super::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::HashSet;

const QUEUES: [&str; 3] = ["a", "b", "c"];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

#[derive(Debug, Clone)]
enum Op {
    Configure {
        queue: usize,
        weight: u32,
        concurrency: Option<u32>,
    },
    /// `due` is relative to now minus 5 ms: some past, some now, some later.
    Enqueue {
        queue: usize,
        priority: u8,
        due: Option<u64>,
    },
    Next,
    /// Finishes the running task at `which` modulo their number (run and
    /// outcome recorded at once).
    Finish {
        which: usize,
        cost: f64,
    },
    /// Ends the run of the running task at `which` (its queue's slot frees;
    /// it stays in flight).
    Ran {
        which: usize,
        run: f64,
    },
    /// Records the outcome of the task at `which` among those that ran.
    Settle {
        which: usize,
        cost: f64,
    },
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..QUEUES.len(), 1u32..=5, proptest::option::of(1u32..=3))
            .prop_map(|(queue, weight, concurrency)| Op::Configure { queue, weight, concurrency }),
        6 => (0..QUEUES.len(), 0u8..=9, proptest::option::of(0u64..30))
            .prop_map(|(queue, priority, due)| Op::Enqueue { queue, priority, due }),
        5 => Just(Op::Next),
        2 => (any::<usize>(), prop_oneof![Just(0.0), 0.0001f64..0.2]).prop_map(|(which, cost)| Op::Finish { which, cost }),
        2 => (any::<usize>(), prop_oneof![Just(0.0), 0.000_01f64..0.2]).prop_map(|(which, run)| Op::Ran { which, run }),
        2 => (any::<usize>(), 0.0001f64..0.2).prop_map(|(which, cost)| Op::Settle { which, cost }),
        2 => (0u64..20).prop_map(Op::Advance),
    ]
}

/// What the scheduler should hold, kept the plain way.
#[derive(Default)]
struct Model {
    now: u64,
    max_running: usize,
    /// The most claimed ahead of the slots.
    ahead: usize,
    /// The model's running average of run times (seconds).
    avg_run: f64,
    /// Claimed, run over, outcome not yet recorded.
    ran: Vec<(Entry, Charge)>,
    limits: HashMap<String, Option<u32>>,
    ready: HashMap<String, Vec<Entry>>,
    delayed: Vec<(u64, Entry)>,
    running: Vec<(Entry, Charge)>,
    enqueued: HashSet<Uuid>,
    returned: HashSet<Uuid>,
    next_id: u128,
}

impl Model {
    fn running_in(&self, queue: &str) -> usize {
        self.running.iter().filter(|(e, _)| e.queue == queue).count()
    }

    /// The most tasks in flight: the slots, plus `slots × 8 ms / average
    /// run`, at most `ahead`.
    fn window(&self) -> usize {
        self.max_running + ((self.max_running as f64 * 0.008 / self.avg_run).floor() as usize).min(self.ahead)
    }

    fn in_flight(&self) -> usize {
        self.running.len() + self.ran.len()
    }

    /// Queues `next` may take from: room in the window, work ready, under
    /// their own limit.
    fn eligible(&self) -> Vec<String> {
        if self.in_flight() >= self.window() {
            return Vec::new();
        }
        self.ready
            .iter()
            .filter(|(q, r)| {
                !r.is_empty() && self.limits.get(*q).copied().flatten().is_none_or(|l| self.running_in(q) < l as usize)
            })
            .map(|(q, _)| q.clone())
            .collect()
    }

    fn apply(&mut self, s: &mut Scheduler, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Configure { queue, weight, concurrency } => {
                s.configure(
                    QUEUES[*queue],
                    QueueConfig { concurrency: *concurrency, weight: *weight, ..QueueConfig::default() },
                );
                self.limits.insert(QUEUES[*queue].into(), *concurrency);
            }
            Op::Enqueue { queue, priority, due } => {
                self.next_id += 1;
                let entry = Entry {
                    id: Uuid::from_u128(self.next_id),
                    version: 1,
                    priority: *priority,
                    queue: QUEUES[*queue].into(),
                };
                let due = due.map(|d| self.now.saturating_sub(5) + d);
                self.enqueued.insert(entry.id);
                s.enqueue(entry.clone(), due, self.now);
                match due {
                    Some(due) if due > self.now => self.delayed.push((due, entry)),
                    _ => self.ready.entry(entry.queue.clone()).or_default().push(entry),
                }
            }
            Op::Next => self.next(s)?,
            Op::Finish { which, cost } => {
                if !self.running.is_empty() {
                    let (entry, charge) = self.running.swap_remove(which % self.running.len());
                    s.finished(&entry.queue, charge, *cost);
                    self.measured(*cost);
                }
            }
            Op::Ran { which, run } => {
                if !self.running.is_empty() {
                    let (entry, charge) = self.running.swap_remove(which % self.running.len());
                    s.ran(&entry.queue, *run);
                    self.measured(*run);
                    self.ran.push((entry, charge));
                }
            }
            Op::Settle { which, cost } => {
                if !self.ran.is_empty() {
                    let (entry, charge) = self.ran.swap_remove(which % self.ran.len());
                    s.settled(&entry.queue, charge, *cost);
                }
            }
            Op::Advance(ms) => {
                self.now += ms;
                let pending = s.promote_due(self.now);
                let (due, later): (Vec<_>, Vec<_>) = self.delayed.drain(..).partition(|(at, _)| *at <= self.now);
                self.delayed = later;
                for (_, entry) in due {
                    self.ready.entry(entry.queue.clone()).or_default().push(entry);
                }
                prop_assert_eq!(pending, self.delayed.iter().map(|(at, _)| *at).min());
            }
        }
        self.check(s)
    }

    fn measured(&mut self, run: f64) {
        if run > 0.0 {
            self.avg_run = 0.95 * self.avg_run + 0.05 * run;
        }
    }

    /// One `next`: None exactly when no queue may start a task; otherwise
    /// the best ready task (highest priority, then oldest) of an eligible
    /// queue, never seen before.
    fn next(&mut self, s: &mut Scheduler) -> Result<(), TestCaseError> {
        let eligible = self.eligible();
        let got = s.next();
        let Some((entry, charge)) = got else {
            prop_assert!(eligible.is_empty(), "idle with free slots and work in {:?}", eligible);
            return Ok(());
        };
        prop_assert!(
            eligible.contains(&entry.queue),
            "{:?} started from {}; eligible {:?}",
            entry,
            entry.queue,
            eligible
        );
        let ready = self.ready.get_mut(&entry.queue).expect("eligible queues have work");
        let best = ready
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| a.priority.cmp(&b.priority).then_with(|| b.id.cmp(&a.id)))
            .map(|(i, _)| i)
            .expect("not empty");
        prop_assert_eq!(&ready[best], &entry, "not the highest-priority oldest ready task");
        ready.swap_remove(best);
        prop_assert!(self.returned.insert(entry.id), "{:?} started twice", entry);
        self.running.push((entry, charge));
        Ok(())
    }

    /// The scheduler's counts agree with the model and stay in the limits.
    fn check(&self, s: &Scheduler) -> Result<(), TestCaseError> {
        prop_assert_eq!(s.window(), self.window());
        prop_assert_eq!(s.in_flight, self.in_flight());
        for (name, depth) in s.depths() {
            let expect = QueueDepth {
                ready: self.ready.get(&name).map_or(0, Vec::len),
                delayed: self.delayed.iter().filter(|(_, e)| e.queue == name).count(),
                running: self.running_in(&name),
            };
            prop_assert_eq!(depth, expect, "queue {}", name);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Random operations against the model (see [`Model::next`] and
    /// [`Model::check`]); then, with time run out and every slot freed in
    /// turn, every enqueued task has been started exactly once.
    #[test]
    fn random_operations_keep_the_invariants(
        max_running in 1usize..=4,
        ahead in prop_oneof![Just(0usize), 1usize..=6],
        ops in vec(op(), 0..120),
    ) {
        let mut s = Scheduler::new(max_running).with_ahead(ahead);
        let mut model = Model { max_running, ahead, avg_run: 0.001, ..Model::default() };
        for op in &ops {
            model.apply(&mut s, op)?;
        }
        model.apply(&mut s, &Op::Advance(1_000))?;
        loop {
            model.apply(&mut s, &Op::Next)?;
            if model.in_flight() == 0 && model.eligible().is_empty() {
                break;
            }
            if model.eligible().is_empty() {
                if model.ran.is_empty() {
                    model.apply(&mut s, &Op::Ran { which: 0, run: 0.001 })?;
                } else {
                    model.apply(&mut s, &Op::Settle { which: 0, cost: 0.001 })?;
                }
            }
        }
        prop_assert_eq!(&model.returned, &model.enqueued);
        prop_assert!(s.depths().iter().all(|(_, d)| *d == QueueDepth::default()));
    }

    /// Fairness. `k` queues with weights `w_i` (sum `W`), all backlogged
    /// with tasks of one cost `c` ≥ the initial estimate (1 ms), `m`
    /// workers; tasks finish in any order and each finished one is
    /// replaced. At the end each queue's charged time `T_i` is within
    /// `(k - 1) * m * c` of its weight share `w_i / W * T`.
    ///
    /// Why the algorithm guarantees it: a queue's virtual time is its
    /// finished cost over its weight plus its running tasks' estimates
    /// (never above `c`, as the estimate moves from 1 ms towards `c`)
    /// over its weight. With `n_i` tasks started, `v_i` lies in
    /// `[(n_i - r_i) c / w_i, n_i c / w_i]` where `r_i < m` are running
    /// when `next` picks the least `v_i`. So after every pick
    /// `n_i <= w_i n_j / w_j + m` for all `j`, hence `n_i - w_i/W N <= m`;
    /// the deviations sum to zero, so none is below `-(k - 1) m`. With all
    /// tasks finished `T_i = n_i c`.
    #[test]
    fn backlogged_queues_get_their_weight_share(
        weights in vec(1u32..=5, 2..=4),
        workers in 1usize..=4,
        cost in 0.001f64..0.5,
        rounds in 20usize..400,
        order in vec(any::<Index>(), 400),
    ) {
        let mut s = Scheduler::new(workers);
        let names: Vec<String> = (0..weights.len()).map(|i| format!("q{i}")).collect();
        for (name, &weight) in names.iter().zip(&weights) {
            s.configure(name, QueueConfig { concurrency: None, weight, ..QueueConfig::default() });
        }
        let mut id = 0u128;
        for _ in 0..rounds + workers {
            for name in &names {
                id += 1;
                s.enqueue(Entry { id: Uuid::from_u128(id), version: 1, priority: 0, queue: name.clone() }, None, 0);
            }
        }
        let mut charged: HashMap<String, f64> = HashMap::new();
        let mut running: Vec<(Entry, Charge)> = std::iter::from_fn(|| s.next()).collect();
        prop_assert_eq!(running.len(), workers);
        for which in &order[..rounds] {
            let (entry, charge) = running.swap_remove(which.index(running.len()));
            s.finished(&entry.queue, charge, cost);
            *charged.entry(entry.queue).or_default() += cost;
            running.push(s.next().expect("backlogged"));
        }
        for (entry, charge) in running {
            s.finished(&entry.queue, charge, cost);
            *charged.entry(entry.queue).or_default() += cost;
        }
        let total: f64 = charged.values().sum();
        let weight_sum: u32 = weights.iter().sum();
        let bound = (weights.len() - 1) as f64 * workers as f64 * cost + 1e-9;
        for (name, &weight) in names.iter().zip(&weights) {
            let share = f64::from(weight) / f64::from(weight_sum) * total;
            let got = charged.get(name).copied().unwrap_or(0.0);
            prop_assert!((got - share).abs() <= bound,
                "{} (weight {}) charged {:.4}s, its share {:.4}s, bound {:.4}s: {:?}", name, weight, got, share, bound, charged);
        }
    }
}
