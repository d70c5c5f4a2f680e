//! Loading a component: checking it is a component, compiling it, linking
//! it against the host's imports once, and keeping the resulting
//! `InstancePre` so every task starts in microseconds.

use crate::bindings::TaskPre;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Component;

use super::state::TaskState;

/// Why a plugin could not be loaded. Every variant is an `invalid plugin`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly binary: the file does not start with the `\\0asm` magic bytes")]
    NotWasm,
    /// A native shared library or executable (ELF), not WebAssembly.
    #[error(
        "this is a native library or program (ELF), not WebAssembly: build the plugin with \
         `cargo build --release --target wasm32-wasip2`"
    )]
    NativeCode,
    /// A static library archive (a Rust `.rlib`, a C `.a`).
    #[error(
        "this is a library archive (an .rlib or .a), not a component: add `crate-type = [\"cdylib\"]` under \
         `[lib]` in the plugin's Cargo.toml, so that cargo builds a .wasm component"
    )]
    Archive,
    /// A core module where a component is needed.
    #[error(
        "this is a core WebAssembly module, not a component: build the plugin for \
         `--target wasm32-wasip2` (or wrap a module with `wasm-tools component new`)"
    )]
    CoreModule,
    /// Compilation failed (malformed or unsupported component).
    #[error("the component does not compile: {0}")]
    Compile(String),
    /// The component imports something the host does not provide.
    #[error("the component imports something this host does not provide: {0}")]
    MissingImport(String),
    /// The component does not export world `task`'s `run`.
    #[error(
        "the component does not implement world `taskhost:plugin/task@0.1.1` \
         (expected export `run: func(input: list<u8>) -> result<list<u8>, task-error>`): {0}"
    )]
    WrongWorld(String),
}

/// A compiled, linked plugin version, ready to start tasks. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) inner: Arc<PluginInner>,
}

pub(crate) struct PluginInner {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) pre: TaskPre<TaskState>,
    pub(crate) compile_time: Duration,
    pub(crate) size: usize,
    /// For a script plugin: the script its runner (`pre`) runs.
    pub(crate) script: Option<Arc<super::Script>>,
    /// Whether it imports the filesystem's preopens (and so gets the
    /// empty root behind its `/`).
    pub(crate) reaches_files: bool,
}

impl Plugin {
    /// The name tasks use to call it.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its version string.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// A plugin whose code is `script`, run by `runner` (a script runner
    /// loaded with [`Sandbox::load_runner`](super::Sandbox::load_runner)):
    /// it shares the runner's compiled code and starts each task with the
    /// script.
    pub fn scripted(runner: &Plugin, name: &str, version: &str, script: super::Script) -> Self {
        Self {
            inner: Arc::new(PluginInner {
                name: name.to_owned(),
                version: version.to_owned(),
                pre: runner.inner.pre.clone(),
                compile_time: Duration::ZERO,
                size: script.text.len(),
                script: Some(Arc::new(script)),
                reaches_files: runner.inner.reaches_files,
            }),
        }
    }

    /// The script it runs, for a script plugin.
    pub fn script(&self) -> Option<&super::Script> {
        self.inner.script.as_deref()
    }

    /// How long compiling and linking took.
    pub fn compile_time(&self) -> Duration {
        self.inner.compile_time
    }

    /// Size of the component binary in bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// The compiled artifact, for an on-disk cache read back with
    /// [`Sandbox::load_serialized`](super::Sandbox::load_serialized).
    pub fn serialize(&self) -> Result<Vec<u8>, LoadError> {
        self.inner
            .pre
            .instance_pre()
            .component()
            .serialize()
            .map_err(|e| LoadError::Compile(format!("serialising the compiled component: {e:#}")))
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.inner.name)
            .field("version", &self.inner.version)
            .field("size", &self.inner.size)
            .finish_non_exhaustive()
    }
}

/// Checks the header before handing bytes to the compiler, for a clear error.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if wasmparser::Parser::is_component(bytes) {
        Ok(())
    } else if wasmparser::Parser::is_core_wasm(bytes) {
        Err(LoadError::CoreModule)
    } else if bytes.starts_with(b"\x7fELF") {
        Err(LoadError::NativeCode)
    } else if bytes.starts_with(b"!<arch>\n") {
        Err(LoadError::Archive)
    } else {
        Err(LoadError::NotWasm)
    }
}

pub(crate) fn compile(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Component, LoadError> {
    check_header(bytes)?;
    Component::new(engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))
}
