//! Traffic statistics per service and backend (`proxyctl list --stats`): see
//! `proxy_common::stats` for the model. The socket programs count connections; the
//! tc programs count flows, packets and bytes both ways, one per-CPU array update per
//! packet through the stats id their conntrack entries carry.

use proxy_common::{AffinityMatchKey, CT_F_REPLY, CtEntry, Stats, stats};

use crate::maps::{AFFINITY_MATCH, STATS};

/// Whether the agent turned the counting off (read when a flow opens).
#[inline(always)]
fn off() -> bool {
    // Index 0 is no membership's.
    STATS.get(0).is_some_and(|s| s.service_id & stats::OFF != 0)
}

/// The stats id of backend `backend_id` in service `service_id` (0: not counted, or
/// counting is off).
#[inline(always)]
pub fn id(service_id: u32, backend_id: u32) -> u16 {
    if off() {
        return 0;
    }
    let key = AffinityMatchKey {
        service_id,
        backend_id,
    };
    // SAFETY: copied out at once.
    match unsafe { AFFINITY_MATCH.get(key) } {
        Some(v) => stats::id_of(*v),
        None => 0,
    }
}

/// This CPU's slot `id`, if it still belongs to `service_id`/`backend_id`.
#[inline(always)]
fn slot(id: u16, service_id: u32, backend_id: u32) -> Option<&'static mut Stats> {
    if id == 0 {
        return None;
    }
    let p = STATS.get_ptr_mut(u32::from(id))?;
    // SAFETY: this CPU's value; programs do not nest on a CPU. The agent's writes
    // (only when it hands an id out) may race one update: a count is then lost.
    let s = unsafe { &mut *p };
    (s.service_id == service_id && s.backend_id == backend_id).then_some(s)
}

/// A connection the socket programs balanced to `backend_id`.
#[inline(always)]
pub fn sock_connection(service_id: u32, backend_id: u32) {
    if let Some(s) = slot(id(service_id, backend_id), service_id, backend_id) {
        s.sock_connections += 1;
    }
}

/// A new tc flow: its first packet, `len` bytes from the client.
#[inline(always)]
pub fn flow_opened(e: &CtEntry, len: u32) {
    if let Some(s) = slot(e.stats_id(), e.service_id, e.backend_id) {
        s.connections += 1;
        s.packets_in += 1;
        s.bytes_in += u64::from(len);
    }
}

/// A packet of `len` bytes on the tracked leg `e`.
#[inline(always)]
pub fn packet(e: &CtEntry, len: u32) {
    if let Some(s) = slot(e.stats_id(), e.service_id, e.backend_id) {
        if e.flags & CT_F_REPLY != 0 {
            s.packets_out += 1;
            s.bytes_out += u64::from(len);
        } else {
            s.packets_in += 1;
            s.bytes_in += u64::from(len);
        }
    }
}
