//! Conversions between the model ([`crate::model`]) and the map keys and values of
//! [`proxy_common`]: the only place that knows how a frontend, a backend, a kind or a
//! source range is spelled in the maps.

use std::net::SocketAddr;

use aya::maps::lpm_trie::Key as LpmKey;
use ipnetwork::IpNetwork;
use proxy_common as pc;
use proxy_common::{Addr, Backend, SourceRangeKey};

use crate::model::{self, FrontendKind, Protocol, Scope, ServicePortName};

/// The map key of a model frontend.
pub fn frontend_key(f: &model::FrontendKey) -> pc::FrontendKey {
    pc::FrontendKey {
        addr: Addr::from(f.ip),
        port_be: f.port.to_be(),
        proto: f.protocol.number(),
        scope: match f.scope {
            Scope::Internal => pc::scope::INTERNAL,
            Scope::External => pc::scope::EXTERNAL,
        },
    }
}

/// The model frontend of a map key (None for a protocol or scope we do not program).
pub fn model_frontend(k: &pc::FrontendKey) -> Option<model::FrontendKey> {
    Some(model::FrontendKey {
        ip: k.addr.ip(),
        port: u16::from_be(k.port_be),
        protocol: Protocol::from_number(k.proto)?,
        scope: match k.scope {
            pc::scope::INTERNAL => Scope::Internal,
            pc::scope::EXTERNAL => Scope::External,
            _ => return None,
        },
    })
}

/// The `FrontendValue::flags` bits of a frontend kind.
pub fn kind_flags(kind: FrontendKind) -> u32 {
    let k = match kind {
        FrontendKind::ClusterIp => pc::kind::CLUSTER_IP,
        FrontendKind::NodePort => pc::kind::NODE_PORT,
        FrontendKind::ExternalIp => pc::kind::EXTERNAL_IP,
        FrontendKind::LoadBalancer => pc::kind::LOAD_BALANCER,
    };
    k << pc::FRONTEND_KIND_SHIFT
}

/// The frontend kind stored in `FrontendValue::flags` (ClusterIP for unknown bits, as
/// the programs ignore the kind).
pub fn kind_of(flags: u32) -> FrontendKind {
    match (flags & pc::FRONTEND_KIND_MASK) >> pc::FRONTEND_KIND_SHIFT {
        pc::kind::NODE_PORT => FrontendKind::NodePort,
        pc::kind::EXTERNAL_IP => FrontendKind::ExternalIp,
        pc::kind::LOAD_BALANCER => FrontendKind::LoadBalancer,
        _ => FrontendKind::ClusterIp,
    }
}

/// The `FrontendValue::flags` of a service: its kind, and the features the programs
/// must check.
pub fn frontend_flags(svc: &model::VirtualService) -> u32 {
    let mut flags = kind_flags(svc.kind);
    if svc.affinity_timeout_s.is_some() {
        flags |= pc::FRONTEND_F_AFFINITY;
    }
    if !svc.source_ranges.is_empty() {
        flags |= pc::FRONTEND_F_SOURCE_RANGES;
    }
    flags
}

/// The ClientIP affinity timeout a frontend value holds (None when affinity is off).
pub fn affinity_of(value: &pc::FrontendValue) -> Option<u32> {
    (value.flags & pc::FRONTEND_F_AFFINITY != 0).then_some(value.affinity_timeout_s)
}

/// A service name as `SVC_NAMES` holds it, when that differs from `name` (it is
/// truncated to the map value's fixed size): what the kernel holds is what drift is
/// judged by. `None` for a name that fits whole, which is nearly every one.
pub fn held_name(name: &ServicePortName) -> Option<ServicePortName> {
    // `namespace/name[:port]`, measured without formatting it.
    let len = name.namespace.len()
        + 1
        + name.name.len()
        + if name.port.is_empty() {
            0
        } else {
            1 + name.port.len()
        };
    if len <= pc::ServiceName::default().name.len() {
        return None;
    }
    let full = name.to_string();
    let stored = pc::ServiceName::new(&full);
    (stored.as_str() != full).then(|| parse_name(stored.as_str()))
}

/// `namespace/name[:port]` back into its parts (as `ServicePortName` displays it).
pub fn parse_name(s: &str) -> ServicePortName {
    let (namespace, rest) = s.split_once('/').unwrap_or(("", s));
    let (name, port) = rest.split_once(':').unwrap_or((rest, ""));
    ServicePortName {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        port: port.to_owned(),
    }
}

/// The `BACKENDS` value of an endpoint of a frontend with protocol number `proto`.
pub fn backend(addr: &SocketAddr, proto: u8) -> Backend {
    Backend {
        addr: Addr::from(addr.ip()),
        port_be: addr.port().to_be(),
        proto,
        flags: 0,
    }
}

/// The endpoint a `BACKENDS` value stands for.
pub fn backend_addr(be: &Backend) -> SocketAddr {
    SocketAddr::new(be.addr.ip(), u16::from_be(be.port_be))
}

/// The `SOURCE_RANGES` key of one range of a frontend. The service id is matched
/// whole; an IPv4 range is stored IPv4-mapped, so its prefix is 96 bits longer.
pub fn source_range_key(service_id: u32, net: &IpNetwork) -> LpmKey<SourceRangeKey> {
    let mapped = if net.is_ipv4() { 96 } else { 0 };
    LpmKey::new(
        32 + mapped + u32::from(net.prefix()),
        SourceRangeKey {
            service_id_be: service_id.to_be(),
            addr: Addr::from(net.network()),
        },
    )
}

/// The service id and range of a `SOURCE_RANGES` key (None if malformed).
pub fn source_range_of(key: &LpmKey<SourceRangeKey>) -> Option<(u32, IpNetwork)> {
    let data = key.data();
    let ip = data.addr.ip();
    let mapped = if ip.is_ipv4() { 96 } else { 0 };
    let prefix = key.prefix_len().checked_sub(32 + mapped)?;
    let net = IpNetwork::new(ip, u8::try_from(prefix).ok()?).ok()?;
    Some((u32::from_be(data.service_id_be), net))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn names_round_trip_through_their_display_form() {
        for s in ["default/web:http", "default/web", "ns/a-b"] {
            assert_eq!(parse_name(s).to_string(), s);
        }
    }

    #[test]
    fn frontends_round_trip_through_their_keys() {
        for (ip, scope) in [
            ("10.96.0.1", Scope::Internal),
            ("0.0.0.0", Scope::External),
            ("fd00::1", Scope::External),
        ] {
            let f = model::FrontendKey {
                ip: ip.parse().unwrap(),
                port: 8080,
                protocol: Protocol::Udp,
                scope,
            };
            assert_eq!(model_frontend(&frontend_key(&f)), Some(f));
        }
        let mut k = frontend_key(&model::FrontendKey::internal(
            "10.96.0.1".parse().unwrap(),
            80,
            Protocol::Tcp,
        ));
        k.proto = 1;
        assert_eq!(model_frontend(&k), None, "ICMP is not programmed");
    }

    #[test]
    fn kinds_round_trip_through_the_flags() {
        for kind in [
            FrontendKind::ClusterIp,
            FrontendKind::NodePort,
            FrontendKind::ExternalIp,
            FrontendKind::LoadBalancer,
        ] {
            let flags = kind_flags(kind) | pc::FRONTEND_F_AFFINITY;
            assert_eq!(kind_of(flags), kind);
        }
    }

    #[test]
    fn source_ranges_round_trip_in_both_families() {
        for net in ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "::/0"] {
            let net: IpNetwork = net.parse().unwrap();
            assert_eq!(
                source_range_of(&source_range_key(42, &net)),
                Some((42, net))
            );
        }
    }

    #[test]
    fn backends_keep_their_address_and_port() {
        let a: SocketAddr = "[fd00::5]:8443".parse().unwrap();
        assert_eq!(backend_addr(&backend(&a, pc::proto::TCP)), a);
    }
}
