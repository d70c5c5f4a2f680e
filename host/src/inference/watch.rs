//! Reloads the models file when it, or a model file it names, changes.
//! Events are debounced so a file being written is read once it is quiet;
//! the watch ends when the registry is dropped.

use super::Inner;
use notify::{RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How long the files must be quiet before a reload.
const QUIET: Duration = Duration::from_millis(300);

pub(super) fn start(inner: Weak<Inner>, file: PathBuf) -> Result<(), String> {
    let (tx, rx) = channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })
    .map_err(|e| format!("cannot watch the models file: {e}"))?;
    let dir = parent(&file);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    std::thread::Builder::new()
        .name("models-watch".into())
        .spawn(move || {
            let mut watched: BTreeSet<PathBuf> = BTreeSet::from([dir]);
            let mut due: Option<Instant> = None;
            loop {
                let wait = due.map_or(Duration::from_millis(500), |d| d.saturating_duration_since(Instant::now()));
                match rx.recv_timeout(wait) {
                    Ok(path) => {
                        let relevant =
                            path == file || inner.upgrade().is_some_and(|i| names(&i, &file).contains(&path));
                        if relevant {
                            due = Some(Instant::now() + QUIET);
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                    Err(RecvTimeoutError::Timeout) => {}
                }
                let Some(inner) = inner.upgrade() else { return };
                if due.is_some_and(|d| Instant::now() >= d) {
                    due = None;
                    let models = super::Models { inner };
                    let _ = models.reload();
                    // Watch the folders of the model files too.
                    for path in names(&models.inner, &file) {
                        let dir = parent(&path);
                        if watched.insert(dir.clone()) {
                            let _ = watcher.watch(&dir, RecursiveMode::NonRecursive);
                        }
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the models watcher: {e}"))?;
    Ok(())
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The model files the registry uses now.
fn names(inner: &Inner, file: &Path) -> BTreeSet<PathBuf> {
    let base = file.parent();
    let models = inner.models.read().unwrap_or_else(|e| e.into_inner());
    models.values().map(|m| m.spec.resolved_path(base)).collect()
}
