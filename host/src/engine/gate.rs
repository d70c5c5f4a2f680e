//! The execution gate: what a claimed attempt holds while its sandbox
//! runs — one of the engine's `concurrency` execution slots, and its share
//! of the host memory budget (its memory limit plus its host budget, the
//! most it can make this process hold while it runs). The durable claim
//! before the run and the outcome's commit after it hold no slot, so
//! waiting for a commit never keeps a slot idle. After the run the
//! attempt keeps only the memory its outcome still holds (input, output,
//! what it made the host hold) until the outcome is committed.
//!
//! Slots go to the waiting attempt of highest priority, then the one
//! claimed first. Memory is first come, first served: a large task at the
//! head waits for room and is not overtaken by smaller ones behind it, so
//! it cannot starve.

use crate::sync::lock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit, oneshot};

/// The memory budget is counted in whole mebibytes.
const UNIT: u64 = 1 << 20;

/// The gate's gauges and counters (registered by the engine's metrics).
#[derive(Debug, Clone, Default)]
pub(crate) struct GateMetrics {
    /// The budget in bytes.
    pub(crate) budget: Gauge,
    /// The bytes reserved by attempts running or recording their outcome.
    pub(crate) reserved: Gauge,
    /// Attempts claimed and waiting for room in the budget.
    pub(crate) waiting: Gauge,
    /// Attempts that had to wait for room in the budget.
    pub(crate) waits: Counter,
}

/// Execution slots, handed out by priority.
#[derive(Debug)]
struct Slots {
    free: usize,
    /// (priority, -ticket): the highest priority, then the first claimed.
    waiting: BinaryHeap<(u8, Reverse<u64>, Waiter)>,
}

#[derive(Debug)]
struct Waiter(oneshot::Sender<()>);

impl PartialEq for Waiter {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// Execution slots and the memory budget.
#[derive(Debug)]
pub(crate) struct Gate {
    slots: Mutex<Slots>,
    /// How many execution slots there are.
    slot_count: usize,
    memory: Semaphore,
    budget_units: u32,
    metrics: GateMetrics,
    /// The next place in line ([`Gate::ticket`]).
    tickets: std::sync::atomic::AtomicU64,
}

/// One execution slot; dropping it hands the slot to the next waiter.
#[derive(Debug)]
pub(crate) struct Slot<'a> {
    gate: &'a Gate,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.gate.release_slot();
    }
}

/// Memory reserved in the budget; dropping it gives the memory back.
#[derive(Debug)]
pub(crate) struct Reserved<'a> {
    permit: SemaphorePermit<'a>,
    metrics: &'a GateMetrics,
}

impl Reserved<'_> {
    /// Keeps only what `bytes` need (never more than is held), giving the
    /// rest back at once.
    pub(crate) fn shrink_to(&mut self, bytes: u64) {
        let keep = units(bytes).min(self.permit.num_permits() as u64) as usize;
        let give_back = self.permit.num_permits() - keep;
        if let Some(freed) = self.permit.split(give_back) {
            self.metrics.reserved.dec_by((freed.num_permits() as u64 * UNIT) as i64);
        }
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.metrics.reserved.dec_by((self.permit.num_permits() as u64 * UNIT) as i64);
    }
}

/// Decrements a gauge when dropped, even by a cancelled wait.
struct Waiting<'a>(&'a Gauge);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn units(bytes: u64) -> u64 {
    bytes.div_ceil(UNIT)
}

impl Gate {
    /// A gate of `slots` execution slots and `budget` bytes of memory.
    pub(crate) fn new(slots: usize, budget: u64, metrics: GateMetrics) -> Self {
        let budget_units = units(budget).clamp(1, u64::from(u32::MAX)) as u32;
        metrics.budget.set((u64::from(budget_units) * UNIT) as i64);
        Self {
            slots: Mutex::new(Slots { free: slots.max(1), waiting: BinaryHeap::new() }),
            slot_count: slots.max(1),
            memory: Semaphore::new(budget_units as usize),
            budget_units,
            metrics,
            tickets: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A place in line for slots, taken when a task is claimed (before its
    /// attempt is spawned), so tasks of one priority get slots in the order
    /// they were claimed, not in the order their attempts reach the gate.
    pub(crate) fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The budget in bytes (whole mebibytes).
    pub(crate) fn budget(&self) -> u64 {
        u64::from(self.budget_units) * UNIT
    }

    /// Whether an attempt reserving `bytes` can ever run here.
    pub(crate) fn fits(&self, bytes: u64) -> bool {
        units(bytes) <= u64::from(self.budget_units)
    }

    /// Waits for room in the budget for `bytes`, then for a slot (by
    /// `priority`, then `ticket`, from [`Gate::ticket`]). `None` when
    /// `bytes` can never fit ([`Gate::fits`]). Dropping the wait gives
    /// back whatever it took.
    pub(crate) async fn enter(&self, bytes: u64, priority: u8, ticket: u64) -> Option<(Slot<'_>, Reserved<'_>)> {
        if !self.fits(bytes) {
            return None;
        }
        let need = units(bytes) as u32;
        let permit = match self.memory.try_acquire_many(need) {
            Ok(permit) => permit,
            Err(_) => {
                self.metrics.waits.inc();
                self.metrics.waiting.inc();
                let _waiting = Waiting(&self.metrics.waiting);
                self.memory.acquire_many(need).await.expect("the gate's semaphore is never closed")
            }
        };
        self.metrics.reserved.inc_by((u64::from(need) * UNIT) as i64);
        let reserved = Reserved { permit, metrics: &self.metrics };
        let slot = self.slot(priority, ticket).await;
        Some((slot, reserved))
    }

    async fn slot(&self, priority: u8, ticket: u64) -> Slot<'_> {
        let receiver = {
            let mut slots = lock(&self.slots);
            if slots.free > 0 && slots.waiting.is_empty() {
                slots.free -= 1;
                return Slot { gate: self };
            }
            let (sender, receiver) = oneshot::channel();
            slots.waiting.push((priority, Reverse(ticket), Waiter(sender)));
            receiver
        };
        // A slot handed over but never taken (this wait was dropped) is
        // passed on by `release_slot`, which sees the send fail.
        let mut guard = Unclaimed { gate: self, receiver: Some(receiver) };
        let received = guard.receiver.as_mut().expect("set above").await;
        guard.receiver = None;
        received.expect("the gate never drops a waiter without a slot");
        Slot { gate: self }
    }

    fn release_slot(&self) {
        let mut slots = lock(&self.slots);
        while let Some((_, _, Waiter(sender))) = slots.waiting.pop() {
            if sender.send(()).is_ok() {
                return;
            }
        }
        slots.free += 1;
    }

    /// Execution slots free now.
    pub(crate) fn free_slots(&self) -> usize {
        lock(&self.slots).free
    }

    /// How many execution slots there are (the engine's concurrency).
    pub(crate) fn slot_count(&self) -> usize {
        self.slot_count
    }

    /// Execution slots held by running attempts now.
    pub(crate) fn busy_slots(&self) -> usize {
        self.slot_count.saturating_sub(self.free_slots())
    }

    /// Bytes of the budget reserved now (whole mebibytes), as the
    /// `reserved` gauge counts them: attempts running or recording their
    /// outcome.
    pub(crate) fn reserved(&self) -> u64 {
        u64::try_from(self.metrics.reserved.get()).unwrap_or(0)
    }
}

/// A slot wait that may be dropped: if the slot was sent but not yet
/// taken, it is released again.
struct Unclaimed<'a> {
    gate: &'a Gate,
    receiver: Option<oneshot::Receiver<()>>,
}

impl Drop for Unclaimed<'_> {
    fn drop(&mut self) {
        if let Some(mut receiver) = self.receiver.take() {
            receiver.close();
            if receiver.try_recv().is_ok() {
                self.gate.release_slot();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_task_waits_until_its_memory_fits_and_then_runs() {
        let gate = Gate::new(4, 300 * UNIT, GateMetrics::default());
        let a = gate.enter(200 * UNIT, 0, gate.ticket()).await.unwrap();
        assert_eq!(gate.metrics.reserved.get(), (200 * UNIT) as i64);
        // 200 + 200 > 300: the second waits although slots are free.
        let second = gate.enter(200 * UNIT, 0, gate.ticket());
        tokio::pin!(second);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut second).await.is_err());
        assert_eq!((gate.metrics.waiting.get(), gate.metrics.waits.get()), (1, 1));
        drop(a);
        let b = tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap();
        assert_eq!(gate.metrics.waiting.get(), 0);
        assert_eq!(gate.free_slots(), 3);
        drop(b);
        assert_eq!(gate.metrics.reserved.get(), 0);
    }

    #[tokio::test]
    async fn a_wait_dropped_while_it_waits_gives_everything_back() {
        let gate = Gate::new(1, 100 * UNIT, GateMetrics::default());
        let a = gate.enter(60 * UNIT, 0, gate.ticket()).await.unwrap();
        // Waiting for memory, then dropped: the waiting gauge goes back.
        let for_memory = gate.enter(60 * UNIT, 0, gate.ticket());
        assert!(tokio::time::timeout(Duration::from_millis(20), for_memory).await.is_err());
        assert_eq!(gate.metrics.waiting.get(), 0);
        // Waiting for the slot, then dropped: its memory is given back.
        let for_slot = gate.enter(10 * UNIT, 0, gate.ticket());
        assert!(tokio::time::timeout(Duration::from_millis(20), for_slot).await.is_err());
        assert_eq!(gate.metrics.reserved.get(), (60 * UNIT) as i64);
        drop(a);
        assert_eq!(gate.free_slots(), 1, "the slot is not lost to the dropped waiter");
        assert!(gate.enter(100 * UNIT, 0, gate.ticket()).await.is_some());
    }

    #[tokio::test]
    async fn slots_go_to_the_highest_priority_then_the_first_in_line() {
        let gate = std::sync::Arc::new(Gate::new(1, 1 << 40, GateMetrics::default()));
        let first = gate.enter(1, 0, gate.ticket()).await.unwrap();
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (n, priority) in [(1, 0u8), (2, 9), (3, 5), (4, 9)] {
            let (gate, order) = (gate.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let pass = gate.enter(1, priority, gate.ticket()).await.unwrap();
                lock(&order).push(n);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(pass);
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(first);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*lock(&order), [2, 4, 3, 1]);
    }

    /// Of one priority, the task claimed first gets the slot first, even
    /// when its attempt reaches the gate second (attempts are spawned, so
    /// on a multi-threaded runtime they may arrive in either order).
    #[tokio::test]
    async fn slots_go_by_claim_order_not_arrival() {
        let gate = std::sync::Arc::new(Gate::new(1, 1 << 40, GateMetrics::default()));
        let first = gate.enter(1, 0, gate.ticket()).await.unwrap();
        let (earlier, later) = (gate.ticket(), gate.ticket());
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for ticket in [later, earlier] {
            let (gate, order) = (gate.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let pass = gate.enter(1, 0, ticket).await.unwrap();
                lock(&order).push(ticket);
                drop(pass);
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(first);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*lock(&order), [earlier, later]);
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_never_enters() {
        let gate = Gate::new(2, 100 * UNIT, GateMetrics::default());
        assert!(gate.fits(100 * UNIT));
        assert!(!gate.fits(100 * UNIT + 1));
        assert!(gate.enter(101 * UNIT, 0, gate.ticket()).await.is_none());
        assert_eq!(gate.budget(), 100 * UNIT);
    }

    #[tokio::test]
    async fn after_the_run_only_what_the_outcome_holds_stays_reserved() {
        let gate = Gate::new(2, 100 * UNIT, GateMetrics::default());
        let (slot, mut reserved) = gate.enter(80 * UNIT, 0, gate.ticket()).await.unwrap();
        drop(slot);
        reserved.shrink_to(3 * UNIT + 1);
        assert_eq!(gate.metrics.reserved.get(), (4 * UNIT) as i64);
        // 96 MiB is free again while the outcome is being recorded.
        let other = gate.enter(96 * UNIT, 0, gate.ticket()).await.unwrap();
        drop((reserved, other));
        assert_eq!(gate.metrics.reserved.get(), 0);
    }

    #[tokio::test]
    async fn a_large_task_first_in_line_is_not_overtaken() {
        let gate = Gate::new(8, 100 * UNIT, GateMetrics::default());
        let small = gate.enter(60 * UNIT, 0, gate.ticket()).await.unwrap();
        let large = gate.enter(100 * UNIT, 0, gate.ticket());
        tokio::pin!(large);
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut large).await.is_err());
        // 10 MiB would fit beside the 60, but the large one is first.
        let later = gate.enter(10 * UNIT, 0, gate.ticket());
        tokio::pin!(later);
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut later).await.is_err());
        drop(small);
        let large = tokio::time::timeout(Duration::from_secs(5), large).await.unwrap().unwrap();
        drop(large);
        tokio::time::timeout(Duration::from_secs(5), later).await.unwrap().unwrap();
    }
}
