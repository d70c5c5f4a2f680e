//! Hostile: recurses without end. Ends as `stack overflow`.

use std::hint::black_box;

#[inline(never)]
fn depth(n: u64) -> u64 {
    if n == 0 { 0 } else { black_box(depth(black_box(n - 1))) + 1 }
}

#[taskhost_sdk::plugin]
fn recurse(_: Vec<u8>) -> String {
    depth(black_box(u64::MAX)).to_string()
}
