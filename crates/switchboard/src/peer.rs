//! Who a client is, as far as per-IP limits and logs are concerned: the trusted proxies
//! (`server.trusted_proxies`), the forwarded header they set, and the key a client IP is
//! counted under (`server.ipv6_prefix`).
//!
//! A forwarded header is only believed when the TCP peer is a trusted proxy, and then only
//! the one header the operator named: a header the proxy does not set reaches us as the client
//! wrote it. Walking from the right, each hop a trusted proxy added is skipped; the first
//! address that is not a trusted proxy is the client. IPv6 clients are counted per prefix
//! (a /64 by default), since one host is handed a whole /64 and could otherwise open
//! connections from as many addresses as it likes. Imports nothing of the crate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::HeaderMap;
use serde::Deserialize;

/// The header a trusted proxy puts the client's address in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, cloud load balancers).
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    #[serde(rename = "forwarded")]
    Forwarded,
}

impl std::str::FromStr for ClientIpHeader {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(ClientIpHeader::XForwardedFor),
            "forwarded" => Ok(ClientIpHeader::Forwarded),
            other => Err(format!("{other:?}: use x-forwarded-for or forwarded")),
        }
    }
}

/// An address or a network: `10.0.0.0/8`, `192.0.2.7`, `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses an address (a network of one) or `address/prefix`.
    ///
    /// # Errors
    /// A message saying what is malformed.
    pub fn parse(text: &str) -> Result<IpNet, &'static str> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| "expected an IP address or a network such as 10.0.0.0/8")?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or("the prefix length must be 0-32 for IPv4, 0-128 for IPv6")?,
        };
        Ok(IpNet {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

/// `ip` with every bit past the first `prefix` cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & kept))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & kept))
        }
    }
}

/// The key a client is counted under for per-IP limits: an IPv4 address as it is (an
/// IPv4-mapped IPv6 address as its IPv4 address), an IPv6 address cut to its first
/// `ipv6_prefix` bits.
pub fn limit_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        v6 @ IpAddr::V6(_) => mask(v6, ipv6_prefix),
    }
}

/// The proxies whose forwarded header is believed, and which header that is.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ClientIpHeader,
}

impl TrustedProxies {
    /// Parses every entry of `server.trusted_proxies`.
    ///
    /// # Errors
    /// The entry that does not parse, and why.
    pub fn new(entries: &[String], header: ClientIpHeader) -> Result<TrustedProxies, String> {
        let nets = entries
            .iter()
            .map(|entry| IpNet::parse(entry).map_err(|message| format!("{entry:?}: {message}")))
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { nets, header })
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(ip))
    }

    /// The client's address: the TCP peer's, unless the peer is a trusted proxy, in which
    /// case the rightmost address of the forwarded header that is not itself a trusted proxy.
    /// A hop that is not an address (`unknown`, an obfuscated name, garbage) ends the walk at
    /// the last address a trusted proxy vouched for, since nothing left of it can be trusted.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if self.nets.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let hops = match self.header {
            ClientIpHeader::XForwardedFor => list(headers, "x-forwarded-for"),
            ClientIpHeader::Forwarded => list(headers, "forwarded")
                .into_iter()
                .map(forwarded_for)
                .collect(),
        };
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// Every comma-separated element of every `name` header, in order.
fn list<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| {
            // A value that is not visible ASCII is one unreadable hop, not no hop: it must
            // end the walk rather than be skipped.
            let text = value.to_str().unwrap_or("\u{0}");
            text.split(',')
        })
        .map(str::trim)
        .collect()
}

/// The `for=` value of one RFC 7239 element (`for=192.0.2.1;proto=https`), unquoted; an
/// element without one is an unreadable hop.
fn forwarded_for(element: &str) -> &str {
    element
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
        .map(|(_, value)| value.trim().trim_matches('"'))
        .unwrap_or("")
}

/// One hop as an address: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Some(rest) = hop.strip_prefix('[') {
        let (v6, _port) = rest.split_once(']')?;
        return v6
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| IpAddr::V6(ip).to_canonical());
    }
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    // An IPv4 address with a port (an IPv6 address with a port is always bracketed).
    let (v4, port) = hop.split_once(':')?;
    port.parse::<u16>().ok()?;
    v4.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(name: &'static str, values: &[&'static str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn ipv6_clients_are_counted_per_prefix_and_ipv4_per_address() {
        assert_eq!(
            limit_key(ip("2001:db8:1:2:aaaa::1"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            limit_key(ip("2001:db8:1:2:aaaa::1"), 64),
            limit_key(ip("2001:db8:1:2:ffff:1:2:3"), 64)
        );
        assert_ne!(
            limit_key(ip("2001:db8:1:2::1"), 64),
            limit_key(ip("2001:db8:1:3::1"), 64)
        );
        assert_eq!(limit_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(limit_key(ip("2001:db8:1:2::1"), 48), ip("2001:db8:1::"));
        assert_eq!(limit_key(ip("192.0.2.7"), 64), ip("192.0.2.7"));
        assert_eq!(
            limit_key(ip("::ffff:192.0.2.7"), 64),
            ip("192.0.2.7"),
            "an IPv4-mapped address is its IPv4 address, not a /64 shared with every IPv4 client"
        );
    }

    #[test]
    fn networks_parse_and_match() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.200.3.4")));
        assert!(net.contains(ip("::ffff:10.1.1.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        let one = IpNet::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "::/129", "host.example", "10.0.0.0/x", ""] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_headers_are_ignored_from_an_untrusted_peer() {
        let proxies =
            TrustedProxies::new(&["10.0.0.0/8".into()], ClientIpHeader::XForwardedFor).unwrap();
        let xff = headers("x-forwarded-for", &["203.0.113.9"]);
        assert_eq!(proxies.client_ip(ip("192.0.2.1"), &xff), ip("192.0.2.1"));
        let none = TrustedProxies::default();
        assert_eq!(none.client_ip(ip("10.0.0.1"), &xff), ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let proxies = TrustedProxies::new(
            &["10.0.0.0/8".into(), "2001:db8::/32".into()],
            ClientIpHeader::XForwardedFor,
        )
        .unwrap();
        let peer = ip("10.0.0.1");
        // The client forged the leftmost entry; the proxies appended the rest.
        let xff = headers(
            "x-forwarded-for",
            &["1.1.1.1, 203.0.113.9", "10.0.0.7:8080, [2001:db8::5]:443"],
        );
        assert_eq!(proxies.client_ip(peer, &xff), ip("203.0.113.9"));
        // Every hop trusted: the leftmost one.
        let inner = headers("x-forwarded-for", &["10.1.1.1, 10.2.2.2"]);
        assert_eq!(proxies.client_ip(peer, &inner), ip("10.1.1.1"));
        // No header: the proxy itself.
        assert_eq!(proxies.client_ip(peer, &HeaderMap::new()), peer);
        // An unreadable hop stops the walk at the last address a trusted proxy vouched for.
        let garbage = headers("x-forwarded-for", &["203.0.113.9, unknown, 10.3.3.3"]);
        assert_eq!(proxies.client_ip(peer, &garbage), ip("10.3.3.3"));
    }

    #[test]
    fn rfc_7239_for_values_are_read_when_named() {
        let proxies =
            TrustedProxies::new(&["10.0.0.0/8".into()], ClientIpHeader::Forwarded).unwrap();
        let peer = ip("10.0.0.1");
        let forwarded = headers(
            "forwarded",
            &[
                "for=1.1.1.1, For=\"[2001:db8:cafe::17]:4711\";proto=https",
                "for=10.9.9.9;by=10.0.0.1",
            ],
        );
        assert_eq!(proxies.client_ip(peer, &forwarded), ip("2001:db8:cafe::17"));
        let with_port = headers("forwarded", &["for=\"198.51.100.3:5555\""]);
        assert_eq!(proxies.client_ip(peer, &with_port), ip("198.51.100.3"));
        let hidden = headers("forwarded", &["for=198.51.100.3, for=_hidden"]);
        assert_eq!(proxies.client_ip(peer, &hidden), peer);
        // X-Forwarded-For is not the named header here, so it is the client's own text.
        let xff = headers("x-forwarded-for", &["198.51.100.3"]);
        assert_eq!(proxies.client_ip(peer, &xff), peer);
    }
}
