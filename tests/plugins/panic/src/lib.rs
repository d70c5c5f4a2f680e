//! Hostile: panics. Ends as `trap`, with the panic message kept.

#[taskhost_sdk::plugin]
fn panic(input: String) -> String {
    panic!("plugin gave up on {input:?}");
}
