//! Hostile: tries to read the host file named by its input, and to list the
//! root directory. With no preopened directories both must fail; the plugin
//! reports what happened as a permanent error.

use taskhost_sdk::{Error, Result};

#[taskhost_sdk::plugin]
fn read_file(path: String) -> Result<String> {
    if let Ok(contents) = std::fs::read_to_string(path.trim()) {
        return Ok(format!("READ: {contents}"));
    }
    if let Ok(entries) = std::fs::read_dir("/") {
        return Ok(format!("LISTED / with {} entries", entries.count()));
    }
    let err = std::fs::read_to_string(path.trim()).unwrap_err();
    Err(Error::permanent(format!("filesystem denied: {err}")))
}
