//! The bytes each tenant keeps in the store (task inputs, outputs and
//! transcripts), as this host counts them for `max_stored_bytes`: the last
//! whole count (the start-up scan, or the shared database's totals) plus
//! this host's own changes since. Hosts on a PostgreSQL database each add
//! their changes to the database's totals and read them back every beat
//! ([`StoredBytes::take_changes`], [`StoredBytes::sent`]), so each counts
//! what the others admitted, completed and deleted too.

use crate::sync::lock;
use std::collections::HashMap;
use std::sync::Mutex;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct StoredBytes(Mutex<Counts>);

#[derive(Debug, Default)]
struct Counts {
    /// The last whole count, by tenant.
    counted: HashMap<String, u64>,
    /// This host's changes since, not yet sent to the shared totals.
    changes: HashMap<String, i64>,
    /// Changes on their way to the shared totals (counted until the
    /// totals that hold them are read back).
    sending: HashMap<String, i64>,
}

impl StoredBytes {
    /// Counts `bytes` more kept by `tenant`.
    pub(crate) fn add(&self, tenant: &str, bytes: u64) {
        self.change(tenant, i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts `bytes` fewer kept by `tenant` (deleted).
    pub(crate) fn sub(&self, tenant: &str, bytes: u64) {
        self.change(tenant, -i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    fn change(&self, tenant: &str, by: i64) {
        if by != 0 {
            let mut counts = lock(&self.0);
            let change = counts.changes.entry(tenant.to_owned()).or_default();
            *change = change.saturating_add(by);
        }
    }

    /// The bytes `tenant` keeps, as counted here.
    pub(crate) fn of(&self, tenant: &str) -> u64 {
        let counts = lock(&self.0);
        let counted = i128::from(counts.counted.get(tenant).copied().unwrap_or(0));
        let change = |map: &HashMap<String, i64>| i128::from(map.get(tenant).copied().unwrap_or(0));
        let kept = counted + change(&counts.changes) + change(&counts.sending);
        u64::try_from(kept.max(0)).unwrap_or(u64::MAX)
    }

    /// A whole count, by tenant (the start-up scan): what it holds replaces
    /// the last one; changes since are kept.
    pub(crate) fn counted(&self, whole: HashMap<String, u64>) {
        lock(&self.0).counted = whole;
    }

    /// The changes to send: those still on their way from a send whose
    /// answer did not come (the same batch again, so the store can tell it
    /// added them already), else this host's changes since the last send,
    /// now on their way (still counted until [`sent`](Self::sent)).
    pub(crate) fn take_changes(&self) -> HashMap<String, i64> {
        let mut counts = lock(&self.0);
        if counts.sending.is_empty() {
            counts.sending = std::mem::take(&mut counts.changes);
        }
        counts.sending.clone()
    }

    /// The changes on their way were added to the shared totals, read
    /// back as `totals` (every tenant's, in the same transaction).
    pub(crate) fn sent(&self, totals: HashMap<String, u64>) {
        let mut counts = lock(&self.0);
        counts.sending.clear();
        counts.counted = totals;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_bytes_are_its_last_count_and_the_changes_since() {
        let bytes = StoredBytes::default();
        bytes.counted(HashMap::from([("a".to_owned(), 100)]));
        bytes.add("a", 50);
        bytes.sub("a", 30);
        bytes.add("b", 7);
        assert_eq!((bytes.of("a"), bytes.of("b"), bytes.of("c")), (120, 7, 0));
        bytes.sub("b", 10);
        assert_eq!(bytes.of("b"), 0, "never below nothing");
    }

    #[test]
    fn changes_on_their_way_count_until_the_totals_that_hold_them_are_read() {
        let bytes = StoredBytes::default();
        bytes.counted(HashMap::from([("a".to_owned(), 100)]));
        bytes.add("a", 50);
        let sending = bytes.take_changes();
        assert_eq!(sending, HashMap::from([("a".to_owned(), 50)]));
        bytes.add("a", 5);
        assert_eq!(bytes.of("a"), 155, "counted while on their way");
        // A send whose answer did not come: the same batch goes again,
        // what came since waits for the next.
        assert_eq!(bytes.take_changes(), sending);
        assert_eq!(bytes.of("a"), 155);
        // The totals read back hold them, and another host's 1,000 bytes.
        bytes.sent(HashMap::from([("a".to_owned(), 1150)]));
        assert_eq!(bytes.of("a"), 1155);
        assert_eq!(bytes.take_changes(), HashMap::from([("a".to_owned(), 5)]));
    }
}
