//! kube-proxy's ipsets of the IPVS mode, which its constant netfilter rules match
//! (masquerading, source ranges, rejecting unknown ports): their names, types and
//! what they hold. The members naming a frontend carry the service port's name as
//! comment (`ns/name:port`), which is how the backend recovers names after a restart
//! (IPVS itself stores none). Which members a frontend has: [`super::plan`].

use super::netlink::{self, SetFamily, SetSpec, SetType};
use crate::model::{Protocol, ServicePortName};

/// One of the ipsets kube-proxy's IPVS mode keeps, which the netfilter rules match.
/// Named as kube-proxy names them: [`KubeSet::name`] in IPv4, with `KUBE-6-` instead of
/// `KUBE-` in IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KubeSet {
    /// The IPv4 name.
    pub name: &'static str,
    /// The set type.
    pub kind: SetType,
    /// What kube-proxy's comment on the set says it holds.
    pub holds: &'static str,
}

impl KubeSet {
    /// The set's name in the family: as kube-proxy names them, truncated to the 31
    /// bytes an ipset name may have (`KUBE-6-LOAD-BALANCER-SOURCE-CID`).
    pub fn name_for(&self, v6: bool) -> String {
        if v6 {
            let mut name = self.name.replacen("KUBE-", "KUBE-6-", 1);
            name.truncate(31);
            name
        } else {
            self.name.to_owned()
        }
    }

    /// The set as created in the family.
    pub fn spec(&self, v6: bool) -> SetSpec {
        let family = if v6 {
            SetFamily::Inet6
        } else {
            SetFamily::Inet
        };
        let mut spec = SetSpec::new(&self.name_for(v6), self.kind, family);
        if !self.kind.is_bitmap() {
            spec.maxelem = Some(MAXELEM);
        }
        spec
    }
}

/// The most members a set may hold. kube-proxy keeps ipset's default, 65,536, which
/// `KUBE-LOOP-BACK` (one member per endpoint and port) outgrows at 10,000 services of
/// ten endpoints; a hash set's memory follows its members, not this cap.
pub const MAXELEM: u32 = 1 << 20;

/// The temporary name of a set being rebuilt with other parameters (see
/// `kernel::rebuild`); `--cleanup` removes a leftover.
pub const REBUILD: &str = "KUBE-PROXY-AGENT-REBUILD";

const fn kube_set(name: &'static str, kind: SetType, holds: &'static str) -> KubeSet {
    KubeSet { name, kind, holds }
}

/// `vip,proto:port` of every ClusterIP.
pub const CLUSTER_IP: KubeSet = kube_set(
    "KUBE-CLUSTER-IP",
    SetType::HashIpPort,
    "Kubernetes service cluster ip + port for masquerade purpose",
);
/// `ep,proto:port,ep`: an endpoint reaching itself through its service (hairpin).
pub const LOOP_BACK: KubeSet = kube_set(
    "KUBE-LOOP-BACK",
    SetType::HashIpPortIp,
    "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose",
);
/// `ip,proto:port` of every externalIP.
pub const EXTERNAL_IP: KubeSet = kube_set(
    "KUBE-EXTERNAL-IP",
    SetType::HashIpPort,
    "Kubernetes service external ip + port for masquerade and filter purpose",
);
/// The externalIPs of `externalTrafficPolicy: Local` services (not masqueraded).
pub const EXTERNAL_IP_LOCAL: KubeSet = kube_set(
    "KUBE-EXTERNAL-IP-LOCAL",
    SetType::HashIpPort,
    "Kubernetes service external ip + port with externalTrafficPolicy=local",
);
/// `ip,proto:port` of every load balancer IP.
pub const LOAD_BALANCER: KubeSet = kube_set(
    "KUBE-LOAD-BALANCER",
    SetType::HashIpPort,
    "Kubernetes service lb portal",
);
/// The load balancer IPs of `externalTrafficPolicy: Local` services.
pub const LOAD_BALANCER_LOCAL: KubeSet = kube_set(
    "KUBE-LOAD-BALANCER-LOCAL",
    SetType::HashIpPort,
    "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
);
/// The load balancer IPs with `loadBalancerSourceRanges` (filtered).
pub const LOAD_BALANCER_FW: KubeSet = kube_set(
    "KUBE-LOAD-BALANCER-FW",
    SetType::HashIpPort,
    "Kubernetes service load balancer ip + port for load balancer with sourceRange",
);
/// `lb,proto:port,src`: a source address allowed by a one-address source range.
pub const LOAD_BALANCER_SOURCE_IP: KubeSet = kube_set(
    "KUBE-LOAD-BALANCER-SOURCE-IP",
    SetType::HashIpPortIp,
    "Kubernetes service load balancer ip + port + source IP for packet filter purpose",
);
/// `lb,proto:port,cidr`: a source range allowed to reach a load balancer IP.
pub const LOAD_BALANCER_SOURCE_CIDR: KubeSet = kube_set(
    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    SetType::HashIpPortNet,
    "Kubernetes service load balancer ip + port + source cidr for packet filter purpose",
);
/// TCP NodePorts.
pub const NODE_PORT_TCP: KubeSet = kube_set(
    "KUBE-NODE-PORT-TCP",
    SetType::BitmapPort,
    "Kubernetes nodeport TCP port for masquerade purpose",
);
/// TCP NodePorts of `externalTrafficPolicy: Local` services.
pub const NODE_PORT_LOCAL_TCP: KubeSet = kube_set(
    "KUBE-NODE-PORT-LOCAL-TCP",
    SetType::BitmapPort,
    "Kubernetes nodeport TCP port with externalTrafficPolicy=local",
);
/// UDP NodePorts.
pub const NODE_PORT_UDP: KubeSet = kube_set(
    "KUBE-NODE-PORT-UDP",
    SetType::BitmapPort,
    "Kubernetes nodeport UDP port for masquerade purpose",
);
/// UDP NodePorts of `externalTrafficPolicy: Local` services.
pub const NODE_PORT_LOCAL_UDP: KubeSet = kube_set(
    "KUBE-NODE-PORT-LOCAL-UDP",
    SetType::BitmapPort,
    "Kubernetes nodeport UDP port with externalTrafficPolicy=local",
);
/// The health check node ports (`healthCheckNodePort`), accepted by the filter rules.
pub const HEALTH_CHECK_NODE_PORT: KubeSet = kube_set(
    "KUBE-HEALTH-CHECK-NODE-PORT",
    SetType::BitmapPort,
    "Kubernetes health check node port",
);
/// Every address on the dummy interface: what reaches one of them on a port no
/// virtual server has is rejected.
pub const IPVS_IPS: KubeSet = kube_set(
    "KUBE-IPVS-IPS",
    SetType::HashIp,
    "IPVS service cluster ip + port for filter purpose",
);

/// Every set of the IPVS mode, created at start in each family (the rules refer to
/// them, so they exist even when empty).
pub const KUBE_SETS: [KubeSet; 15] = [
    CLUSTER_IP,
    LOOP_BACK,
    EXTERNAL_IP,
    EXTERNAL_IP_LOCAL,
    LOAD_BALANCER,
    LOAD_BALANCER_LOCAL,
    LOAD_BALANCER_FW,
    LOAD_BALANCER_SOURCE_IP,
    LOAD_BALANCER_SOURCE_CIDR,
    NODE_PORT_TCP,
    NODE_PORT_LOCAL_TCP,
    NODE_PORT_UDP,
    NODE_PORT_LOCAL_UDP,
    HEALTH_CHECK_NODE_PORT,
    IPVS_IPS,
];

/// Whether a member of the set `name` keeps a frontend's traffic from being
/// masqueraded (`externalTrafficPolicy: Local`): the `-LOCAL` sets.
pub fn exempts_from_masquerade(name: &str) -> bool {
    [
        EXTERNAL_IP_LOCAL,
        LOAD_BALANCER_LOCAL,
        NODE_PORT_LOCAL_TCP,
        NODE_PORT_LOCAL_UDP,
    ]
    .iter()
    .any(|s| s.name_for(false) == name || s.name_for(true) == name)
}

/// Every set name of this mode, both families.
pub fn all() -> impl Iterator<Item = String> {
    KUBE_SETS
        .iter()
        .flat_map(|set| [set.name_for(false), set.name_for(true)])
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
    fn every_set_has_an_ipv4_and_an_ipv6_name_as_kube_proxy_s() {
        assert_eq!(CLUSTER_IP.name_for(true), "KUBE-6-CLUSTER-IP");
        assert_eq!(
            LOAD_BALANCER_SOURCE_CIDR.name_for(true),
            "KUBE-6-LOAD-BALANCER-SOURCE-CID"
        );
        assert_eq!(
            NODE_PORT_LOCAL_TCP.spec(true).family,
            SetFamily::Unspec,
            "bitmap:port has no family"
        );
        assert_eq!(LOAD_BALANCER.spec(true).family, SetFamily::Inet6);
        let names: Vec<String> = all().collect();
        assert_eq!(names.len(), 2 * KUBE_SETS.len());
        assert!(names.iter().all(|n| n.len() <= 31), "ipset names fit");
    }
}
