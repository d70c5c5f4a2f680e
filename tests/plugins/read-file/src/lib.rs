//! Hostile (and probe for grants): reads the file named by its input, or
//! with `write PATH` writes one; also tries to list `/`. With no preopened
//! directories everything must fail; the plugin reports what happened as a
//! permanent error.

use taskhost_sdk::{Error, Result};

#[taskhost_sdk::plugin]
fn read_file(input: String) -> Result<String> {
    if let Some(path) = input.trim().strip_prefix("write ") {
        return match std::fs::write(path, b"written by a plugin") {
            Ok(()) => Ok(format!("WROTE {path}")),
            Err(err) => Err(Error::permanent(format!("filesystem denied: {err}"))),
        };
    }
    if let Ok(contents) = std::fs::read_to_string(input.trim()) {
        return Ok(format!("READ: {contents}"));
    }
    if let Ok(entries) = std::fs::read_dir("/") {
        return Ok(format!("LISTED / with {} entries", entries.count()));
    }
    let err = std::fs::read_to_string(input.trim()).unwrap_err();
    Err(Error::permanent(format!("filesystem denied: {err}")))
}
