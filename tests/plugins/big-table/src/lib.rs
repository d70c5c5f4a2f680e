//! A ~5 MB component (mostly a 5 MiB lookup table in its data segment) for
//! the registry benchmark: returns the byte at the index in its input.

use taskhost_sdk::{Result, ResultExt};

static TABLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/table.bin"));

#[taskhost_sdk::plugin]
fn big_table(index: String) -> Result<String> {
    let index: usize = index.trim().parse().permanent()?;
    Ok(TABLE[index % TABLE.len()].to_string())
}
