//! Sleeps for the number of milliseconds in its input, parked in a WASI
//! host call rather than running wasm. Used for timeouts, cancellation and
//! concurrency.

use taskhost_sdk::{Result, ResultExt};

#[taskhost_sdk::plugin]
fn sleep(ms: String) -> Result<String> {
    let ms: u64 = ms.trim().parse().permanent()?;
    std::thread::sleep(std::time::Duration::from_millis(ms));
    Ok(format!("slept {ms} ms"))
}
