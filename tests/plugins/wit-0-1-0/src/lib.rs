//! A plugin built against the first release of the contract,
//! `taskhost:plugin@0.1.0` (its `types`, `log` and `runtime`, as released):
//! later hosts must keep running it, since 0.1.x releases only add.
//! The WIT here is that release's text, frozen on purpose.

wit_bindgen::generate!({
    inline: r#"
        package taskhost:plugin@0.1.0;

        interface types {
            variant task-error {
                retryable(string),
                permanent(string),
            }
            record task-info {
                id: string,
                attempt: u32,
                queue: string,
                plugin: string,
                version: string,
            }
        }

        interface log {
            enum level { trace, debug, info, warn, error }
            log: func(level: level, message: string);
        }

        interface runtime {
            use types.{task-info};
            current-task: func() -> task-info;
        }

        world task {
            import log;
            import runtime;
            use types.{task-error};
            export run: func(input: list<u8>) -> result<list<u8>, task-error>;
        }
    "#,
    world: "task",
});

use taskhost::plugin::log::{Level, log};
use taskhost::plugin::runtime::current_task;

struct Old;

impl Guest for Old {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, TaskError> {
        log(Level::Info, "built against 0.1.0");
        let task = current_task();
        Ok(format!("{} from {}", String::from_utf8_lossy(&input), task.plugin).into_bytes())
    }
}

export!(Old);
