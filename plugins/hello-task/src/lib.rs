//! Example: host services. Logs through the WIT `log` interface and greets
//! with the running task's identity from `runtime.current-task`.

use taskhost_sdk::{Error, Result, task_info};

#[taskhost_sdk::plugin]
fn hello(name: String) -> Result<String> {
    let name = name.trim();
    if name.is_empty() {
        return Err(Error::permanent("input is empty; expected a name"));
    }
    let info = task_info();
    taskhost_sdk::info!("greeting {name}");
    taskhost_sdk::debug!("attempt {} on queue {}", info.attempt, info.queue);
    Ok(format!(
        "hello, {name}! this is task {} (attempt {}) on queue {}, run by {}@{}",
        info.id, info.attempt, info.queue, info.plugin, info.version
    ))
}
