//! Which ipset holds a frontend, and the member that stands for it: kube-proxy's
//! `hash:ip,port` sets of `vip,proto:port`, one per frontend kind and family, each
//! member commented with the service port's name (`ns/name:port`), which is how the
//! backend recovers names after a restart (IPVS itself stores none).
//!
//! The sets are for the netfilter rules (masquerading, dropping unknown ports) that
//! later work adds; the backend keeps them exact already.

use std::net::IpAddr;

use super::netlink::{self, Entry, SetFamily, SetSpec, SetType};
use crate::model::{FrontendKey, FrontendKind, Protocol, ServicePortName};

/// The kinds with a set, and its IPv4 and IPv6 names (kube-proxy's).
pub const SETS: [(FrontendKind, &str, &str); 3] = [
    (
        FrontendKind::ClusterIp,
        "KUBE-CLUSTER-IP",
        "KUBE-6-CLUSTER-IP",
    ),
    (
        FrontendKind::ExternalIp,
        "KUBE-EXTERNAL-IP",
        "KUBE-6-EXTERNAL-IP",
    ),
    (
        FrontendKind::LoadBalancer,
        "KUBE-LOAD-BALANCER",
        "KUBE-6-LOAD-BALANCER",
    ),
];

/// The set of frontends of `kind` in `ip`'s family; `None` for a NodePort.
pub fn spec(kind: FrontendKind, ip: IpAddr) -> Option<SetSpec> {
    let (_, v4, v6) = SETS.iter().find(|(k, _, _)| *k == kind)?;
    Some(if ip.is_ipv4() {
        SetSpec::new(v4, SetType::HashIpPort, SetFamily::Inet)
    } else {
        SetSpec::new(v6, SetType::HashIpPort, SetFamily::Inet6)
    })
}

/// Every set name with its kind.
pub fn all() -> impl Iterator<Item = (FrontendKind, &'static str)> {
    SETS.iter().flat_map(|(k, v4, v6)| [(*k, *v4), (*k, *v6)])
}

/// The member for `frontend` (without a comment).
pub fn member(frontend: &FrontendKey) -> Entry {
    Entry::ip_port(frontend.ip, ipvs_protocol(frontend.protocol), frontend.port)
}

/// The IPVS (and ipset) protocol of a model protocol.
pub fn ipvs_protocol(p: Protocol) -> netlink::Protocol {
    match p {
        Protocol::Tcp => netlink::Protocol::Tcp,
        Protocol::Udp => netlink::Protocol::Udp,
    }
}

/// The model protocol of an IPVS protocol; `None` for one the agent never writes.
pub fn model_protocol(p: netlink::Protocol) -> Option<Protocol> {
    match p {
        netlink::Protocol::Tcp => Some(Protocol::Tcp),
        netlink::Protocol::Udp => Some(Protocol::Udp),
        _ => None,
    }
}

/// A service port's name from a member's comment (`ns/name` or `ns/name:port`);
/// `None` if the comment is not one.
pub fn parse_name(comment: &str) -> Option<ServicePortName> {
    let (namespace, rest) = comment.split_once('/')?;
    let (name, port) = rest.split_once(':').unwrap_or((rest, ""));
    (!namespace.is_empty() && !name.is_empty()).then(|| ServicePortName {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        port: port.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_comments() {
        for (namespace, name, port) in [("default", "web", "http"), ("kube-system", "dns", "")] {
            let n = ServicePortName {
                namespace: namespace.into(),
                name: name.into(),
                port: port.into(),
            };
            assert_eq!(parse_name(&n.to_string()), Some(n));
        }
        for bad in ["", "noslash", "/name", "ns/"] {
            assert_eq!(parse_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn each_kind_and_family_has_its_set_and_node_ports_none() {
        let v4: IpAddr = "10.96.0.10".parse().expect("ip");
        let v6: IpAddr = "fd00::10".parse().expect("ip");
        let name = |kind, ip| spec(kind, ip).map(|s| (s.name, s.family));
        assert_eq!(
            name(FrontendKind::ClusterIp, v4),
            Some(("KUBE-CLUSTER-IP".into(), SetFamily::Inet))
        );
        assert_eq!(
            name(FrontendKind::LoadBalancer, v6),
            Some(("KUBE-6-LOAD-BALANCER".into(), SetFamily::Inet6))
        );
        assert_eq!(name(FrontendKind::NodePort, v4), None);
        assert_eq!(all().count(), 6);
    }
}
