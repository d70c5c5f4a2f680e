#[taskhost_sdk::plugin(json)]
fn run(input: Vec<u8>) -> Vec<u8> {
    input
}

fn main() {}
