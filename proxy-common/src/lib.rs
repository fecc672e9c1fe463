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
//! - [`FRONTENDS`]: `{VIP, port, protocol}` -> [`Frontend`] (service id, backend count,
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
    /// Every map the socket-layer programs use, in the order the agent lists them.
    pub const ALL: [&str; 8] = [
        FRONTENDS,
        SLOTS,
        BACKENDS,
        AFFINITY_MATCH,
        AFFINITY,
        REV_SOCK,
        COUNTERS,
        SVC_NAMES,
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
    /// All of them.
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
    /// Number of counters.
    pub const COUNT: u32 = 6;
    /// Prometheus-style names, indexed like the counters.
    pub const NAMES: [&str; COUNT as usize] = [
        "lb_translated",
        "lb_no_backend",
        "lb_backend_missing",
        "affinity_hit",
        "rev_translated",
        "rev_update_failed",
    ];
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
    /// Always 0 for now; reserved for scoped frontends (node-local backend sets).
    pub scope: u8,
}

/// `Frontend::flags`: ClientIP session affinity is on.
pub const FRONTEND_F_AFFINITY: u32 = 1;

/// Value of `FRONTENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
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

/// Key of `AFFINITY_MATCH` (value: `u32`, always 1).
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
    assert!(core::mem::size_of::<Frontend>() == 16);
    assert!(core::mem::size_of::<SlotKey>() == 8);
    assert!(core::mem::size_of::<Backend>() == 20);
    assert!(core::mem::size_of::<AffinityMatchKey>() == 8);
    assert!(core::mem::size_of::<AffinityKey>() == 16);
    assert!(core::mem::size_of::<AffinityValue>() == 16);
    assert!(core::mem::size_of::<RevSockKey>() == 32);
    assert!(core::mem::size_of::<RevSockValue>() == 24);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain `repr(C)` integers and arrays with explicit padding; every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for Addr {}
    unsafe impl aya::Pod for FrontendKey {}
    unsafe impl aya::Pod for Frontend {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for AffinityMatchKey {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for RevSockKey {}
    unsafe impl aya::Pod for RevSockValue {}
    unsafe impl aya::Pod for ServiceName {}
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
    fn ipv6_round_trips_and_is_not_v4() {
        let ip: IpAddr = "fd00:96::a".parse().unwrap();
        let a = Addr::from(ip);
        assert!(!a.is_v4());
        assert_eq!(a.ip(), ip);
    }
}
