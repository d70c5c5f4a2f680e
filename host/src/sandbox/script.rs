//! Scripts and the runners that run them: the script types a task carries,
//! the runner components this binary embeds (built from source by
//! `host/build.rs`), and their pre-initialisation, so each task starts
//! with the interpreter ready. The JavaScript runner is pre-initialised
//! here: instantiated once, its `wizer-initialize` export starts QuickJS,
//! and its memory is snapshotted into a new component (the
//! `wasmtime-wizer` crate). The Python runner comes pre-initialised:
//! componentize-py snapshots CPython as it builds it.

use super::state::TaskState;
use super::{Attached, Grants, LoadError, Plugin, Sandbox, wasm_err};
use crate::bindings::WitTaskInfo;
use std::borrow::Cow;
use std::fmt;
use wasmtime::component::{Component, Instance, WasmList};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/runners.rs"));
}

/// The longest script a task may carry.
pub const MAX_SCRIPT_BYTES: usize = 1 << 20;

/// A script's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Language {
    /// JavaScript: an ES module, run by QuickJS.
    JavaScript,
    /// Python 3: a module, run by CPython.
    Python,
}

impl Language {
    /// The language a file name's extension says (`.js`, `.mjs`, `.py`).
    pub fn from_file_name(name: &str) -> Option<Self> {
        let extension = name.rsplit_once('.')?.1;
        match extension {
            "js" | "mjs" => Some(Self::JavaScript),
            "py" => Some(Self::Python),
            _ => None,
        }
    }

    /// Its name as flags and the API write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JavaScript => "js",
            Self::Python => "python",
        }
    }

    /// The file extension of its scripts.
    pub fn extension(self) -> &'static str {
        match self {
            Self::JavaScript => "js",
            Self::Python => "py",
        }
    }

    /// The runner component for it, as built.
    fn runner(self) -> Result<&'static [u8], ScriptError> {
        match self {
            Self::JavaScript => Ok(embedded::JAVASCRIPT),
            Self::Python => embedded::PYTHON.ok_or(ScriptError::NoRunner(self)),
        }
    }
}

impl std::str::FromStr for Language {
    type Err = ScriptError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "js" | "javascript" => Ok(Self::JavaScript),
            "py" | "python" => Ok(Self::Python),
            other => Err(ScriptError::UnknownLanguage(other.to_owned())),
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::JavaScript => "JavaScript",
            Self::Python => "Python",
        })
    }
}

/// A script a task runs: what the runner reads through
/// `taskhost:plugin/script`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Its language.
    pub language: Language,
    /// Its file name, as errors and stack traces show it.
    pub name: String,
    /// Its text.
    pub text: String,
}

impl Script {
    /// A script from a file's bytes, checked for size and UTF-8.
    pub fn new(language: Language, name: impl Into<String>, bytes: Vec<u8>) -> Result<Self, ScriptError> {
        let name = name.into();
        if bytes.len() > MAX_SCRIPT_BYTES {
            return Err(ScriptError::TooLarge { name, size: bytes.len() });
        }
        let text = String::from_utf8(bytes).map_err(|e| ScriptError::NotUtf8 { name: name.clone(), error: e })?;
        Ok(Self { language, name, text })
    }
}

/// Why a script or its runner could not be made ready.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScriptError {
    /// A language name this host does not know.
    #[error("unknown script language `{0}`: expected `js` or `python`")]
    UnknownLanguage(String),
    /// A language this binary was built without a runner for.
    #[error(
        "this taskhost was built without its {0} runner (componentize-py was missing when it was built): \
         install it with `./dev.sh setup`, or put it on PATH, and rebuild"
    )]
    NoRunner(Language),
    /// The script is over [`MAX_SCRIPT_BYTES`].
    #[error("script `{name}` is {size} bytes; the most a script may be is {MAX_SCRIPT_BYTES} bytes")]
    TooLarge {
        /// The script's name.
        name: String,
        /// Its size.
        size: usize,
    },
    /// The script is not UTF-8 text.
    #[error("script `{name}` is not UTF-8 text: {error}")]
    NotUtf8 {
        /// The script's name.
        name: String,
        /// Where it is not.
        error: std::string::FromUtf8Error,
    },
    /// The runner could not be pre-initialised.
    #[error("pre-initialising the {language} runner failed: {message}")]
    PreInitialize {
        /// The runner's language.
        language: Language,
        /// What failed.
        message: String,
    },
    /// The pre-initialised runner did not load.
    #[error("loading the {language} runner failed: {error}")]
    Load {
        /// The runner's language.
        language: Language,
        /// Why.
        error: LoadError,
    },
}

/// A runner's identity: its language and the digest of the component as
/// built, which names its version and keys its cached artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerId {
    /// The language it runs.
    pub language: Language,
    /// sha256 of the runner component, hex.
    pub digest: String,
}

impl RunnerId {
    /// The runner this binary embeds for `language` (its digest hashed
    /// once per process).
    pub fn of(language: Language) -> Result<Self, ScriptError> {
        static JAVASCRIPT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let runner = language.runner()?;
        let cell = match language {
            Language::JavaScript => &JAVASCRIPT,
            Language::Python => &PYTHON,
        };
        let digest = cell.get_or_init(|| crate::registry::sha256_hex(runner)).clone();
        Ok(Self { language, digest })
    }

    /// The plugin name its tasks report (`runtime.current-task`).
    pub fn plugin_name(&self) -> String {
        format!("{}-runner", self.language.as_str())
    }

    /// The version its tasks report: the first 12 digits of its digest.
    pub fn version(&self) -> &str {
        &self.digest[..12]
    }
}

impl Sandbox {
    /// Pre-initialises the runner for `language`: instantiates it once,
    /// runs its `wizer-initialize` export and snapshots its memory into a
    /// new component. CPU-bound (it compiles the runner), so call it where
    /// blocking is allowed; cache what it returns. The Python runner is
    /// pre-initialised when it is built, and returned as it is (borrowed,
    /// not copied).
    pub async fn pre_initialize_runner(&self, language: Language) -> Result<Cow<'static, [u8]>, ScriptError> {
        if language == Language::Python {
            return Ok(Cow::Borrowed(language.runner()?));
        }
        let failed = |message: String| ScriptError::PreInitialize { language, message };
        let mut wizer = wasmtime_wizer::Wizer::new();
        // The component still exports it; its core function must stay.
        wizer.keep_init_func(true);
        let (cx, instrumented) =
            wizer.instrument_component(language.runner()?).map_err(|e| failed(format!("{:#}", wasm_err(e))))?;
        let component =
            Component::new(&self.inner.engine, &instrumented).map_err(|e| failed(format!("{:#}", wasm_err(e))))?;
        let id = RunnerId::of(language)?;
        let info = WitTaskInfo {
            id: "pre-initialise".into(),
            attempt: 1,
            queue: String::new(),
            plugin: id.plugin_name(),
            version: id.version().to_owned(),
        };
        // Its own limits, not the operator's task defaults (which may be
        // too small to start an interpreter).
        let limits = super::Limits {
            memory_bytes: self.inner.config.max_memory_per_instance.min(256 << 20),
            timeout: std::time::Duration::from_secs(120),
            ..super::Limits::default()
        };
        let mut store =
            self.store_for(info, 0, &limits, &Grants::default(), None, Attached::default(), false).map_err(failed)?;
        let instance = self
            .inner
            .linker
            .instantiate_async(&mut store, &component)
            .await
            .map_err(|e| failed(format!("instantiating: {:#}", wasm_err(e))))?;
        let init = instance
            .get_typed_func::<(), ()>(&mut store, "wizer-initialize")
            .map_err(|e| failed(format!("the runner has no `wizer-initialize`: {:#}", wasm_err(e))))?;
        init.call_async(&mut store, ()).await.map_err(|e| {
            let stderr = String::from_utf8_lossy(&store.data().stderr_snapshot()).into_owned();
            failed(format!("`wizer-initialize` trapped: {:#} {stderr}", wasm_err(e)))
        })?;
        let mut access = Access { store: &mut store, instance, failed: None };
        let snapshot = wizer
            .snapshot_component(&cx, &mut access)
            .await
            .map_err(|e| failed(format!("taking the snapshot: {:#}", wasm_err(e))))?;
        match access.failed {
            Some(error) => Err(failed(format!("reading the instance's state: {error}"))),
            None => Ok(Cow::Owned(snapshot)),
        }
    }

    /// The runner for `language`, pre-initialised and compiled: what
    /// [`Sandbox::pre_initialize_runner`] makes, loaded. CPU-bound.
    pub async fn load_runner(&self, language: Language) -> Result<Plugin, ScriptError> {
        let snapshot = self.pre_initialize_runner(language).await?;
        let id = RunnerId::of(language)?;
        self.load(&id.plugin_name(), id.version(), &snapshot).map_err(|error| ScriptError::Load { language, error })
    }
}

impl Sandbox {
    /// The runner for `language` as built, not pre-initialised: each task
    /// starts the interpreter itself. Only for benchmarks.
    #[doc(hidden)]
    pub fn load_runner_without_snapshot(&self, language: Language) -> Result<Plugin, ScriptError> {
        let id = RunnerId::of(language)?;
        self.load(&id.plugin_name(), id.version(), language.runner()?)
            .map_err(|error| ScriptError::Load { language, error })
    }
}

/// What the snapshot reads: the instance's memories and globals, through
/// the accessors the instrumentation exported. The first failure is kept
/// (the snapshot is then discarded) rather than panicking the host.
struct Access<'a> {
    store: &'a mut wasmtime::Store<TaskState>,
    instance: Instance,
    failed: Option<String>,
}

impl Access<'_> {
    async fn call<R>(&mut self, instance: &str, func: &str) -> Option<R>
    where
        R: wasmtime::component::Lift + wasmtime::component::ComponentType + Send + Sync + 'static,
    {
        if self.failed.is_some() {
            return None;
        }
        let called = async {
            let (_, exported) = self
                .instance
                .get_export(&mut *self.store, None, instance)
                .ok_or_else(|| format!("no export `{instance}`"))?;
            let (_, index) = self
                .instance
                .get_export(&mut *self.store, Some(&exported), func)
                .ok_or_else(|| format!("no function `{instance}#{func}`"))?;
            let typed = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *self.store, index)
                .map_err(|e| format!("`{instance}#{func}`: {:#}", wasm_err(e)))?;
            typed
                .call_async(&mut *self.store, ())
                .await
                .map(|(r,)| r)
                .map_err(|e| format!("`{func}`: {:#}", wasm_err(e)))
        };
        match called.await {
            Ok(value) => Some(value),
            Err(error) => {
                self.failed = Some(error);
                None
            }
        }
    }
}

impl wasmtime_wizer::ComponentInstanceState for Access<'_> {
    async fn call_func_ret_list_u8(&mut self, instance: &str, func: &str, contents: impl FnOnce(&[u8]) + Send) {
        if let Some(list) = self.call::<WasmList<u8>>(instance, func).await {
            contents(list.as_le_slice(&*self.store));
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func).await.unwrap_or_default().to_bits()
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func).await.unwrap_or_default().to_bits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_are_read_from_names_and_extensions() {
        assert_eq!(Language::from_file_name("hello.js"), Some(Language::JavaScript));
        assert_eq!(Language::from_file_name("a.b.mjs"), Some(Language::JavaScript));
        assert_eq!(Language::from_file_name("report.py"), Some(Language::Python));
        assert_eq!(Language::from_file_name("plugin.wasm"), None);
        assert_eq!(Language::from_file_name("js"), None);
        assert_eq!("javascript".parse::<Language>().unwrap(), Language::JavaScript);
        let err = "ruby".parse::<Language>().unwrap_err().to_string();
        assert!(err.contains("unknown script language `ruby`"), "{err}");
    }

    #[test]
    fn a_script_is_utf8_and_bounded() {
        let err = Script::new(Language::JavaScript, "x.js", vec![0xff]).unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");
        let err = Script::new(Language::JavaScript, "x.js", vec![b' '; MAX_SCRIPT_BYTES + 1]).unwrap_err().to_string();
        assert!(err.contains("the most a script may be"), "{err}");
        assert_eq!(Script::new(Language::JavaScript, "x.js", b"1".to_vec()).unwrap().text, "1");
    }
}
