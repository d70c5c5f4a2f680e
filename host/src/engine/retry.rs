//! Retry policy: which failure classes are retried, and the backoff
//! (exponential with full jitter) between attempts.

use crate::FailureClass;
use std::time::Duration;

/// Backoff between attempts: attempt `n` (1-based) waits a uniformly random
/// time in `[0, min(cap, base · 2^(n-1))]` ("full jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Backoff base. Default 1 s.
    pub base: Duration,
    /// Longest backoff. Default 5 min.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { base: Duration::from_secs(1), cap: Duration::from_secs(300) }
    }
}

impl RetryPolicy {
    /// The upper bound of the backoff after `attempt` failed attempts.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A jittered backoff after `attempt` failed attempts.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(fastrand::u64(0..=ceiling))
    }
}

/// Whether a failure of this class is worth another attempt.
///
/// | class | retried | why |
/// |---|---|---|
/// | plugin error (retryable) | yes | the plugin said so |
/// | plugin error (permanent) | no | the plugin said so |
/// | trap | yes | may be transient (a bug hit by timing, a host call that failed) |
/// | timeout | yes | the machine may have been busy |
/// | host error | yes | the host lacked capacity |
/// | input fetch failed | yes | the input's server may be back; each attempt fetches anew |
/// | fuel exhausted, memory limit exceeded, stack overflow, output too large, host budget exceeded | no | deterministic: the same input hits the same limit |
/// | invalid plugin, cancelled | no | retrying cannot help / was asked to stop |
pub fn is_retried(class: FailureClass, plugin_said_retryable: bool) -> bool {
    match class {
        FailureClass::PluginError => plugin_said_retryable,
        FailureClass::Trap | FailureClass::Timeout | FailureClass::HostError | FailureClass::InputFetchFailed => true,
        FailureClass::FuelExhausted
        | FailureClass::MemoryLimitExceeded
        | FailureClass::StackOverflow
        | FailureClass::OutputTooLarge
        | FailureClass::HostBudgetExceeded
        | FailureClass::InvalidPlugin
        | FailureClass::Cancelled => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let p = RetryPolicy { base: Duration::from_millis(100), cap: Duration::from_secs(1) };
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(4), Duration::from_millis(800));
        assert_eq!(p.ceiling(5), Duration::from_secs(1));
        assert_eq!(p.ceiling(100), Duration::from_secs(1));
    }

    #[test]
    fn backoff_is_jittered_within_bounds() {
        let p = RetryPolicy { base: Duration::from_millis(100), cap: Duration::from_secs(10) };
        let samples: Vec<_> = (0..200).map(|_| p.backoff(3)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(400)));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 50, "backoff is not jittered: {distinct:?}");
    }

    #[test]
    fn deterministic_failures_are_not_retried() {
        assert!(is_retried(FailureClass::PluginError, true));
        assert!(!is_retried(FailureClass::PluginError, false));
        assert!(is_retried(FailureClass::Timeout, false));
        assert!(!is_retried(FailureClass::FuelExhausted, false));
        assert!(!is_retried(FailureClass::InvalidPlugin, false));
    }
}
