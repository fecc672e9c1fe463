//! Events for `proxyctl monitor`: drops with their reason and tuple, and new flows'
//! translations. Emitted only while a listener holds a lease in `MONITOR` (see
//! `proxy_common::monitor`), so with no one listening a path that could emit pays one
//! array read and a compare, and the established path pays nothing at all.

use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, RingBuf},
};
use proxy_common::{CtKey, MonitorEvent, counter, monitor};

use crate::maps::count;

#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(monitor::RING_BYTES, 0);

#[map]
pub static MONITOR: Array<u64> = Array::pinned(monitor::KINDS, 0);

/// What an event is about, besides its kind and reason.
pub struct Subject<'a> {
    pub hook: u8,
    pub ifindex: u32,
    pub service_id: u32,
    pub backend_id: u32,
    pub tuple: &'a CtKey,
    /// The translated tuple (trace), or `None`.
    pub to: Option<&'a CtKey>,
}

/// Whether someone listens for events of `kind` now; the time if so.
#[inline(always)]
fn listening(kind: u32) -> Option<u64> {
    let deadline = *MONITOR.get(kind)?;
    if deadline == 0 {
        return None;
    }
    // SAFETY: helper without preconditions, available to every program type.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    (now < deadline).then_some(now)
}

/// Counts `reason` (a drop) and reports it to a listener.
#[inline(always)]
pub fn drop(reason: u32, s: &Subject<'_>) {
    count(reason);
    emit(monitor::KIND_DROP, reason, s);
}

/// Reports a translation (counted by the caller under `reason`) to a listener.
#[inline(always)]
pub fn trace(reason: u32, s: &Subject<'_>) {
    emit(monitor::KIND_TRACE, reason, s);
}

#[inline(always)]
fn emit(kind: u32, reason: u32, s: &Subject<'_>) {
    let Some(now) = listening(kind) else {
        return;
    };
    let Some(mut entry) = EVENTS.reserve::<MonitorEvent>(0) else {
        count(counter::MONITOR_LOST);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to a reserved, writable MonitorEvent; every field (padding
    // included) is written before submit, so the reader never sees stale bytes.
    unsafe {
        (*e).time_ns = now;
        (*e).kind = kind;
        (*e).reason = reason;
        (*e).hook = s.hook;
        (*e)._pad = [0; 3];
        (*e).ifindex = s.ifindex;
        (*e).service_id = s.service_id;
        (*e).backend_id = s.backend_id;
        (*e).tuple = *s.tuple;
        (*e).to = match s.to {
            Some(t) => *t,
            None => CtKey::default(),
        };
    }
    entry.submit(0);
}
