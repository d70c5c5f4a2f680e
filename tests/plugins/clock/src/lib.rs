//! Returns the wall-clock time at which it ran, in nanoseconds since the
//! Unix epoch: the benchmarks measure submit → start latency with it.

#[taskhost_sdk::plugin]
fn clock(_: Vec<u8>) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.as_nanos().to_string()
}
