//! The per-attempt host budget: every byte a guest makes the *host* hold
//! outside its own linear memory (log records, captured streams, children
//! held until the attempt commits and their inputs, context writes, join
//! results, inference tensors) is counted here against one cap. A call that
//! would pass it is refused with a clear error and the refusal is recorded,
//! so an attempt that traps afterwards is classified `host budget exceeded`
//! (as the memory limiter's record classifies a refused `memory.grow`).
//!
//! Two kinds of charge: *held* bytes stay until they are refunded or the
//! attempt ends (a pending child, a context write); *transient* bytes (a
//! join's outputs, an inference call's tensors) only need to fit beside
//! what is held while the call runs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What one log record costs beyond its message: the record's own fields
/// and the vector slot that keeps it.
pub(crate) const LOG_RECORD_OVERHEAD: u64 = 48;

/// The budget of one attempt. Shared (behind an `Arc`) by the sandbox's
/// host calls and the engine's services for the attempt.
#[derive(Debug)]
pub struct HostBudget {
    cap: u64,
    held: AtomicU64,
    peak: AtomicU64,
    refused: Mutex<Option<String>>,
}

/// A charge the budget refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the task's host budget of {cap} bytes would be passed: {what} needs {wanted} more bytes while {held} are held \
     (raise `host_memory` in the plugin's manifest, within the operator's ceiling)"
)]
#[non_exhaustive]
pub struct BudgetExceeded {
    /// What the bytes were for, e.g. `a log record`.
    pub what: &'static str,
    /// Bytes asked for.
    pub wanted: u64,
    /// Bytes held when it was refused.
    pub held: u64,
    /// The budget.
    pub cap: u64,
}

impl HostBudget {
    /// A budget of `cap` bytes, none held.
    pub fn new(cap: u64) -> Self {
        Self { cap, held: AtomicU64::new(0), peak: AtomicU64::new(0), refused: Mutex::new(None) }
    }

    /// The budget in bytes.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// The most bytes held (or held plus a transient charge) at any moment.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// The first refusal, if any: the attempt's failure is classified from
    /// it when the guest traps afterwards.
    pub fn refusal(&self) -> Option<String> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Holds `bytes` more, or refuses (holding nothing) when that would
    /// pass the cap.
    pub fn charge(&self, what: &'static str, bytes: u64) -> Result<(), BudgetExceeded> {
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            let after = held.saturating_add(bytes);
            if after > self.cap {
                return Err(self.refuse(what, bytes, held));
            }
            match self.held.compare_exchange_weak(held, after, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    self.peak.fetch_max(after, Ordering::Relaxed);
                    return Ok(());
                }
                Err(now) => held = now,
            }
        }
    }

    /// Gives back `bytes` held earlier.
    pub fn refund(&self, bytes: u64) {
        let _ = self.held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| Some(h.saturating_sub(bytes)));
    }

    /// Checks that `bytes` more fit beside what is held, for memory a call
    /// holds only while it runs; holds nothing afterwards.
    pub fn fits(&self, what: &'static str, bytes: u64) -> Result<(), BudgetExceeded> {
        let held = self.held();
        let after = held.saturating_add(bytes);
        if after > self.cap {
            return Err(self.refuse(what, bytes, held));
        }
        self.peak.fetch_max(after, Ordering::Relaxed);
        Ok(())
    }

    fn refuse(&self, what: &'static str, wanted: u64, held: u64) -> BudgetExceeded {
        let refusal = BudgetExceeded { what, wanted, held, cap: self.cap };
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| refusal.to_string());
        refusal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_up_to_the_cap_and_refuses_past_it_holding_nothing() {
        let budget = HostBudget::new(100);
        budget.charge("a", 60).unwrap();
        let refused = budget.charge("a child", 41).unwrap_err();
        assert_eq!((refused.what, refused.wanted, refused.held, refused.cap), ("a child", 41, 60, 100));
        assert_eq!(budget.held(), 60, "a refused charge holds nothing");
        budget.charge("b", 40).unwrap();
        assert_eq!((budget.held(), budget.peak()), (100, 100));
        assert!(budget.refusal().unwrap().contains("a child needs 41 more bytes while 60 are held"));
    }

    #[test]
    fn refunds_give_bytes_back_and_never_underflow() {
        let budget = HostBudget::new(10);
        budget.charge("a", 10).unwrap();
        budget.refund(4);
        budget.charge("b", 4).unwrap();
        budget.refund(1_000);
        assert_eq!((budget.held(), budget.peak()), (0, 10));
    }

    #[test]
    fn transient_bytes_must_fit_beside_what_is_held_but_are_not_kept() {
        let budget = HostBudget::new(10);
        budget.charge("held", 6).unwrap();
        budget.fits("join results", 4).unwrap();
        assert!(budget.fits("join results", 5).is_err());
        assert_eq!(budget.held(), 6);
        assert_eq!(budget.peak(), 10);
    }

    #[test]
    fn the_first_refusal_is_the_one_recorded() {
        let budget = HostBudget::new(1);
        let _ = budget.charge("first", 2);
        let _ = budget.fits("second", 3);
        assert!(budget.refusal().unwrap().contains("first needs 2"));
    }
}
