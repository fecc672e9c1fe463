//! A per-CPU cache of the FIB's answers for the packets the tc programs forward: an
//! established flow's packets all ask `bpf_fib_lookup` the same question (the
//! translated tuple, arriving on the same interface), and that lookup, with its walk
//! of the routing trie and the neighbour table, was most of a forwarded packet's cost.
//!
//! An answer is the egress interface and the two MACs of a successful lookup, keyed by
//! everything the lookup was given but the length: the tuple (which policy routing and
//! multipath hashing may look at) and the input interface. It is used for
//! [`TTL_NS`], then the FIB is asked again; only successes are kept (no neighbour yet,
//! local delivery, no route: the FIB decides every time). The route's MTU is honoured
//! by remembering the largest length that passed the FIB's check: a longer packet asks
//! the FIB, which checks it (and so gets it answered by `too_big` when it is too big).
//!
//! What the cache gives up: a change of route, of neighbour MAC, or of MTU reaches
//! packets of a flow that is already cached up to [`TTL_NS`] late. New flows always ask
//! the FIB for their first packet (their tuple is new to the cache).
//!
//! Direct-mapped: a slot per hash of the key, overwritten by whichever key last
//! missed there. Per-CPU, so no locking and no cache-line bouncing: a CPU's programs
//! do not nest (as for the scratch space).

use aya_ebpf::{helpers::generated::bpf_ktime_get_coarse_ns, macros::map, maps::PerCpuArray};
use proxy_common::CtKey;

/// Slots per CPU; a power of two.
const SLOTS: u32 = 1024;

/// How long an answer is used: the bound on how late a change of route, neighbour or
/// MTU reaches a flow's packets.
pub const TTL_NS: u64 = 10_000_000;

/// One answer of the FIB.
#[repr(C)]
pub struct Route {
    /// The tuple looked up.
    key: CtKey,
    /// The interface the packet arrived on.
    in_ifindex: u32,
    /// Where it goes.
    pub out_ifindex: u32,
    /// Destination then source MAC, as the Ethernet header holds them.
    pub macs: [u8; 12],
    /// The largest IP length (of one segment) that passed the route's MTU check.
    max_len: u16,
    _pad: u16,
    /// `bpf_ktime_get_coarse_ns()` after which the FIB is asked again.
    expires_ns: u64,
}

#[map]
static FIB_CACHE: PerCpuArray<Route> = PerCpuArray::with_max_entries(SLOTS, 0);

/// The key as the ten words it is made of.
#[inline(always)]
fn words(k: &CtKey) -> *const u32 {
    const _: () = assert!(core::mem::size_of::<CtKey>() == 40);
    core::ptr::from_ref(k).cast::<u32>()
}

/// The slot of `t` arriving on `ifindex`.
#[inline(always)]
fn slot(t: &CtKey, ifindex: u32) -> u32 {
    let w = words(t);
    let mut h = ifindex;
    let mut i = 0;
    while i < 10 {
        // SAFETY: word `i` of the 40-byte, 4-aligned key.
        let x = unsafe { w.add(i).read() };
        h = (h ^ x).wrapping_mul(0x9e37_79b1).rotate_left(13);
        i += 1;
    }
    (h ^ (h >> 16)) & (SLOTS - 1)
}

/// Whether `a` and `b` are the same tuple. (A chain of comparisons would be merged by
/// LLVM into a call of the BPF `bcmp`, a loop over bytes.)
#[inline(always)]
fn same(a: &CtKey, b: &CtKey) -> bool {
    let (a, b) = (words(a), words(b));
    let mut diff = 0;
    let mut i = 0;
    while i < 10 {
        // SAFETY: word `i` of two 40-byte, 4-aligned keys.
        diff |= unsafe { a.add(i).read() ^ b.add(i).read() };
        i += 1;
    }
    diff == 0
}

/// The clock of the cache (coarse: a tick's resolution is plenty for [`TTL_NS`], and
/// it is cheaper to read).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The cached answer for a packet of `tot_len` bytes with tuple `t` that arrived on
/// `ifindex`, if there is one and it is fresh and the packet is no longer than one
/// that passed the MTU check.
#[inline(always)]
pub fn cached(t: &CtKey, ifindex: u32, tot_len: u16, now: u64) -> Option<&'static Route> {
    let r = FIB_CACHE.get(slot(t, ifindex))?;
    if r.in_ifindex != ifindex || now > r.expires_ns || tot_len > r.max_len || !same(&r.key, t) {
        return None;
    }
    Some(r)
}

/// Remembers a successful lookup for `t` arriving on `ifindex` with a packet of
/// `tot_len` bytes: out of `out_ifindex`, with these MACs.
#[inline(always)]
pub fn remember(
    t: &CtKey,
    ifindex: u32,
    tot_len: u16,
    out_ifindex: u32,
    dmac: &[u8; 6],
    smac: &[u8; 6],
    now: u64,
) {
    let Some(r) = FIB_CACHE.get_ptr_mut(slot(t, ifindex)) else {
        return;
    };
    // SAFETY: per-CPU value, valid for this program run; a CPU's programs do not nest.
    let r = unsafe { &mut *r };
    crate::packet::set_tuple(
        &mut r.key, &t.saddr, &t.daddr, t.sport_be, t.dport_be, t.proto,
    );
    r.in_ifindex = ifindex;
    r.out_ifindex = out_ifindex;
    let mut i = 0;
    while i < 6 {
        r.macs[i] = dmac[i];
        r.macs[6 + i] = smac[i];
        i += 1;
    }
    r.max_len = tot_len;
    r.expires_ns = now + TTL_NS;
}
