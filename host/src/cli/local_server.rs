//! Who runs the server on a local port: the CLI hands the admin token in
//! `DATA/admin.token` only to a server listening as the same user, so
//! another user who binds the port while `serve` is down does not receive
//! it. Read from `/proc/net/tcp` and `/proc/net/tcp6` (Linux).

/// The uids of the sockets listening on TCP `port`, in every address
/// family; empty when none listens (or `/proc` cannot be read).
pub(crate) fn listening_uids(port: u16) -> Vec<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| listeners(&table, port))
        .collect()
}

/// The uids of the LISTEN sockets on `port` in one `/proc/net/tcp*` table.
fn listeners(table: &str, port: u16) -> Vec<u32> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let listening = fields.get(3)? == &LISTEN && u16::from_str_radix(local_port, 16).ok()? == port;
            if listening { fields.get(7)?.parse().ok() } else { None }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str =
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1E14 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1078 1 0 100 0 0 10 0
   1: 0100007F:1E14 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1001        0 2078 1 0 100 0 0 10 0
   2: 00000000:1E15 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3078 1 0 100 0 0 10 0
";

    #[test]
    fn only_listening_sockets_on_the_port_count() {
        // 0x1E14 is 7700: the listener's uid, not the connected socket's.
        assert_eq!(listeners(TABLE, 7700), [1000]);
        assert_eq!(listeners(TABLE, 7701), [0]);
        assert!(listeners(TABLE, 80).is_empty());
        assert!(listeners("", 7700).is_empty());
    }

    #[test]
    fn this_processs_own_listener_is_found_with_its_uid() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = unsafe { libc::geteuid() };
        assert!(listening_uids(port).contains(&me));
    }
}
