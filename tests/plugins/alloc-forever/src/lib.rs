//! Hostile: allocates (and touches) 1 MiB after 1 MiB forever. Ends as
//! `memory limit exceeded`.

#[taskhost_sdk::plugin]
fn alloc_forever(_: Vec<u8>) -> Vec<u8> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}
