//! The host side of the plugin's own WIT imports (`log`, `runtime`).
//! WASI itself is provided by `wasmtime-wasi`.

use super::LogLevel;
use super::state::TaskState;
use crate::bindings::{Level, WitTaskInfo, taskhost::plugin};

impl plugin::types::Host for TaskState {}

impl plugin::log::Host for TaskState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        self.push_log(level, message)
    }
}

impl plugin::script::Host for TaskState {
    fn current(&mut self) -> wasmtime::Result<plugin::script::Source> {
        let Some(script) = &self.script else {
            return Err(wasmtime::format_err!(
                "this task runs no script: only a script runner may call `taskhost:plugin/script.current`"
            ));
        };
        Ok(plugin::script::Source {
            language: match script.language {
                super::Language::JavaScript => plugin::script::Language::Javascript,
                super::Language::Python => plugin::script::Language::Python,
            },
            name: script.name.clone(),
            text: script.text.clone(),
        })
    }
}

impl plugin::runtime::Host for TaskState {
    fn current_task(&mut self) -> wasmtime::Result<WitTaskInfo> {
        Ok(self.info.clone())
    }
}
