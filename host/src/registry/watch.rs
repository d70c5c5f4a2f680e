//! The watched plugins directory (`taskhost serve --plugins DIR`): a new or
//! changed `NAME.wasm` or `NAME@VERSION.wasm` (a component) or `NAME.js`,
//! `NAME.mjs` or `NAME.py` (a script) goes live, and `NAME.toml` sets
//! NAME's manifest. Changes arrive debounced from the shared watcher
//! ([`crate::watch`]), so each file is read once it has been quiet for a
//! moment. A half-written file that fails to load is reported
//! (`watch_error`) and tried again on its next change. A file is opened
//! without waiting (`O_NONBLOCK`) and checked before anything is read: only
//! a regular file of at most the plugin (or manifest) limit is read, so a
//! FIFO, socket, device or directory named `x.wasm`, or a huge sparse file,
//! is skipped with a warning and never holds the loader or shutdown. Files
//! are read on tokio's blocking pool, components straight into a staging
//! file; what was loaded is remembered by digest, not by content.

use super::{MAX_PLUGIN_BYTES, Manifest, Registry};
use crate::sandbox::{Language, MAX_SCRIPT_BYTES};
use crate::sync::blocking;
use crate::watch::{self, Watch, WatchError};
use std::collections::HashMap;
use std::io::Read as _;
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
        let mut seen: HashMap<PathBuf, String> = HashMap::new();
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

/// What a watched file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `NAME.toml`: a manifest.
    Manifest,
    /// `NAME[@VERSION].wasm`: a component.
    Component,
    /// `NAME[@VERSION].js` (or `.mjs`, `.py`): a script.
    Script(Language),
}

/// What a file name asks for: (plugin name, explicit version, kind).
fn classify(path: &Path) -> Option<(String, Option<String>, Kind)> {
    let file = path.file_name()?.to_str()?;
    if file.starts_with('.') {
        return None; // editors' and writers' temporary files
    }
    if let Some(stem) = file.strip_suffix(".toml") {
        return Some((stem.to_owned(), None, Kind::Manifest));
    }
    let (stem, kind) = match file.strip_suffix(".wasm") {
        Some(stem) => (stem, Kind::Component),
        None => {
            let language = Language::from_file_name(file)?;
            (file.rsplit_once('.')?.0, Kind::Script(language))
        }
    };
    Some(match stem.split_once('@') {
        Some((name, version)) => (name.to_owned(), Some(version.to_owned()), kind),
        None => (stem.to_owned(), None, kind),
    })
}

/// Largest manifest (`NAME.toml`) read from the directory.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Why a watched file was not read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("it is gone")]
    Gone,
    #[error("it is {0}, not a regular file; only regular files are loaded")]
    NotAFile(&'static str),
    #[error("it is {size} bytes; the limit is {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Registry(#[from] super::RegistryError),
}

/// What kind of file a non-regular file is, for the operator.
fn kind(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() || file_type.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// A regular file of at most `limit` bytes, or why not.
fn check(metadata: &std::fs::Metadata, limit: u64) -> Result<(), ReadError> {
    if !metadata.file_type().is_file() {
        return Err(ReadError::NotAFile(kind(metadata.file_type())));
    }
    if metadata.len() > limit {
        return Err(ReadError::TooLarge { size: metadata.len(), limit });
    }
    Ok(())
}

/// Opens a watched file without ever waiting on it: its type and size are
/// checked first (`stat` never blocks), then it is opened with
/// `O_NONBLOCK` (a FIFO swapped in meanwhile opens at once) and what was
/// opened is checked again. Blocking: call it on the blocking pool.
fn open_regular(path: &Path, limit: u64) -> Result<std::fs::File, ReadError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let gone_or =
        |e: std::io::Error| if e.kind() == std::io::ErrorKind::NotFound { ReadError::Gone } else { ReadError::Io(e) };
    check(&std::fs::metadata(path).map_err(gone_or)?, limit)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(gone_or)?;
    check(&file.metadata()?, limit)?;
    Ok(file)
}

/// A watched file, read and checked.
enum Content {
    /// A component, staged (not in memory) with its digest.
    Component(super::Staged),
    /// A manifest's text.
    Manifest(Vec<u8>),
}

/// Reads a watched file on the blocking pool, never waiting on what is not
/// a regular file and never reading more than a plugin or manifest may be.
async fn read_checked(registry: &Arc<Registry>, path: &Path, kind: Kind) -> Result<Content, ReadError> {
    let path = path.to_owned();
    if kind == Kind::Manifest {
        return blocking(move || {
            let file = open_regular(&path, MAX_MANIFEST_BYTES)?;
            let mut text = Vec::new();
            file.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut text)?;
            Ok(Content::Manifest(text))
        })
        .await;
    }
    let staging = registry.staging().await?;
    let limit = if kind == Kind::Component { MAX_PLUGIN_BYTES } else { MAX_SCRIPT_BYTES };
    blocking(move || {
        let file = open_regular(&path, limit as u64)?;
        Ok(Content::Component(staging.fill_from(file)?))
    })
    .await
}

/// Adds a watched file's version, waiting while uploads fill the compile
/// queue (a file in the directory is not a request that can be refused).
async fn add_waiting(
    registry: &Arc<Registry>,
    name: &str,
    staged: super::Staged,
    version: Option<String>,
    script: Option<Language>,
) -> Result<(), String> {
    let slot = registry.reserve_waiting().await;
    registry.add_staged(slot, name, staged, version, true, script).await.map(drop).map_err(|e| e.to_string())
}

async fn process(registry: &Arc<Registry>, path: &Path, seen: &mut HashMap<PathBuf, String>) {
    let Some((name, version, kind)) = classify(path) else { return };
    if crate::engine::is_ad_hoc_plugin(&name) {
        tracing::warn!(file = %path.display(), "ignored: `{name}` is reserved for ad-hoc scripts");
        return;
    }
    let content = match read_checked(registry, path, kind).await {
        Ok(content) => content,
        Err(ReadError::Gone) => {
            seen.remove(path); // removed or renamed away: nothing to load
            return;
        }
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "skipping a file in the plugins directory");
            registry.set_watch_error(&name, Some(format!("{}: {error}", path.display())));
            return;
        }
    };
    let digest = match &content {
        Content::Manifest(text) => super::sha256_hex(text),
        Content::Component(staged) => staged.digest.clone(),
    };
    if seen.get(path) == Some(&digest) {
        return;
    }
    let outcome = match content {
        Content::Manifest(bytes) => {
            match std::str::from_utf8(&bytes).map_err(|e| e.to_string()).and_then(Manifest::parse) {
                Ok(manifest) => registry.set_manifest(&name, Some(manifest)).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            }
        }
        Content::Component(staged) => {
            let script = match kind {
                Kind::Script(language) => Some(language),
                _ => None,
            };
            add_waiting(registry, &name, staged, version, script).await
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_opened_and_nothing_waits() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.wasm");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; creates a FIFO in our own directory.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        assert!(matches!(open_regular(&fifo, 10), Err(ReadError::NotAFile("a FIFO"))));
        std::fs::create_dir(dir.path().join("folder.wasm")).unwrap();
        assert!(matches!(open_regular(&dir.path().join("folder.wasm"), 10), Err(ReadError::NotAFile("a directory"))));
        let sparse = dir.path().join("sparse.wasm");
        std::fs::File::create(&sparse).unwrap().set_len(1 << 30).unwrap();
        assert!(matches!(open_regular(&sparse, 10), Err(ReadError::TooLarge { size: 1073741824, limit: 10 })));
        assert!(matches!(open_regular(&dir.path().join("gone.wasm"), 10), Err(ReadError::Gone)));
        let fine = dir.path().join("fine.wasm");
        std::fs::write(&fine, b"0123456789").unwrap();
        let mut text = String::new();
        open_regular(&fine, 10).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "0123456789");
    }

    #[test]
    fn file_names_say_what_they_hold() {
        let kind = |name: &str| classify(Path::new(name));
        assert_eq!(kind("/p/resize.wasm"), Some(("resize".into(), None, Kind::Component)));
        assert_eq!(kind("/p/resize@2.0.wasm"), Some(("resize".into(), Some("2.0".into()), Kind::Component)));
        assert_eq!(kind("/p/transform.js"), Some(("transform".into(), None, Kind::Script(Language::JavaScript))));
        assert_eq!(kind("/p/t@2.mjs"), Some(("t".into(), Some("2".into()), Kind::Script(Language::JavaScript))));
        assert_eq!(kind("/p/report.py"), Some(("report".into(), None, Kind::Script(Language::Python))));
        assert_eq!(kind("/p/resize.toml"), Some(("resize".into(), None, Kind::Manifest)));
        assert_eq!(kind("/p/.transform.js.swp"), None);
        assert_eq!(kind("/p/notes.txt"), None);
    }
}
