//! Connection tracking for the tc path: per-state idle timeouts and TCP state, no
//! window tracking. A segment of a known flow is translated whatever its sequence
//! numbers, so an out-of-window segment can never leave with the backend's address.
//!
//! Flows start in `CT_OPEN` (an LRU: a flood evicts its own entries) and move to
//! `CONNTRACK` (never evicts) once assured; see `proxy_common::CtOpenEntry`.

// Map helpers take `impl Borrow`: passing references keeps the big values (they live
// in per-CPU scratch) off the 512-byte stack.
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "references keep big values off the 512-byte stack"
)]

use proxy_common::{
    CT_F_REPLY, CT_F_SYNACK, CtEntry, CtKey, CtOpenEntry, TcConfig, counter, ct_state, proto,
};

use crate::maps::{CONNTRACK, CT_OPEN, Scratch, TC_CONFIG, count};
use crate::packet::{self, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use aya_ebpf::programs::TcContext;

/// The agent's settings.
#[inline(always)]
pub fn config() -> &'static TcConfig {
    static DEFAULT: TcConfig = TcConfig::DEFAULT;
    match TC_CONFIG.get(0) {
        Some(c) if c.udp_s != 0 => c,
        // Not written yet by the agent.
        _ => &DEFAULT,
    }
}

/// Whether `e` has been idle past its state's timeout.
#[inline(always)]
pub fn expired(cfg: &TcConfig, e: &CtEntry, l4proto: u8, now: u64) -> bool {
    now.wrapping_sub(e.last_seen_ns) > cfg.timeout_ns(l4proto, e.state)
}

/// The state after a packet with `flags` on a leg in `state`. Only a proof moves a
/// flow from OPENING to ESTABLISHED ([`track_unassured`]); an entry an older data plane
/// left OPENING in `CONNTRACK` gets there on its first ACK, as it used to.
#[inline(always)]
pub fn next_state(l4proto: u8, state: u8, flags: u8, assured_table: bool) -> u8 {
    if l4proto != proto::TCP {
        return state;
    }
    if flags & (TCP_FIN | TCP_RST) != 0 {
        ct_state::CLOSING
    } else if assured_table && state == ct_state::OPENING && flags & (TCP_ACK | TCP_SYN) == TCP_ACK
    {
        ct_state::ESTABLISHED
    } else {
        state
    }
}

/// Accounts one packet of `len` bytes with `flags` on the leg `e` points to.
#[inline(always)]
pub fn touch(e: *mut CtEntry, l4proto: u8, flags: u8, len: u32, now: u64, assured_table: bool) {
    // SAFETY: `e` points into the map value; plain stores, racing writers on other CPUs
    // can only make the counters approximate.
    unsafe {
        (*e).last_seen_ns = now;
        (*e).packets += 1;
        (*e).bytes += u64::from(len);
        let s = next_state(l4proto, (*e).state, flags, assured_table);
        if s != (*e).state {
            (*e).state = s;
        }
        crate::stats::packet(&*e, len);
    }
}

/// The tuple a leg's packets are rewritten to.
#[inline(always)]
pub fn nat_tuple(e: &CtEntry, l4proto: u8) -> CtKey {
    CtKey {
        saddr: e.nat_saddr,
        daddr: e.nat_daddr,
        sport_be: e.nat_sport_be,
        dport_be: e.nat_dport_be,
        proto: l4proto,
        _pad: [0; 3],
    }
}

/// Sets `to` to the tuple a leg's packets are rewritten to, in place (no copy of a
/// whole key through the stack, which the BPF backend turns into a byte loop).
#[inline(always)]
pub fn set_nat_tuple(to: &mut CtKey, e: &CtEntry, l4proto: u8) {
    crate::packet::set_tuple(
        to,
        &e.nat_saddr,
        &e.nat_daddr,
        e.nat_sport_be,
        e.nat_dport_be,
        l4proto,
    );
}

/// Whether leg `e` (of the flow whose other leg is keyed `key`) names that leg.
#[inline(always)]
fn names(e: &CtEntry, key: &CtKey) -> bool {
    e.nat_saddr == key.daddr
        && e.nat_daddr == key.saddr
        && e.nat_sport_be == key.dport_be
        && e.nat_dport_be == key.sport_be
}

/// A packet of an unassured flow on leg `o` (keyed `s.pkt.key`): sets `s.to` to the
/// tuple it is rewritten to, records the backend's SYN-ACK on the reply leg, accounts
/// the packet, and moves the flow to `CONNTRACK` when this packet assures it.
// Not inlined: its frame stays out of the callers' 512 bytes.
#[inline(never)]
pub fn track_unassured(ctx: &TcContext, s: &mut Scratch, o: *mut CtOpenEntry, now: u64) {
    let l4proto = s.pkt.key.proto;
    let flags = s.pkt.tcp_flags;
    // SAFETY: `o` points into the map value, valid for this program run (RCU), also
    // after the entry is deleted below.
    let e = unsafe { &mut (*o).ct };
    set_nat_tuple(&mut s.to, e, l4proto);
    touch(e, l4proto, flags, ctx.len(), now, false);
    if e.flags & CT_F_REPLY != 0 {
        if l4proto == proto::TCP
            && flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
            && let Some((seq, _)) = packet::tcp_seq_ack(ctx, &s.pkt)
        {
            // SAFETY: as above.
            unsafe { (*o).ack_next = seq.wrapping_add(1) };
            e.flags |= CT_F_SYNACK;
        }
        return;
    }
    // The client spoke: is the flow assured now? Its reply leg holds the evidence.
    s.key = s.to.reversed();
    let Some(r) = CT_OPEN.get_ptr_mut(&s.key) else {
        // Evicted (or never written): nothing to prove it with; stays unassured.
        return;
    };
    // SAFETY: map value, valid for this run.
    let rev = unsafe { &*r };
    if !names(&rev.ct, &s.pkt.key) {
        return;
    }
    let assured = if l4proto != proto::TCP {
        // Traffic went both ways and the client spoke again after the reply.
        rev.ct.packets > 0
    } else if e.state != ct_state::OPENING {
        // Proven before (or closing): only the move to CONNTRACK failed.
        e.state == ct_state::ESTABLISHED
    } else if flags & (TCP_SYN | TCP_RST | TCP_ACK) != TCP_ACK || rev.ct.flags & CT_F_SYNACK == 0 {
        false
    } else {
        let ack = packet::tcp_seq_ack(ctx, &s.pkt).map(|(_, ack)| ack);
        if ack == Some(rev.ack_next) {
            true
        } else {
            count(counter::CT_ACK_MISMATCH);
            false
        }
    };
    if !assured {
        return;
    }
    let state = if flags & (TCP_FIN | TCP_RST) != 0 {
        ct_state::CLOSING
    } else {
        ct_state::ESTABLISHED
    };
    s.fwd.ct = *e;
    s.fwd.ct.state = state;
    s.rev.ct = rev.ct;
    s.rev.ct.state = state;
    s.rev.ct.flags &= !CT_F_SYNACK;
    // The reply leg first: a reply can never find a forward leg without its partner.
    let moved = match CONNTRACK.insert(&s.key, &s.rev.ct, 0) {
        Err(err) => {
            count_insert_error(err);
            false
        }
        Ok(()) => match CONNTRACK.insert(&s.pkt.key, &s.fwd.ct, 0) {
            Err(err) => {
                if CONNTRACK.remove(&s.key).is_err() {
                    count(counter::CT_ROLLBACK_FAILED);
                }
                count_insert_error(err);
                false
            }
            Ok(()) => true,
        },
    };
    if !moved {
        // Remember the proof, so the next packet retries without one.
        e.state = state;
        return;
    }
    // CONNTRACK is looked up first, so the flow is already served from there.
    let _ = CT_OPEN.remove(&s.pkt.key);
    let _ = CT_OPEN.remove(&s.key);
    count(counter::CT_PROMOTED);
}

/// Deletes from `CONNTRACK` the leg keyed `key` (value `e`) and, if it names it back,
/// the flow's other leg.
// Not inlined (nor `drop_unassured`): the other leg's key stays out of the callers'
// frames.
#[inline(never)]
fn drop_assured(key: &CtKey, e: &CtEntry) {
    let other = nat_tuple(e, key.proto).reversed();
    // SAFETY: read in place; the value stays valid for this program run.
    if unsafe { CONNTRACK.get(&other) }.is_some_and(|o| names(o, key)) {
        let _ = CONNTRACK.remove(&other);
    }
    let _ = CONNTRACK.remove(key);
}

/// As [`drop_assured`], in `CT_OPEN`.
#[inline(never)]
fn drop_unassured(key: &CtKey, e: &CtEntry) {
    let other = nat_tuple(e, key.proto).reversed();
    // SAFETY: as in `drop_assured`.
    if unsafe { CT_OPEN.get(&other) }.is_some_and(|o| names(&o.ct, key)) {
        let _ = CT_OPEN.remove(&other);
    }
    let _ = CT_OPEN.remove(key);
}

/// Deletes the assured flow whose forward leg `e` the packet in `s.pkt` hit, so that a
/// new flow can take the tuple.
#[inline(always)]
pub fn forget_assured(s: &Scratch, e: &CtEntry) {
    drop_assured(&s.pkt.key, e);
}

/// As [`forget_assured`], for an unassured flow.
#[inline(always)]
pub fn forget_unassured(s: &Scratch, e: &CtEntry) {
    drop_unassured(&s.pkt.key, e);
    count(counter::CT_REOPENED);
}

/// Deletes the flow whose reply leg is keyed `reply`, from whichever table holds it:
/// a new flow is taking that tuple. An unassured flow evicted so is counted.
#[inline(always)]
pub fn evict_reply(reply: &CtKey) {
    // SAFETY: read in place; the value stays valid for this program run.
    if let Some(r) = unsafe { CONNTRACK.get(reply) } {
        drop_assured(reply, r);
    }
    // SAFETY: as above.
    if let Some(r) = unsafe { CT_OPEN.get(reply) } {
        drop_unassured(reply, &r.ct);
        count(counter::CT_TUPLE_RECLAIMED);
    }
}

/// The leg keyed `key` in either table (assured first), for reading.
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<&'static CtEntry> {
    // SAFETY: map values, read in place for this program run.
    unsafe {
        match CONNTRACK.get(key) {
            Some(e) => Some(e),
            None => CT_OPEN.get(key).map(|o| &o.ct),
        }
    }
}

/// The kernel's answer when a hash map has no free element.
const E2BIG: i32 = 7;

/// Counts a failed `CONNTRACK` insert (the flow is dropped): a full table apart from
/// any other kernel error, as they call for different fixes (a bigger table vs a bug).
#[inline(always)]
pub fn count_insert_error(err: i32) {
    count(insert_error(err));
}

/// The counter for a conntrack insert that failed with `err`.
#[inline(always)]
pub fn insert_error(err: i32) -> u32 {
    if err == -E2BIG {
        counter::CT_FULL
    } else {
        counter::CT_INSERT_FAILED
    }
}
