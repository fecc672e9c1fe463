//! The data plane's desired state: what the translation layer produces and the
//! reconciler applies. Plain values, no Kubernetes types, no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnetwork::IpNetwork;

/// A transport protocol the data plane balances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => proxy_common::proto::TCP,
            Protocol::Udp => proxy_common::proto::UDP,
        }
    }

    /// The protocol for an IP protocol number.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            proxy_common::proto::TCP => Some(Protocol::Tcp),
            proxy_common::proto::UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// Which clients a frontend serves; a service reached both ways has one frontend per
/// scope, each with its own backend set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Scope {
    /// Clients on this node: the socket programs, and ClusterIP traffic on the tc path.
    /// Uses `internalTrafficPolicy` for ClusterIPs and the cluster-wide endpoints for
    /// the other kinds (kube-proxy short-circuits in-cluster traffic to external
    /// addresses the same way).
    #[default]
    Internal,
    /// Clients outside the node (tc programs), with `externalTrafficPolicy` applied.
    External,
}

/// What kind of address a frontend is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum FrontendKind {
    /// `spec.clusterIPs`.
    #[default]
    ClusterIp,
    /// `spec.ports[].nodePort` on every NodePort address of the node; the frontend's
    /// `ip` is the unspecified address of its family.
    NodePort,
    /// `spec.externalIPs`.
    ExternalIp,
    /// `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIp => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
        })
    }
}

/// What a client addresses: an address, a port, a protocol and the scope of clients.
/// The data plane's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct FrontendKey {
    /// The virtual IP; unspecified (`0.0.0.0`, `::`) for a NodePort.
    pub ip: IpAddr,
    /// The service port, or the NodePort.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// Which clients.
    pub scope: Scope,
}

impl FrontendKey {
    /// An internal-scope frontend (what a ClusterIP has).
    pub fn internal(ip: IpAddr, port: u16, protocol: Protocol) -> Self {
        FrontendKey {
            ip,
            port,
            protocol,
            scope: Scope::Internal,
        }
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ip.is_unspecified() {
            write!(f, "*:{}/{}", self.port, self.protocol)?;
        } else {
            write!(
                f,
                "{}/{}",
                SocketAddr::new(self.ip, self.port),
                self.protocol
            )?;
        }
        if self.scope == Scope::External {
            f.write_str(" (external)")?;
        }
        Ok(())
    }
}

/// `namespace/name:port-name`, the identity kube-proxy gives a service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ServicePortName {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port's name ("" for a single unnamed port).
    pub port: String,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

/// One frontend and the backends it balances over.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VirtualService {
    /// Which service port this is.
    pub name: ServicePortName,
    /// What clients connect to.
    pub frontend: FrontendKey,
    /// Usable endpoints (ip:targetPort), sorted and without duplicates, of the
    /// frontend's address family. Empty means "refuse connections".
    pub backends: Vec<SocketAddr>,
    /// ClientIP session affinity timeout in seconds; `None` when affinity is off.
    pub affinity_timeout_s: Option<u32>,
    /// What kind of address the frontend is.
    pub kind: FrontendKind,
    /// `loadBalancerSourceRanges` of the frontend's family, for external LoadBalancer
    /// frontends; empty means every source is allowed.
    pub source_ranges: Vec<IpNetwork>,
    /// The traffic policy is `Local`: the backends are this node's own, and the
    /// client's address is kept (no masquerade). Set on external frontends under
    /// `externalTrafficPolicy: Local` and on ClusterIPs under
    /// `internalTrafficPolicy: Local`.
    pub node_local: bool,
}

/// A `healthCheckNodePort` of an `externalTrafficPolicy: Local` Service, answered with
/// the number of this node's endpoints (kube-proxy's service health server).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HealthCheck {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port to listen on.
    pub port: u16,
    /// Usable endpoints of the Service on this node (over all its ports, counted once
    /// per address).
    pub local_endpoints: usize,
}

/// Everything the data plane should serve, keyed by frontend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// The services.
    pub services: BTreeMap<FrontendKey, VirtualService>,
}

/// Where this node serves NodePorts: the other half of the desired state. Each backend
/// resolves it against the interfaces it sees (and follows them as they change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddresses {
    /// `--nodeport-addresses`.
    pub nodeport_addresses: NodePortAddresses,
    /// The Node's InternalIPs (empty when unknown, e.g. from manifests): what
    /// `primary` means when known.
    pub node_ips: Vec<IpAddr>,
}

/// Something a frontend needs that a data plane may not offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// ClientIP session affinity.
    SessionAffinity,
    /// `loadBalancerSourceRanges`.
    SourceRanges,
    /// Frontends for clients outside the node (NodePorts, externalIPs, LB IPs).
    ExternalScope,
    /// UDP.
    Udp,
    /// IPv6 frontends.
    Ipv6,
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Feature::SessionAffinity => "ClientIP session affinity",
            Feature::SourceRanges => "loadBalancerSourceRanges",
            Feature::ExternalScope => "external frontends",
            Feature::Udp => "UDP",
            Feature::Ipv6 => "IPv6",
        })
    }
}

impl VirtualService {
    /// The features this frontend needs.
    pub fn features(&self) -> Vec<Feature> {
        let mut out = Vec::new();
        if self.affinity_timeout_s.is_some() {
            out.push(Feature::SessionAffinity);
        }
        if !self.source_ranges.is_empty() {
            out.push(Feature::SourceRanges);
        }
        if self.frontend.scope == Scope::External {
            out.push(Feature::ExternalScope);
        }
        if self.frontend.protocol == Protocol::Udp {
            out.push(Feature::Udp);
        }
        if self.frontend.ip.is_ipv6() {
            out.push(Feature::Ipv6);
        }
        out
    }
}

/// What a data plane cannot do. Translation refuses a Service that needs one of these
/// (whole, with the reason), instead of the data plane failing it at every sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Features the data plane lacks.
    pub unsupported: Vec<Feature>,
}

impl Capabilities {
    /// Every feature is supported.
    pub fn all() -> Self {
        Capabilities::default()
    }

    /// The first feature `svc` needs that is not supported.
    pub fn missing(&self, svc: &VirtualService) -> Option<Feature> {
        svc.features()
            .into_iter()
            .find(|f| self.unsupported.contains(f))
    }
}

impl DesiredState {
    /// Adds a virtual service, replacing any with the same frontend.
    pub fn insert(&mut self, svc: VirtualService) {
        self.services.insert(svc.frontend, svc);
    }
}

/// `--nodeport-addresses`: where NodePorts are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// The node's primary address of each family (kube-proxy's default): the Node's
    /// InternalIPs when known, else the first address of each family on the interface
    /// holding the default route.
    Primary,
    /// Every local address inside one of these ranges.
    Cidrs(Vec<IpNetwork>),
    /// No NodePorts and no tc programs on external interfaces (ClusterIPs only, e.g.
    /// when something else serves NodePorts).
    None,
}

impl FromStr for NodePortAddresses {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "primary" => return Ok(NodePortAddresses::Primary),
            "none" => return Ok(NodePortAddresses::None),
            _ => {}
        }
        let mut cidrs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net: IpNetwork = part
                .parse()
                .map_err(|e| format!("{part:?} is not a CIDR (or \"primary\", \"none\"): {e}"))?;
            if net.ip() != net.network() {
                return Err(format!(
                    "{part:?} has host bits set; did you mean {}/{}?",
                    net.network(),
                    net.prefix()
                ));
            }
            cidrs.push(net);
        }
        if cidrs.is_empty() {
            return Err("expected CIDRs, \"primary\" or \"none\"".into());
        }
        Ok(NodePortAddresses::Cidrs(cidrs))
    }
}

impl fmt::Display for NodePortAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodePortAddresses::Primary => f.write_str("primary"),
            NodePortAddresses::None => f.write_str("none"),
            NodePortAddresses::Cidrs(c) => {
                let parts: Vec<String> = c.iter().map(ToString::to_string).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}
