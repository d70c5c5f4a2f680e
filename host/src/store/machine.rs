//! The task state machine: the one table of allowed transitions.

use super::TaskState::{self, *};

/// Every allowed `(from, to)` transition, and why it exists.
pub(crate) const TRANSITIONS: &[(TaskState, TaskState, &str)] = &[
    (Pending, Running, "a worker starts the task"),
    (Pending, Cancelled, "cancelled before it ran"),
    (Pending, Failed, "the host cannot start it: what it waits for cannot be read"),
    (Running, Completed, "the plugin returned an output"),
    (Running, Failed, "permanent failure or attempts exhausted"),
    (Running, Retrying, "retryable failure; waiting out the backoff"),
    (Running, Cancelled, "cancelled while running"),
    (Running, Pending, "recovered after the host died mid-run, or claimed but not started before the host stopped"),
    (Retrying, Running, "the backoff elapsed; a worker starts the next attempt"),
    (Retrying, Cancelled, "cancelled while waiting to retry"),
    (Failed, Pending, "re-submitted from the dead-letter set"),
];

/// Whether `from → to` is in [`TRANSITIONS`].
pub(crate) fn allowed(from: TaskState, to: TaskState) -> bool {
    TRANSITIONS.iter().any(|&(f, t, _)| f == from && t == to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_only_leave_by_resubmission() {
        for to in TaskState::ALL {
            assert!(!allowed(Completed, to), "completed -> {to}");
            assert!(!allowed(Cancelled, to), "cancelled -> {to}");
            assert_eq!(allowed(Failed, to), to == Pending, "failed -> {to}");
        }
    }

    #[test]
    fn no_self_transitions_and_no_duplicates() {
        for (i, &(from, to, _)) in TRANSITIONS.iter().enumerate() {
            assert_ne!(from, to);
            assert!(!TRANSITIONS[i + 1..].iter().any(|&(f, t, _)| f == from && t == to));
        }
    }
}
