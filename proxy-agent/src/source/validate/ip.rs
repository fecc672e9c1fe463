//! Addresses and ranges, parsed the way kube-proxy parses them, and the special
//! addresses that cannot be external IPs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// Parses an IP address the way kube-proxy does (Go's `ParseIPSloppy`): IPv4 octets may
/// carry leading zeros (read as decimal, as objects created before Kubernetes 1.22 can
/// hold them), and an IPv4-mapped IPv6 address is the IPv4 address.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => Some(match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }),
        Ok(ip) => Some(ip),
        Err(_) => parse_ipv4_leading_zeros(s).map(IpAddr::V4),
    }
}

fn parse_ipv4_leading_zeros(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// Parses a `loadBalancerSourceRanges` entry: `address/prefix`, or a bare address
/// (a single host, `/32` or `/128`). Surrounding spaces are allowed (the API server
/// accepts them for historical reasons); the address parses like [`parse_ip`], and an
/// IPv4-mapped IPv6 range of prefix 96 or more is the IPv4 range it maps. The result
/// is normalized to its network address (`10.1.2.3/8` is `10.0.0.0/8`).
pub fn parse_cidr(s: &str) -> Option<IpNetwork> {
    let s = s.trim();
    let (addr, prefix) = match s.split_once('/') {
        Some((addr, prefix)) => {
            if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            (addr, Some(prefix.parse::<u8>().ok()?))
        }
        None => (s, None),
    };
    let (ip, prefix) = match addr.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => match (v6.to_ipv4_mapped(), prefix) {
            (Some(v4), None) => (IpAddr::V4(v4), 32),
            (Some(v4), Some(p)) if p >= 96 => (IpAddr::V4(v4), p - 96),
            (_, p) => (IpAddr::V6(v6), p.unwrap_or(128)),
        },
        Ok(IpAddr::V4(v4)) => (IpAddr::V4(v4), prefix.unwrap_or(32)),
        Err(_) => (
            IpAddr::V4(parse_ipv4_leading_zeros(addr)?),
            prefix.unwrap_or(32),
        ),
    };
    let net = IpNetwork::new(ip, prefix).ok()?;
    IpNetwork::new(net.network(), prefix).ok()
}

/// Why an address cannot be an external IP (the API server's `ValidateNonSpecialIP`),
/// if it cannot.
pub(super) fn special_ip(ip: &IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("the unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        return Some("a link-local address");
    }
    let link_local_multicast = match ip {
        IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v6) => is_link_local_multicast_v6(v6),
    };
    if link_local_multicast {
        return Some("a link-local multicast address");
    }
    None
}

fn is_link_local_multicast_v6(v6: &Ipv6Addr) -> bool {
    let o = v6.octets();
    o[0] == 0xff && (o[1] & 0x0f) == 0x02
}

/// The family name Kubernetes uses for an address.
pub fn family_name(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

#[cfg(test)]
mod tests;
