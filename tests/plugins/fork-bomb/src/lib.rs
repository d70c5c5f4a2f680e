//! Hostile: every run submits two more copies of itself, forever. Flow
//! limits must stop it with a clear error while the host stays healthy.

use taskhost_sdk::flow::Child;

#[taskhost_sdk::plugin]
fn fork_bomb(input: Vec<u8>) -> String {
    let results =
        [Child::new("fork-bomb").input(input.clone()).submit(), Child::new("fork-bomb").input(input).submit()];
    let refused: Vec<String> = results.into_iter().filter_map(|r| r.err()).map(|e| e.to_string()).collect();
    if refused.is_empty() { "forked twice".into() } else { format!("refused: {}", refused.join(" | ")) }
}
