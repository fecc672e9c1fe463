//! The maps, pinned by name so that a restarted agent adopts them. The model is
//! documented on the types in `proxy-common`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use proxy_common::{
    AffinityKey, AffinityMatchKey, AffinityValue, Backend, ClientAffinityKey, CtEntry, CtKey,
    CtOpenEntry, FrontendKey, FrontendValue, Iface, NodeAddr, RevSockKey, RevSockValue,
    ServiceName, SlotKey, SourceRangeKey, Stats, TcConfig, counter, sizes,
};

// The service maps are updated while programs read them: BPF_F_NO_PREALLOC makes a
// replaced element stay readable until an RCU grace period has passed, instead of being
// recycled under a reader's feet.
#[map]
pub static FRONTENDS: HashMap<FrontendKey, FrontendValue> =
    HashMap::pinned(sizes::FRONTENDS, BPF_F_NO_PREALLOC);

#[map]
pub static SLOTS: HashMap<SlotKey, u32> = HashMap::pinned(sizes::SLOTS, BPF_F_NO_PREALLOC);

#[map]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(sizes::BACKENDS, BPF_F_NO_PREALLOC);

#[map]
pub static AFFINITY_MATCH: HashMap<AffinityMatchKey, u32> =
    HashMap::pinned(sizes::AFFINITY_MATCH, BPF_F_NO_PREALLOC);

#[map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(sizes::AFFINITY, 0);

#[map]
pub static REV_SOCK: LruHashMap<RevSockKey, RevSockValue> = LruHashMap::pinned(sizes::REV_SOCK, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

/// For operators only (`proxyctl`): no program reads it, but it lives with the other
/// pinned state so that names survive agent restarts.
#[map]
pub static SVC_NAMES: HashMap<u32, ServiceName> =
    HashMap::pinned(sizes::FRONTENDS, BPF_F_NO_PREALLOC);

#[map]
pub static NODE_ADDRS: HashMap<proxy_common::Addr, NodeAddr> =
    HashMap::pinned(sizes::NODE_ADDRS, BPF_F_NO_PREALLOC);

#[map]
pub static IFACES: HashMap<u32, Iface> = HashMap::pinned(sizes::IFACES, BPF_F_NO_PREALLOC);

// LPM tries require BPF_F_NO_PREALLOC.
#[map]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u32> =
    LpmTrie::pinned(sizes::SOURCE_RANGES, BPF_F_NO_PREALLOC);

#[map]
pub static CLIENT_AFFINITY: LruHashMap<ClientAffinityKey, AffinityValue> =
    LruHashMap::pinned(sizes::CLIENT_AFFINITY, 0);

// Two tables, so that a flood cannot take what matters (see `proxy_common::CtOpenEntry`):
// - CT_OPEN, an LRU, holds flows until they are assured. Anyone can open flows
//   (spoofed SYNs, one-off datagrams), so when it is full the least recently used
//   entry makes room: a flood evicts flood entries and stale handshakes, never an
//   assured flow.
// - CONNTRACK, a plain preallocated hash, holds assured flows only and never evicts:
//   a flow that lost its entry mid-stream would leak replies with the backend's
//   address (the very failure this table exists to prevent). Only the agent's
//   collector deletes from it, once a flow has been idle past its timeout. When it is
//   full, an assured flow stays in CT_OPEN (counted as ct_full).
#[map]
pub static CONNTRACK: HashMap<CtKey, CtEntry> = HashMap::pinned(sizes::CONNTRACK, 0);

#[map]
pub static CT_OPEN: LruHashMap<CtKey, CtOpenEntry> = LruHashMap::pinned(sizes::CT_OPEN, 0);

#[map]
pub static TC_CONFIG: Array<TcConfig> = Array::pinned(1, 0);

// A per-CPU array, not a hash: a packet's update is a few instructions (the verifier
// inlines the lookup), and its size bounds the memory (see `sizes::STATS`).
#[map]
pub static STATS: PerCpuArray<Stats> = PerCpuArray::pinned(sizes::STATS, 0);

/// Per-CPU scratch space for the tc programs' large values: BPF stacks are 512 bytes.
pub struct Scratch {
    /// The packet being handled.
    pub pkt: crate::packet::Packet,
    /// The tuple it is translated to (or, for an ICMP error, sent as).
    pub to: CtKey,
    pub fwd: CtOpenEntry,
    pub rev: CtOpenEntry,
    pub fib: aya_ebpf::bindings::bpf_fib_lookup,
    pub icmp: crate::packet::IcmpError,
    pub key: CtKey,
    pub tuple: aya_ebpf::bindings::bpf_sock_tuple,
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch space.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU and programs do not nest on a CPU, so nothing else uses it while
    // this program runs.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *c += 1 };
    }
}
