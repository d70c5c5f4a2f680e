//! Returns its input unchanged: the cheapest possible task, for benchmarks.

#[taskhost_sdk::plugin]
fn trivial(input: Vec<u8>) -> Vec<u8> {
    input
}
