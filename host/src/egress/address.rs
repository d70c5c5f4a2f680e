//! Which IP addresses egress refuses, by class. IPv6 addresses that carry
//! an IPv4 address (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`,
//! NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged as that address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The class of a refused address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10/8`, `172.16/12`, `192.168/16`, IPv6 unique-local `fc00::/7`.
    Private,
    /// `169.254/16` (where cloud metadata lives), `fe80::/10`.
    LinkLocal,
    /// Carrier-grade NAT, `100.64.0.0/10`.
    Cgnat,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// Broadcast, reserved, benchmarking, documentation and protocol
    /// ranges (`240/4`, `198.18/15`, `192.0.0/24`, `192.0.2/24`,
    /// `198.51.100/24`, `203.0.113/24`); every IPv6 address outside
    /// global unicast `2000::/3`, and inside it `2001::/23` (Teredo and
    /// other protocol assignments), `2001:db8::/32` and `3fff::/20`.
    Reserved,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::Loopback => "loopback",
            Refused::Private => "private",
            Refused::LinkLocal => "link-local (or metadata)",
            Refused::Cgnat => "carrier-grade NAT",
            Refused::Multicast => "multicast",
            Refused::Unspecified => "unspecified",
            Refused::Reserved => "reserved",
        })
    }
}

/// The class that refuses `ip`, or `None` for a public address.
pub fn refused(ip: IpAddr) -> Option<Refused> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(ip) {
            Some(v4) => refused_v4(v4),
            None => refused_v6(v6),
        },
    }
}

/// The IPv4 address an IPv6 address carries, if it carries one.
pub(crate) fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible; not :: or ::1).
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(low),
        // NAT64 well-known prefix.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        // 6to4: 2002:a.b.c.d::/48.
        [0x2002, a, b, ..] => Some(Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8)),
        _ => None,
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<Refused> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (127, _, _) => Refused::Loopback,
        (10, _, _) | (192, 168, _) => Refused::Private,
        (172, b, _) if (16..32).contains(&b) => Refused::Private,
        (169, 254, _) => Refused::LinkLocal,
        (100, b, _) if (64..128).contains(&b) => Refused::Cgnat,
        (224..=239, _, _) => Refused::Multicast,
        (0, _, _) => Refused::Unspecified,
        (240..=255, _, _) | (198, 18 | 19, _) | (192, 0, 0 | 2) | (198, 51, 100) | (203, 0, 113) => Refused::Reserved,
        _ => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<Refused> {
    let s = ip.segments();
    Some(match s {
        _ if ip.is_unspecified() => Refused::Unspecified,
        _ if ip.is_loopback() => Refused::Loopback,
        [first, ..] if first & 0xfe00 == 0xfc00 => Refused::Private,
        [first, ..] if first & 0xffc0 == 0xfe80 => Refused::LinkLocal,
        // Site-local (deprecated, fec0::/10): private in practice.
        [first, ..] if first & 0xffc0 == 0xfec0 => Refused::Private,
        [first, ..] if first & 0xff00 == 0xff00 => Refused::Multicast,
        // Only global unicast (2000::/3) is public; inside it, the IETF
        // protocol block (2001::/23: Teredo, ORCHID, benchmarking...) and
        // the documentation ranges are not.
        [first, ..] if first & 0xe000 != 0x2000 => Refused::Reserved,
        [0x2001, second, ..] if second < 0x0200 => Refused::Reserved,
        [0x2001, 0x0db8, ..] => Refused::Reserved,
        [first, ..] if first & 0xfff0 == 0x3ff0 => Refused::Reserved,
        _ => return None,
    })
}

/// Whether a host (a `Host` header, a URL's host) names this machine:
/// `localhost` or a loopback address, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host
            .rsplit_once(':')
            .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_are_this_machine() {
        for host in ["localhost", "localhost:7700", "127.0.0.1:7700", "127.9.9.9", "[::1]:7700", "[::1]", "LOCALHOST"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["", "evil.example", "evil.example:7700", "10.0.0.1:7700", "[::2]:80", "localhost.evil.example"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    fn class(text: &str) -> Option<Refused> {
        refused(text.parse().unwrap())
    }

    #[test]
    fn every_refused_class_in_both_families() {
        let cases = [
            ("127.0.0.1", Refused::Loopback),
            ("127.255.0.9", Refused::Loopback),
            ("::1", Refused::Loopback),
            ("10.0.0.1", Refused::Private),
            ("172.16.0.1", Refused::Private),
            ("172.31.255.255", Refused::Private),
            ("192.168.1.1", Refused::Private),
            ("fd12::1", Refused::Private),
            ("fd00:ec2::254", Refused::Private),
            ("169.254.169.254", Refused::LinkLocal),
            ("fe80::1", Refused::LinkLocal),
            ("100.64.0.1", Refused::Cgnat),
            ("100.127.255.255", Refused::Cgnat),
            ("224.0.0.1", Refused::Multicast),
            ("ff02::1", Refused::Multicast),
            ("0.0.0.0", Refused::Unspecified),
            ("0.1.2.3", Refused::Unspecified),
            ("::", Refused::Unspecified),
            ("255.255.255.255", Refused::Reserved),
            ("198.18.0.1", Refused::Reserved),
            ("192.0.2.1", Refused::Reserved),
            ("2001:db8::1", Refused::Reserved),
            // IPv4 carried in IPv6 is judged as that IPv4 address.
            ("::ffff:127.0.0.1", Refused::Loopback),
            ("::ffff:169.254.169.254", Refused::LinkLocal),
            ("::10.0.0.1", Refused::Private),
            ("64:ff9b::10.0.0.1", Refused::Private),
            ("2002:7f00:1::", Refused::Loopback),
            // Outside global unicast, or protocol and documentation ranges.
            ("64:ff9b:1::1", Refused::Reserved),
            ("2001::1", Refused::Reserved),
            ("2001:2::1", Refused::Reserved),
            ("3fff::1", Refused::Reserved),
            ("5f00::1", Refused::Reserved),
            ("::ffff:0:a00:1", Refused::Reserved),
            ("::0.0.1.2", Refused::Reserved),
            ("100::1", Refused::Reserved),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "93.184.215.14",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            assert_eq!(class(ip), None, "{ip}");
        }
    }
}
