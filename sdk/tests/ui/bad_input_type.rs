#[taskhost_sdk::plugin]
fn run(n: i32) -> String {
    n.to_string()
}

fn main() {}
