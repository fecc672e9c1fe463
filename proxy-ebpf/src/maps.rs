//! The maps, pinned by name so that a restarted agent adopts them. The model is
//! documented on the types in `proxy-common`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use proxy_common::{
    AffinityKey, AffinityMatchKey, AffinityValue, Backend, Frontend, FrontendKey, RevSockKey,
    RevSockValue, ServiceName, SlotKey, counter, sizes,
};

// The service maps are updated while programs read them: BPF_F_NO_PREALLOC makes a
// replaced element stay readable until an RCU grace period has passed, instead of being
// recycled under a reader's feet.
#[map]
pub static FRONTENDS: HashMap<FrontendKey, Frontend> =
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

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *c += 1 };
    }
}
