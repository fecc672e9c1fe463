//! Service lookup and backend choice, shared by the socket and tc programs.

use proxy_common::{
    Addr, AffinityMatchKey, AffinityValue, Backend, FrontendKey, FrontendValue, NodeAddr, SlotKey,
    counter,
};

use crate::maps::{AFFINITY_MATCH, BACKENDS, FRONTENDS, NODE_ADDRS, SLOTS, count};

/// The frontend for `addr:port_be/proto` in `scope`. A NodePort frontend is keyed by
/// the unspecified address of its family and matches every address in `NODE_ADDRS`.
#[inline(always)]
pub fn frontend(addr: Addr, port_be: u16, proto: u8, scope: u8) -> Option<FrontendValue> {
    let key = FrontendKey {
        addr,
        port_be,
        proto,
        scope,
    };
    // SAFETY: copied out at once (service maps are BPF_F_NO_PREALLOC, so a value being
    // replaced stays readable until we are done).
    if let Some(fe) = unsafe { FRONTENDS.get(key) } {
        return Some(*fe);
    }
    if !is_node_addr(&addr) {
        return None;
    }
    let key = FrontendKey {
        addr: unspecified_like(&addr),
        port_be,
        proto,
        scope,
    };
    // SAFETY: as above.
    unsafe { FRONTENDS.get(key) }.copied()
}

/// Whether `addr` is one of the node's NodePort addresses.
#[inline(always)]
pub fn is_node_addr(addr: &Addr) -> bool {
    // SAFETY: only presence is checked.
    unsafe { NODE_ADDRS.get(addr) }.is_some_and(|_: &NodeAddr| true)
}

/// `0.0.0.0` (IPv4-mapped) or `::`, in the family of `addr`.
#[inline(always)]
pub fn unspecified_like(addr: &Addr) -> Addr {
    if addr.is_v4() {
        Addr::from_v4_be(0)
    } else {
        Addr([0; 4])
    }
}

/// The backend in slot `seed % backend_count` of `fe` (which has at least one).
#[inline(always)]
pub fn pick(fe: &FrontendValue, seed: u32) -> Option<(u32, Backend)> {
    let slot = SlotKey {
        service_id: fe.service_id,
        slot: seed % fe.backend_count,
    };
    // SAFETY: copied out at once.
    let Some(id) = (unsafe { SLOTS.get(slot) }).copied() else {
        count(counter::LB_BACKEND_MISSING);
        return None;
    };
    let Some(be) = backend(id) else {
        count(counter::LB_BACKEND_MISSING);
        return None;
    };
    Some((id, be))
}

/// Backend `id`.
#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    // SAFETY: copied out at once.
    unsafe { BACKENDS.get(id) }.copied()
}

/// Whether backend `backend_id` still belongs to service `service_id`.
#[inline(always)]
pub fn is_member(service_id: u32, backend_id: u32) -> bool {
    let m = AffinityMatchKey {
        service_id,
        backend_id,
    };
    // SAFETY: only presence is checked.
    unsafe { AFFINITY_MATCH.get(m) }.is_some()
}

/// The backend a remembered affinity names, if it is fresh and still belongs to the
/// service.
#[inline(always)]
pub fn remembered(
    v: Option<&AffinityValue>,
    fe: &FrontendValue,
    now: u64,
) -> Option<(u32, Backend)> {
    let v = v?;
    if now.wrapping_sub(v.last_used_ns) > u64::from(fe.affinity_timeout_s) * 1_000_000_000 {
        return None;
    }
    let id = v.backend_id;
    if !is_member(fe.service_id, id) {
        return None;
    }
    Some((id, backend(id)?))
}
