//! Bounded label values for metric families whose label values come from
//! what clients and plugins name (plugin versions, models): the first
//! values seen keep their own series, later ones share one series
//! labelled [`OTHER`], so `/metrics` stays bounded whatever is named.

use crate::sync::lock;
use std::collections::HashSet;
use std::sync::Mutex;

/// The label value every value past the budget is counted under. No name
/// can be it: names start with a letter or digit.
pub(crate) const OTHER: &str = "_other";

/// At most `max` distinct label values; see the module docs.
#[derive(Debug)]
pub(crate) struct LabelBudget {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl LabelBudget {
    pub(crate) fn new(max: usize) -> Self {
        Self { max, seen: Mutex::default() }
    }

    /// Whether `value` has (or now gets) a series of its own.
    pub(crate) fn admits(&self, value: &str) -> bool {
        let mut seen = lock(&self.seen);
        if seen.contains(value) {
            return true;
        }
        if seen.len() >= self.max {
            return false;
        }
        seen.insert(value.to_owned());
        true
    }

    /// `value`, or [`OTHER`] past the budget.
    pub(crate) fn label<'a>(&self, value: &'a str) -> &'a str {
        if self.admits(value) { value } else { OTHER }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_values_keep_their_label_and_later_ones_share_one() {
        let budget = LabelBudget::new(2);
        assert_eq!((budget.label("a"), budget.label("b"), budget.label("a")), ("a", "b", "a"));
        assert_eq!((budget.label("c"), budget.label("d")), (OTHER, OTHER));
        assert!(budget.admits("b") && !budget.admits("c"));
        assert!(crate::names::name(crate::names::NameKind::Model, OTHER).is_err(), "no name is the overflow label");
    }
}
