//! The traffic statistics per service and backend (`STATS`, see `proxy_common::stats`):
//! the agent hands out a stats id per membership, zeroes and tags its slot before any
//! program can count into it, and `proxyctl` reads the per-CPU slots back summed.
//!
//! Ids are reused oldest-freed-first, so a freed id stays untouched as long as possible;
//! a reused slot is zeroed and re-tagged, so counts never pass from one service (or
//! backend) to another. Flows still carrying the id of a membership that left stop
//! counting once the id is handed out again (the tag no longer matches them).

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use proxy_common::{AffinityMatchKey, Stats, maps, stats};
use tracing::{debug, warn};

use super::pins::{self, PinError};

/// Where the slots live: the per-CPU map, or a fake in tests.
pub(super) trait Slots {
    /// Writes slot `id` on every CPU: zeroed counts, tagged with `owner`.
    fn reset(&mut self, id: u16, owner: &AffinityMatchKey) -> Result<(), String>;
}

impl Slots for PerCpuArray<MapData, Stats> {
    fn reset(&mut self, id: u16, owner: &AffinityMatchKey) -> Result<(), String> {
        let value = Stats {
            service_id: owner.service_id,
            backend_id: owner.backend_id,
            ..Stats::default()
        };
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| format!("{what}: {e}"))?;
        let values = PerCpuValues::try_from(vec![value; cpus]).map_err(|e| e.to_string())?;
        self.set(u32::from(id), values, 0)
            .map_err(|e| e.to_string())
    }
}

/// How full the statistics' table is, for `/metrics`: a full one stops counting new
/// memberships, which an operator should see before `proxyctl list --stats` shows `-`.
#[derive(Clone, Debug, Default)]
pub struct StatsGauges {
    /// Ids there are (the slots less slot 0).
    pub capacity: Gauge,
    /// Ids handed out.
    pub assigned: Gauge,
    /// Memberships left uncounted because the ids ran out.
    pub uncounted: Gauge,
}

impl StatsGauges {
    /// Registers the three series.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "proxy_agent_stats_slots",
            "Frontend-backend pairs the STATS table can count (proxyctl list --stats)",
            self.capacity.clone(),
        );
        r.register(
            "proxy_agent_stats_slots_used",
            "Frontend-backend pairs being counted in the STATS table",
            self.assigned.clone(),
        );
        r.register(
            "proxy_agent_stats_uncounted_pairs",
            "Frontend-backend pairs not counted because the STATS table is full",
            self.uncounted.clone(),
        );
    }
}

/// The stats ids of the memberships, over the slots `1..capacity`.
pub(super) struct StatsIds<S> {
    slots: S,
    capacity: u32,
    by_member: HashMap<AffinityMatchKey, u16>,
    /// Freed ids, oldest first.
    free: VecDeque<u16>,
    /// The lowest id never handed out.
    next: u32,
    /// Whether running out was logged (once per agent: it repeats at every sync).
    told_full: bool,
    /// Memberships written without an id (ids ran out), until they are deleted.
    uncounted: std::collections::HashSet<AffinityMatchKey>,
    gauges: StatsGauges,
}

impl<S: Slots> StatsIds<S> {
    /// No id handed out, over `capacity` slots (slot 0 is nobody's).
    pub(super) fn new(slots: S, capacity: u32) -> Self {
        let capacity = capacity.min(u32::from(u16::MAX) + 1);
        let gauges = StatsGauges::default();
        gauges.capacity.set(i64::from(capacity.saturating_sub(1)));
        StatsIds {
            slots,
            capacity,
            by_member: HashMap::new(),
            free: VecDeque::new(),
            next: 1,
            told_full: false,
            uncounted: std::collections::HashSet::new(),
            gauges,
        }
    }

    /// The table's gauges (shared: they follow this table).
    pub(super) fn gauges(&self) -> StatsGauges {
        self.gauges.clone()
    }

    fn publish(&self) {
        let n = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
        self.gauges.assigned.set(n(self.by_member.len()));
        self.gauges.uncounted.set(n(self.uncounted.len()));
    }

    /// The `AFFINITY_MATCH` value for a membership being written: its stats id with
    /// [`stats::ID_F`] (a fresh or reused id whose slot is zeroed and tagged first), or
    /// 1 (not counted) when the ids ran out or the slot could not be written.
    pub(super) fn assign(&mut self, key: AffinityMatchKey) -> u32 {
        let value = self.assign_id(key);
        if value == 1 {
            self.uncounted.insert(key);
        } else {
            self.uncounted.remove(&key);
        }
        self.publish();
        value
    }

    fn assign_id(&mut self, key: AffinityMatchKey) -> u32 {
        let id = match self.by_member.get(&key) {
            Some(&id) => Some(id),
            None => self.take(),
        };
        let Some(id) = id else {
            if !self.told_full {
                self.told_full = true;
                warn!(
                    capacity = self.capacity,
                    "the {} table is full: memberships beyond it are not counted \
                     (proxyctl list --stats shows -)",
                    maps::STATS
                );
            }
            return 1;
        };
        if let Err(e) = self.slots.reset(id, &key) {
            debug!(id, error = %e, "resetting a stats slot; the membership is not counted");
            self.by_member.remove(&key);
            self.free.push_back(id);
            return 1;
        }
        self.by_member.insert(key, id);
        stats::ID_F | u32::from(id)
    }

    /// A membership was deleted: its id goes to the back of the free list.
    pub(super) fn release(&mut self, key: &AffinityMatchKey) {
        if let Some(id) = self.by_member.remove(key) {
            self.free.push_back(id);
        }
        self.uncounted.remove(key);
        self.publish();
    }

    /// Rebuilds the ids from the memberships a previous agent left (`key`, value). The
    /// memberships to rewrite come back with their new values: those an older agent
    /// wrote without an id, and any whose id is out of range or taken twice.
    pub(super) fn adopt(
        &mut self,
        held: &[(AffinityMatchKey, u32)],
    ) -> Vec<(AffinityMatchKey, u32)> {
        let mut seen = std::collections::HashSet::new();
        let mut redo = Vec::new();
        for (key, value) in held {
            let id = stats::id_of(*value);
            if id != 0 && u32::from(id) < self.capacity && seen.insert(id) {
                self.by_member.insert(*key, id);
            } else {
                redo.push(*key);
            }
        }
        let top = seen.iter().copied().max().map_or(0, u32::from);
        self.next = top + 1;
        for id in 1..top.min(u32::from(u16::MAX)) as u16 {
            if !seen.contains(&id) {
                self.free.push_back(id);
            }
        }
        let out = redo.into_iter().map(|k| (k, self.assign(k))).collect();
        self.publish();
        out
    }

    fn take(&mut self) -> Option<u16> {
        if let Some(id) = self.free.pop_front() {
            return Some(id);
        }
        if self.next >= self.capacity {
            return None;
        }
        let id = u16::try_from(self.next).ok()?;
        self.next += 1;
        Some(id)
    }
}

/// The counters of one membership, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Connections the socket programs balanced (no packets seen).
    pub sock_connections: u64,
    /// Flows the tc programs opened.
    pub connections: u64,
    /// Packets from clients (tc).
    pub packets_in: u64,
    /// Packets to clients (tc).
    pub packets_out: u64,
    /// Bytes from clients (tc).
    pub bytes_in: u64,
    /// Bytes to clients (tc).
    pub bytes_out: u64,
}

/// The per-CPU values of a slot summed, if (on every CPU) the slot belongs to `owner`.
pub fn sum(per_cpu: &[Stats], owner: &AffinityMatchKey) -> Option<Totals> {
    let mut t = Totals::default();
    for s in per_cpu {
        if s.service_id != owner.service_id || s.backend_id != owner.backend_id {
            return None;
        }
        t.sock_connections += s.sock_connections;
        t.connections += s.connections;
        t.packets_in += s.packets_in;
        t.packets_out += s.packets_out;
        t.bytes_in += s.bytes_in;
        t.bytes_out += s.bytes_out;
    }
    Some(t)
}

/// Reads the statistics pinned under `bpffs`: per membership, its totals. `None`: a
/// data plane that predates them.
pub fn read(bpffs: &Path) -> Result<Option<HashMap<AffinityMatchKey, Totals>>, PinError> {
    let Some(array) = pins::open_optional::<PerCpuArray<MapData, Stats>>(bpffs, maps::STATS)?
    else {
        return Ok(None);
    };
    let members: aya::maps::HashMap<MapData, AffinityMatchKey, u32> =
        pins::open(bpffs, maps::AFFINITY_MATCH)?;
    let mut out = HashMap::new();
    // A membership deleted while we walk is skipped (the walk restarts at worst).
    for (key, value) in members.iter().flatten() {
        let id = stats::id_of(value);
        if id == 0 {
            continue;
        }
        if let Ok(per_cpu) = array.get(&u32::from(id), 0)
            && let Some(t) = sum(&per_cpu, &key)
        {
            out.insert(key, t);
        }
    }
    Ok(Some(out))
}

/// Turns the counting on or off (`STATS[0]`, read by the programs when a flow opens
/// and at connect()): for the benchmarks, which compare both in one run.
pub fn set_enabled(array: &mut PerCpuArray<MapData, Stats>, on: bool) -> Result<(), String> {
    let value = Stats {
        service_id: if on { 0 } else { stats::OFF },
        ..Stats::default()
    };
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| format!("{what}: {e}"))?;
    let values = PerCpuValues::try_from(vec![value; cpus]).map_err(|e| e.to_string())?;
    array.set(0, values, 0).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots in memory: the tag and one count per id.
    #[derive(Default)]
    struct Fake {
        slots: HashMap<u16, (AffinityMatchKey, u64)>,
        fail: bool,
    }

    impl Slots for Fake {
        fn reset(&mut self, id: u16, owner: &AffinityMatchKey) -> Result<(), String> {
            if self.fail {
                return Err("refused".into());
            }
            self.slots.insert(id, (*owner, 0));
            Ok(())
        }
    }

    fn key(service_id: u32, backend_id: u32) -> AffinityMatchKey {
        AffinityMatchKey {
            service_id,
            backend_id,
        }
    }

    #[test]
    fn a_reused_id_is_zeroed_and_retagged_and_freed_ids_wait_their_turn() {
        let mut ids = StatsIds::new(Fake::default(), 8);
        let a = ids.assign(key(1, 10));
        let b = ids.assign(key(1, 11));
        assert_eq!((stats::id_of(a), stats::id_of(b)), (1, 2));
        // Traffic counted into service 1's backend 10.
        ids.slots.slots.get_mut(&1).expect("slot 1").1 = 500;
        ids.release(&key(1, 10));
        ids.release(&key(1, 11));
        // Oldest freed first: id 1 goes to another service, zeroed and tagged.
        let c = ids.assign(key(2, 10));
        assert_eq!(stats::id_of(c), 1);
        assert_eq!(ids.slots.slots[&1], (key(2, 10), 0));
        assert_eq!(stats::id_of(ids.assign(key(2, 12))), 2);
        assert_eq!(stats::id_of(ids.assign(key(2, 13))), 3);
    }

    #[test]
    fn running_out_or_failing_to_reset_leaves_a_membership_uncounted() {
        let mut ids = StatsIds::new(Fake::default(), 3);
        assert_eq!(stats::id_of(ids.assign(key(1, 1))), 1);
        assert_eq!(stats::id_of(ids.assign(key(1, 2))), 2);
        assert_eq!(ids.assign(key(1, 3)), 1, "full: the plain membership value");
        ids.slots.fail = true;
        ids.release(&key(1, 1));
        assert_eq!(ids.assign(key(1, 4)), 1);
        ids.slots.fail = false;
        assert_eq!(stats::id_of(ids.assign(key(1, 5))), 1, "the id went back");
        // What /metrics says: 2 ids, both out, two memberships (1:3, 1:4) uncounted.
        let g = ids.gauges();
        assert_eq!(
            (g.capacity.get(), g.assigned.get(), g.uncounted.get()),
            (2, 2, 2)
        );
        ids.release(&key(1, 3));
        assert_eq!(
            g.uncounted.get(),
            1,
            "a deleted membership is no longer uncounted"
        );
    }

    #[test]
    fn adoption_keeps_valid_ids_and_renumbers_old_duplicate_and_outgrown_ones() {
        let mut ids = StatsIds::new(Fake::default(), 8);
        let held = [
            (key(1, 1), stats::ID_F | 3),
            (key(1, 2), 1),
            (key(1, 3), stats::ID_F | 3),
            (key(1, 4), stats::ID_F | 9),
            (key(1, 5), stats::ID_F | 5),
        ];
        let redo = ids.adopt(&held);
        // Ids 1, 2 and 4 were free below the highest kept (5); they go first.
        let got: Vec<(AffinityMatchKey, u16)> =
            redo.iter().map(|(k, v)| (*k, stats::id_of(*v))).collect();
        assert_eq!(got, [(key(1, 2), 1), (key(1, 3), 2), (key(1, 4), 4)]);
        assert!(
            !ids.slots.slots.contains_key(&3),
            "a kept slot keeps its counts"
        );
        assert_eq!(stats::id_of(ids.assign(key(2, 1))), 6);
    }

    #[test]
    fn sums_cover_every_cpu_and_a_slot_of_another_owner_is_not_shown() {
        let s = |sid, n| Stats {
            service_id: sid,
            backend_id: 4,
            sock_connections: n,
            connections: n,
            packets_in: n,
            packets_out: n,
            bytes_in: 100 * n,
            bytes_out: n,
        };
        let t = sum(&[s(1, 1), s(1, 2)], &key(1, 4)).expect("owned");
        assert_eq!((t.connections, t.bytes_in), (3, 300));
        assert_eq!(sum(&[s(1, 1), s(2, 2)], &key(1, 4)), None);
    }
}
