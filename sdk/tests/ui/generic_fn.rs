#[taskhost_sdk::plugin]
fn run<T: Default>(input: Vec<u8>) -> Vec<u8> {
    let _ = T::default();
    input
}

fn main() {}
