//! What `proxyctl list` shows, whichever data plane holds it: one [`ServiceView`] per
//! programmed frontend, read from the kernel (the eBPF maps by
//! [`super::ebpf::inspect`], IPVS by [`super::ipvs::inspect`]), with what only IPVS
//! has in [`IpvsView`].

use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;

/// What the eBPF programs use to choose a backend, in `ipvsadm`'s column: a uniformly
/// random slot per TCP connection and tc flow (a connected UDP socket hashes its
/// cookie instead, so that it keeps its backend). Each slot holds one backend.
pub const EBPF_SCHEDULER: &str = "random";

/// One programmed frontend as the kernel holds it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ServiceView {
    /// `namespace/name:port` as the agent recorded it ("" if unknown).
    pub service: String,
    /// The model frontend's form: `VIP:port/protocol`, `*:port/protocol` for a
    /// NodePort, with ` (external)` for the external scope.
    pub frontend: String,
    /// The frontend's address: the VIP, or the unspecified address of its family for
    /// a NodePort (which the eBPF data plane serves on every node address).
    pub ip: IpAddr,
    /// The frontend's port.
    pub port: u16,
    /// `TCP`, `UDP` (or, in IPVS mode, `SCTP` or the protocol number).
    pub protocol: String,
    /// How a backend is chosen: [`EBPF_SCHEDULER`], or the IPVS scheduler (`rr`, ...).
    pub scheduler: String,
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
    /// Every backend the kernel holds for this frontend, with its weight, state and
    /// connections: the `backends`, then (IPVS weight 0, or eBPF flows still tracked
    /// to a backend no slot names) the draining ones.
    pub endpoints: Vec<EndpointView>,
    /// Its traffic (`ipvsadm -Ln --stats`): IPVS's own service counters, or (eBPF) the
    /// sum over the backends listed with statistics; None from an eBPF data plane that
    /// predates them.
    pub stats: Option<TrafficStats>,
    /// Per second over `proxyctl list --rate`'s interval (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<TrafficRate>,
    /// What IPVS holds besides (absent in eBPF mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipvs: Option<IpvsView>,
}

/// One backend of a frontend, as `ipvsadm -Ln` shows a real server.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EndpointView {
    /// Its address.
    pub address: SocketAddr,
    /// Its share of new connections: the IPVS weight, or the number of eBPF slots
    /// holding it.
    pub weight: u32,
    /// Whether it takes new connections.
    pub state: EndpointState,
    /// Established connections, where the data plane keeps them: IPVS's
    /// `ActiveConn`; in eBPF mode the tc path's established flows for an
    /// external-scope frontend. `None` for an internal-scope eBPF frontend, whose
    /// connections are translated once at `connect()` and leave no state to count.
    pub active_connections: Option<u32>,
    /// The other tracked connections (opening, closing; IPVS's `InActConn`), where
    /// known, as above.
    pub inactive_connections: Option<u32>,
    /// Its traffic in this frontend; None where not counted (eBPF: a draining backend,
    /// which left the frontend's set, or one past the statistics table's capacity).
    pub stats: Option<TrafficStats>,
    /// Per second over `proxyctl list --rate`'s interval (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<TrafficRate>,
}

/// Traffic counted since a backend joined a frontend (IPVS: since the virtual server
/// or destination was made), `ipvsadm -Ln --stats`'s columns. The packet and byte
/// counts are None where the data plane cannot see them: the eBPF socket programs
/// balance a connection once, at connect(), and see none of its packets, so a
/// frontend or backend any of whose connections they balanced has only its
/// connections counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrafficStats {
    /// Connections (eBPF: connect()s and unconnected UDP sendmsg()s balanced by the
    /// socket programs, plus flows the tc programs opened).
    pub connections: u64,
    /// Packets from clients.
    pub packets_in: Option<u64>,
    /// Packets to clients.
    pub packets_out: Option<u64>,
    /// Bytes from clients.
    pub bytes_in: Option<u64>,
    /// Bytes to clients.
    pub bytes_out: Option<u64>,
}

impl TrafficStats {
    /// Everything known, as IPVS counts.
    pub fn all(connections: u64, packets: (u64, u64), bytes: (u64, u64)) -> Self {
        TrafficStats {
            connections,
            packets_in: Some(packets.0),
            packets_out: Some(packets.1),
            bytes_in: Some(bytes.0),
            bytes_out: Some(bytes.1),
        }
    }

    /// The sum of `parts`: a packet or byte count is known if it is in every part.
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a TrafficStats>) -> Self {
        let add = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_add(b?));
        parts
            .into_iter()
            .fold(TrafficStats::all(0, (0, 0), (0, 0)), |acc, p| {
                TrafficStats {
                    connections: acc.connections.saturating_add(p.connections),
                    packets_in: add(acc.packets_in, p.packets_in),
                    packets_out: add(acc.packets_out, p.packets_out),
                    bytes_in: add(acc.bytes_in, p.bytes_in),
                    bytes_out: add(acc.bytes_out, p.bytes_out),
                }
            })
    }
}

/// [`TrafficStats`] per second (`ipvsadm -Ln --rate`: CPS, InPPS, OutPPS, InBPS,
/// OutBPS), between two readings.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct TrafficRate {
    /// Connections per second.
    pub connections: f64,
    /// Packets per second from clients.
    pub packets_in: Option<f64>,
    /// Packets per second to clients.
    pub packets_out: Option<f64>,
    /// Bytes per second from clients.
    pub bytes_in: Option<f64>,
    /// Bytes per second to clients.
    pub bytes_out: Option<f64>,
}

/// Whether a backend takes new connections. Neither data plane records whether an
/// endpoint is terminating: the agent programs the ready endpoints, or the serving
/// terminating ones when none is ready, and the kernel holds only the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// Takes new connections (ready, or serving while terminating as a fallback).
    Serving,
    /// Takes none; its existing connections go on (IPVS weight 0; eBPF: tracked flows
    /// to a backend that left the service).
    Draining,
}

impl std::fmt::Display for EndpointState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EndpointState::Serving => "serving",
            EndpointState::Draining => "draining",
        })
    }
}

/// An IPVS virtual server's options and counters.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
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
