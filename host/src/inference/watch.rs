//! Reloads the models file when it, or a model file it names, changes,
//! through the shared debounced watcher ([`crate::watch`]); the watch ends
//! when the registry is dropped.

use super::Inner;
use crate::watch::{self, Watch, WatchError};
use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Weak;

pub(super) fn start(inner: Weak<Inner>, file: PathBuf) -> Result<Watch, WatchError> {
    let dir = parent(&file);
    std::fs::create_dir_all(&dir).map_err(|source| WatchError::Io { path: dir.clone(), source })?;
    let mut dirs = vec![dir];
    if let Some(inner) = inner.upgrade() {
        for path in names(&inner, &file) {
            let folder = parent(&path);
            if !dirs.contains(&folder) && folder.is_dir() {
                dirs.push(folder);
            }
        }
    }
    watch::start("models-watch", &dirs, Vec::new(), move |paths, folders| {
        let Some(inner) = inner.upgrade() else { return ControlFlow::Break(()) };
        let used = names(&inner, &file);
        if paths.iter().any(|p| *p == file || used.contains(p)) {
            let models = super::Models { inner };
            // A failed reload keeps what serves and records why (file_error).
            let _ = models.reload();
            // Watch the folders of the model files too.
            for path in names(&models.inner, &file) {
                folders.add(&parent(&path));
            }
        }
        ControlFlow::Continue(())
    })
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
    let models = crate::sync::read(&inner.models);
    models.values().map(|m| m.spec.resolved_path(base)).collect()
}
