//! Map keys and values shared by the eBPF data plane (`proxy-ebpf`) and the agent.
//!
//! Every type is `#[repr(C)]` with explicit widths and explicit padding, so that the
//! kernel and user space agree byte for byte, and every bit pattern is a valid value
//! (no enums, no `Option`). Sizes are checked at compile time at the bottom of this file.
//!
//! # Addresses
//! Addresses are [`Addr`]: four `u32` words, each in network byte order, exactly as
//! `bpf_sock_addr.user_ip6` holds them. IPv4 addresses are stored IPv4-mapped
//! (`::ffff:a.b.c.d`), so one map serves both families and an IPv6 socket that connects
//! to a mapped IPv4 VIP is balanced like an IPv4 one.
//!
//! # The service model (socket layer)
//! - [`FRONTENDS`]: `{VIP, port, protocol}` -> [`FrontendValue`] (service id, backend count,
//!   flags, affinity timeout). A frontend with `backend_count == 0` exists on purpose:
//!   the service is known but has no usable endpoint, so connect() is refused at once.
//! - [`SLOTS`]: `{service id, slot}` -> backend id, for slots `0..backend_count`.
//! - [`BACKENDS`]: backend id -> [`Backend`] address and port.
//! - [`AFFINITY_MATCH`]: `{service id, backend id}` present while that backend belongs
//!   to that service, so a remembered affinity is only honoured while still valid.
//! - [`AFFINITY`] (LRU): `{client netns cookie, service id}` -> backend id and last use.
//! - [`REV_SOCK`] (LRU): `{socket cookie, backend, port}` -> VIP and port, so that
//!   getpeername() and UDP recvmsg() report the VIP the application asked for.
//!
//! # Update order
//! The agent never exposes a half-written service: it writes backends, membership and
//! slots first, the frontend (with the new count) last, and deletes surplus slots,
//! memberships and backends afterwards.
#![no_std]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Map names, shared so that the loader and `proxyctl` cannot drift from the programs.
/// Each is at most 15 bytes (the kernel's object name limit).
pub mod maps {
    /// See [`super::FrontendKey`].
    pub const FRONTENDS: &str = "FRONTENDS";
    /// See [`super::SlotKey`].
    pub const SLOTS: &str = "SLOTS";
    /// See [`super::Backend`].
    pub const BACKENDS: &str = "BACKENDS";
    /// See [`super::AffinityMatchKey`].
    pub const AFFINITY_MATCH: &str = "AFFINITY_MATCH";
    /// See [`super::AffinityKey`].
    pub const AFFINITY: &str = "AFFINITY";
    /// See [`super::RevSockKey`].
    pub const REV_SOCK: &str = "REV_SOCK";
    /// Per-CPU `u64` counters indexed by [`super::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Service id -> [`super::ServiceName`]; written by the agent for operators
    /// (`proxyctl`), never read by the programs.
    pub const SVC_NAMES: &str = "SVC_NAMES";
    /// Node addresses NodePorts are served on: [`super::Addr`] -> [`super::NodeAddr`].
    pub const NODE_ADDRS: &str = "NODE_ADDRS";
    /// Interface index -> [`super::Iface`]: the interfaces with tc programs.
    pub const IFACES: &str = "IFACES";
    /// `loadBalancerSourceRanges`: LPM trie of [`super::SourceRangeKey`].
    pub const SOURCE_RANGES: &str = "SOURCE_RANGES";
    /// ClientIP affinity of the tc path: [`super::ClientAffinityKey`] -> [`super::AffinityValue`].
    pub const CLIENT_AFFINITY: &str = "CLIENT_AFFINITY";
    /// Connection tracking of the tc path, assured flows: [`super::CtKey`] ->
    /// [`super::CtEntry`]. Never evicts.
    pub const CONNTRACK: &str = "CONNTRACK";
    /// Connection tracking of the tc path, flows not yet assured (LRU):
    /// [`super::CtKey`] -> [`super::CtOpenEntry`].
    pub const CT_OPEN: &str = "CT_OPEN";
    /// One [`super::TcConfig`] at index 0.
    pub const TC_CONFIG: &str = "TC_CONFIG";
    /// Per-CPU traffic statistics per service and backend: stats id ->
    /// [`super::Stats`] (see [`super::stats`]).
    pub const STATS: &str = "STATS";
    /// The ring buffer of [`super::MonitorEvent`]s for `proxyctl monitor`.
    pub const EVENTS: &str = "EVENTS";
    /// The listeners' leases, indexed by [`super::monitor`] kind: `u64` deadlines.
    pub const MONITOR: &str = "MONITOR";
    /// Every map, in the order the agent lists them.
    pub const ALL: [&str; 18] = [
        FRONTENDS,
        SLOTS,
        BACKENDS,
        AFFINITY_MATCH,
        AFFINITY,
        REV_SOCK,
        COUNTERS,
        SVC_NAMES,
        NODE_ADDRS,
        IFACES,
        SOURCE_RANGES,
        CLIENT_AFFINITY,
        CONNTRACK,
        CT_OPEN,
        TC_CONFIG,
        STATS,
        EVENTS,
        MONITOR,
    ];
}

/// Default map sizes; the agent can override each (`--max-services` and friends).
pub mod sizes {
    /// Frontends: one per service port and VIP.
    pub const FRONTENDS: u32 = 65_536;
    /// Backend slots over all services.
    pub const SLOTS: u32 = 262_144;
    /// Distinct backends.
    pub const BACKENDS: u32 = 262_144;
    /// Service/backend memberships (same order as slots).
    pub const AFFINITY_MATCH: u32 = 262_144;
    /// Remembered ClientIP affinities.
    pub const AFFINITY: u32 = 65_536;
    /// Sockets whose peer was rewritten.
    pub const REV_SOCK: u32 = 262_144;
    /// Node addresses.
    pub const NODE_ADDRS: u32 = 256;
    /// Interfaces with programs.
    pub const IFACES: u32 = 256;
    /// Source range prefixes over all services.
    pub const SOURCE_RANGES: u32 = 16_384;
    /// Remembered ClientIP affinities of external clients.
    pub const CLIENT_AFFINITY: u32 = 65_536;
    /// Connection-tracking entries of assured flows: two per flow (one per
    /// direction). The agent sizes it as kube-proxy sizes netfilter's table.
    pub const CONNTRACK: u32 = 262_144;
    /// Connection-tracking entries of flows not yet assured (two per flow).
    pub const CT_OPEN: u32 = 65_536;
    /// Entries of `STATS` at least (and in the object): one per (frontend, backend)
    /// membership, index 0 reserved. Preallocated per CPU ([`super::Stats`] is 56
    /// bytes), so the agent sizes it to [`STATS_BUDGET_BYTES`] within
    /// `STATS..=STATS_MAX`. Memberships past it are not counted (`proxyctl` shows `-`).
    pub const STATS: u32 = 8_192;
    /// Entries of `STATS` at most: stats ids are 16 bits in conntrack entries.
    pub const STATS_MAX: u32 = 65_536;
    /// The kernel memory `STATS` may take over all CPUs, unless [`STATS`] entries
    /// need more: 65,536 entries (7 MiB) up to 9 CPUs, 9,362 on 64, 8,192 from 74.
    pub const STATS_BUDGET_BYTES: u64 = 32 << 20;
}

/// The socket programs' names; also the names of their pinned links.
pub mod programs {
    /// `cgroup/connect4`.
    pub const CONNECT4: &str = "connect4";
    /// `cgroup/connect6`.
    pub const CONNECT6: &str = "connect6";
    /// `cgroup/sendmsg4`.
    pub const SENDMSG4: &str = "sendmsg4";
    /// `cgroup/sendmsg6`.
    pub const SENDMSG6: &str = "sendmsg6";
    /// `cgroup/recvmsg4`.
    pub const RECVMSG4: &str = "recvmsg4";
    /// `cgroup/recvmsg6`.
    pub const RECVMSG6: &str = "recvmsg6";
    /// `cgroup/getpeername4`.
    pub const GETPEERNAME4: &str = "getpeername4";
    /// `cgroup/getpeername6`.
    pub const GETPEERNAME6: &str = "getpeername6";
    /// tc ingress on external and pod-facing interfaces: new flows, both legs.
    pub const TC_INGRESS: &str = "tc_ingress";
    /// tc egress on external interfaces: replies of node-local backends.
    pub const TC_EGRESS: &str = "tc_egress";
    /// A tc program that does nothing: the per-packet cost floor the benchmarks
    /// measure ours against. Never attached by the agent.
    pub const TC_FLOOR: &str = "tc_floor";
    /// All socket programs.
    pub const ALL: [&str; 8] = [
        CONNECT4,
        CONNECT6,
        SENDMSG4,
        SENDMSG6,
        RECVMSG4,
        RECVMSG6,
        GETPEERNAME4,
        GETPEERNAME6,
    ];
}

/// Indexes into the per-CPU `COUNTERS` array: what the data plane did, and why it
/// refused or passed something. Exported by the agent as Prometheus counters.
pub mod counter {
    /// A connect()/sendmsg() to a VIP was translated to a backend.
    pub const LB_TRANSLATED: u32 = 0;
    /// A connect()/sendmsg() to a VIP with no usable backend was refused.
    pub const LB_NO_BACKEND: u32 = 1;
    /// A slot or backend entry was missing (an update in flight); passed untranslated.
    pub const LB_BACKEND_MISSING: u32 = 2;
    /// A ClientIP affinity entry chose the backend.
    pub const AFFINITY_HIT: u32 = 3;
    /// getpeername()/recvmsg() reported the VIP instead of the backend.
    pub const REV_TRANSLATED: u32 = 4;
    /// The reverse-socket map was full; the update failed (replies show the backend).
    pub const REV_UPDATE_FAILED: u32 = 5;
    /// tc: a new flow was tracked and translated.
    pub const CT_NEW: u32 = 6;
    /// tc: a packet of a tracked flow was translated.
    pub const CT_TRANSLATED: u32 = 7;
    /// tc: an assured flow could not move to the table of assured flows, which is
    /// full; it stays in the table of unassured ones, where a flood may evict it.
    pub const CT_FULL: u32 = 8;
    /// tc: a new flow to a frontend without a usable backend was dropped.
    pub const NAT_NO_BACKEND: u32 = 9;
    /// tc: a new flow from outside `loadBalancerSourceRanges` was dropped.
    pub const NAT_SOURCE_DENIED: u32 = 10;
    /// tc: no free SNAT port for a new flow to a remote backend; dropped.
    pub const NAT_SNAT_EXHAUSTED: u32 = 11;
    /// tc: the FIB had no usable route or neighbour; the packet went to the stack.
    pub const FIB_PASS: u32 = 12;
    /// tc: no node address is known for the interface a backend is behind (SNAT).
    pub const NAT_NO_SNAT_ADDR: u32 = 13;
    /// tc: a ClientIP affinity entry chose the backend.
    pub const CLIENT_AFFINITY_HIT: u32 = 14;
    /// tc: an ICMP error about a tracked flow was translated like the flow.
    pub const ICMP_TRANSLATED: u32 = 15;

    // Appended after the first release: indexes above stay put, because a COUNTERS map
    // pinned by an older data plane is adopted as it is.

    /// tc: rewriting a packet's addresses, ports or checksums to its flow's tuple
    /// failed (a helper refused, e.g. no memory to make the packet writable); dropped,
    /// as it may be half rewritten.
    pub const REWRITE_FAILED: u32 = 16;
    /// tc egress: rewriting a node-local backend's reply back to the frontend failed;
    /// dropped.
    pub const REPLY_REWRITE_FAILED: u32 = 17;
    /// tc: rewriting an ICMP error about a tracked flow failed; dropped.
    pub const ICMP_REWRITE_FAILED: u32 = 18;
    /// tc: writing the Ethernet addresses the FIB returned failed; dropped.
    pub const MAC_REWRITE_FAILED: u32 = 19;
    /// tc: a conntrack insert failed for a reason other than a full table (which is
    /// [`CT_FULL`]); the new flow was dropped.
    pub const CT_INSERT_FAILED: u32 = 20;
    /// tc: after the forward leg of a new flow could not be inserted, removing its
    /// reply leg failed too; the orphan waits for the agent's expiry sweep.
    pub const CT_ROLLBACK_FAILED: u32 = 21;
    /// tc: remembering a ClientIP affinity failed; the flow proceeded, the next one
    /// may pick another backend.
    pub const CLIENT_AFFINITY_INSERT_FAILED: u32 = 22;
    /// Socket hooks: remembering a ClientIP affinity failed; the connection proceeded,
    /// the next one may pick another backend.
    pub const AFFINITY_INSERT_FAILED: u32 = 23;
    /// tc: an IP packet whose headers were cut short (a TCP header under 20 bytes, a
    /// UDP header under 8, an IP header past the end); passed untranslated to the stack,
    /// which drops it.
    pub const TRUNCATED: u32 = 24;
    /// tc: an IPv4 fragment (ports are only in the first one); passed untranslated.
    pub const FRAGMENT_PASSED: u32 = 25;
    /// tc: an IPv6 packet with an extension header (fragments included) before its
    /// transport header; passed untranslated.
    pub const IPV6_EXT_PASSED: u32 = 26;
    /// tc: a flow became assured (TCP: the client acknowledged the backend's SYN-ACK;
    /// UDP: the client spoke again after a reply) and moved to the table of assured
    /// flows, where nothing evicts it.
    pub const CT_PROMOTED: u32 = 27;
    /// tc: a new flow took over the tuple of an unassured flow (expired, closed, or
    /// its backend left); the old one's entries were deleted.
    pub const CT_REOPENED: u32 = 28;
    /// tc: a client's ACK during the handshake acknowledged another sequence number
    /// than the backend's SYN-ACK (a blind, spoofed ACK, or a stale one); the flow
    /// stays unassured.
    pub const CT_ACK_MISMATCH: u32 = 29;
    /// tc: a new flow took the reply tuple (its SNAT port, usually) of an unassured
    /// flow, which was evicted for it.
    pub const CT_TUPLE_RECLAIMED: u32 = 30;
    /// tc: a packet of a translated flow was too big for the route to its destination
    /// (and may not be fragmented); it was answered with the ICMP error path MTU
    /// discovery needs, quoting it as its sender sent it.
    pub const ICMP_TOO_BIG_SENT: u32 = 31;
    /// tc: turning a too-big packet into that ICMP error failed half way; dropped.
    pub const ICMP_TOO_BIG_FAILED: u32 = 32;
    /// `proxyctl monitor` was listening but the ring buffer was full: an event was
    /// lost (the packet itself was handled as usual).
    pub const MONITOR_LOST: u32 = 33;
    /// Number of counters.
    pub const COUNT: u32 = 34;
    /// Prometheus-style names, indexed like the counters.
    pub const NAMES: [&str; COUNT as usize] = [
        "lb_translated",
        "lb_no_backend",
        "lb_backend_missing",
        "affinity_hit",
        "rev_translated",
        "rev_update_failed",
        "ct_new",
        "ct_translated",
        "ct_full",
        "nat_no_backend",
        "nat_source_denied",
        "nat_snat_exhausted",
        "fib_pass",
        "nat_no_snat_addr",
        "client_affinity_hit",
        "icmp_translated",
        "rewrite_failed",
        "reply_rewrite_failed",
        "icmp_rewrite_failed",
        "mac_rewrite_failed",
        "ct_insert_failed",
        "ct_rollback_failed",
        "client_affinity_insert_failed",
        "affinity_insert_failed",
        "truncated",
        "fragment_passed",
        "ipv6_ext_passed",
        "ct_promoted",
        "ct_reopened",
        "ct_ack_mismatch",
        "ct_tuple_reclaimed",
        "icmp_too_big_sent",
        "icmp_too_big_failed",
        "monitor_lost",
    ];
}

/// `proxyctl monitor`'s events. Programs emit them only while someone listens: a
/// listener keeps a lease (a deadline on the `bpf_ktime_get_coarse_ns` clock, which is
/// `CLOCK_MONOTONIC`) in `MONITOR` at its kind's index and renews it every second, so a
/// listener that dies stops the events within [`LEASE_NS`](monitor::LEASE_NS), and
/// with none the cost is one array read on the paths that would emit.
pub mod monitor {
    /// A packet or connection the data plane refused or dropped; `reason` says why.
    pub const KIND_DROP: u32 = 0;
    /// A new flow or connection translated to a backend.
    pub const KIND_TRACE: u32 = 1;
    /// Number of kinds (`MONITOR`'s size).
    pub const KINDS: u32 = 2;
    /// How long a lease lasts without renewal.
    pub const LEASE_NS: u64 = 3_000_000_000;
    /// The ring buffer's size in bytes (a power of two, pages): about 2,500 events.
    pub const RING_BYTES: u32 = 256 * 1024;
    /// [`super::MonitorEvent::hook`]: the socket programs (connect, sendmsg).
    pub const HOOK_SOCK: u8 = 0;
    /// tc ingress.
    pub const HOOK_TC_INGRESS: u8 = 1;
    /// tc egress.
    pub const HOOK_TC_EGRESS: u8 = 2;
}

/// One `proxyctl monitor` event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorEvent {
    /// When, `bpf_ktime_get_coarse_ns` (`CLOCK_MONOTONIC`).
    pub time_ns: u64,
    /// [`monitor::KIND_DROP`] or [`monitor::KIND_TRACE`].
    pub kind: u32,
    /// The [`counter`] index that counted it: why it was dropped, or how it was
    /// translated.
    pub reason: u32,
    /// [`monitor::HOOK_SOCK`], [`monitor::HOOK_TC_INGRESS`] or
    /// [`monitor::HOOK_TC_EGRESS`].
    pub hook: u8,
    /// Explicit padding, 0.
    pub _pad: [u8; 3],
    /// The interface (tc), or 0.
    pub ifindex: u32,
    /// The frontend's service id, 0 when no frontend was found.
    pub service_id: u32,
    /// The chosen backend's id (trace), or 0.
    pub backend_id: u32,
    /// The packet's tuple as it arrived. The socket programs run before the
    /// connection has a source: only the destination is set there.
    pub tuple: CtKey,
    /// Trace: the tuple it was translated to. Drop: zeros.
    pub to: CtKey,
}

/// IP protocol numbers used in keys.
pub mod proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// An IPv6 address, or an IPv4-mapped one, as four network-order `u32` words.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr(pub [u32; 4]);

impl Addr {
    /// The IPv4-mapped form of an IPv4 address given as a network-order `u32`
    /// (`bpf_sock_addr.user_ip4`).
    #[inline(always)]
    pub const fn from_v4_be(ip: u32) -> Self {
        Addr([0, 0, u32::to_be(0xffff), ip])
    }

    /// The network-order IPv4 word if this is an IPv4-mapped address.
    #[inline(always)]
    pub const fn v4_be(&self) -> Option<u32> {
        if self.0[0] == 0 && self.0[1] == 0 && self.0[2] == u32::to_be(0xffff) {
            Some(self.0[3])
        } else {
            None
        }
    }

    /// Whether this is an IPv4-mapped address.
    #[inline(always)]
    pub const fn is_v4(&self) -> bool {
        self.v4_be().is_some()
    }

    /// The standard library address this stands for.
    pub fn ip(&self) -> IpAddr {
        match self.v4_be() {
            Some(v4) => IpAddr::V4(Ipv4Addr::from(u32::from_be(v4))),
            None => {
                let mut b = [0u8; 16];
                for (i, w) in self.0.iter().enumerate() {
                    b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(b))
            }
        }
    }
}

impl From<IpAddr> for Addr {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Addr::from_v4_be(u32::from(v4).to_be()),
            IpAddr::V6(v6) => {
                let b = v6.octets();
                let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
                Addr([w(0), w(4), w(8), w(12)])
            }
        }
    }
}

/// Key of `FRONTENDS`: a service's VIP, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrontendKey {
    /// The VIP.
    pub addr: Addr,
    /// Port, network byte order.
    pub port_be: u16,
    /// [`proto::TCP`] or [`proto::UDP`].
    pub proto: u8,
    /// [`scope::INTERNAL`] or [`scope::EXTERNAL`].
    pub scope: u8,
}

/// `FrontendKey::scope`: which clients a frontend serves. A service reached from inside
/// and from outside has one frontend per scope, each with its own backend set.
pub mod scope {
    /// Clients on this node (socket programs; per-packet ClusterIP traffic).
    pub const INTERNAL: u8 = 0;
    /// Clients outside the node (tc programs): NodePorts, ExternalIPs and
    /// LoadBalancer IPs, with `externalTrafficPolicy` applied.
    pub const EXTERNAL: u8 = 1;
}

/// `FrontendValue::flags`: ClientIP session affinity is on.
pub const FRONTEND_F_AFFINITY: u32 = 1;
/// `FrontendValue::flags`: only sources in `SOURCE_RANGES` for this service may connect.
pub const FRONTEND_F_SOURCE_RANGES: u32 = 2;
/// `FrontendValue::flags`: bits holding the [`kind`] (for operators; programs ignore it).
pub const FRONTEND_KIND_MASK: u32 = 0xf00;
/// Shift of [`FRONTEND_KIND_MASK`].
pub const FRONTEND_KIND_SHIFT: u32 = 8;

/// What kind of address a frontend is, as stored in `FrontendValue::flags`.
pub mod kind {
    /// A ClusterIP.
    pub const CLUSTER_IP: u32 = 0;
    /// A NodePort: the key's address is unspecified and stands for every address in
    /// `NODE_ADDRS`.
    pub const NODE_PORT: u32 = 1;
    /// A Service's `externalIPs` entry.
    pub const EXTERNAL_IP: u32 = 2;
    /// A `status.loadBalancer.ingress` IP.
    pub const LOAD_BALANCER: u32 = 3;
}

/// Value of `FRONTENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendValue {
    /// The service (port) id that keys `SLOTS`, `AFFINITY` and `AFFINITY_MATCH`.
    pub service_id: u32,
    /// Valid slots are `0..backend_count`; 0 means "refuse".
    pub backend_count: u32,
    /// `FRONTEND_F_*` bits.
    pub flags: u32,
    /// ClientIP affinity timeout in seconds.
    pub affinity_timeout_s: u32,
}

/// Key of `SLOTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SlotKey {
    /// The frontend's service id.
    pub service_id: u32,
    /// Slot index, `0..backend_count`.
    pub slot: u32,
}

/// Value of `BACKENDS` (keyed by a `u32` backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    /// The endpoint's address.
    pub addr: Addr,
    /// The target port, network byte order.
    pub port_be: u16,
    /// [`proto::TCP`] or [`proto::UDP`].
    pub proto: u8,
    /// Reserved, 0.
    pub flags: u8,
}

/// Key of `AFFINITY_MATCH` (value: `u32`, nonzero: 1, or [`stats::ID_F`] with the
/// membership's stats id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityMatchKey {
    /// The service id.
    pub service_id: u32,
    /// A backend id currently in that service's slots.
    pub backend_id: u32,
}

/// Key of `AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// `bpf_get_netns_cookie()` of the client: the pod's identity at the socket layer.
    pub netns_cookie: u64,
    /// The service id.
    pub service_id: u32,
    /// Explicit padding, 0.
    pub _pad: u32,
}

/// Value of `AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns()` of the last connection that used it.
    pub last_used_ns: u64,
    /// The chosen backend.
    pub backend_id: u32,
    /// Explicit padding, 0.
    pub _pad: u32,
}

/// Key of `REV_SOCK`: a socket and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevSockKey {
    /// `bpf_get_socket_cookie()`.
    pub cookie: u64,
    /// The backend address.
    pub addr: Addr,
    /// The backend port, network byte order.
    pub port_be: u16,
    /// Explicit padding, 0.
    pub _pad: [u8; 6],
}

/// Value of `REV_SOCK`: what the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevSockValue {
    /// The VIP.
    pub addr: Addr,
    /// The VIP's port, network byte order.
    pub port_be: u16,
    /// [`proto::TCP`] or [`proto::UDP`].
    pub proto: u8,
    /// Explicit padding, 0.
    pub _pad: u8,
    /// The service id, re-checked against `FRONTENDS` so a deleted service stops
    /// being reported.
    pub service_id: u32,
}

/// Value of `NODE_ADDRS` (keyed by [`Addr`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeAddr {
    /// Reserved, 0.
    pub flags: u32,
}

/// `Iface::flags`: an external interface (holds NodePort addresses): new flows look
/// up external-scope frontends first.
pub const IFACE_F_EXTERNAL: u32 = 1;
/// `Iface::flags`: a pod-facing interface: new flows use internal-scope frontends.
pub const IFACE_F_POD: u32 = 2;

/// Value of `IFACES` (keyed by a `u32` interface index): an interface with tc
/// programs, and the node's addresses on it, used as the source toward backends
/// reached back through the interface a flow came in on. Zero: none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iface {
    /// An IPv4 address (IPv4-mapped), or all zero.
    pub v4: Addr,
    /// An IPv6 address, or all zero.
    pub v6: Addr,
    /// `IFACE_F_*` bits.
    pub flags: u32,
    /// Explicit padding, 0.
    pub _pad: u32,
}

/// The data of a `SOURCE_RANGES` LPM key: the prefix length counts from the start of
/// `service_id` (always matched whole: 32 + the address prefix, where IPv4 prefixes
/// are IPv4-mapped and so 96 bits longer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRangeKey {
    /// The frontend's service id, big-endian so that it is the leading bits.
    pub service_id_be: u32,
    /// The range's address.
    pub addr: Addr,
}

/// Key of `CLIENT_AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientAffinityKey {
    /// The client's source address.
    pub client: Addr,
    /// The service id.
    pub service_id: u32,
    /// Explicit padding, 0.
    pub _pad: u32,
}

/// Key of `CONNTRACK`: a packet's tuple as the tc programs see it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source address.
    pub saddr: Addr,
    /// Destination address.
    pub daddr: Addr,
    /// Source port, network byte order.
    pub sport_be: u16,
    /// Destination port, network byte order.
    pub dport_be: u16,
    /// [`proto::TCP`] or [`proto::UDP`].
    pub proto: u8,
    /// Explicit padding, 0.
    pub _pad: [u8; 3],
}

impl CtKey {
    /// The tuple of a packet going the other way.
    #[inline(always)]
    pub const fn reversed(&self) -> Self {
        CtKey {
            saddr: self.daddr,
            daddr: self.saddr,
            sport_be: self.dport_be,
            dport_be: self.sport_be,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// `CtEntry::flags`: this entry is the reply leg (backend -> client).
pub const CT_F_REPLY: u8 = 1;
/// `CtEntry::flags`: the flow is source-NATed to a node address (remote backend).
pub const CT_F_SNAT: u8 = 2;
/// `CtEntry::flags`, reply leg of an unassured TCP flow: the backend's SYN-ACK went
/// through; [`CtOpenEntry::ack_next`] is what the client must acknowledge.
pub const CT_F_SYNACK: u8 = 4;

/// `CtEntry::state`: connection states with their own timeouts.
pub mod ct_state {
    /// Not assured yet: TCP handshake not proven, UDP not two-way.
    pub const OPENING: u8 = 0;
    /// Assured (see [`super::CtOpenEntry`]).
    pub const ESTABLISHED: u8 = 1;
    /// TCP FIN or RST seen.
    pub const CLOSING: u8 = 2;
}

/// Value of `CONNTRACK`. Each flow has two entries, one per direction; each holds the
/// tuple its packets are rewritten to, so both legs are one lookup and one rewrite.
/// The other leg's key is `CtKey { nat tuple }.reversed()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// Rewritten source address.
    pub nat_saddr: Addr,
    /// Rewritten destination address.
    pub nat_daddr: Addr,
    /// Rewritten source port, network byte order.
    pub nat_sport_be: u16,
    /// Rewritten destination port, network byte order.
    pub nat_dport_be: u16,
    /// `CT_F_*` bits.
    pub flags: u8,
    /// A [`ct_state`] value.
    pub state: u8,
    /// The flow's stats id ([`CtEntry::stats_id`], native-endian `u16`; 0: not
    /// counted). Padding before the stats, so entries older data planes wrote read as
    /// "not counted".
    pub _pad: [u8; 2],
    /// The backend chosen for the flow.
    pub backend_id: u32,
    /// The frontend's service id.
    pub service_id: u32,
    /// `bpf_ktime_get_ns()` when the flow was created.
    pub created_ns: u64,
    /// `bpf_ktime_get_ns()` of the last packet on this leg.
    pub last_seen_ns: u64,
    /// Packets on this leg (approximate: updated without atomics).
    pub packets: u64,
    /// Bytes on this leg (approximate).
    pub bytes: u64,
}

impl CtEntry {
    /// The `STATS` index this flow counts into (0: none).
    #[inline(always)]
    pub const fn stats_id(&self) -> u16 {
        u16::from_ne_bytes(self._pad)
    }

    /// Sets the `STATS` index this flow counts into.
    #[inline(always)]
    pub fn set_stats_id(&mut self, id: u16) {
        self._pad = id.to_ne_bytes();
    }
}

/// Value of `CT_OPEN`: a leg of a flow that is not assured yet, as netfilter's
/// `IPS_ASSURED` means it: TCP until the client acknowledges the backend's SYN-ACK
/// (by sequence number, which a spoofed client never sees), UDP until the client
/// speaks again after a reply. A backend answers spoofed SYNs and datagrams too, so
/// "answered" alone would let a flood in. Such flows live in an LRU table and may be
/// evicted by newer ones; assured flows move to `CONNTRACK`, which never evicts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtOpenEntry {
    /// The leg, as it will be in `CONNTRACK`.
    pub ct: CtEntry,
    /// Reply leg with [`CT_F_SYNACK`]: the backend's SYN-ACK sequence number + 1.
    pub ack_next: u32,
    /// Explicit padding, 0.
    pub _pad: u32,
}

/// Value of `TC_CONFIG` at index 0: the agent's settings for the tc programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcConfig {
    /// Idle timeout of an unassured TCP flow (handshake not proven), in seconds.
    pub tcp_opening_s: u32,
    /// Idle timeout of an established TCP flow.
    pub tcp_established_s: u32,
    /// Idle timeout of a TCP flow after FIN or RST.
    pub tcp_closing_s: u32,
    /// Idle timeout of an unassured UDP flow (netfilter's `nf_conntrack_udp_timeout`).
    pub udp_s: u32,
    /// First port used when the client's port is taken for SNAT.
    pub snat_port_min: u16,
    /// Last such port.
    pub snat_port_max: u16,
    /// Idle timeout of an assured UDP flow (netfilter's
    /// `nf_conntrack_udp_timeout_stream`). Was a reserved 0 before: programs treat
    /// 0 as the default.
    pub udp_stream_s: u32,
}

impl TcConfig {
    /// The programs' settings until the agent writes its own.
    pub const DEFAULT: TcConfig = TcConfig {
        tcp_opening_s: 30,
        tcp_established_s: 86_400,
        tcp_closing_s: 30,
        udp_s: 30,
        snat_port_min: 61_000,
        snat_port_max: 65_535,
        udp_stream_s: 120,
    };

    /// The idle timeout, in nanoseconds, of a flow of `proto` in `state`.
    #[inline(always)]
    pub const fn timeout_ns(&self, proto: u8, state: u8) -> u64 {
        let s = if proto == proto::UDP {
            if state == ct_state::OPENING {
                self.udp_s
            } else if self.udp_stream_s == 0 {
                Self::DEFAULT.udp_stream_s
            } else {
                self.udp_stream_s
            }
        } else if state == ct_state::OPENING {
            self.tcp_opening_s
        } else if state == ct_state::ESTABLISHED {
            self.tcp_established_s
        } else {
            self.tcp_closing_s
        };
        s as u64 * 1_000_000_000
    }
}

/// Traffic statistics per service and backend, as `ipvsadm -Ln --stats` shows them.
///
/// `STATS` is a per-CPU array of [`Stats`] indexed by a *stats id* the agent hands out
/// per membership (a backend in a frontend's set: an `AFFINITY_MATCH` key), so that a
/// packet costs one per-CPU array update, no hash lookup:
/// - the agent writes the membership's `AFFINITY_MATCH` value as
///   [`stats::ID_F`]` | id` (an older agent wrote 1: no id), after zeroing the slot and
///   tagging it with the membership's service and backend ids;
/// - the socket programs count a connection per connect() (and per sendmsg() of an
///   unconnected UDP socket) into `sock_connections`, looking the id up once;
/// - the tc programs look the id up when a flow opens and keep it in its conntrack
///   entries ([`CtEntry::stats_id`]): every later packet adds to its slot directly.
///
/// A slot counts only while its tag names the flow's service and backend: when an id
/// is handed out again, flows of its previous owner stop counting into it.
pub mod stats {
    /// `AFFINITY_MATCH` value bit: the low 16 bits are the membership's stats id.
    pub const ID_F: u32 = 1 << 31;
    /// The stats id bits of an `AFFINITY_MATCH` value.
    pub const ID_MASK: u32 = 0xffff;
    /// In `STATS[0]`'s `service_id` (index 0 is no membership's): the agent turned
    /// the counting off (`STATS` is otherwise all zero there). Read when a flow opens
    /// and at connect(), so a flow keeps the setting it started with.
    pub const OFF: u32 = 1;

    /// The stats id an `AFFINITY_MATCH` value holds (0: none).
    #[inline(always)]
    pub const fn id_of(member_value: u32) -> u16 {
        if member_value & ID_F != 0 {
            (member_value & ID_MASK) as u16
        } else {
            0
        }
    }
}

/// Value of `STATS`: one membership's counters on one CPU. Counts are plain per-CPU
/// adds: the agent sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// The owner's service id (a tag: counted only if the flow's matches).
    pub service_id: u32,
    /// The owner's backend id (likewise).
    pub backend_id: u32,
    /// Connections balanced by the socket programs (connect(), unconnected sendmsg());
    /// they see none of their packets.
    pub sock_connections: u64,
    /// Flows opened by the tc programs.
    pub connections: u64,
    /// Packets from clients (tc path).
    pub packets_in: u64,
    /// Packets to clients (tc path).
    pub packets_out: u64,
    /// Bytes from clients (tc path, as the packets' lengths at the hook).
    pub bytes_in: u64,
    /// Bytes to clients (tc path).
    pub bytes_out: u64,
}

/// Value of `SVC_NAMES`: `namespace/name:port`, UTF-8, NUL-padded (truncated to fit).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    /// The bytes.
    pub name: [u8; 128],
}

impl Default for ServiceName {
    fn default() -> Self {
        ServiceName { name: [0; 128] }
    }
}

impl ServiceName {
    /// Stores `s`, cut at a character boundary to at most 128 bytes.
    pub fn new(s: &str) -> Self {
        let mut n = ServiceName::default();
        let mut end = s.len().min(n.name.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        n.name[..end].copy_from_slice(&s.as_bytes()[..end]);
        n
    }

    /// The stored text (up to the first NUL; invalid UTF-8 is cut off).
    pub fn as_str(&self) -> &str {
        let len = self
            .name
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(self.name.len());
        match core::str::from_utf8(&self.name[..len]) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&self.name[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

const _: () = {
    assert!(core::mem::size_of::<ServiceName>() == 128);
    assert!(core::mem::size_of::<Addr>() == 16);
    assert!(core::mem::size_of::<FrontendKey>() == 20);
    assert!(core::mem::size_of::<FrontendValue>() == 16);
    assert!(core::mem::size_of::<SlotKey>() == 8);
    assert!(core::mem::size_of::<Backend>() == 20);
    assert!(core::mem::size_of::<AffinityMatchKey>() == 8);
    assert!(core::mem::size_of::<AffinityKey>() == 16);
    assert!(core::mem::size_of::<AffinityValue>() == 16);
    assert!(core::mem::size_of::<RevSockKey>() == 32);
    assert!(core::mem::size_of::<RevSockValue>() == 24);
    assert!(core::mem::size_of::<NodeAddr>() == 4);
    assert!(core::mem::size_of::<Iface>() == 40);
    assert!(core::mem::size_of::<SourceRangeKey>() == 20);
    assert!(core::mem::size_of::<ClientAffinityKey>() == 24);
    assert!(core::mem::size_of::<CtKey>() == 40);
    assert!(core::mem::size_of::<CtEntry>() == 80);
    assert!(core::mem::size_of::<CtOpenEntry>() == 88);
    assert!(core::mem::size_of::<TcConfig>() == 24);
    assert!(core::mem::size_of::<Stats>() == 56);
    // Stats ids are 16 bits in conntrack entries.
    assert!(sizes::STATS <= sizes::STATS_MAX && sizes::STATS_MAX <= 1 << 16);
    assert!(core::mem::size_of::<MonitorEvent>() == 112);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    /// `aya::Pod` for map types: each is `#[repr(C)]`, `Copy`, made of integers and
    /// integer arrays with its padding spelled out as fields (the size assertions
    /// above check there is none left), so every bit pattern is a valid value.
    macro_rules! pod {
        ($($t:ty),* $(,)?) => {
            // SAFETY: see the macro's doc: repr(C), no implicit padding, any bits valid.
            $(unsafe impl aya::Pod for $t {})*
        };
    }
    pod!(
        Addr,
        FrontendKey,
        FrontendValue,
        SlotKey,
        Backend,
        AffinityMatchKey,
        AffinityKey,
        AffinityValue,
        RevSockKey,
        RevSockValue,
        ServiceName,
        NodeAddr,
        Iface,
        SourceRangeKey,
        ClientAffinityKey,
        CtKey,
        CtEntry,
        CtOpenEntry,
        TcConfig,
        Stats,
        MonitorEvent,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_stored_mapped_and_round_trips() {
        let ip: IpAddr = "10.96.0.10".parse().unwrap();
        let a = Addr::from(ip);
        assert_eq!(a.v4_be(), Some(u32::from_be_bytes([10, 96, 0, 10]).to_be()));
        assert_eq!(a.ip(), ip);
    }

    #[test]
    fn service_names_are_truncated_at_a_character_boundary() {
        assert_eq!(
            ServiceName::new("default/web:http").as_str(),
            "default/web:http"
        );
        let long = "é".repeat(100);
        let n = ServiceName::new(&long);
        assert_eq!(n.as_str().len(), 128);
        assert!(long.starts_with(n.as_str()));
    }

    #[test]
    fn counter_names_are_unique_snake_case_and_follow_their_indexes() {
        for (i, a) in counter::NAMES.iter().enumerate() {
            let snake = a.starts_with(|c: char| c.is_ascii_lowercase())
                && a.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            assert!(snake, "{a} is not a snake-case metric label");
            assert!(!counter::NAMES[..i].contains(a), "{a} twice");
        }
        // Spot checks at both ends of the appended range.
        assert_eq!(counter::NAMES[counter::CT_FULL as usize], "ct_full");
        assert_eq!(
            counter::NAMES[counter::REWRITE_FAILED as usize],
            "rewrite_failed"
        );
        assert_eq!(
            counter::NAMES[counter::AFFINITY_INSERT_FAILED as usize],
            "affinity_insert_failed"
        );
        assert_eq!(
            counter::NAMES[counter::IPV6_EXT_PASSED as usize],
            "ipv6_ext_passed"
        );
    }

    #[test]
    fn stats_ids_ride_in_membership_values_and_conntrack_padding() {
        assert_eq!(stats::id_of(1), 0, "an older agent's value: no id");
        assert_eq!(stats::id_of(stats::ID_F | 7), 7);
        let mut e = CtEntry::default();
        assert_eq!(e.stats_id(), 0);
        e.set_stats_id(65_535);
        assert_eq!(e.stats_id(), 65_535);
    }

    #[test]
    fn ipv6_round_trips_and_is_not_v4() {
        let ip: IpAddr = "fd00:96::a".parse().unwrap();
        let a = Addr::from(ip);
        assert!(!a.is_v4());
        assert_eq!(a.ip(), ip);
    }
}
