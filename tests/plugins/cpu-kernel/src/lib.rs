//! Runs the shared CPU benchmark kernel (see `tests/kernels`) on the number
//! of integers in its input.

use taskhost_sdk::{Result, ResultExt};

#[taskhost_sdk::plugin]
fn cpu_kernel(n: String) -> Result<String> {
    let n: usize = n.trim().parse().permanent()?;
    Ok(taskhost_bench_kernels::sort_checksum(n, 42).to_string())
}
