//! The store file while its integrity check runs beside a starting server's
//! first reads: held open and locked as redb's own backend holds it, read
//! as it is, and every write redb makes meanwhile (marking the file open,
//! after a crash its own recovery) kept in memory, in order, syncs included,
//! and seen by later reads. Once the check passed, [`Gate::release`] makes
//! those writes on the file in the order redb made them, each sync where
//! redb asked for it (so a crash during the release leaves what a crash
//! during those commits would have), and from then on every call goes
//! straight to the file. If the check fails, nothing ever reaches it: a
//! refused start leaves the file as it found it.

use super::backend::Overlay;
use crate::sync::lock;
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A write redb made while the gate was shut.
#[derive(Debug)]
enum Held {
    Write(u64, Vec<u8>),
    SetLen(u64),
    Sync,
}

/// The shared state of a gated store file (see the module docs).
#[derive(Debug)]
pub(crate) struct Gate {
    /// The file, with the held writes over it.
    overlay: Overlay,
    /// What redb wrote while shut, in order.
    held: Mutex<Vec<Held>>,
    open: AtomicBool,
    /// A second handle of the same open file, for the check (taken once).
    twin: Mutex<Option<std::fs::File>>,
}

impl Gate {
    /// The store file at `path`, shut.
    pub(crate) fn open(path: &Path) -> Result<Arc<Self>, redb::DatabaseError> {
        let (overlay, twin) = Overlay::open_with_twin(path)?;
        Ok(Arc::new(Self {
            overlay,
            held: Mutex::default(),
            open: AtomicBool::new(false),
            twin: Mutex::new(Some(twin)),
        }))
    }

    /// The file as it is on disk, read through a second handle of the
    /// same open file (the very file redb holds, whatever was renamed
    /// since), which takes no locks. Once only.
    pub(crate) fn twin(&self) -> Result<Overlay, redb::DatabaseError> {
        match lock(&self.twin).take() {
            Some(file) => Overlay::beside(file),
            None => Err(std::io::Error::other("the store file's second handle was taken already").into()),
        }
    }

    /// The backend redb opens the file through.
    pub(crate) fn backend(self: &Arc<Self>) -> GatedFile {
        GatedFile(self.clone())
    }

    /// Makes the held writes on the file, in order, and opens the gate.
    /// Run by the one writer before its first write. A failure (a full
    /// disk) leaves the file as a crash during those commits would have,
    /// which redb recovers on the next open; the gate stays shut, so this
    /// open of the store takes no write.
    pub(crate) fn release(&self) -> std::io::Result<()> {
        let mut held = lock(&self.held);
        if self.open.load(Ordering::Acquire) {
            return Ok(());
        }
        let file = self.file();
        for write in held.drain(..) {
            match write {
                Held::Write(offset, data) => file.write(offset, &data)?,
                Held::SetLen(len) => file.set_len(len)?,
                Held::Sync => file.sync_data()?,
            }
        }
        self.open.store(true, Ordering::Release);
        drop(held);
        self.overlay.forget_writes();
        Ok(())
    }

    fn file(&self) -> &FileBackend {
        self.overlay.file().expect("a gate's overlay is opened on the file's own backend")
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Holds `write` (and shows it to reads) while shut; `false` once open.
    fn hold(&self, write: Held) -> std::io::Result<bool> {
        let mut held = lock(&self.held);
        if self.is_open() {
            return Ok(false);
        }
        match &write {
            Held::Write(offset, data) => self.overlay.write(*offset, data)?,
            Held::SetLen(len) => self.overlay.set_len(*len)?,
            Held::Sync => {}
        }
        held.push(write);
        Ok(true)
    }
}

/// The [`StorageBackend`] of a gated file.
#[derive(Debug)]
pub(crate) struct GatedFile(Arc<Gate>);

impl StorageBackend for GatedFile {
    super::backend::forward_locks!(0.overlay);

    fn len(&self) -> Result<u64, std::io::Error> {
        if self.0.is_open() { self.0.file().len() } else { self.0.overlay.len() }
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        if self.0.is_open() { self.0.file().read(offset, out) } else { self.0.overlay.read(offset, out) }
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        if self.0.hold(Held::SetLen(len))? { Ok(()) } else { self.0.file().set_len(len) }
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        if self.0.hold(Held::Sync)? { Ok(()) } else { self.0.file().sync_data() }
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        if self.0.hold(Held::Write(offset, data.to_vec()))? { Ok(()) } else { self.0.file().write(offset, data) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase, TableDefinition};

    const T: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("t");

    fn file_with_one_entry() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.redb");
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(T).unwrap().insert(1, &b"one"[..]).unwrap();
        txn.commit().unwrap();
        (dir, path)
    }

    fn commit_two(db: &Database) {
        let txn = db.begin_write().unwrap();
        txn.open_table(T).unwrap().insert(2, &b"two"[..]).unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn a_shut_gate_writes_nothing_and_a_released_one_writes_everything_in_order() {
        let (_dir, path) = file_with_one_entry();
        let before = std::fs::read(&path).unwrap();
        {
            let gate = Gate::open(&path).unwrap();
            let db = redb::Builder::new().create_with_backend(gate.backend()).unwrap();
            commit_two(&db);
            let read = db.begin_read().unwrap();
            assert_eq!(read.open_table(T).unwrap().get(2).unwrap().unwrap().value(), b"two", "reads see held writes");
            drop(read);
            assert!(!lock(&gate.held).is_empty());
            // Never released (the check failed).
        }
        assert_eq!(std::fs::read(&path).unwrap(), before, "a shut gate leaves the file byte for byte");

        {
            let gate = Gate::open(&path).unwrap();
            let db = redb::Builder::new().create_with_backend(gate.backend()).unwrap();
            commit_two(&db);
            gate.release().unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(T).unwrap().insert(3, &b"three"[..]).unwrap();
            txn.commit().unwrap();
        }
        let db = Database::open(&path).unwrap();
        let read = db.begin_read().unwrap();
        let table = read.open_table(T).unwrap();
        for (key, value) in [(1, &b"one"[..]), (2, b"two"), (3, b"three")] {
            assert_eq!(table.get(key).unwrap().unwrap().value(), value, "entry {key} reached the file");
        }
    }

    #[test]
    fn a_gated_file_is_locked_against_a_second_opener() {
        let (_dir, path) = file_with_one_entry();
        let gate = Gate::open(&path).unwrap();
        let _db = redb::Builder::new().create_with_backend(gate.backend()).unwrap();
        assert!(matches!(Database::open(&path), Err(redb::DatabaseError::DatabaseAlreadyOpen)));
    }
}
