//! Example without the SDK: the same plugin as `hello-task`, written against
//! the WIT package with plain `wit-bindgen`. The host treats both alike.

wit_bindgen::generate!({ world: "task", path: "../../wit" });

use taskhost::plugin::log::{Level, log};
use taskhost::plugin::runtime::current_task;

struct Hello;

impl Guest for Hello {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, TaskError> {
        let name =
            String::from_utf8(input).map_err(|e| TaskError::Permanent(format!("input is not valid UTF-8: {e}")))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(TaskError::Permanent("input is empty; expected a name".into()));
        }
        let info = current_task();
        log(Level::Info, &format!("greeting {name}"));
        log(Level::Debug, &format!("attempt {} on queue {}", info.attempt, info.queue));
        let greeting = format!(
            "hello, {name}! this is task {} (attempt {}) on queue {}, run by {}@{}",
            info.id, info.attempt, info.queue, info.plugin, info.version
        );
        Ok(greeting.into_bytes())
    }
}

export!(Hello);
