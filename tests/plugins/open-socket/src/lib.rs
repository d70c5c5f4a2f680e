//! Hostile: tries to connect to the address in its input (`host:port`, a
//! name needs a lookup) over TCP, and to send a UDP datagram there. Both
//! must be denied; the plugin reports what happened as a permanent error.

use std::net::{TcpStream, UdpSocket};
use taskhost_sdk::{Error, Result};

#[taskhost_sdk::plugin]
fn open_socket(addr: String) -> Result<String> {
    let addr = addr.trim();
    let tcp = match TcpStream::connect(addr) {
        Ok(_) => return Ok(format!("CONNECTED to {addr}")),
        Err(e) => e,
    };
    let udp = match UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"hi", addr)) {
        Ok(_) => return Ok(format!("SENT UDP to {addr}")),
        Err(e) => e,
    };
    Err(Error::permanent(format!("network denied: tcp: {tcp}; udp: {udp}")))
}
