//! The SSRF guard. A destination may not reach loopback, private, link-local, cloud metadata or
//! other reserved addresses unless the operator's allowlist admits the range. The check runs
//! on the addresses a host name resolves to, inside the HTTP client's resolver, so the address
//! checked is the address connected to: a DNS answer that changes between validation and
//! delivery (rebinding) cannot slip through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Which addresses outbound connections may use.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow: Arc<Vec<IpNet>>,
}

/// A refused address, with the reserved range it falls in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ip} is a {range} address; destinations may not reach it unless --allow-cidrs admits it")]
pub struct Blocked {
    pub ip: IpAddr,
    pub range: &'static str,
}

impl AddressPolicy {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self {
            allow: Arc::new(allow),
        }
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), Blocked> {
        let ip = ip.to_canonical();
        match reserved_range(ip) {
            Some(range) if !self.allow.iter().any(|net| net.contains(&ip)) => {
                Err(Blocked { ip, range })
            }
            _ => Ok(()),
        }
    }
}

/// The reserved range `ip` belongs to, if any. Public unicast addresses return `None`.
pub fn reserved_range(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => reserved_v4(v4),
        IpAddr::V6(v6) => reserved_v6(v6),
    }
}

fn reserved_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let range = match (a, b, c) {
        _ if ip.is_unspecified() => "unspecified",
        (0, _, _) => "\"this network\" (0.0.0.0/8)",
        (127, _, _) => "loopback",
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => "private",
        (169, 254, 169) if ip.octets()[3] == 254 => "cloud metadata",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "carrier-grade NAT (100.64.0.0/10)",
        (192, 0, 0) => "IETF protocol assignment (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved (240.0.0.0/4)",
        _ => return None,
    };
    Some(range)
}

fn reserved_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    let range = match seg[0] {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        // IPv4 embedded in NAT64 (64:ff9b::/96) is judged by its IPv4 address.
        0x0064 if seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] => {
            let [a, b] = seg[6].to_be_bytes();
            let [c, d] = seg[7].to_be_bytes();
            return reserved_v4(Ipv4Addr::new(a, b, c, d));
        }
        // 6to4 (2002::/16) carries an IPv4 address in its next 32 bits, which a relay may
        // route to: judged by it.
        0x2002 => {
            let [a, b] = seg[1].to_be_bytes();
            let [c, d] = seg[2].to_be_bytes();
            return reserved_v4(Ipv4Addr::new(a, b, c, d));
        }
        // Teredo (2001::/32) carries its server's IPv4 address in bits 32-63 and the client's,
        // inverted, in the last 32: judged by either.
        0x2001 if seg[1] == 0 => {
            let [a, b] = seg[2].to_be_bytes();
            let [c, d] = seg[3].to_be_bytes();
            let [e, f] = (!seg[6]).to_be_bytes();
            let [g, h] = (!seg[7]).to_be_bytes();
            return reserved_v4(Ipv4Addr::new(a, b, c, d))
                .or_else(|| reserved_v4(Ipv4Addr::new(e, f, g, h)));
        }
        0xfd00 if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => "cloud metadata",
        x if x & 0xfe00 == 0xfc00 => "unique local (private)",
        x if x & 0xffc0 == 0xfe80 => "link-local",
        x if x & 0xffc0 == 0xfec0 => "site-local (deprecated)",
        x if x & 0xff00 == 0xff00 => "multicast",
        0x2001 if seg[1] == 0x0db8 => "documentation",
        0x0100 if seg[1..4] == [0, 0, 0] => "discard-only (100::/64)",
        // Anything else outside 2000::/3 is unassigned or special.
        x if x & 0xe000 != 0x2000 => "reserved",
        _ => return None,
    };
    Some(range)
}

/// Why a host name could not be turned into an address to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("DNS lookup of {host} failed: {source}")]
    Lookup {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DNS lookup of {host} returned no address")]
    NoAddress { host: String },
    #[error("{host} resolves only to refused addresses: {blocked}")]
    Blocked { host: String, blocked: Blocked },
}

/// The HTTP client's resolver: system DNS, then the [`AddressPolicy`] on every address.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: AddressPolicy,
}

impl GuardedResolver {
    pub fn new(policy: AddressPolicy) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|source| ResolveError::Lookup {
                    host: host.clone(),
                    source,
                })?
                .collect();
            let mut first_refusal = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.check(addr.ip()) {
                    Ok(()) => true,
                    Err(blocked) => {
                        first_refusal.get_or_insert(blocked);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let err = match first_refusal {
                    Some(blocked) => ResolveError::Blocked { host, blocked },
                    None => ResolveError::NoAddress { host },
                };
                return Err(err.into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(ip: &str) -> bool {
        AddressPolicy::default().check(ip.parse().unwrap()).is_err()
    }

    #[test]
    fn reserved_ranges_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.5.5.5",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
            // 6to4 of 127.0.0.1 and of 10.0.0.1.
            "2002:7f00:1::1",
            "2002:a00:1::1",
            // Teredo whose client is 192.168.1.1 (stored inverted), server public.
            "2001:0:808:808::3f57:fefe",
            // Teredo whose server is 169.254.169.254.
            "2001:0:a9fe:a9fe::f7f7:f7f7",
        ] {
            assert!(blocked(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
            // 6to4 of 8.8.8.8; Teredo with public server and client.
            "2002:808:808::1",
            "2001:0:808:808::f7f7:f7f7",
        ] {
            assert!(!blocked(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn allowlist_admits_only_its_ranges() {
        let policy = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(policy.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        let err = policy.check("10.0.0.1".parse().unwrap()).unwrap_err();
        assert_eq!(err.range, "private");
        assert_eq!(
            policy
                .check("169.254.169.254".parse().unwrap())
                .unwrap_err()
                .range,
            "cloud metadata"
        );
    }

    #[tokio::test]
    async fn resolver_refuses_names_that_resolve_to_reserved_addresses() {
        use reqwest::dns::Resolve;
        let resolver = GuardedResolver::new(AddressPolicy::default());
        let err = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost resolved through the guard"),
            Err(err) => err,
        };
        let err = err.downcast::<ResolveError>().unwrap();
        assert!(matches!(*err, ResolveError::Blocked { .. }), "{err}");

        let open = GuardedResolver::new(AddressPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]));
        let addrs: Vec<_> = match open.resolve("localhost".parse().unwrap()).await {
            Ok(addrs) => addrs.collect(),
            Err(err) => panic!("{err}"),
        };
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
