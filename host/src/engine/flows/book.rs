//! In-memory flow bookkeeping, rebuilt from the store on start: unfinished
//! tasks per flow (a flow ends when its count reaches zero), the tasks and
//! context bytes attempts have reserved against the flow limits, the
//! submission rate buckets, and which waiting tasks each task's end
//! releases (joins).
//!
//! On a shared store ([`Book::sharing`]) other hosts create and end tasks
//! of the same flows, so this host cannot count them: the store keeps each
//! flow's count (PostgreSQL's `flow_unfinished`) and the book keeps a flow
//! only while this host's attempts hold reservations against its limits or
//! a hold on it ([`Book::hold`]: an attempt that read the flow's stored
//! totals), taking its totals from the store when it books it again.

use super::FlowLimits;
use crate::engine::scheduler::Entry;
use std::collections::HashMap;
use std::fmt;
use std::time::Instant;
use uuid::Uuid;

#[derive(Debug)]
struct Live {
    /// Tasks created and not yet ended.
    unfinished: u64,
    /// Tasks created in the flow so far, plus those attempts hold.
    tasks: u64,
    /// Context bytes committed.
    context_bytes: u64,
    /// Context bytes running attempts may still commit.
    context_reserved: u64,
    /// Submission tokens left, and when they were last refilled.
    tokens: f64,
    refilled: Instant,
    /// It grew past one task (it has a flow record to finish).
    grown: bool,
    /// Tasks that attempts reserved and have neither committed nor given
    /// back.
    reserved_tasks: u64,
    /// On a shared store: this host's attempts that read the flow's stored
    /// totals and may still reserve beside them ([`Book::hold`]).
    holders: u64,
}

/// A task whose `after` tasks have not all ended.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) remaining: usize,
    pub(crate) entry: Entry,
    pub(crate) due_ms: Option<u64>,
}

/// Which flow limit refused a submission or a context write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The flow already has `limit` tasks.
    TasksPerFlow { limit: u64 },
    /// The flow submits faster than `limit` per second.
    SubmissionsPerSec { limit: u32 },
    /// The context would hold `total` bytes, over `limit`.
    ContextBytes { total: u64, limit: u64 },
}

impl Refusal {
    /// The limit's name, as in `flow_limit_refusals_total{limit}`.
    pub(crate) fn limit(&self) -> &'static str {
        match self {
            Self::TasksPerFlow { .. } => "tasks_per_flow",
            Self::SubmissionsPerSec { .. } => "submissions_per_sec",
            Self::ContextBytes { .. } => "context_bytes",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TasksPerFlow { limit } => write!(f, "the flow already has {limit} tasks, its limit"),
            Self::SubmissionsPerSec { limit } => write!(f, "the flow submits faster than {limit} tasks per second"),
            Self::ContextBytes { total, limit } => {
                write!(f, "the flow's context would hold {total} bytes; its limit is {limit} bytes")
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct Book {
    /// Whether every task of this host's flows ends here, so that the
    /// book's counts tell when a flow ends (one host on its own store).
    counts_ends: bool,
    flows: HashMap<Uuid, Live>,
    /// Task → tasks waiting for it.
    waiters: HashMap<Uuid, Vec<Uuid>>,
    waiting: HashMap<Uuid, Waiting>,
}

impl Default for Book {
    fn default() -> Self {
        Self { counts_ends: true, flows: HashMap::new(), waiters: HashMap::new(), waiting: HashMap::new() }
    }
}

impl Book {
    /// The book of a host sharing its store with others (see the module
    /// docs): it counts no flow's unfinished tasks, and [`Book::ended`]
    /// says when the store must be asked whether a flow ended.
    pub(crate) fn sharing() -> Self {
        Self { counts_ends: false, ..Self::default() }
    }

    fn live(&mut self, flow: Uuid, limits: &FlowLimits) -> &mut Live {
        self.flows.entry(flow).or_insert_with(|| Live {
            unfinished: 0,
            tasks: 0,
            context_bytes: 0,
            context_reserved: 0,
            tokens: f64::from(limits.submissions_per_sec),
            refilled: Instant::now(),
            grown: false,
            reserved_tasks: 0,
            holders: 0,
        })
    }

    /// On a shared store: forgets `flow` once this host's attempts hold
    /// nothing against it.
    fn forget_idle(&mut self, flow: Uuid) {
        if !self.counts_ends
            && self
                .flows
                .get(&flow)
                .is_some_and(|l| l.reserved_tasks == 0 && l.context_reserved == 0 && !l.grown && l.holders == 0)
        {
            self.flows.remove(&flow);
        }
    }

    /// On a shared store: an attempt is about to read `flow`'s stored
    /// totals, to reserve beside them for the rest of its run. The book
    /// keeps the flow until the attempt [lets go](Self::unhold) of it, so
    /// what this host's other attempts reserve and commit after that read
    /// stays counted here (a total read once, then used after the book
    /// forgot the flow, let a flow of 6 tasks grow a 7th). Tasks created
    /// without a reservation (a repeater's next iteration, children of a
    /// commit whose answer was lost), other hosts' commits and a context
    /// size that could not be read back are not: each commit checks the
    /// flow's bounds again (see `services.rs`).
    pub(crate) fn hold(&mut self, flow: Uuid, limits: &FlowLimits) {
        if !self.counts_ends {
            self.live(flow, limits).holders += 1;
        }
    }

    /// Whether the book keeps an entry for `flow`.
    #[cfg(test)]
    pub(crate) fn knows(&self, flow: Uuid) -> bool {
        self.flows.contains_key(&flow)
    }

    /// The attempt that [held](Self::hold) `flow` ended.
    pub(crate) fn unhold(&mut self, flow: Uuid) {
        if let Some(live) = self.flows.get_mut(&flow).filter(|_| !self.counts_ends) {
            live.holders = live.holders.saturating_sub(1);
        }
        self.forget_idle(flow);
    }

    /// At recovery: a flow's totals as stored.
    pub(crate) fn restore(&mut self, flow: Uuid, tasks: u64, unfinished: u64, context_bytes: u64, l: &FlowLimits) {
        if !self.counts_ends {
            return;
        }
        let live = self.live(flow, l);
        live.tasks = live.tasks.max(tasks);
        live.unfinished += unfinished;
        live.context_bytes = context_bytes;
        live.grown = true;
    }

    /// At recovery: unfinished tasks of a flow that is one task.
    pub(crate) fn restore_single(&mut self, flow: Uuid, unfinished: u64, l: &FlowLimits) {
        if !self.counts_ends {
            return;
        }
        let live = self.live(flow, l);
        live.tasks = live.tasks.max(1);
        live.unfinished += unfinished;
    }

    /// A task was created (its reservation, if any, already counted it);
    /// `grown` when it is not a flow's only task.
    pub(crate) fn created(&mut self, flow: Uuid, reserved: bool, grown: bool, limits: &FlowLimits) {
        if !self.counts_ends {
            // Committed: the flow's stored total counts it now.
            if reserved && let Some(live) = self.flows.get_mut(&flow) {
                live.reserved_tasks = live.reserved_tasks.saturating_sub(1);
            }
            self.forget_idle(flow);
            return;
        }
        let live = self.live(flow, limits);
        live.unfinished += 1;
        live.grown |= grown;
        if !reserved {
            live.tasks += 1;
        }
    }

    /// The flow now has a record to finish (an attempt committed effects).
    /// On a shared store the task that committed them is ending: its end
    /// asks the store ([`Book::ended`]).
    pub(crate) fn grew(&mut self, flow: Uuid, limits: &FlowLimits) {
        if !self.counts_ends {
            self.live(flow, limits).grown = true;
        } else if let Some(live) = self.flows.get_mut(&flow) {
            live.grown = true;
        }
    }

    /// A task that had ended runs again (re-submitted from the dead-letter
    /// set): its flow waits for it. (On a shared store the store counts
    /// it, and its end asks the store: it is a task the flow grew.)
    pub(crate) fn reopened(&mut self, flow: Uuid, limits: &FlowLimits) {
        if self.counts_ends {
            self.live(flow, limits).unfinished += 1;
        }
    }

    /// Task `task` of flow `flow` ended; true when it was the last
    /// unfinished task of a flow that grew past one task (one with a
    /// record to finish). On a shared store: true when it may have been
    /// (a task the flow grew, or one whose end was marked by
    /// [`grew`](Self::grew)), for the caller to ask the store.
    pub(crate) fn ended(&mut self, flow: Uuid, task: Uuid) -> bool {
        if !self.counts_ends {
            let marked = self.flows.get_mut(&flow).is_some_and(|l| std::mem::take(&mut l.grown));
            self.forget_idle(flow);
            return marked || flow != task;
        }
        let Some(live) = self.flows.get_mut(&flow) else { return false };
        live.unfinished = live.unfinished.saturating_sub(1);
        let last = live.unfinished == 0 && live.grown;
        if live.unfinished == 0 && live.context_reserved == 0 {
            // Keep nothing for idle flows; totals are restored from the
            // store if the flow grows again.
            self.flows.remove(&flow);
        }
        last
    }

    /// Whether the flow has unfinished tasks, as far as this book knows
    /// (never, on a shared store: the store is asked).
    pub(crate) fn is_active(&self, flow: Uuid) -> bool {
        self.flows.get(&flow).is_some_and(|l| l.unfinished > 0)
    }

    /// Takes one submission from the flow's budget (rate, then size), or
    /// says which limit refused it.
    /// The flow's rate is checked here only with `rate_here` (otherwise
    /// the store keeps it: see `engine/rates.rs`).
    pub(crate) fn reserve_task(
        &mut self,
        flow: Uuid,
        stored_tasks: u64,
        limits: &FlowLimits,
        rate_here: bool,
    ) -> Result<(), Refusal> {
        let live = self.live(flow, limits);
        live.tasks = live.tasks.max(stored_tasks);
        let rate = f64::from(limits.submissions_per_sec.max(1));
        let now = Instant::now();
        live.tokens = (live.tokens + now.duration_since(live.refilled).as_secs_f64() * rate).min(rate);
        live.refilled = now;
        if live.tasks >= limits.tasks_per_flow {
            self.forget_idle(flow);
            return Err(Refusal::TasksPerFlow { limit: limits.tasks_per_flow });
        }
        if rate_here {
            if live.tokens < 1.0 {
                self.forget_idle(flow);
                return Err(Refusal::SubmissionsPerSec { limit: limits.submissions_per_sec });
            }
            live.tokens -= 1.0;
        }
        live.tasks += 1;
        live.reserved_tasks += 1;
        Ok(())
    }

    /// Returns task reservations an attempt did not commit.
    pub(crate) fn unreserve_tasks(&mut self, flow: Uuid, count: u64) {
        if let Some(live) = self.flows.get_mut(&flow) {
            live.tasks = live.tasks.saturating_sub(count);
            live.reserved_tasks = live.reserved_tasks.saturating_sub(count);
        }
        self.forget_idle(flow);
    }

    /// Reserves `grow` more context bytes, within the cap; `stored_bytes`:
    /// the flow's context as last read from the store, where the book may
    /// not know it (a shared store).
    pub(crate) fn reserve_context(
        &mut self,
        flow: Uuid,
        grow: u64,
        stored_bytes: Option<u64>,
        limits: &FlowLimits,
    ) -> Result<(), Refusal> {
        let live = self.live(flow, limits);
        if let Some(stored) = stored_bytes {
            live.context_bytes = live.context_bytes.max(stored);
        }
        let total = live.context_bytes + live.context_reserved + grow;
        if total > limits.context_bytes {
            self.forget_idle(flow);
            return Err(Refusal::ContextBytes { total, limit: limits.context_bytes });
        }
        live.context_reserved += grow;
        Ok(())
    }

    /// An attempt ended: its reservation is released and, if it committed
    /// context writes, the flow's exact size (read back) recorded.
    pub(crate) fn settle_context(&mut self, flow: Uuid, reserved: u64, committed_size: Option<u64>) {
        if let Some(live) = self.flows.get_mut(&flow) {
            live.context_reserved = live.context_reserved.saturating_sub(reserved);
            if let Some(size) = committed_size {
                live.context_bytes = size;
            }
        }
        self.forget_idle(flow);
    }

    /// Registers a task that starts once `pending` of its `after` tasks end.
    pub(crate) fn wait(&mut self, entry: Entry, due_ms: Option<u64>, pending: &[Uuid]) {
        for dep in pending {
            self.waiters.entry(*dep).or_default().push(entry.id);
        }
        self.waiting.insert(entry.id, Waiting { remaining: pending.len(), entry, due_ms });
    }

    /// A task ended: the waiting tasks it released (all their `after`
    /// tasks have now ended).
    pub(crate) fn release(&mut self, id: Uuid) -> Vec<Waiting> {
        // A waiting task that ended itself (cancelled) waits no more.
        self.waiting.remove(&id);
        let mut ready = Vec::new();
        for waiter in self.waiters.remove(&id).unwrap_or_default() {
            if let Some(w) = self.waiting.get_mut(&waiter) {
                w.remaining -= 1;
                if w.remaining == 0 {
                    ready.extend(self.waiting.remove(&waiter));
                }
            }
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> FlowLimits {
        FlowLimits { tasks_per_flow: 3, submissions_per_sec: 100, context_bytes: 10, ..FlowLimits::default() }
    }

    #[test]
    fn task_and_context_limits_are_hard() {
        let (mut book, l, flow) = (Book::default(), limits(), Uuid::from_u128(1));
        book.created(flow, false, false, &l);
        book.reserve_task(flow, 1, &l, true).unwrap();
        book.reserve_task(flow, 1, &l, true).unwrap();
        assert!(book.reserve_task(flow, 1, &l, true).unwrap_err().to_string().contains("already has 3 tasks"));
        book.unreserve_tasks(flow, 1);
        book.reserve_task(flow, 1, &l, true).unwrap();
        book.reserve_context(flow, 8, None, &l).unwrap();
        assert!(book.reserve_context(flow, 3, None, &l).unwrap_err().to_string().contains("would hold 11 bytes"));
        book.settle_context(flow, 8, Some(2));
        book.reserve_context(flow, 8, None, &l).unwrap();
    }

    #[test]
    fn the_rate_bucket_refuses_a_burst_beyond_its_size() {
        let mut l = limits();
        l.tasks_per_flow = 1_000;
        l.submissions_per_sec = 5;
        let (mut book, flow) = (Book::default(), Uuid::from_u128(1));
        for _ in 0..5 {
            book.reserve_task(flow, 0, &l, true).unwrap();
        }
        assert!(
            book.reserve_task(flow, 0, &l, true).unwrap_err().to_string().contains("faster than 5 tasks per second")
        );
    }

    /// The fork bomb's sequence on one host on PostgreSQL: attempt `g`
    /// reads the flow's stored total (5 of a limit of 6), then attempt
    /// `c`, which had reserved the 6th, commits it. Had the book forgotten
    /// the flow then (nothing reserved), `g` would reserve beside its
    /// stale 5 and the flow would hold 7; held by `g`, the flow's count
    /// stays and `g` is refused.
    #[test]
    fn an_attempt_that_read_a_flows_totals_holds_it_in_a_shared_book() {
        let (mut book, mut l) = (Book::sharing(), limits());
        l.tasks_per_flow = 6;
        let flow = Uuid::from_u128(1);
        // `c` reserves the 6th (stored: 5).
        book.hold(flow, &l);
        book.reserve_task(flow, 5, &l, true).unwrap();
        // `g` reads the stored total, still 5.
        book.hold(flow, &l);
        let g_read = 5;
        // `c` commits and ends.
        book.created(flow, true, true, &l);
        book.unhold(flow);
        assert!(book.flows.contains_key(&flow), "held by `g`");
        let refused = book.reserve_task(flow, g_read, &l, true).unwrap_err();
        assert_eq!(refused, Refusal::TasksPerFlow { limit: 6 });
        book.unhold(flow);
        assert!(book.flows.is_empty(), "nothing held: forgotten");
        // Without the hold, the same sequence is what went wrong.
        book.reserve_task(flow, 5, &l, true).unwrap();
        book.created(flow, true, true, &l);
        assert!(book.flows.is_empty());
        assert!(book.reserve_task(flow, 5, &l, true).is_ok(), "a stale total alone admits a 7th");
        // The book of a host alone on redb counts everything: holds change nothing.
        let mut alone = Book::default();
        alone.hold(flow, &l);
        alone.unhold(flow);
        assert!(alone.flows.is_empty());
    }

    #[test]
    fn a_shared_book_keeps_a_flow_only_while_attempts_hold_reservations_and_asks_the_store_at_ends() {
        let (mut book, l) = (Book::sharing(), limits());
        let (flow, root, child) = (Uuid::from_u128(1), Uuid::from_u128(1), Uuid::from_u128(2));
        // Created or restored tasks are the store's to count.
        book.created(flow, false, true, &l);
        book.restore(flow, 2, 2, 0, &l);
        assert!(book.flows.is_empty());
        // A task the flow grew may be its last: the store is asked.
        assert!(book.ended(flow, child));
        // The root's end asks only when its attempt's commit grew the flow.
        assert!(!book.ended(flow, root));
        book.grew(flow, &l);
        assert!(book.ended(flow, root));
        assert!(!book.ended(flow, root), "the mark is taken by the end it was made for");
        assert!(book.flows.is_empty());
        // Reservations keep the flow, with the stored totals as the base.
        book.reserve_task(flow, 2, &l, true).unwrap();
        assert!(book.reserve_task(flow, 2, &l, true).unwrap_err().to_string().contains("already has 3 tasks"));
        book.reserve_context(flow, 4, Some(5), &l).unwrap();
        assert!(book.reserve_context(flow, 2, Some(5), &l).unwrap_err().to_string().contains("would hold 11 bytes"));
        book.created(flow, true, true, &l);
        assert!(book.flows.contains_key(&flow), "its context reservation holds it");
        book.settle_context(flow, 4, Some(9));
        assert!(book.flows.is_empty(), "nothing held: forgotten");
        assert!(!book.is_active(flow));
    }

    #[test]
    fn a_join_is_released_by_its_last_dependency() {
        let mut book = Book::default();
        let entry = Entry { id: Uuid::from_u128(9), version: 1, priority: 0, queue: "q".into() };
        book.wait(entry, None, &[Uuid::from_u128(1), Uuid::from_u128(2)]);
        assert!(book.release(Uuid::from_u128(2)).is_empty());
        let ready = book.release(Uuid::from_u128(1));
        assert_eq!(ready.iter().map(|w| w.entry.id.as_u128()).collect::<Vec<_>>(), [9]);
        assert!(book.release(Uuid::from_u128(1)).is_empty());
    }
}
