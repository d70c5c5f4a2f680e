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
    let dir = crate::watch::folder_of(&file);
    std::fs::create_dir_all(&dir).map_err(|source| WatchError::Io { path: dir.clone(), source })?;
    let mut dirs = vec![dir];
    if let Some(inner) = inner.upgrade() {
        for path in names(&inner, &file) {
            let folder = crate::watch::folder_of(&path);
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
                folders.add(&crate::watch::folder_of(&path));
            }
        }
        ControlFlow::Continue(())
    })
}

/// The model files the registry uses now.
fn names(inner: &Inner, file: &Path) -> BTreeSet<PathBuf> {
    let base = file.parent();
    let models = crate::sync::read(&inner.models);
    models.values().map(|m| m.spec.resolved_path(base)).collect()
}
