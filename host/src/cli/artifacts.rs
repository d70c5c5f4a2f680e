//! `taskhost run`'s compiled-artifact cache: a component compiled once is
//! kept as native code, keyed by the component's sha256 and the sandbox's
//! engine fingerprint (which changes with any setting that changes the
//! code), so running it again loads in milliseconds instead of compiling.
//!
//! The artifacts are native code this program wrote, so the cache is only
//! used in a directory that is the user's own: created with mode 0700, and
//! ignored (compiling instead) if it or an artifact is owned by someone
//! else or writable by group or others. It holds at most [`MAX_BYTES`];
//! past that the least recently used artifacts are removed. A small
//! record per component file (`stat-…`, keyed by the file's device, inode,
//! size and times) remembers its digest, so a second run of an unchanged
//! file neither reads nor hashes it; the artifact is mapped, not read.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};
use taskhost::registry::sha256_hex;
use taskhost::scripts::{Language, RunnerId, ScriptError};
use taskhost::{LoadError, Plugin, Sandbox};

/// The most bytes the cache keeps.
pub(crate) const MAX_BYTES: u64 = 2 << 30;

/// Where the plugin came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Loaded from the cache.
    Cached,
    /// Compiled (and written to the cache when there is one).
    Compiled,
}

/// `$TASKHOST_CACHE`, else `$XDG_CACHE_HOME/taskhost/artifacts`, else
/// `~/.cache/taskhost/artifacts`; `None` without any of them.
pub(crate) fn default_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TASKHOST_CACHE") {
        return Some(dir.into());
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("taskhost/artifacts"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/taskhost/artifacts"))
}

/// Whether `meta` belongs to this user and only this user may write it.
fn private(meta: &std::fs::Metadata) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    meta.uid() == uid && meta.permissions().mode() & 0o022 == 0
}

/// Creates the cache directory (mode 0700) and checks it is private.
fn open_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the artifact cache {}: {e}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if !meta.is_dir() || !private(&meta) {
        return Err(format!(
            "the artifact cache {} is not a directory of this user's that only they may write; not using it",
            dir.display()
        ));
    }
    Ok(())
}

/// Why a plugin could not be loaded.
#[derive(Debug)]
pub(crate) enum Failed {
    /// The component file could not be read.
    Read(String),
    /// It is not a valid plugin.
    Load(LoadError),
}

/// Loads the component at `file` as plugin `name`: from `cache` when it
/// holds an artifact for it, else compiled (and then written there). A
/// cache that cannot be used is reported as a warning and compiling goes
/// on. Gives where the plugin came from and how long loading took.
pub(crate) fn load(
    sandbox: &Sandbox,
    name: &str,
    file: &Path,
    cache: Option<&Path>,
) -> Result<(Plugin, Source, std::time::Duration), Failed> {
    let started = Instant::now();
    let unreadable =
        |e: std::io::Error| Failed::Read(format!("cannot read plugin `{}`: {e}{}", file.display(), hint(file)));
    let read = || std::fs::read(file).map_err(unreadable);
    let compile = |bytes: &[u8]| sandbox.load(name, "local", bytes).map_err(Failed::Load);
    let Some(dir) = cache else {
        return Ok((compile(&read()?)?, Source::Compiled, started.elapsed()));
    };
    if let Err(message) = open_dir(dir) {
        eprintln!("warning: {message}");
        return Ok((compile(&read()?)?, Source::Compiled, started.elapsed()));
    }
    // The file's identity (device, inode, size, modification and change
    // times, to the nanosecond) finds its digest without hashing it again;
    // any write to the file changes its change time.
    let mut opened = std::fs::File::open(file).map_err(unreadable)?;
    let meta = opened.metadata().map_err(unreadable)?;
    let index = dir.join(format!("stat-{}", &sha256_hex(identity(&meta).as_bytes())[..32]));
    let fingerprint = sandbox.fingerprint();
    let size = meta.size() as usize;
    if let Some(digest) = read_private(&index).and_then(|d| String::from_utf8(d).ok())
        && digest.len() == 64
        && digest.bytes().all(|b| b.is_ascii_hexdigit())
    {
        let path = dir.join(format!("{digest}-{fingerprint}.cwasm"));
        if let Some(plugin) = cached(sandbox, (name, "local"), size, &path) {
            return Ok((plugin, Source::Cached, started.elapsed()));
        }
    }
    let mut bytes = Vec::with_capacity(size);
    std::io::Read::read_to_end(&mut opened, &mut bytes).map_err(unreadable)?;
    let digest = sha256_hex(&bytes);
    let path = dir.join(format!("{digest}-{fingerprint}.cwasm"));
    // The identity is recorded only if the file did not change while it
    // was read and its last change is old enough that a later write would
    // show in the change time.
    let settled = opened.metadata().is_ok_and(|after| {
        let changed = SystemTime::UNIX_EPOCH
            + std::time::Duration::new(after.ctime().max(0) as u64, after.ctime_nsec().clamp(0, 999_999_999) as u32);
        identity(&after) == identity(&meta)
            && SystemTime::now().duration_since(changed).is_ok_and(|age| age > std::time::Duration::from_secs(2))
    });
    let written = if settled { write_private(dir, &index, digest.as_bytes()) } else { Ok(()) };
    if let Some(plugin) = cached(sandbox, (name, "local"), bytes.len(), &path) {
        return Ok((plugin, Source::Cached, started.elapsed()));
    }
    let plugin = compile(&bytes)?;
    let elapsed = started.elapsed();
    let stored = written.and_then(|()| plugin.serialize().map_err(|e| format!("cannot serialize the plugin: {e}")));
    match stored.and_then(|artifact| write_private(dir, &path, &artifact)) {
        Ok(()) => trim(dir, MAX_BYTES),
        Err(message) => eprintln!("warning: {message}"),
    }
    Ok((plugin, Source::Compiled, elapsed))
}

/// The script runner for `language`, pre-initialised and compiled once,
/// then kept in the cache `dir` (keyed by the runner's digest and the
/// engine's fingerprint) and loaded from there.
pub(crate) async fn load_runner(
    sandbox: &Sandbox,
    language: Language,
    cache: Option<&Path>,
) -> Result<(Plugin, Source, std::time::Duration), ScriptError> {
    let started = Instant::now();
    let id = RunnerId::of(language)?;
    let dir = cache.filter(|dir| match open_dir(dir) {
        Ok(()) => true,
        Err(message) => {
            eprintln!("warning: {message}");
            false
        }
    });
    let path = dir.map(|dir| dir.join(format!("runner-{}-{}.cwasm", id.digest, sandbox.fingerprint())));
    if let Some(path) = &path
        && let Ok(meta) = std::fs::symlink_metadata(path)
        && let Some(plugin) = cached(sandbox, (&id.plugin_name(), id.version()), meta.len() as usize, path)
    {
        return Ok((plugin, Source::Cached, started.elapsed()));
    }
    let plugin = sandbox.load_runner(language).await?;
    let elapsed = started.elapsed();
    if let (Some(dir), Some(path)) = (dir, &path) {
        let stored = plugin.serialize().map_err(|e| format!("cannot serialize the runner: {e}"));
        match stored.and_then(|artifact| write_private(dir, path, &artifact)) {
            Ok(()) => trim(dir, MAX_BYTES),
            Err(message) => eprintln!("warning: {message}"),
        }
    }
    Ok((plugin, Source::Compiled, elapsed))
}

/// Why a plugin file may be missing: cargo built the crate as a plain
/// library (`libNAME.rlib` beside where the `.wasm` would be).
fn hint(file: &Path) -> String {
    let (Some(dir), Some(stem)) = (file.parent(), file.file_stem()) else { return String::new() };
    let rlib = dir.join(format!("lib{}.rlib", stem.to_string_lossy()));
    if file.extension().is_some_and(|e| e == "wasm") && !file.exists() && rlib.exists() {
        format!(
            " (cargo built {} but no .wasm: add `crate-type = [\"cdylib\"]` under `[lib]` in the plugin's Cargo.toml)",
            rlib.display()
        )
    } else {
        String::new()
    }
}

/// What identifies one content of a file: device, inode, size, and its
/// modification and change times to the nanosecond.
fn identity(meta: &std::fs::Metadata) -> String {
    format!(
        "{}-{}-{}-{}.{}-{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

/// A private file's bytes; `None` if it is missing, not this user's own,
/// or writable by others.
fn read_private(path: &Path) -> Option<Vec<u8>> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    (meta.is_file() && private(&meta)).then(|| std::fs::read(path).ok()).flatten()
}

/// The artifact at `path`, if there is a usable one.
fn cached(sandbox: &Sandbox, (name, version): (&str, &str), size: usize, path: &Path) -> Option<Plugin> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || !private(&meta) {
        eprintln!("warning: ignoring the cached artifact {}: not a private file of this user's", path.display());
        return None;
    }
    // SAFETY: the file is this user's own, in this user's private cache
    // directory, named by the component's digest and this engine's
    // fingerprint: an artifact this program wrote, and replaced only by
    // renaming a new file over it. wasmtime still checks its header and
    // engine compatibility.
    match unsafe { sandbox.load_serialized_file(name, version, path, size) } {
        Ok(plugin) => {
            // Marks it used, for the least-recently-used trim.
            let _ = std::fs::File::options().append(true).open(path).and_then(|f| f.set_modified(SystemTime::now()));
            Some(plugin)
        }
        Err(e) => {
            eprintln!("warning: ignoring the cached artifact {}: {e}", path.display());
            None
        }
    }
}

/// Writes `bytes` to `path` in the cache `dir`, private and atomically.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), String> {
    taskhost::files::write_private(path, bytes)
        .map_err(|e| format!("cannot write the artifact cache {}: {e}", dir.display()))
}

/// Removes the least recently used artifacts and file identities until
/// the rest fit `max` (an identity counts as 4 KiB).
fn trim(dir: &Path, max: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            let name = path.file_name()?.to_str()?;
            let identity = name.starts_with("stat-");
            if !identity && !name.ends_with(".cwasm") {
                return None;
            }
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, if identity { 4096 } else { meta.len() }, path))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= max {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_removes_the_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        for (n, age) in [(1, 30), (2, 10), (3, 20)] {
            let path = dir.path().join(format!("{n}.cwasm"));
            std::fs::write(&path, vec![0u8; 100]).unwrap();
            let f = std::fs::File::options().append(true).open(&path).unwrap();
            f.set_modified(now - std::time::Duration::from_secs(age)).unwrap();
        }
        std::fs::write(dir.path().join("other.txt"), vec![0u8; 1000]).unwrap();
        trim(dir.path(), 100);
        let left: Vec<bool> = (1..=3).map(|n| dir.path().join(format!("{n}.cwasm")).exists()).collect();
        assert_eq!(left, [false, true, false], "the two oldest go, the newest stays");
        assert!(dir.path().join("other.txt").exists(), "only artifacts are trimmed");
    }

    #[test]
    fn a_directory_others_may_write_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("c");
        open_dir(&cache).unwrap();
        assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(open_dir(&cache).unwrap_err().contains("only they may write"));
    }
}
