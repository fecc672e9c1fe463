//! The NodePort scenario most tc tests share, and its shorthands: one service on
//! `NODE_PORT` with one backend, the packets of its flows, and the conntrack legs
//! `tc_ingress` writes for them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proxy_common::{
    CT_F_REPLY, CT_F_SNAT, CtEntry, CtKey, FRONTEND_KIND_SHIFT, ct_state, kind, scope,
};

use super::packet::{self, L4, Macs};
use super::{Datapath, Service, TC_ACT_OK, tuple};

pub const NODE_PORT: u16 = 30080;
pub const BACKEND_PORT: u16 = 8080;
pub const CLIENT_PORT: u16 = 40000;
pub const SERVICE_ID: u32 = 7;
pub const BACKEND_ID: u32 = 1;

pub fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

pub fn tcp(macs: Macs, src: SocketAddr, dst: SocketAddr, flags: u8) -> Vec<u8> {
    let l4 = L4::tcp(src.port(), dst.port(), flags);
    packet::eth(macs, &packet::ip(src.ip(), dst.ip(), &l4))
}

pub fn udp(macs: Macs, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let l4 = L4::udp(src.port(), dst.port(), payload);
    packet::eth(macs, &packet::ip(src.ip(), dst.ip(), &l4))
}

/// The NodePort `NODE_PORT`/`proto` of the family of `backend` (the frontend key is
/// that family's unspecified address), with one backend on `BACKEND_PORT`.
pub fn nodeport(proto: u8, backend: IpAddr) -> Service {
    let any = if backend.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    Service {
        id: SERVICE_ID,
        vip: any,
        port: NODE_PORT,
        proto,
        scope: scope::EXTERNAL,
        flags: kind::NODE_PORT << FRONTEND_KIND_SHIFT,
        first_backend_id: BACKEND_ID,
        backends: vec![sa(backend, BACKEND_PORT)],
    }
}

/// The two conntrack legs of a flow from `client` to `frontend`, translated to
/// `to_src -> to_dst`, after the packet that opened it (`opening_len` bytes):
/// `(forward key, forward entry, reply key, reply entry)`, timestamps zero.
pub fn legs(
    client: SocketAddr,
    frontend: SocketAddr,
    to_src: SocketAddr,
    to_dst: SocketAddr,
    proto: u8,
    snat: bool,
    opening_len: usize,
) -> (CtKey, CtEntry, CtKey, CtEntry) {
    let nat = if snat { CT_F_SNAT } else { 0 };
    // Every flow starts unassured.
    let state = ct_state::OPENING;
    let leg = |src: SocketAddr, dst: SocketAddr, flags: u8, packets: u64, bytes: u64| {
        let t = tuple(src, dst, proto);
        CtEntry {
            nat_saddr: t.saddr,
            nat_daddr: t.daddr,
            nat_sport_be: t.sport_be,
            nat_dport_be: t.dport_be,
            flags,
            state,
            _pad: [0; 2],
            backend_id: BACKEND_ID,
            service_id: SERVICE_ID,
            created_ns: 0,
            last_seen_ns: 0,
            packets,
            bytes,
        }
    };
    let len = u64::try_from(opening_len).expect("a small frame");
    (
        tuple(client, frontend, proto),
        leg(to_src, to_dst, nat, 1, len),
        tuple(to_dst, to_src, proto),
        leg(frontend, client, CT_F_REPLY | nat, 0, 0),
    )
}

pub fn untimed(e: CtEntry) -> CtEntry {
    CtEntry {
        created_ns: 0,
        last_seen_ns: 0,
        ..e
    }
}

/// Asserts that the unassured table holds exactly these two legs (timestamps aside),
/// and the assured one nothing: where every flow starts.
pub fn assert_tracked(dp: &Datapath, (fk, fe, rk, re): &(CtKey, CtEntry, CtKey, CtEntry)) {
    let open = |k| dp.ct_unassured(k).map(|o| untimed(o.ct));
    assert_eq!(open(fk), Some(*fe), "forward leg");
    assert_eq!(open(rk), Some(*re), "reply leg");
    assert_eq!(dp.ct_len_unassured(), 2, "unassured entries");
    assert_eq!(dp.ct_len_assured(), 0, "assured entries");
}

/// Runs `frame` through `tc_ingress` on `ifindex` and asserts it passed untouched,
/// with nothing tracked.
pub fn assert_passes_untouched(dp: &Datapath, ifindex: u32, frame: &[u8], what: &str) {
    let r = dp.ingress(ifindex, frame);
    assert_eq!(r.verdict, TC_ACT_OK, "{what}: verdict");
    assert_eq!(r.frame, frame, "{what}: bytes");
    assert_eq!(dp.ct_len(), 0, "{what}: conntrack");
}
