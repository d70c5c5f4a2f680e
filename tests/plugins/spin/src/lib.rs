//! Hostile: spins forever. Ends as `fuel exhausted` or `timeout`.

#[taskhost_sdk::plugin]
fn spin(_: Vec<u8>) -> Vec<u8> {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}
