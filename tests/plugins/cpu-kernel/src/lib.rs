//! Runs a shared CPU benchmark kernel (see `tests/kernels`): input
//! `sort N` or `sha256 N`.

use taskhost_sdk::{Error, Result};

#[taskhost_sdk::plugin]
fn cpu_kernel(spec: String) -> Result<String> {
    taskhost_bench_kernels::run(&spec).map_err(Error::permanent)
}
