//! What `proxyctl list` shows, whichever data plane holds it: one [`ServiceView`] per
//! programmed frontend, read from the kernel (the eBPF maps by
//! [`super::ebpf::inspect`], IPVS by [`super::ipvs::inspect`]), with what only IPVS
//! has in [`IpvsView`].

use std::net::SocketAddr;

use ipnetwork::IpNetwork;

/// One programmed frontend as the kernel holds it.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServiceView {
    /// `namespace/name:port` as the agent recorded it ("" if unknown).
    pub service: String,
    /// The model frontend's form: `VIP:port/protocol`, `*:port/protocol` for a
    /// NodePort, with ` (external)` for the external scope.
    pub frontend: String,
    /// `ClusterIP`, `NodePort`, `ExternalIP` or `LoadBalancer`; "" for an IPVS
    /// virtual server no ipset of the agent names (not its own, or mid-write).
    pub kind: String,
    /// `internal` (clients on this node) or `external` (clients outside it).
    pub scope: String,
    /// The service id in the eBPF maps; 0 in IPVS mode, which has none.
    pub service_id: u32,
    /// ClientIP affinity timeout, if on (IPVS: the persistence timeout).
    pub affinity_timeout_s: Option<u32>,
    /// `loadBalancerSourceRanges` enforced on this frontend (empty: any source).
    pub source_ranges: Vec<IpNetwork>,
    /// The backends new connections go to: in slot order (eBPF), or the IPVS
    /// destinations of weight > 0 by address.
    pub backends: Vec<SocketAddr>,
    /// What IPVS holds besides (absent in eBPF mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipvs: Option<IpvsView>,
}

/// An IPVS virtual server's options and counters.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct IpvsView {
    /// The scheduler (`rr`, `wlc`, ...).
    pub scheduler: String,
    /// Whether a client sticks to its destination (ClientIP affinity).
    pub persistent: bool,
    /// The persistence timeout in seconds (meaningful when persistent).
    pub timeout_s: u32,
    /// The persistence netmask as a prefix length (32 or 128: each client alone).
    pub netmask: u8,
    /// The virtual server's counters, over all destinations.
    pub counters: IpvsCounters,
    /// Every destination, draining ones (weight 0) included, by address.
    pub destinations: Vec<IpvsDestinationView>,
}

/// One IPVS real server.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct IpvsDestinationView {
    /// Its address.
    pub address: SocketAddr,
    /// How packets reach it: `masquerade`, `local`, `tunnel`, `route` or `other`.
    pub forward: String,
    /// Its weight; 0 takes no new connections (being drained).
    pub weight: u32,
    /// Established connections (`ActiveConn`).
    pub active_connections: u32,
    /// Other connections (`InActConn`).
    pub inactive_connections: u32,
    /// Persistence templates pointing at it.
    pub persistent_connections: u32,
    /// Its counters.
    pub counters: IpvsCounters,
}

/// IPVS's own traffic counters (`ipvsadm -Ln --stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IpvsCounters {
    /// Connections scheduled.
    pub connections: u64,
    /// Packets from clients.
    pub packets_in: u64,
    /// Packets to clients.
    pub packets_out: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
}
