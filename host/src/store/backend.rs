//! redb storage backends of the store's own: [`Overlay`] reads a store file
//! and keeps every write in memory, so `taskhost store check` can run
//! redb's integrity check (which repairs what it finds), `store repair`
//! can read a damaged file without changing a byte of it, and a starting
//! server can check the file it holds open (see `gate.rs`); and, for tests,
//! [`Faulty`], a file whose writes fail with "no space left on device"
//! while a switch is on.

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;

/// Forwards the byte-range lock methods and `close` to the backend
/// `$inner` names (a field path of `self`), so a second process opening
/// the file is refused as with redb's own backend.
macro_rules! forward_locks {
    ($($inner:tt).+) => {
        fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
            self.$($inner).+.try_lock_range(start, end)
        }
        fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
            self.$($inner).+.try_lock_shared_range(start, end)
        }
        fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.$($inner).+.lock_range(start, end)
        }
        fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.$($inner).+.lock_shared_range(start, end)
        }
        fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.$($inner).+.unlock_range(start, end)
        }
        fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
            self.$($inner).+.query_lock_range(start, end)
        }
        fn close(&self) -> Result<(), std::io::Error> {
            self.$($inner).+.close()
        }
    };
}
pub(crate) use forward_locks;

/// Opens `path` for redb (read and write: its locks need a writable
/// handle, though [`Overlay`] never writes through it).
fn file_backend(path: &Path) -> Result<FileBackend, redb::DatabaseError> {
    FileBackend::new(read_write(path)?)
}

fn read_write(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().read(true).write(true).open(path)
}

/// Size of the blocks the overlay keeps.
const BLOCK: u64 = 4096;

/// A store file seen through an in-memory layer that takes every write.
#[derive(Debug)]
pub(crate) struct Overlay {
    file: Reader,
    state: Mutex<OverlayState>,
}

/// How an [`Overlay`] reaches its file.
#[derive(Debug)]
enum Reader {
    /// Through redb's file backend, taking its locks (through the
    /// overlay's lock methods), so no other process has the file open.
    Locked(FileBackend),
    /// A second, read-only handle of a file this process holds open and
    /// locked through another: it takes no locks.
    Beside(std::fs::File),
}

impl Reader {
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        match self {
            Reader::Locked(file) => file.read(offset, out),
            Reader::Beside(file) => std::os::unix::fs::FileExt::read_exact_at(file, out, offset),
        }
    }

    fn len(&self) -> std::io::Result<u64> {
        match self {
            Reader::Locked(file) => file.len(),
            Reader::Beside(file) => Ok(file.metadata()?.len()),
        }
    }
}

#[derive(Debug)]
struct OverlayState {
    /// The length redb sees.
    len: u64,
    /// How much of the file is still visible under the layer (a shrink
    /// hides the rest for good).
    visible: u64,
    /// Written blocks, by block number.
    blocks: HashMap<u64, Box<[u8]>>,
}

impl Overlay {
    /// The file at `path`, unchanged whatever is written to the overlay.
    pub(crate) fn open(path: &Path) -> Result<Self, redb::DatabaseError> {
        Self::on(Reader::Locked(file_backend(path)?))
    }

    /// The file at `path`, opened and locked as [`Overlay::open`] does,
    /// and a second handle of the same open file (sharing its locks) for
    /// [`Overlay::beside`].
    pub(crate) fn open_with_twin(path: &Path) -> Result<(Self, std::fs::File), redb::DatabaseError> {
        let file = read_write(path)?;
        let twin = file.try_clone()?;
        Ok((Self::on(Reader::Locked(FileBackend::new(file)?))?, twin))
    }

    /// The file `twin` is a handle of, which this process holds open and
    /// locked through another handle of the same open file (see
    /// [`Overlay::open_with_twin`]): it takes no locks, and dropping it
    /// leaves the other's.
    pub(crate) fn beside(twin: std::fs::File) -> Result<Self, redb::DatabaseError> {
        Self::on(Reader::Beside(twin))
    }

    fn on(file: Reader) -> Result<Self, redb::DatabaseError> {
        let len = file.len()?;
        Ok(Self { file, state: Mutex::new(OverlayState { len, visible: len, blocks: HashMap::new() }) })
    }

    /// The file's own backend, for an overlay made with [`Overlay::open`].
    pub(crate) fn file(&self) -> Option<&FileBackend> {
        match &self.file {
            Reader::Locked(file) => Some(file),
            Reader::Beside(_) => None,
        }
    }

    /// Forgets every write: the file now holds them, all of its length.
    pub(crate) fn forget_writes(&self) {
        let mut state = crate::sync::lock(&self.state);
        state.blocks = HashMap::new();
        state.visible = state.len;
    }

    /// Reads one block's current contents into `out` (a whole block).
    fn load(&self, state: &OverlayState, block: u64, out: &mut [u8]) -> std::io::Result<()> {
        if let Some(data) = state.blocks.get(&block) {
            out.copy_from_slice(data);
            return Ok(());
        }
        out.fill(0);
        let start = block * BLOCK;
        let end = (start + BLOCK).min(state.visible);
        if end > start {
            self.file.read(start, &mut out[..(end - start) as usize])?;
        }
        Ok(())
    }
}

/// Takes the byte-range locks through the file's backend, or, for a
/// handle beside the file's own (which holds them), takes none.
macro_rules! overlay_lock {
    ($name:ident, $out:ty, $beside:expr) => {
        fn $name(&self, start: Bound<u64>, end: Bound<u64>) -> Result<$out, BackendError> {
            match &self.file {
                Reader::Locked(file) => file.$name(start, end),
                Reader::Beside(_) => Ok($beside),
            }
        }
    };
}

impl StorageBackend for Overlay {
    overlay_lock!(try_lock_range, bool, true);
    overlay_lock!(try_lock_shared_range, bool, true);
    overlay_lock!(lock_range, (), ());
    overlay_lock!(lock_shared_range, (), ());
    overlay_lock!(unlock_range, (), ());
    overlay_lock!(query_lock_range, bool, false);

    fn close(&self) -> Result<(), std::io::Error> {
        match &self.file {
            Reader::Locked(file) => file.close(),
            Reader::Beside(_) => Ok(()),
        }
    }

    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(crate::sync::lock(&self.state).len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let state = crate::sync::lock(&self.state);
        let end = offset.checked_add(out.len() as u64);
        if end.is_none_or(|end| end > state.len) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "read past the end of the file"));
        }
        let (first, last) = (offset / BLOCK, (offset + out.len().max(1) as u64 - 1) / BLOCK);
        if end.is_some_and(|end| end <= state.visible) && (first..=last).all(|b| !state.blocks.contains_key(&b)) {
            // No write covers it: straight from the file.
            drop(state);
            return self.file.read(offset, out);
        }
        let mut block_data = vec![0u8; BLOCK as usize];
        let mut done = 0usize;
        while done < out.len() {
            let at = offset + done as u64;
            let (block, within) = (at / BLOCK, (at % BLOCK) as usize);
            let n = (BLOCK as usize - within).min(out.len() - done);
            self.load(&state, block, &mut block_data)?;
            out[done..done + n].copy_from_slice(&block_data[within..within + n]);
            done += n;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut state = crate::sync::lock(&self.state);
        if len < state.len {
            state.visible = state.visible.min(len);
            state.blocks.retain(|block, _| block * BLOCK < len);
            let last = len / BLOCK;
            if let Some(data) = state.blocks.get_mut(&last) {
                data[(len % BLOCK) as usize..].fill(0);
            }
        }
        state.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut state = crate::sync::lock(&self.state);
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (block, within) = (at / BLOCK, (at % BLOCK) as usize);
            let n = (BLOCK as usize - within).min(data.len() - done);
            if !state.blocks.contains_key(&block) {
                let mut fresh = vec![0u8; BLOCK as usize].into_boxed_slice();
                self.load(&state, block, &mut fresh)?;
                state.blocks.insert(block, fresh);
            }
            if let Some(target) = state.blocks.get_mut(&block) {
                target[within..within + n].copy_from_slice(&data[done..done + n]);
            }
            done += n;
        }
        state.len = state.len.max(offset + data.len() as u64);
        Ok(())
    }
}

/// A store file whose writes fail with ENOSPC while `full` is set, as on a
/// full disk: growing the file (which allocates nothing) and rewriting its
/// first page (redb's header, allocated long ago) still work, so the file
/// can be reopened, as on a real full disk.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Faulty {
    file: FileBackend,
    full: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(test)]
impl Faulty {
    pub(crate) fn open(
        path: &Path,
        full: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Self, redb::DatabaseError> {
        Ok(Self { file: file_backend(path)?, full })
    }

    fn check(&self, offset: u64) -> Result<(), std::io::Error> {
        if offset >= BLOCK && self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

#[cfg(test)]
impl StorageBackend for Faulty {
    forward_locks!(file);

    fn len(&self) -> Result<u64, std::io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check(offset)?;
        self.file.write(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase, TableDefinition};

    const T: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("t");

    #[test]
    fn the_overlay_sees_its_writes_and_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(T).unwrap().insert(1, &b"one"[..]).unwrap();
            txn.commit().unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        {
            let db = redb::Builder::new().create_with_backend(Overlay::open(&path).unwrap()).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(T).unwrap();
                for i in 2..500u64 {
                    t.insert(i, vec![i as u8; 3000].as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
            let read = db.begin_read().unwrap();
            let t = read.open_table(T).unwrap();
            assert_eq!(t.get(1).unwrap().unwrap().value(), b"one");
            assert_eq!(t.get(499).unwrap().unwrap().value(), vec![499u64 as u8; 3000].as_slice());
        }
        assert_eq!(std::fs::read(&path).unwrap(), before, "the file is byte for byte unchanged");
    }
}
