#[taskhost_sdk::plugin]
fn run(input: Vec<u8>) -> usize {
    input.len()
}

fn main() {}
