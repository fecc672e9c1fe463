//! The data plane's desired state: what the translation layer produces and the
//! reconciler applies. Plain values, no Kubernetes types, no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

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

/// What a client addresses: a VIP, a port and a protocol. The data plane's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Frontend {
    /// The virtual IP (ClusterIP).
    pub ip: IpAddr,
    /// The service port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.ip, self.port),
            self.protocol
        )
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
    pub frontend: Frontend,
    /// Usable endpoints (ip:targetPort), sorted and without duplicates, of the
    /// frontend's address family. Empty means "refuse connections".
    pub backends: Vec<SocketAddr>,
    /// ClientIP session affinity timeout in seconds; `None` when affinity is off.
    pub affinity_timeout_s: Option<u32>,
}

/// Everything the data plane should serve, keyed by frontend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// The services.
    pub services: BTreeMap<Frontend, VirtualService>,
}

impl DesiredState {
    /// Adds a virtual service, replacing any with the same frontend.
    pub fn insert(&mut self, svc: VirtualService) {
        self.services.insert(svc.frontend, svc);
    }
}
