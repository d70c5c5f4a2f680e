//! The guest's `/` outside its grants: an empty, read-only directory added
//! at `/` to the preopens of every guest that asks for them, whose every
//! lookup the host refuses with `access`. Without it a path outside the grants
//! matches no preopen, and wasi-libc answers "no such file" (ENOENT)
//! itself, so a guest cannot tell a missing grant from a missing file.
//! With it, `open`, `stat`, `readlink` and listings under `/` reach the
//! host and fail as permission errors (EACCES), while paths under a
//! granted directory (a longer prefix) go to that grant as before; writes
//! fail as the read-only preopen refuses them (EPERM).
//!
//! The refusals are linker functions shadowing `wasi:filesystem`'s: for
//! any other directory they call wasmtime-wasi's own implementation.

use super::state::TaskState;
use std::path::Path;
use std::sync::Arc;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime::error::Context as _;
use wasmtime_wasi::filesystem::{Descriptor, Dir, WasiFilesystemView};
use wasmtime_wasi::p2::FsError;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self as fs, DescriptorFlags, DescriptorStat, ErrorCode, HostDescriptor, MetadataHashValue, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::bindings::filesystem::{preopens, types};
use wasmtime_wasi::{FsPerms, OpenMode};

/// The WASI interfaces as wasmtime-wasi names them in the linker (a guest
/// importing an older 0.2 release is matched to them by semver).
const TYPES: &str = "wasi:filesystem/types@0.2.12";
const PREOPENS: &str = "wasi:filesystem/preopens@0.2.12";

/// The empty directory behind every guest's `/`: opened once per sandbox,
/// then removed, so nothing can be put in it and no cleaner of temporary
/// files can take it away (the handle outlives the name). Each guest that
/// asks for its preopens gets a duplicate handle.
pub(crate) fn empty_root() -> std::io::Result<Arc<std::fs::File>> {
    let dir = tempfile::Builder::new().prefix("taskhost-empty-root-").tempdir()?;
    let file = std::fs::File::open(dir.path())?;
    dir.close()?;
    Ok(Arc::new(file))
}

/// Whether a guest's grants leave `/` to the virtual root (an operator
/// may grant a directory at `/` itself).
pub(crate) fn wanted(guest_paths: impl IntoIterator<Item = impl AsRef<str>>) -> bool {
    !guest_paths.into_iter().any(|p| Path::new(p.as_ref()) == Path::new("/"))
}

/// Shadows the `wasi:filesystem` functions that look a path up (or list a
/// directory) with ones that refuse the virtual root, and those that
/// would read or flush the directory behind it with ones that answer for
/// it. (The rest refuse a read-only directory, or any directory, already.)
pub(crate) fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let result = shadow(linker);
    linker.allow_shadowing(false);
    result
}

fn shadow(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    let mut instance = linker.instance(PREOPENS)?;
    instance.func_wrap("get-directories", |mut store: StoreContextMut<'_, TaskState>, (): ()| {
        let state = store.data_mut();
        let mut dirs = preopens::Host::get_directories(&mut state.filesystem())?;
        // The root is opened only for a guest that asks for its preopens
        // (most tasks never touch a file), and once per task.
        if state.virtual_root.is_none()
            && let Some(empty) = &state.empty_root
        {
            let file = empty.try_clone().context("duplicating the empty root's handle")?;
            state.virtual_root = Some(Dir::new(file, FsPerms::ReadOnly, OpenMode::READ, false));
        }
        if let Some(root) = state.virtual_root.clone() {
            let fd = state.filesystem().table.push(Descriptor::Dir(root))?;
            dirs.push((fd, "/".to_owned()));
        }
        Ok((dirs,))
    })?;

    let mut instance = linker.instance(TYPES)?;
    // Each: `$root` on the root, else wasmtime-wasi's own.
    macro_rules! shadow {
        ($name:literal, $method:ident($($arg:ident: $ty:ty),*), $root:expr) => {
            instance.func_wrap_async(
                $name,
                |mut store: StoreContextMut<'_, TaskState>, (fd, $($arg,)*): (Resource<Descriptor>, $($ty,)*)| {
                    Box::new(async move {
                        let state = store.data_mut();
                        if state.is_virtual_root(&fd)? {
                            return Ok(($root,));
                        }
                        let mut view = state.filesystem();
                        let result = HostDescriptor::$method(&mut view, fd, $($arg),*).await;
                        Ok((wit(&mut view, result)?,))
                    })
                },
            )?;
        };
    }
    // Lookups and listings under the root are refused.
    shadow!("[method]descriptor.open-at", open_at(
        path_flags: PathFlags, path: String, open_flags: OpenFlags, flags: DescriptorFlags
    ), Err(ErrorCode::Access));
    shadow!("[method]descriptor.stat-at", stat_at(path_flags: PathFlags, path: String), Err(ErrorCode::Access));
    shadow!("[method]descriptor.metadata-hash-at", metadata_hash_at(path_flags: PathFlags, path: String), Err(ErrorCode::Access));
    shadow!("[method]descriptor.readlink-at", readlink_at(path: String), Err(ErrorCode::Access));
    shadow!("[method]descriptor.read-directory", read_directory(), Err(ErrorCode::Access));
    // What the root itself answers: a directory with no times, one hash,
    // nothing to sync. None of it reaches the removed directory behind it,
    // so a guest learns nothing about the host and makes it flush nothing.
    shadow!(
        "[method]descriptor.stat",
        stat(),
        Ok(DescriptorStat {
            type_: fs::DescriptorType::Directory,
            link_count: 1,
            size: 0,
            data_access_timestamp: None,
            data_modification_timestamp: None,
            status_change_timestamp: None,
        })
    );
    shadow!("[method]descriptor.metadata-hash", metadata_hash(), Ok(MetadataHashValue { lower: 0, upper: 0 }));
    shadow!("[method]descriptor.sync", sync(), Ok(()));
    shadow!("[method]descriptor.sync-data", sync_data(), Ok(()));
    instance.func_wrap_async(
        "[method]descriptor.is-same-object",
        |mut store: StoreContextMut<'_, TaskState>, (fd, other): (Resource<Descriptor>, Resource<Descriptor>)| {
            Box::new(async move {
                let state = store.data_mut();
                let (a, b) = (state.is_virtual_root(&fd)?, state.is_virtual_root(&other)?);
                if a || b {
                    return Ok((a && b,));
                }
                let mut view = state.filesystem();
                Ok((HostDescriptor::is_same_object(&mut view, fd, other).await?,))
            })
        },
    )?;
    Ok(())
}

/// A result as WIT carries it: a filesystem error as its code, anything
/// else (a bad handle) as a trap, as wasmtime-wasi's own bindings do.
fn wit<T>(
    view: &mut wasmtime_wasi::filesystem::WasiFilesystemCtxView<'_>,
    result: Result<T, FsError>,
) -> wasmtime::Result<Result<T, ErrorCode>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(error) => Ok(Err(types::Host::convert_error_code(view, error)?)),
    }
}

impl TaskState {
    /// Whether `fd` is this guest's virtual root.
    fn is_virtual_root(&mut self, fd: &Resource<Descriptor>) -> wasmtime::Result<bool> {
        let Some(root) = self.virtual_root.as_ref().map(|d| Arc::as_ptr(&d.dir)) else { return Ok(false) };
        let view = self.filesystem();
        Ok(matches!(view.table.get(fd)?, Descriptor::Dir(dir) if std::ptr::eq(Arc::as_ptr(&dir.dir), root)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_at_the_root_replaces_the_virtual_one() {
        assert!(wanted(Vec::<String>::new()));
        assert!(wanted(["/data", "/srv/x"]));
        assert!(!wanted(["/data", "/"]));
        assert!(!wanted(["//"]));
    }

    #[test]
    fn the_empty_root_is_a_handle_to_a_directory_already_removed() {
        let root = empty_root().unwrap();
        assert!(root.metadata().unwrap().is_dir());
        let path = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&*root))).unwrap();
        assert!(path.to_string_lossy().ends_with("(deleted)"), "{}", path.display());
    }
}
