//! Finding and loading ONNX Runtime (`libonnxruntime.so`, 1.31) at run
//! time. It is loaded once per process; a host without it runs every task
//! that does not infer, and says why inference is unavailable.

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime version this host's `ort` speaks.
pub(crate) const ORT_VERSION: &str = "1.31";

/// File names the setup step installs, newest first.
const LIBRARY_NAMES: [&str; 2] = ["libonnxruntime.so.1.31.1", "libonnxruntime.so"];

/// What loading ONNX Runtime came to; shown by `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeStatus {
    /// Whether ONNX Runtime is loaded.
    pub available: bool,
    /// The library loaded, or the one that failed to load.
    pub library: Option<PathBuf>,
    /// Why inference is unavailable.
    pub error: Option<String>,
    /// Whether the CUDA execution provider is in this ONNX Runtime build,
    /// and if not, why.
    pub cuda: Result<(), String>,
}

pub(crate) struct Runtime {
    pub(crate) env: Option<ort::environment::Environment>,
    pub(crate) status: RuntimeStatus,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The process's ONNX Runtime, loaded on first use from `ORT_DYLIB_PATH`,
/// else from an `onnxruntime/` folder beside the executable or one of its
/// parents (where `./dev.sh setup` puts it: `target/onnxruntime/`).
pub(crate) fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(load)
}

fn locate() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("ORT_DYLIB_PATH is {}, which is not a file", path.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    for dir in exe.ancestors().skip(1).take(4) {
        for name in LIBRARY_NAMES {
            let candidate = dir.join("onnxruntime").join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "ONNX Runtime {ORT_VERSION} was not found: set ORT_DYLIB_PATH to its libonnxruntime.so, \
         or run `./dev.sh setup` (it installs the library from the onnxruntime=={ORT_VERSION}.1 wheel into target/onnxruntime/)"
    ))
}

fn load() -> Runtime {
    let path = match locate() {
        Ok(path) => path,
        Err(error) => return unavailable(None, error),
    };
    match load_from(&path) {
        Ok(env) => {
            let cuda = cuda_available();
            let status = RuntimeStatus { available: true, library: Some(path), error: None, cuda };
            Runtime { env: Some(env), status }
        }
        Err(error) => unavailable(Some(path), error),
    }
}

fn unavailable(library: Option<PathBuf>, error: String) -> Runtime {
    let cuda = Err("ONNX Runtime is not loaded".to_string());
    Runtime { env: None, status: RuntimeStatus { available: false, library, error: Some(error), cuda } }
}

fn load_from(path: &Path) -> Result<ort::environment::Environment, String> {
    // `ort` reports a missing or wrong library as an error; the unwind guard
    // is for anything it does not expect, so the host keeps running.
    let loaded = std::panic::catch_unwind(|| -> Result<_, String> {
        let builder = ort::init_from(path).map_err(|e| e.to_string())?;
        builder.with_name("taskhost").with_logger(std::sync::Arc::new(log)).build().map_err(|e| e.to_string())
    });
    match loaded {
        Ok(Ok(env)) => Ok(env),
        Ok(Err(e)) => Err(format!("cannot load ONNX Runtime from {}: {e}", path.display())),
        Err(_) => Err(format!("loading ONNX Runtime from {} panicked", path.display())),
    }
}

/// ONNX Runtime's own log, into the host's (`TASKHOST_LOG`), one level
/// down: a failed kernel is already reported to the callers of its batch.
fn log(level: ort::logging::LogLevel, category: &str, _id: &str, location: &str, message: &str) {
    use ort::logging::LogLevel;
    match level {
        LogLevel::Fatal | LogLevel::Error => tracing::warn!(target: "onnxruntime", %category, %location, "{message}"),
        LogLevel::Warning => tracing::info!(target: "onnxruntime", %category, %location, "{message}"),
        LogLevel::Info => tracing::debug!(target: "onnxruntime", %category, "{message}"),
        LogLevel::Verbose => tracing::trace!(target: "onnxruntime", %category, "{message}"),
    }
}

fn cuda_available() -> Result<(), String> {
    use ort::ep::ExecutionProvider;
    match ort::ep::CUDA::is_available() {
        Ok(true) => Ok(()),
        Ok(false) => Err("this ONNX Runtime build has no CUDA execution provider (the CPU wheel; install onnxruntime-gpu's library for CUDA)".into()),
        Err(e) => Err(format!("cannot ask ONNX Runtime for its providers: {e}")),
    }
}
