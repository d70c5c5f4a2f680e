//! Example: a text transform. Upper-cases its input, which must be UTF-8.

#[taskhost_sdk::plugin]
fn uppercase(text: String) -> String {
    text.to_uppercase()
}
