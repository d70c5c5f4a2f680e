//! Uploads on their way into the registry: each is written to its own file
//! in the staging directory (`DATA/uploads`) as it arrives and hashed on
//! the way, so an upload that waits for the compile queue holds a file, not
//! its bytes in memory. At most [`MAX_PLUGIN_BYTES`] are written; a staged
//! file is removed when its handle is dropped, and what a crash left behind
//! is removed when the registry opens.

use super::{MAX_PLUGIN_BYTES, RegistryError, hex};
use crate::sync::blocking;
use sha2_digest::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes gathered in memory before they are written out (on the blocking
/// pool) and hashed.
const FLUSH_AT: usize = 1 << 20;

/// Bytes of a component's preamble: enough to tell a component from a core
/// module or from something else.
const HEAD: usize = 8;

/// Removes its file when dropped (on the blocking pool when there is one).
#[derive(Debug)]
struct Removal(PathBuf);

impl Drop for Removal {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.0);
        if path.as_os_str().is_empty() {
            return; // handed over to a `Staged`
        }
        let remove = move || match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(file = %path.display(), %error, "cannot remove a staged upload"),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

/// A staged upload, complete: its file, size, digest and first bytes.
#[derive(Debug, Clone)]
pub(crate) struct Staged {
    file: Arc<Removal>,
    pub(crate) size: u64,
    /// Hex SHA-256 of the content.
    pub(crate) digest: String,
    head: Vec<u8>,
}

impl Staged {
    /// Where the content is.
    pub(crate) fn path(&self) -> &Path {
        &self.file.0
    }

    /// The first bytes (up to 8): the component preamble.
    pub(crate) fn head(&self) -> &[u8] {
        &self.head
    }

    /// Reads the whole content (off the async workers).
    pub(crate) async fn read(&self) -> Result<Vec<u8>, RegistryError> {
        let path = self.path().to_owned();
        blocking(move || {
            std::fs::read(&path).map_err(|source| RegistryError::io(format!("reading {}", path.display()), source))
        })
        .await
    }
}

/// The open file and hash of an upload being written.
struct Sink {
    file: std::fs::File,
    hasher: Sha256,
}

impl Sink {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.hasher.update(bytes);
        Ok(())
    }
}

/// An upload being written to its staging file.
pub(crate) struct Staging {
    sink: Option<Sink>,
    file: Removal,
    size: u64,
    head: Vec<u8>,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging").field("file", &self.file.0).field("size", &self.size).finish_non_exhaustive()
    }
}

impl Staging {
    /// A new, empty staging file in `dir`.
    pub(crate) async fn create(dir: &Path) -> Result<Self, RegistryError> {
        let path = dir.join(format!("{}.upload", uuid::Uuid::now_v7().simple()));
        let file = {
            let path = path.clone();
            blocking(move || std::fs::File::create_new(&path)).await
        }
        .map_err(|source| RegistryError::io(format!("creating {}", path.display()), source))?;
        Ok(Self {
            sink: Some(Sink { file, hasher: Sha256::new() }),
            file: Removal(path),
            size: 0,
            head: Vec::with_capacity(HEAD),
            buffer: Vec::new(),
        })
    }

    /// Adds bytes; refuses (and keeps nothing) past [`MAX_PLUGIN_BYTES`].
    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), RegistryError> {
        self.count(chunk.len())?;
        self.keep_head(chunk);
        self.buffer.extend_from_slice(chunk);
        if self.buffer.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    fn count(&mut self, len: usize) -> Result<(), RegistryError> {
        self.size += len as u64;
        if self.size > MAX_PLUGIN_BYTES as u64 {
            return Err(RegistryError::TooLarge { size: self.size });
        }
        Ok(())
    }

    fn keep_head(&mut self, chunk: &[u8]) {
        let wanted = HEAD.saturating_sub(self.head.len()).min(chunk.len());
        self.head.extend_from_slice(&chunk[..wanted]);
    }

    /// Writes and hashes the gathered bytes on the blocking pool.
    async fn flush(&mut self) -> Result<(), RegistryError> {
        let Some(mut sink) = self.sink.take() else {
            return Err(RegistryError::io(
                format!("writing {}", self.file.0.display()),
                std::io::Error::other("an earlier write failed"),
            ));
        };
        let buffer = std::mem::take(&mut self.buffer);
        let (sink, mut buffer, result) = blocking(move || {
            let result = sink.put(&buffer);
            (sink, buffer, result)
        })
        .await;
        result.map_err(|source| RegistryError::io(format!("writing {}", self.file.0.display()), source))?;
        buffer.clear();
        self.buffer = buffer;
        self.sink = Some(sink);
        Ok(())
    }

    /// Writes what is left and hands over the complete upload.
    pub(crate) async fn finish(mut self) -> Result<Staged, RegistryError> {
        self.flush().await?;
        Ok(self.into_staged())
    }

    /// Fills the staging file from `reader` (blocking: call it on the
    /// blocking pool), refusing more than [`MAX_PLUGIN_BYTES`].
    pub(crate) fn fill_from(mut self, reader: impl Read) -> Result<Staged, RegistryError> {
        let mut reader = reader.take(MAX_PLUGIN_BYTES as u64 + 1);
        let mut chunk = vec![0; 64 << 10];
        loop {
            let n = match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(RegistryError::io("reading the file".into(), source)),
            };
            self.count(n)?;
            self.keep_head(&chunk[..n]);
            let Some(sink) = self.sink.as_mut() else { break };
            sink.put(&chunk[..n])
                .map_err(|source| RegistryError::io(format!("writing {}", self.file.0.display()), source))?;
        }
        Ok(self.into_staged())
    }

    fn into_staged(mut self) -> Staged {
        let digest = self.sink.take().map(|s| hex(&s.hasher.finalize())).unwrap_or_default();
        let path = std::mem::take(&mut self.file.0);
        Staged { file: Arc::new(Removal(path)), size: self.size, digest, head: std::mem::take(&mut self.head) }
    }
}

/// Stages bytes already in memory (a stored blob that must be compiled).
pub(crate) async fn stage_bytes(dir: &Path, bytes: Arc<[u8]>) -> Result<Staged, RegistryError> {
    let staging = Staging::create(dir).await?;
    blocking(move || staging.fill_from(&bytes[..])).await
}

/// Empties (creating) the staging directory: a crash leaves uploads behind.
pub(crate) fn reset_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_staged_upload_is_hashed_and_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut staging = Staging::create(dir.path()).await.unwrap();
        let content: Vec<u8> = (0..3 * FLUSH_AT).map(|i| i as u8).collect();
        for chunk in content.chunks(7919) {
            staging.write(chunk).await.unwrap();
        }
        let staged = staging.finish().await.unwrap();
        assert_eq!(staged.size, content.len() as u64);
        assert_eq!(staged.digest, crate::registry::sha256_hex(&content));
        assert_eq!(staged.head(), &content[..HEAD]);
        assert_eq!(staged.read().await.unwrap(), content);
        drop(staged);
        emptied(dir.path()).await;
    }

    /// Waits (boundedly) for removals on the blocking pool to empty `dir`.
    async fn emptied(dir: &Path) {
        for _ in 0..500 {
            if std::fs::read_dir(dir).unwrap().count() == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("a staged file was not removed");
    }

    #[tokio::test]
    async fn more_than_the_limit_is_refused_and_nothing_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut staging = Staging::create(dir.path()).await.unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut refused = None;
        for _ in 0..=MAX_PLUGIN_BYTES >> 20 {
            if let Err(e) = staging.write(&chunk).await {
                refused = Some(e);
                break;
            }
        }
        assert!(matches!(refused, Some(RegistryError::TooLarge { .. })), "{refused:?}");
        drop(staging);
        let from_reader =
            Staging::create(dir.path()).await.unwrap().fill_from(std::io::repeat(0).take(MAX_PLUGIN_BYTES as u64 + 10));
        assert!(matches!(from_reader, Err(RegistryError::TooLarge { .. })), "{from_reader:?}");
        emptied(dir.path()).await;
    }
}
