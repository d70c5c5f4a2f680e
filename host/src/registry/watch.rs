//! The watched plugins directory (`taskhost serve --plugins DIR`): a new or
//! changed `NAME.wasm` or `NAME@VERSION.wasm` goes live, and `NAME.toml`
//! sets NAME's manifest. Changes arrive debounced from the shared watcher
//! ([`crate::watch`]), so each file is read once it has been quiet for a
//! moment. A half-written file that fails to load is reported
//! (`watch_error`) and tried again on its next change. Files are read on
//! tokio's blocking pool; what was loaded is remembered by digest, not by
//! content.

use super::{MAX_PLUGIN_BYTES, Manifest, Registry};
use crate::watch::{self, Watch, WatchError};
use sha2_digest::{Digest, Sha256};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Batches of changed paths waiting for the loader; the watcher thread
/// waits when it is full.
const BATCHES: usize = 16;

/// A running directory watch: stop it by dropping `watch`, then await
/// `loader` (it ends once the watcher thread has let go of its channel).
#[derive(Debug)]
pub(crate) struct DirWatch {
    pub(crate) watch: Watch,
    pub(crate) loader: tokio::task::JoinHandle<()>,
}

/// Starts watching `dir`; files already there count as new.
pub(crate) fn start(registry: Arc<Registry>, dir: PathBuf) -> Result<DirWatch, WatchError> {
    if !dir.is_dir() {
        return Err(WatchError::NotADirectory(dir));
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<PathBuf>>(BATCHES);
    let watch = watch::start("plugins-watch", std::slice::from_ref(&dir), Vec::new(), move |paths, _| {
        match tx.blocking_send(paths) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    })?;
    // Listed once the watch runs, so a file written in between is seen
    // (twice at worst: the loader skips content it has loaded).
    let existing: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| WatchError::Io { path: dir.clone(), source })?
        .flatten()
        .map(|e| e.path())
        .collect();
    let loader = tokio::spawn(async move {
        let mut seen: HashMap<PathBuf, [u8; 32]> = HashMap::new();
        for path in existing {
            process(&registry, &path, &mut seen).await;
        }
        while let Some(paths) = rx.recv().await {
            for path in paths {
                process(&registry, &path, &mut seen).await;
            }
        }
    });
    Ok(DirWatch { watch, loader })
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

/// Reads a watched file, refusing one larger than any plugin may be.
async fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let size = tokio::fs::metadata(path).await?.len();
    if size > MAX_PLUGIN_BYTES as u64 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("the file is {size} bytes; the limit is {MAX_PLUGIN_BYTES}"),
        ));
    }
    tokio::fs::read(path).await
}

/// Adds a watched file's version, waiting while uploads fill the compile
/// queue (a file in the directory is not a request that can be refused).
async fn add_waiting(
    registry: &Arc<Registry>,
    name: &str,
    bytes: Vec<u8>,
    version: Option<String>,
) -> Result<(), String> {
    loop {
        match registry.add(name, bytes.clone(), version.clone(), true).await {
            Ok(_) => return Ok(()),
            Err(super::RegistryError::Busy) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn process(registry: &Arc<Registry>, path: &Path, seen: &mut HashMap<PathBuf, [u8; 32]>) {
    let Some((name, version, is_manifest)) = classify(path) else { return };
    let bytes = match read_bounded(path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            seen.remove(path); // removed or renamed away: nothing to load
            return;
        }
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "cannot read from the plugins directory");
            registry.set_watch_error(&name, Some(format!("{}: {error}", path.display())));
            return;
        }
    };
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    if seen.get(path) == Some(&digest) {
        return;
    }
    let outcome = if is_manifest {
        match std::str::from_utf8(&bytes).map_err(|e| e.to_string()).and_then(Manifest::parse) {
            Ok(manifest) => registry.set_manifest(&name, Some(manifest)).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        }
    } else {
        add_waiting(registry, &name, bytes, version).await
    };
    match outcome {
        Ok(()) => {
            tracing::info!(file = %path.display(), "loaded from the plugins directory");
            registry.set_watch_error(&name, None);
            seen.insert(path.to_owned(), digest);
        }
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "could not load from the plugins directory");
            registry.set_watch_error(&name, Some(format!("{}: {error}", path.display())));
        }
    }
}
