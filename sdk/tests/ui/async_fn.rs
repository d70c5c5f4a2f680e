#[taskhost_sdk::plugin]
async fn run(input: Vec<u8>) -> Vec<u8> {
    input
}

fn main() {}
