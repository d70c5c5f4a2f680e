//! The watched plugins directory (`taskhost serve --plugins DIR`): a new or
//! changed `NAME.wasm` or `NAME@VERSION.wasm` goes live, and `NAME.toml`
//! sets NAME's manifest. Events are debounced per file, so a file written
//! in place, written then renamed, or still being written is read only once
//! it has been quiet for a moment. A half-written file that fails to load
//! is reported (`watch_error`) and tried again on its next change.

use super::{Engine, Manifest};
use notify::{RecursiveMode, Watcher};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a file must be quiet before it is read.
const QUIET: Duration = Duration::from_millis(300);

pub(crate) fn start(engine: Engine, dir: PathBuf) -> anyhow::Result<()> {
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let events = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            for path in event.paths {
                let _ = events.send(path);
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    // Files already there count as new.
    for entry in std::fs::read_dir(&dir)?.flatten() {
        let _ = tx.send(entry.path());
    }
    let slot = engine.clone();
    let handle = tokio::spawn(async move {
        let _watcher = watcher; // keep watching while this task lives
        let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
        let mut seen: HashMap<PathBuf, Vec<u8>> = HashMap::new();
        while !engine.inner.stopping.load(Ordering::SeqCst) {
            match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                Ok(Some(path)) => {
                    pending.insert(path, Instant::now());
                }
                Ok(None) => break,
                Err(_) => {}
            }
            let ready: Vec<PathBuf> =
                pending.iter().filter(|(_, at)| at.elapsed() >= QUIET).map(|(p, _)| p.clone()).collect();
            for path in ready {
                pending.remove(&path);
                process(&engine, &path, &mut seen).await;
            }
        }
    });
    *super::lock(&slot.inner.watcher) = Some(handle);
    Ok(())
}

/// What a file name asks for: (plugin name, explicit version, is manifest).
fn classify(path: &Path) -> Option<(String, Option<String>, bool)> {
    let file = path.file_name()?.to_str()?;
    if file.starts_with('.') {
        return None; // editors' and writers' temporary files
    }
    if let Some(stem) = file.strip_suffix(".toml") {
        return Some((stem.to_owned(), None, true));
    }
    let stem = file.strip_suffix(".wasm")?;
    Some(match stem.split_once('@') {
        Some((name, version)) => (name.to_owned(), Some(version.to_owned()), false),
        None => (stem.to_owned(), None, false),
    })
}

async fn process(engine: &Engine, path: &Path, seen: &mut HashMap<PathBuf, Vec<u8>>) {
    let Some((name, version, is_manifest)) = classify(path) else { return };
    let Ok(bytes) = std::fs::read(path) else {
        return; // removed or renamed away: nothing to load
    };
    if seen.get(path) == Some(&bytes) {
        return;
    }
    let registry = &engine.inner.registry;
    let outcome = if is_manifest {
        match std::str::from_utf8(&bytes).map_err(|e| e.to_string()).and_then(Manifest::parse) {
            Ok(manifest) => engine.set_manifest(&name, Some(manifest)).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        }
    } else {
        engine.add_plugin(&name, bytes.clone(), version, true).await.map(|_| ()).map_err(|e| e.to_string())
    };
    match outcome {
        Ok(()) => {
            tracing::info!(file = %path.display(), "loaded from the plugins directory");
            registry.set_watch_error(&name, None);
            seen.insert(path.to_owned(), bytes);
        }
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "could not load from the plugins directory");
            registry.set_watch_error(&name, Some(format!("{}: {error}", path.display())));
        }
    }
}
