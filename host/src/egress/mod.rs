//! Egress the host makes on users' behalf (completion callbacks): one
//! guarded HTTP client. A user chooses the address, so the client refuses
//! every address a user must not reach through the host — loopback,
//! private, link-local (cloud metadata included), CGNAT, multicast,
//! unspecified, reserved and documentation ranges, IPv4 and IPv6 alike,
//! IPv4 inside IPv6 (mapped, compatible, NAT64, 6to4) judged as the IPv4
//! address it carries — unless the operator's allow-list names it.
//!
//! The check is made on the addresses the connection is actually made to:
//! the client's resolver returns only addresses that pass, so a name
//! cannot resolve to a public address for the check and a private one for
//! the connection. IP-literal URLs (which skip the resolver) are checked
//! before the request. Redirects are not followed, and no proxy is used.

mod address;

pub use address::{Refused, is_loopback_host, refused};

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A network (`10.0.0.0/8`) or one address (`10.1.2.3`), as
/// `serve --egress-allow` and the file's `[egress] allow` take them.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is not a network (e.g. 10.0.0.0/8) or an IP address"))
}

/// Which addresses egress may reach besides public ones. Clones share
/// the allow-list, so a change ([`EgressPolicy::set_allowed`], from the
/// configuration file) reaches every client made from the policy at once.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// The networks given at start (`serve --egress-allow`).
    base: Arc<Vec<IpNet>>,
    /// Networks let through although their class is refused (e.g. a
    /// receiver on `10.0.0.0/8`): `base`, or the file's `[egress] allow`.
    allow: Arc<RwLock<Vec<IpNet>>>,
}

impl EgressPolicy {
    /// A policy that also lets `allow` through.
    pub fn allowing(allow: Vec<IpNet>) -> Self {
        Self { base: Arc::new(allow.clone()), allow: Arc::new(RwLock::new(allow)) }
    }

    /// The networks let through now.
    pub fn allowed(&self) -> Vec<IpNet> {
        crate::sync::read(&self.allow).clone()
    }

    /// Lets `allow` through from now on (`None`: the networks given at
    /// start again).
    pub fn set_allowed(&self, allow: Option<Vec<IpNet>>) {
        *crate::sync::write(&self.allow) = allow.unwrap_or_else(|| self.base.to_vec());
    }

    /// Why `ip` may not be reached, or `None` when it may.
    pub fn check(&self, ip: IpAddr) -> Option<Refused> {
        let why = refused(ip)?;
        if crate::sync::read(&self.allow)
            .iter()
            .any(|net| net.contains(&ip) || address::embedded_v4(ip).is_some_and(|v4| net.contains(&IpAddr::V4(v4))))
        {
            return None;
        }
        Some(why)
    }

    /// Parses and checks a URL before a request: its scheme is http or
    /// https, and a host that is an IP address passes
    /// [`EgressPolicy::check`] (a name is checked by the client's resolver
    /// when it connects).
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, EgressError> {
        let url = reqwest::Url::parse(url).map_err(|e| EgressError::NotAUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EgressError::Scheme(url.scheme().to_owned()));
        }
        let host = url.host_str().ok_or(EgressError::NoHost)?;
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>()
            && let Some(why) = self.check(ip)
        {
            return Err(EgressError::Refused { host: host.to_owned(), ip, why });
        }
        Ok(url)
    }

    /// An HTTP client under this policy: its resolver drops refused
    /// addresses, it follows no redirects and uses no proxy.
    pub fn client(&self, connect_timeout: Duration, timeout: Duration) -> reqwest::ClientBuilder {
        crate::tls::install_crypto_provider();
        reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { policy: self.clone() }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
    }
}

/// Why an address or URL is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EgressError {
    /// Not a URL at all.
    #[error("not a URL: {0}")]
    NotAUrl(String),
    /// Not http or https.
    #[error("the scheme `{0}` is not allowed: use http or https")]
    Scheme(String),
    /// No host in the URL.
    #[error("the URL has no host")]
    NoHost,
    /// The address is in a refused class.
    #[error(
        "{host} is {ip}, a {why} address, which the host does not reach on users' behalf (the operator may allow it with --egress-allow)"
    )]
    Refused {
        /// The host as written.
        host: String,
        /// The address.
        ip: IpAddr,
        /// Its class.
        why: Refused,
    },
    /// The name resolved only to refused addresses.
    #[error(
        "{host} resolves only to addresses the host does not reach on users' behalf ({found}); the operator may allow them with --egress-allow"
    )]
    ResolvesToRefused {
        /// The name.
        host: String,
        /// Each address and its class.
        found: String,
    },
}

/// The policy's refusal somewhere in `error`'s chain of sources (a
/// request the guarded client's resolver refused), if it is there.
pub fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a EgressError> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<EgressError>() {
            return Some(refused);
        }
        source = e.source();
    }
    None
}

/// The client's resolver: the system's, less refused addresses.
struct GuardedResolver {
    policy: EgressPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (allowed, refused): (Vec<_>, Vec<_>) =
                resolved.into_iter().partition(|a| policy.check(a.ip()).is_none());
            if allowed.is_empty() && !refused.is_empty() {
                let found: Vec<String> =
                    refused.iter().map(|a| format!("{}: {}", a.ip(), policy.check(a.ip()).expect("refused"))).collect();
                return Err(Box::new(EgressError::ResolvesToRefused { host, found: found.join(", ") }) as _);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_refused_literal_addresses_or_other_schemes_are_refused() {
        let policy = EgressPolicy::default();
        for url in [
            "http://127.0.0.1/hook",
            "http://2130706433/hook",
            "http://0x7f.1/hook",
            "http://[::1]/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://10.1.2.3/",
            "http://[fd00:ec2::254]/",
            "http://0.0.0.0:80/",
        ] {
            assert!(matches!(policy.check_url(url), Err(EgressError::Refused { .. })), "{url}");
        }
        assert!(matches!(policy.check_url("file:///etc/passwd"), Err(EgressError::Scheme(_))));
        assert!(matches!(policy.check_url("not a url"), Err(EgressError::NotAUrl(_))));
        assert!(policy.check_url("https://93.184.215.14/x").is_ok());
        assert!(policy.check_url("https://example.com/x").is_ok());
    }

    #[test]
    fn the_allow_list_lets_named_networks_through() {
        let policy = EgressPolicy::allowing(vec!["127.0.0.0/8".parse().unwrap(), "10.9.0.0/16".parse().unwrap()]);
        assert_eq!(policy.check("127.0.0.1".parse().unwrap()), None);
        assert_eq!(policy.check("::ffff:127.0.0.1".parse().unwrap()), None);
        assert_eq!(policy.check("10.9.1.1".parse().unwrap()), None);
        assert_eq!(policy.check("10.8.1.1".parse().unwrap()), Some(Refused::Private));
        assert_eq!(policy.check("::1".parse().unwrap()), Some(Refused::Loopback));
        // A change reaches every clone; none gives the start's list back.
        let clone = policy.clone();
        policy.set_allowed(Some(vec![parse_network("::1").unwrap()]));
        assert_eq!(clone.check("::1".parse().unwrap()), None);
        assert_eq!(clone.check("127.0.0.1".parse().unwrap()), Some(Refused::Loopback));
        policy.set_allowed(None);
        assert_eq!(clone.check("127.0.0.1".parse().unwrap()), None);
        assert!(parse_network("nope").unwrap_err().contains("not a network"));
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_when_connecting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = EgressPolicy::default().client(Duration::from_secs(2), Duration::from_secs(2)).build().unwrap();
        let error = client.get(format!("http://localhost:{port}/")).send().await.unwrap_err();
        let refused = refusal_in(&error).expect("the policy refused it").to_string();
        assert!(refused.contains("localhost resolves only to addresses") && refused.contains("loopback"), "{refused}");
        // Allowed, the same name connects.
        let allowed = EgressPolicy::allowing(vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
        let client = allowed.client(Duration::from_secs(2), Duration::from_secs(2)).build().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buffer).await.unwrap();
                assert!(n > 0, "the request never arrived");
                head.extend_from_slice(&buffer[..n]);
            }
            let _ = socket.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await;
        });
        assert_eq!(client.get(format!("http://localhost:{port}/")).send().await.unwrap().status(), 204);
    }
}
