//! Paths of the plugins built for the tests and benchmarks.
//!
//! `build.rs` builds every crate under `plugins/` and `tests/plugins/` for
//! `wasm32-wasip2` in one cargo invocation (into `target/plugins`, shared
//! with `dev.sh`) and generates one constant per plugin, plus [`ALL`].

/// A built plugin.
#[derive(Debug, Clone, Copy)]
pub struct Artifact {
    /// Package name, e.g. `word-count`.
    pub name: &'static str,
    /// Its role: `example`, `hostile`, `fixture` or `bench`.
    pub role: &'static str,
    /// Absolute path of the `.wasm` component.
    pub path: &'static str,
}

impl Artifact {
    /// Reads the component's bytes.
    ///
    /// # Panics
    /// If the file is gone (the build script wrote it).
    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(self.path).unwrap_or_else(|e| panic!("reading plugin {}: {e}", self.path))
    }
}

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
