//! Hostile: returns as many bytes as its input asks for (decimal). Ends as
//! `output too large` when that passes the output cap.

use taskhost_sdk::{Result, ResultExt};

#[taskhost_sdk::plugin]
fn huge_output(size: String) -> Result<Vec<u8>> {
    let size: usize = size.trim().parse().permanent()?;
    Ok(vec![b'x'; size])
}
