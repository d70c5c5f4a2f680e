//! Opening the store file. Only a missing file starts a new store, and it
//! is built under a temporary name and renamed into place once initialised,
//! so a crash never leaves an empty file behind. An existing file is
//! verified page by page (redb's integrity check, about a second per GB,
//! [`verify`]) through a second handle while the first reads it: nothing
//! is written to the file before the check passed (its writes wait behind
//! a [`Gate`]), and what was read is trusted only then. A damaged, empty
//! or foreign file ends the open with [`StoreError::Damaged`] naming it and
//! what to do, never a panic, and is never replaced or silently repaired.
//! After a write fault the file is reopened without the check (redb's
//! commits are atomic).

use super::StoreError;
use super::gate::Gate;
use redb::{Builder, Database, DatabaseError, StorageError};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What happened to the file on open.
#[derive(Debug)]
pub(crate) enum Opened {
    /// There was no file: a new, empty store was created (and checked).
    Created,
    /// An existing file was opened behind its gate, still to be checked.
    Existing(Arc<Gate>),
}

/// Opens the store at `path` (see the module docs); `init` initialises a
/// new file's schema inside its first transaction.
pub(crate) fn open_file(
    path: &Path,
    init: impl FnOnce(&Database) -> Result<(), StoreError>,
) -> Result<(Database, Opened), StoreError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create(path, init)?;
            Ok((verified(path)?, Opened::Created))
        }
        Err(e) => Err(StoreError::Storage(e.into())),
        Ok(meta) if !meta.is_file() => Err(damaged(path, "is not a regular file")),
        Ok(meta) if meta.len() == 0 => Err(damaged(
            path,
            "is empty (0 bytes), so it holds no store although one was expected here; if this data directory \
             never held tasks, delete the empty file to start a new store",
        )),
        Ok(_) => {
            let gate = Gate::open(path).map_err(|e| open_error(path, e))?;
            let db = guarded(path, || Builder::new().set_cache_size(CACHE_BYTES).create_with_backend(gate.backend()))?;
            Ok((db, Opened::Existing(gate)))
        }
    }
}

/// The most memory redb's page cache may hold. Its default (1 GiB) kept a
/// whole 1,000,000-task store in memory after the start-up scan (RSS
/// 1 GiB); the hot pages (new tasks, indexes) fit in far less, and the
/// kernel's page cache still serves the rest.
pub(crate) const CACHE_BYTES: usize = 256 << 20;

/// Opens an existing file after a write fault: no integrity check (the
/// fault left redb's last commit intact), still never a panic.
pub(crate) fn reopen(path: &Path) -> Result<Database, StoreError> {
    guarded(path, || Builder::new().set_cache_size(CACHE_BYTES).open(path))
}

/// Opens an existing file, verifying every page first (and repairing what
/// redb's check repairs): the open a start falls back on when [`verify`]
/// finds the file needed a repair.
pub(crate) fn verified(path: &Path) -> Result<Database, StoreError> {
    guarded(path, || Builder::new().set_cache_size(CACHE_BYTES).set_check_integrity_on_open(true).open(path))
}

/// The page cache of [`verify`]'s handle: it reads each page once.
const VERIFY_CACHE_BYTES: usize = 16 << 20;

/// What [`verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verified {
    /// Every page verifies, and the allocator state recorded in the file
    /// (which the gated handle loaded) is the one a rebuild gives.
    Clean,
    /// The pages verify, but redb's check had to repair something (the
    /// recorded allocator state, a torn last commit): the gated handle
    /// must not write; open the file with [`verified`] instead.
    Repaired,
}

/// Runs redb's integrity check on the store file behind `gate` through a
/// second handle of it that takes no locks and keeps its own writes (a
/// repair, if one is needed) in memory. The handle opens as the gated one
/// did, loading the allocator state recorded in the file, and
/// [`Database::check_integrity`] compares that with the one it rebuilds.
/// A damaged file is [`StoreError::Damaged`].
pub(crate) fn verify(path: &Path, gate: &Gate) -> Result<Verified, StoreError> {
    let twin = gate.twin().map_err(|e| open_error(path, e))?;
    let mut db = guarded(path, || Builder::new().set_cache_size(VERIFY_CACHE_BYTES).create_with_backend(twin))?;
    let clean = guarded(path, || db.check_integrity());
    // Its close commits to memory only, and may read what the check found
    // damaged: kept quiet too.
    let _ = quietly(move || drop(db));
    Ok(if clean? { Verified::Clean } else { Verified::Repaired })
}

/// Runs `work`, catching a panic (redb's, on a damaged file) without the
/// panic hook printing it: the caller reports it as an error.
pub(crate) fn quietly<T>(work: impl FnOnce() -> T) -> std::thread::Result<T> {
    thread_local! {
        static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = catch_unwind(AssertUnwindSafe(work));
    QUIET.with(|q| q.set(was));
    result
}

/// Runs a redb open (or check) of `path`, turning its errors and panics
/// into the store's.
pub(crate) fn guarded<T>(path: &Path, work: impl FnOnce() -> Result<T, DatabaseError>) -> Result<T, StoreError> {
    match quietly(work) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(open_error(path, e)),
        Err(panic) => Err(damaged(path, &format!("cannot be read: redb failed on it ({})", panic_message(&panic)))),
    }
}

/// The text of a caught panic.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// A redb open error as the store's.
pub(crate) fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::InUse { path: path.to_owned() }
        }
        DatabaseError::Storage(StorageError::Corrupted(detail)) => damaged(path, &format!("is damaged: {detail}")),
        DatabaseError::Storage(StorageError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            damaged(path, &format!("is not a taskhost store: {e}"))
        }
        other => StoreError::Storage(other.into()),
    }
}

pub(crate) fn damaged(path: &Path, problem: &str) -> StoreError {
    StoreError::Damaged { path: path.to_owned(), problem: problem.to_owned() }
}

/// A file beside `path` with `suffix` added to its name.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Builds a new store at a temporary name, then renames it into place, so
/// `path` only ever names a complete store.
fn create(path: &Path, init: impl FnOnce(&Database) -> Result<(), StoreError>) -> Result<(), StoreError> {
    let temporary = sibling(path, ".creating");
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::Storage(e.into())),
    }
    let db = guarded(&temporary, || Builder::new().create(&temporary))?;
    init(&db)?;
    db.close().map_err(|e| StoreError::Storage(e.into()))?;
    std::fs::rename(&temporary, path).map_err(|e| StoreError::Storage(e.into()))?;
    sync_dir(path)
}

/// Makes a rename in `path`'s directory durable.
pub(crate) fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::Storage(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_file_creates_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (db, opened) = open_file(&path, |_| Ok(())).unwrap();
        assert!(matches!(opened, Opened::Created));
        assert!(!sibling(&path, ".creating").exists(), "the temporary file was renamed into place");
        drop(db);
        let opened = open_file(&path, |_| panic!("an existing file is not initialised")).unwrap().1;
        assert!(matches!(opened, Opened::Existing(_)));

        let empty = dir.path().join("empty.redb");
        std::fs::write(&empty, b"").unwrap();
        let e = open_file(&empty, |_| Ok(())).unwrap_err();
        assert!(matches!(&e, StoreError::Damaged { path, .. } if path == &empty), "{e}");
        assert!(e.to_string().contains("empty") && e.to_string().contains("taskhost store repair"), "{e}");
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0, "the empty file is left as it was");

        let foreign = dir.path().join("foreign.redb");
        std::fs::write(&foreign, vec![7u8; 8192]).unwrap();
        let e = open_file(&foreign, |_| Ok(())).unwrap_err();
        assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
        assert_eq!(std::fs::read(&foreign).unwrap(), vec![7u8; 8192], "a foreign file is never overwritten");
    }

    #[test]
    fn a_failed_first_start_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let e = open_file(&path, |_| Err(StoreError::Refused("init failed".into()))).unwrap_err();
        assert!(matches!(e, StoreError::Refused(_)), "{e}");
        assert!(!path.exists(), "only a complete store is ever renamed into place");
        // The next start creates the store.
        assert!(matches!(open_file(&path, |_| Ok(())).unwrap().1, Opened::Created));
    }

    #[test]
    fn a_second_opener_is_told_the_file_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let _first = open_file(&path, |_| Ok(())).unwrap();
        let e = open_file(&path, |_| Ok(())).unwrap_err();
        assert!(matches!(e, StoreError::InUse { .. }), "{e}");
    }
}
