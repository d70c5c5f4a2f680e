//! Fails as its input says: `retryable:MESSAGE` or `permanent:MESSAGE`.

use taskhost_sdk::{Error, Result};

#[taskhost_sdk::plugin]
fn fail(input: String) -> Result<()> {
    match input.split_once(':') {
        Some(("retryable", message)) => Err(Error::retryable(message)),
        Some(("permanent", message)) => Err(Error::permanent(message)),
        _ => Ok(()),
    }
}
