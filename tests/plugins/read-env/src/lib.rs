//! Hostile: reports every environment variable and argument it can see, as
//! JSON. The sandbox gives it none.

use taskhost_sdk::Json;

#[taskhost_sdk::plugin]
fn read_env(_: Vec<u8>) -> Json<(Vec<(String, String)>, Vec<String>)> {
    Json((std::env::vars().collect(), std::env::args().collect()))
}
