//! Hostile: reports every environment variable and argument it can see, as
//! JSON. The sandbox gives it none.

use taskhost_sdk::Json;

/// The environment variables and the arguments the plugin saw.
type Seen = (Vec<(String, String)>, Vec<String>);

#[taskhost_sdk::plugin]
fn read_env(_: Vec<u8>) -> Json<Seen> {
    Json((std::env::vars().collect(), std::env::args().collect()))
}
