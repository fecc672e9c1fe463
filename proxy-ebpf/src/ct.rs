//! Connection tracking for the tc path: per-state idle timeouts and TCP state, no
//! window tracking. A segment of a known flow is translated whatever its sequence
//! numbers, so an out-of-window segment can never leave with the backend's address.

use proxy_common::{CtEntry, TcConfig, counter, ct_state, proto};

use crate::maps::{TC_CONFIG, count};
use crate::packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

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

/// The state after a packet with `flags` on a leg in `state`.
#[inline(always)]
pub fn next_state(l4proto: u8, state: u8, flags: u8) -> u8 {
    if l4proto != proto::TCP {
        return ct_state::ESTABLISHED;
    }
    if flags & (TCP_FIN | TCP_RST) != 0 {
        ct_state::CLOSING
    } else if state == ct_state::OPENING && flags & (TCP_ACK | TCP_SYN) == TCP_ACK {
        ct_state::ESTABLISHED
    } else {
        state
    }
}

/// Accounts one packet of `len` bytes with `flags` on the leg `e` points to.
#[inline(always)]
pub fn touch(e: *mut CtEntry, l4proto: u8, flags: u8, len: u32, now: u64) {
    // SAFETY: `e` points into the map value; plain stores, racing writers on other CPUs
    // can only make the counters approximate.
    unsafe {
        (*e).last_seen_ns = now;
        (*e).packets += 1;
        (*e).bytes += u64::from(len);
        let s = next_state(l4proto, (*e).state, flags);
        if s != (*e).state {
            (*e).state = s;
        }
    }
}

/// The kernel's answer when a hash map has no free element.
const E2BIG: i32 = 7;

/// Counts a failed `CONNTRACK` insert (the flow is dropped): a full table apart from
/// any other kernel error, as they call for different fixes (a bigger table vs a bug).
#[inline(always)]
pub fn count_insert_error(err: i32) {
    count(if err == -E2BIG {
        counter::CT_FULL
    } else {
        counter::CT_INSERT_FAILED
    });
}
