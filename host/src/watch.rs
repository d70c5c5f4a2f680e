//! The one debounced file watcher, shared by the plugins directory and the
//! models file: watches folders (not recursively) and hands over each
//! changed path once it has been quiet for `QUIET` (300 ms), so a file written in
//! place, written then renamed, or still being written is read once. It
//! runs on its own thread (no async worker waits on it) and stops when its
//! handle is dropped or its callback says so.

use notify::{RecursiveMode, Watcher as _};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// The folder to watch for changes to `file` (`.` for a bare name).
pub(crate) fn folder_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// How long a path must be quiet before it is handed over.
pub(crate) const QUIET: Duration = Duration::from_millis(300);

/// Most paths waiting out their quiet time at once; changes to further
/// paths are dropped (with a warning) until some are handed over.
pub(crate) const MAX_PENDING: usize = 4096;

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The operating system's watch facility refused.
    #[error("cannot watch {path}: {source}")]
    Notify {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: notify::Error,
    },
    /// A folder to watch could not be read or created.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// What should be a folder is not one.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// The watcher thread could not start.
    #[error("cannot start the watcher thread: {0}")]
    Thread(std::io::Error),
}

/// Adds folders to a running watch (from its callback).
pub(crate) struct Folders<'a> {
    watcher: &'a mut notify::RecommendedWatcher,
    watched: &'a mut Vec<PathBuf>,
}

impl Folders<'_> {
    /// Watches `dir` too, once.
    pub(crate) fn add(&mut self, dir: &Path) {
        if self.watched.iter().any(|d| d == dir) {
            return;
        }
        match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => self.watched.push(dir.to_path_buf()),
            Err(error) => tracing::warn!(dir = %dir.display(), %error, "cannot watch"),
        }
    }
}

/// A running watch; dropping it stops the thread within a poll interval.
#[derive(Debug)]
pub(crate) struct Watch {
    stop: Arc<AtomicBool>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Watches `dirs`; `initial` paths count as changed at once. `on_quiet`
/// gets each batch of paths that have been quiet for [`QUIET`] (on the
/// watcher's thread) and ends the watch by returning `Break`.
pub(crate) fn start(
    name: &str,
    dirs: &[PathBuf],
    initial: Vec<PathBuf>,
    mut on_quiet: impl FnMut(Vec<PathBuf>, &mut Folders<'_>) -> ControlFlow<()> + Send + 'static,
) -> Result<Watch, WatchError> {
    let (tx, rx) = channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) => {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
        Err(error) => tracing::warn!(%error, "file watch error"),
    })
    .map_err(|source| WatchError::Notify { path: dirs.first().cloned().unwrap_or_default(), source })?;
    let mut watched = Vec::new();
    for dir in dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Notify { path: dir.clone(), source })?;
        watched.push(dir.clone());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
            let now = Instant::now() - QUIET;
            for path in initial {
                pending.insert(path, now);
            }
            let poll = Duration::from_millis(100);
            while !stopped.load(Ordering::SeqCst) {
                let first_due = pending.values().min().map(|at| (*at + QUIET).saturating_duration_since(Instant::now()));
                match rx.recv_timeout(first_due.map_or(poll, |d| d.min(poll))) {
                    Ok(path) => {
                        if pending.len() >= MAX_PENDING && !pending.contains_key(&path) {
                            tracing::warn!(path = %path.display(), "too many changed files at once; ignoring this change");
                        } else {
                            pending.insert(path, Instant::now());
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                    Err(RecvTimeoutError::Timeout) => {}
                }
                let mut ready: Vec<PathBuf> =
                    pending.iter().filter(|(_, at)| at.elapsed() >= QUIET).map(|(p, _)| p.clone()).collect();
                if ready.is_empty() {
                    continue;
                }
                ready.sort();
                for path in &ready {
                    pending.remove(path);
                }
                let mut folders = Folders { watcher: &mut watcher, watched: &mut watched };
                if on_quiet(ready, &mut folders).is_break() {
                    return;
                }
            }
        })
        .map_err(WatchError::Thread)?;
    Ok(Watch { stop })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn a_path_is_handed_over_once_it_is_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let seen: Arc<Mutex<Vec<(PathBuf, Instant)>>> = Arc::default();
        let log = seen.clone();
        let existing = dir.path().join("before.txt");
        std::fs::write(&existing, b"x").unwrap();
        let _watch = start("test-watch", &[dir.path().to_path_buf()], vec![existing.clone()], move |paths, _| {
            log.lock().unwrap().extend(paths.into_iter().map(|p| (p, Instant::now())));
            ControlFlow::Continue(())
        })
        .unwrap();
        let file = dir.path().join("a.txt");
        let last_write = {
            for i in 0..5 {
                std::fs::write(&file, format!("{i}")).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
            Instant::now()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen.lock().unwrap().iter().any(|(p, _)| p == &file) {
            assert!(Instant::now() < deadline, "the change was never handed over");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(QUIET * 2);
        let seen = seen.lock().unwrap();
        let times: Vec<Instant> = seen.iter().filter(|(p, _)| p == &file).map(|(_, at)| *at).collect();
        assert_eq!(times.len(), 1, "five quick writes are one change: {seen:?}");
        assert!(times[0] >= last_write + QUIET - Duration::from_millis(60), "handed over before it was quiet");
        assert!(seen.iter().any(|(p, _)| p == &existing), "initial paths are handed over");
    }

    #[test]
    fn dropping_the_handle_stops_the_callbacks() {
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(Mutex::new(0));
        let counter = calls.clone();
        let watch = start("test-watch", &[dir.path().to_path_buf()], Vec::new(), move |_, _| {
            *counter.lock().unwrap() += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
        drop(watch);
        std::thread::sleep(Duration::from_millis(250));
        std::fs::write(dir.path().join("late.txt"), b"x").unwrap();
        std::thread::sleep(QUIET * 3);
        assert_eq!(*calls.lock().unwrap(), 0);
    }
}
