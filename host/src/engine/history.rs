//! Run history per plugin version: run time, peak linear memory and peak
//! host bytes of its last [`KEPT`] attempts, kept in memory since the host
//! started, and shown with the plugin (`GET /v1/plugins/{name}`). At most
//! [`MAX_VERSIONS`] versions are kept; past that the one that ran least
//! recently is forgotten.

use crate::sync::lock;
use crate::wire::RunStats;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Attempts kept per version.
pub(crate) const KEPT: usize = 256;

/// Versions kept.
pub(crate) const MAX_VERSIONS: usize = 4_096;

#[derive(Debug, Clone, Copy)]
struct Run {
    micros: u64,
    memory: u64,
    host_bytes: u64,
}

#[derive(Debug, Default)]
struct Version {
    runs: u64,
    recent: VecDeque<Run>,
    /// When it last ran, as a count of runs recorded by the history.
    last: u64,
}

/// The history of every version that ran since the host started.
#[derive(Debug, Default)]
pub(crate) struct History {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// By plugin, then version: found without allocating a key.
    plugins: HashMap<String, HashMap<String, Version>>,
    versions: usize,
    clock: u64,
}

impl Inner {
    /// Forgets the version that ran least recently.
    fn forget_oldest(&mut self) {
        let oldest = self
            .plugins
            .iter()
            .flat_map(|(p, vs)| vs.iter().map(move |(v, entry)| (entry.last, p, v)))
            .min_by_key(|(last, _, _)| *last)
            .map(|(_, p, v)| (p.clone(), v.clone()));
        if let Some((plugin, version)) = oldest
            && let Some(versions) = self.plugins.get_mut(&plugin)
        {
            versions.remove(&version);
            self.versions -= 1;
            if versions.is_empty() {
                self.plugins.remove(&plugin);
            }
        }
    }
}

impl History {
    /// Records one attempt that ran.
    pub(crate) fn record(&self, plugin: &str, version: &str, secs: f64, memory: u64, host_bytes: u64) {
        let mut inner = lock(&self.inner);
        inner.clock += 1;
        let clock = inner.clock;
        let known = inner.plugins.get(plugin).is_some_and(|vs| vs.contains_key(version));
        if !known {
            if inner.versions >= MAX_VERSIONS {
                inner.forget_oldest();
            }
            inner.plugins.entry(plugin.to_owned()).or_default().insert(version.to_owned(), Version::default());
            inner.versions += 1;
        }
        let entry = inner.plugins.get_mut(plugin).and_then(|vs| vs.get_mut(version)).expect("present or just added");
        entry.runs += 1;
        entry.last = clock;
        if entry.recent.len() == KEPT {
            entry.recent.pop_front();
        }
        entry.recent.push_back(Run { micros: (secs * 1e6) as u64, memory, host_bytes });
    }

    /// The figures of one version, if it ran since the host started.
    pub(crate) fn stats(&self, plugin: &str, version: &str) -> Option<RunStats> {
        let inner = lock(&self.inner);
        let entry = inner.plugins.get(plugin)?.get(version)?;
        let mut micros: Vec<u64> = entry.recent.iter().map(|r| r.micros).collect();
        let mut memory: Vec<u64> = entry.recent.iter().map(|r| r.memory).collect();
        micros.sort_unstable();
        memory.sort_unstable();
        let at = |sorted: &[u64], q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        let ms = |us: u64| us as f64 / 1000.0;
        Some(RunStats {
            runs: entry.runs,
            recent: entry.recent.len(),
            run_ms_p50: ms(at(&micros, 0.5)),
            run_ms_p95: ms(at(&micros, 0.95)),
            run_ms_max: ms(at(&micros, 1.0)),
            memory_bytes_p50: at(&memory, 0.5),
            memory_bytes_max: at(&memory, 1.0),
            host_bytes_max: entry.recent.iter().map(|r| r.host_bytes).max().unwrap_or(0),
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let inner = lock(&self.inner);
        assert_eq!(inner.versions, inner.plugins.values().map(HashMap::len).sum::<usize>());
        inner.versions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_runs_of_each_version_with_their_quantiles() {
        let history = History::default();
        assert!(history.stats("p", "1").is_none());
        for n in 1..=300u64 {
            history.record("p", "1", n as f64 / 1000.0, n << 20, 7);
        }
        history.record("p", "2", 0.5, 1, 1);
        let stats = history.stats("p", "1").unwrap();
        assert_eq!((stats.runs, stats.recent), (300, KEPT));
        // The kept runs are 45..=300 ms.
        assert_eq!(stats.run_ms_max, 300.0);
        assert_eq!(stats.run_ms_p50, 173.0);
        assert_eq!(stats.memory_bytes_max, 300 << 20);
        assert_eq!(stats.host_bytes_max, 7);
        assert_eq!(history.stats("p", "2").unwrap().runs, 1);
    }

    #[test]
    fn forgets_the_version_that_ran_least_recently_past_the_bound() {
        let history = History::default();
        for n in 0..MAX_VERSIONS {
            history.record("p", &n.to_string(), 0.001, 0, 0);
        }
        history.record("p", "0", 0.001, 0, 0);
        history.record("q", "1", 0.001, 0, 0);
        assert_eq!(history.len(), MAX_VERSIONS);
        assert!(history.stats("p", "0").is_some(), "ran recently");
        assert!(history.stats("p", "1").is_none(), "ran least recently");
        assert!(history.stats("q", "1").is_some());
    }
}
