//! The services this agent programmed, indexed in memory, and the logic that writes
//! them through [`Tables`]: id allocation, backend reference counts, slot placement,
//! rollback, and adoption of what a previous agent left.
//!
//! # Write order
//! A service is never visible half-written. An upsert writes, in order:
//! 1. new backends (nothing references them yet);
//! 2. the memberships (`AFFINITY_MATCH`) of backends new to the service, before any
//!    slot can point at them, so a remembered affinity is only honoured while valid;
//! 3. the slots that change: backends that stay keep their slot ([`place`]), so a
//!    one-endpoint change is a handful of writes, and the frontend's count still covers
//!    the old length;
//! 4. source ranges new to the frontend, before the frontend starts checking them;
//! 5. the frontend with its new count and flags: from here on the new set is served.
//!
//! If any of these fails, every earlier write is reversed ([`Undo`]) and the index is
//! left untouched (ids are only taken once the frontend is written). Surplus entries
//! (source ranges, slots past the new count, memberships and backends that left) are
//! deleted afterwards; failing to delete one is logged, never fatal: nothing reaches it.
//!
//! A removal deletes the frontend first (new connections stop matching at once), then
//! its slots, memberships, unreferenced backends, source ranges and name.
//!
//! A debug build can be told to break this order on purpose
//! ([`UNSAFE_WRITE_ORDER_ENV`], [`WriteOrder::Unsafe`]): the integration test of the
//! order runs against it to show that it notices. Release builds never read it.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use ipnetwork::IpNetwork;
use proxy_common as pc;
use proxy_common::{AffinityMatchKey, Backend, ServiceName, SlotKey, maps};
use tracing::debug;

use super::MapSizes;
use super::keys::{self, frontend_key, model_frontend};
use super::tables::{Tables, read_back};
use super::undo::Undo;
use crate::dataplane::DataplaneError;
use crate::model::{self, ServicePortName, VirtualService};

/// What one programmed frontend looks like, as this agent knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Programmed {
    /// The service port (parsed back from `SVC_NAMES` after adoption).
    pub name: ServicePortName,
    /// Its frontend.
    pub frontend: model::FrontendKey,
    /// The `FRONTENDS` value written.
    pub value: pc::FrontendValue,
    /// Backend id per slot; 0 for a slot found missing at adoption.
    pub slots: Vec<u32>,
    /// The source ranges written to `SOURCE_RANGES` for this frontend.
    pub source_ranges: Vec<IpNetwork>,
}

/// Ids handed out lowest-free-first: the free list (last freed first), then `next`.
/// Id 0 is never handed out: a slot reading 0 means "missing".
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ids {
    /// The lowest id never handed out (u64, so that u32::MAX can be handed out too).
    next: u64,
    free: Vec<u32>,
}

impl Default for Ids {
    fn default() -> Self {
        Ids {
            next: 1,
            free: Vec::new(),
        }
    }
}

impl Ids {
    /// The ids [`Ids::take`] will hand out, in order, without taking them.
    fn upcoming(&self) -> impl Iterator<Item = u32> + '_ {
        let fresh = (self.next..=u64::from(u32::MAX)).filter_map(|id| u32::try_from(id).ok());
        self.free.iter().rev().copied().chain(fresh)
    }

    /// Hands out the next id (None once every id is in use).
    fn take(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop() {
            return Some(id);
        }
        let id = u32::try_from(self.next).ok()?;
        self.next += 1;
        Some(id)
    }

    /// Makes an id available again.
    fn release(&mut self, id: u32) {
        self.free.push(id);
    }

    /// An id found in use (adoption): never hand it out.
    fn saw(&mut self, id: u32) {
        self.next = self.next.max(u64::from(id) + 1);
    }
}

/// The environment variable that, in a debug build only, makes upserts write in
/// [`WriteOrder::Unsafe`]. Test-only: `tests/tests/clusterip.rs` sets it to `1` for the
/// control run of its write-order test.
pub(super) const UNSAFE_WRITE_ORDER_ENV: &str = "PROXY_AGENT_TEST_UNSAFE_WRITE_ORDER";

/// The order of an upsert's writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum WriteOrder {
    /// The order documented at the top of this module; the only one a release build
    /// has.
    #[default]
    Safe,
    /// TEST ONLY, deliberately wrong: slots past the new count are deleted while the
    /// frontend still counts them, then the frontend is written with its new count
    /// *before* the backends, memberships and slots it counts. Traffic during an update
    /// then finds missing slots.
    Unsafe,
}

impl WriteOrder {
    /// [`WriteOrder::Unsafe`] if this is a debug build and [`UNSAFE_WRITE_ORDER_ENV`]
    /// is `1`; else [`WriteOrder::Safe`].
    pub(super) fn from_env() -> Self {
        if cfg!(debug_assertions)
            && std::env::var_os(UNSAFE_WRITE_ORDER_ENV).is_some_and(|v| v == "1")
        {
            WriteOrder::Unsafe
        } else {
            WriteOrder::Safe
        }
    }
}

/// A backend's id and the number of slots (over all services) referencing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BackendRef {
    id: u32,
    refs: u32,
}

/// The index of programmed services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Services {
    sizes: MapSizes,
    by_frontend: BTreeMap<model::FrontendKey, Programmed>,
    backends: HashMap<Backend, BackendRef>,
    backend_by_id: HashMap<u32, Backend>,
    service_ids: Ids,
    backend_ids: Ids,
    /// Slots over all frontends (the sum of their backend counts).
    slots_used: u32,
    /// [`WriteOrder::Safe`] except in a test's control run.
    write_order: WriteOrder,
}

/// A full table, before anything is written.
fn full(table: &'static str, capacity: u32, svc: &VirtualService) -> DataplaneError {
    DataplaneError::Capacity {
        table,
        capacity,
        what: svc.name.to_string(),
    }
}

impl Services {
    /// An empty index for maps of these sizes.
    pub(super) fn new(sizes: MapSizes) -> Self {
        Services {
            sizes,
            by_frontend: BTreeMap::new(),
            backends: HashMap::new(),
            backend_by_id: HashMap::new(),
            service_ids: Ids::default(),
            backend_ids: Ids::default(),
            slots_used: 0,
            write_order: WriteOrder::from_env(),
        }
    }

    /// The order upserts write in.
    pub(super) fn write_order(&self) -> WriteOrder {
        self.write_order
    }

    /// Rebuilds the index from what a previous agent left in the tables, so that the
    /// first sync rewrites nothing that is already right. A missing slot reads as id
    /// 0, which no backend has, so the service differs from what is desired and the
    /// next sync rewrites it. Backends no frontend references (a previous agent died
    /// mid-update) are deleted.
    pub(super) fn adopt(tables: &mut impl Tables, sizes: MapSizes) -> Result<Self, DataplaneError> {
        let held = read_back(tables)?;
        let mut s = Services::new(sizes);
        for (id, be) in held.backends {
            s.backend_by_id.insert(id, be);
            s.backends.insert(be, BackendRef { id, refs: 0 });
            s.backend_ids.saw(id);
        }
        for f in held.frontends {
            let Some(frontend) = model_frontend(&f.key) else {
                continue;
            };
            let slots: Vec<u32> = f.slots.iter().map(|id| id.unwrap_or(0)).collect();
            for &id in &slots {
                s.adjust_refs(id, 1);
            }
            s.slots_used = s.slots_used.saturating_add(f.value.backend_count);
            s.service_ids.saw(f.value.service_id);
            s.by_frontend.insert(
                frontend,
                Programmed {
                    name: keys::parse_name(f.name.as_deref().unwrap_or("")),
                    frontend,
                    value: f.value,
                    slots,
                    source_ranges: f.source_ranges,
                },
            );
        }
        let mut orphans: Vec<u32> = s
            .backends
            .values()
            .filter(|r| r.refs == 0)
            .map(|r| r.id)
            .collect();
        // Sorted, so that the free list (and the ids handed out next) do not depend on
        // the order the map was walked in.
        orphans.sort_unstable();
        for id in orphans {
            s.release_if_unreferenced(tables, id);
        }
        Ok(s)
    }

    /// Re-reads the tables (see [`Services::adopt`]): afterwards the index is what the
    /// kernel holds, names included (as `SVC_NAMES` stores them). On error the index
    /// is unchanged.
    pub(super) fn refresh(&mut self, tables: &mut impl Tables) -> Result<(), DataplaneError> {
        *self = Services::adopt(tables, self.sizes)?;
        Ok(())
    }

    /// Number of programmed frontends.
    pub(super) fn len(&self) -> usize {
        self.by_frontend.len()
    }

    /// The programmed frontends, with what the tables hold of them.
    pub(super) fn programmed(&self) -> Vec<VirtualService> {
        self.by_frontend
            .values()
            .map(|p| {
                let mut backends: Vec<SocketAddr> = p
                    .slots
                    .iter()
                    .filter_map(|id| self.backend_by_id.get(id))
                    .map(keys::backend_addr)
                    .collect();
                backends.sort();
                backends.dedup();
                VirtualService {
                    name: keys::held_name(&p.name).unwrap_or_else(|| p.name.clone()),
                    frontend: p.frontend,
                    backends,
                    affinity_timeout_s: keys::affinity_of(&p.value),
                    kind: keys::kind_of(p.value.flags),
                    source_ranges: p.source_ranges.clone(),
                    // Not stored (see `EbpfDataplane::held`).
                    node_local: false,
                }
            })
            .collect()
    }

    /// A programmed frontend's service id and backends (one per slot), for
    /// [`super::udp_sockets::departures`].
    pub(super) fn backends_of(&self, frontend: &model::FrontendKey) -> Option<(u32, Vec<Backend>)> {
        let p = self.by_frontend.get(frontend)?;
        let backends = p
            .slots
            .iter()
            .filter_map(|id| self.backend_by_id.get(id).copied())
            .collect();
        Some((p.value.service_id, backends))
    }

    /// Programs one service (creates or replaces it) in the order documented at the top
    /// of this module. On error the tables and the index are as before the call.
    pub(super) fn upsert(
        &mut self,
        tables: &mut impl Tables,
        svc: &VirtualService,
    ) -> Result<(), DataplaneError> {
        let key = frontend_key(&svc.frontend);
        let proto = svc.frontend.protocol.number();
        let existing = self.by_frontend.get(&svc.frontend).cloned();
        let old_slots: &[u32] = existing.as_ref().map_or(&[], |p| &p.slots);
        let old_ranges: &[IpNetwork] = existing.as_ref().map_or(&[], |p| &p.source_ranges);

        // Capacity, before any write. While the slots change, the service holds the
        // longer of its old and new lengths; new backends are added before old ones go.
        let sizes = self.sizes;
        if existing.is_none() && self.by_frontend.len() >= sizes.frontends as usize {
            return Err(full(maps::FRONTENDS, sizes.frontends, svc));
        }
        let grow = svc.backends.len().saturating_sub(old_slots.len());
        if self.slots_used as usize + grow > sizes.slots as usize {
            return Err(full(maps::SLOTS, sizes.slots, svc));
        }
        // The plan: a backend id per endpoint, planned ids for new backends (taken
        // from the allocator only once the frontend is written).
        let mut new_backends: Vec<(u32, Backend)> = Vec::new();
        let mut new_ids: HashMap<Backend, u32> = HashMap::new();
        let mut upcoming = self.backend_ids.upcoming();
        let mut want = Vec::with_capacity(svc.backends.len());
        for addr in &svc.backends {
            let be = keys::backend(addr, proto);
            let id = match self
                .backends
                .get(&be)
                .map(|r| r.id)
                .or(new_ids.get(&be).copied())
            {
                Some(id) => id,
                None => {
                    let id = upcoming
                        .next()
                        .ok_or_else(|| full(maps::BACKENDS, sizes.backends, svc))?;
                    new_ids.insert(be, id);
                    new_backends.push((id, be));
                    id
                }
            };
            want.push(id);
        }
        // The iterator borrows the allocator; the ids are taken after the writes.
        drop(upcoming);
        if self.backends.len() + new_backends.len() > sizes.backends as usize {
            return Err(full(maps::BACKENDS, sizes.backends, svc));
        }
        let service_id = match &existing {
            Some(p) => p.value.service_id,
            None => self
                .service_ids
                .upcoming()
                .next()
                .ok_or_else(|| full(maps::FRONTENDS, sizes.frontends, svc))?,
        };
        let new_slots = place(old_slots, &want);
        let value = pc::FrontendValue {
            service_id,
            backend_count: new_slots.len() as u32,
            flags: keys::frontend_flags(svc),
            affinity_timeout_s: svc.affinity_timeout_s.unwrap_or(0),
        };

        let unsafe_order = self.write_order == WriteOrder::Unsafe;
        if unsafe_order {
            // TEST ONLY (WriteOrder::Unsafe): the surplus slots go while the frontend
            // still counts them.
            for slot in new_slots.len()..old_slots.len() {
                delete_slot(tables, service_id, slot);
            }
        }
        {
            let mut undo = Undo::new(tables);
            let previous = existing.as_ref().map(|p| p.value);
            if unsafe_order && previous != Some(value) {
                // TEST ONLY (WriteOrder::Unsafe): the new count before what it counts.
                undo.put_frontend(&key, &value, previous)?;
            }
            // 1. Backends.
            for (id, be) in &new_backends {
                undo.put_backend(*id, be)?;
            }
            // 2. Memberships of backends new to the service.
            let old_set: HashSet<u32> = old_slots.iter().copied().collect();
            let mut added = HashSet::new();
            for &id in &want {
                if !old_set.contains(&id) && added.insert(id) {
                    undo.put_member(AffinityMatchKey {
                        service_id,
                        backend_id: id,
                    })?;
                }
            }
            // 3. Slots that change. A slot adopted as missing (0) had no entry: undoing
            //    its write deletes it.
            for (slot, &id) in new_slots.iter().enumerate() {
                let previous = old_slots.get(slot).copied();
                if previous == Some(id) {
                    continue;
                }
                let key = SlotKey {
                    service_id,
                    slot: slot as u32,
                };
                undo.put_slot(key, id, previous.filter(|&p| p != 0))?;
            }
            // 4. New source ranges.
            for net in &svc.source_ranges {
                if !old_ranges.contains(net) {
                    undo.put_source_range(service_id, net)?;
                }
            }
            // 5. The frontend.
            if !unsafe_order && previous != Some(value) {
                undo.put_frontend(&key, &value, previous)?;
            }
            undo.commit();
        }

        // The new set is served: take the planned ids.
        if existing.is_none() {
            let taken = self.service_ids.take();
            debug_assert_eq!(taken, Some(service_id), "the planned service id");
        }
        for (id, be) in new_backends {
            let taken = self.backend_ids.take();
            debug_assert_eq!(taken, Some(id), "the planned backend id");
            self.backends.insert(be, BackendRef { id, refs: 0 });
            self.backend_by_id.insert(id, be);
        }
        // Then the surplus, and the name (for operators only).
        for net in old_ranges.iter().filter(|n| !svc.source_ranges.contains(n)) {
            if let Err(e) = tables.delete_source_range(service_id, net) {
                debug!(%net, error = %e, "removing a source range");
            }
        }
        if existing.as_ref().map(|p| &p.name) != Some(&svc.name)
            && let Err(e) = tables.put_name(service_id, &ServiceName::new(&svc.name.to_string()))
        {
            debug!(service = %svc.name, error = %e, "recording the service name");
        }
        if !unsafe_order {
            for slot in new_slots.len()..old_slots.len() {
                delete_slot(tables, service_id, slot);
            }
        }
        for &id in &want {
            self.adjust_refs(id, 1);
        }
        for &id in old_slots {
            self.adjust_refs(id, -1);
        }
        let want_set: HashSet<u32> = want.iter().copied().collect();
        let mut left: Vec<u32> = old_slots
            .iter()
            .copied()
            .filter(|id| !want_set.contains(id))
            .collect();
        left.sort_unstable();
        left.dedup();
        for id in left {
            delete_member(tables, service_id, id);
            self.release_if_unreferenced(tables, id);
        }
        self.slots_used = self
            .slots_used
            .saturating_add(value.backend_count)
            .saturating_sub(old_slots.len() as u32);
        self.by_frontend.insert(
            svc.frontend,
            Programmed {
                name: svc.name.clone(),
                frontend: svc.frontend,
                value,
                slots: new_slots,
                source_ranges: svc.source_ranges.clone(),
            },
        );
        Ok(())
    }

    /// Removes one frontend: the frontend first (if that fails, nothing changed), then
    /// its slots, memberships, unreferenced backends, source ranges and name.
    pub(super) fn remove(
        &mut self,
        tables: &mut impl Tables,
        frontend: &model::FrontendKey,
    ) -> Result<(), DataplaneError> {
        let Some(p) = self.by_frontend.get(frontend).cloned() else {
            return Ok(());
        };
        tables.delete_frontend(&frontend_key(frontend))?;
        let sid = p.value.service_id;
        for slot in 0..p.slots.len() {
            delete_slot(tables, sid, slot);
        }
        for &id in &p.slots {
            self.adjust_refs(id, -1);
        }
        let mut ids = p.slots.clone();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            delete_member(tables, sid, id);
            self.release_if_unreferenced(tables, id);
        }
        self.slots_used = self.slots_used.saturating_sub(p.slots.len() as u32);
        for net in &p.source_ranges {
            if let Err(e) = tables.delete_source_range(sid, net) {
                debug!(%net, error = %e, "removing a source range");
            }
        }
        if let Err(e) = tables.delete_name(sid) {
            debug!(service_id = sid, error = %e, "removing the service name");
        }
        self.by_frontend.remove(frontend);
        self.service_ids.release(sid);
        Ok(())
    }

    fn adjust_refs(&mut self, id: u32, delta: i64) {
        if let Some(be) = self.backend_by_id.get(&id)
            && let Some(r) = self.backends.get_mut(be)
        {
            r.refs = u32::try_from((i64::from(r.refs) + delta).max(0)).unwrap_or(u32::MAX);
        }
    }

    /// Deletes backend `id` if no slot references it any more, and frees its id.
    fn release_if_unreferenced(&mut self, tables: &mut impl Tables, id: u32) {
        let Some(be) = self.backend_by_id.get(&id).copied() else {
            return;
        };
        if self
            .backends
            .get(&be)
            .is_some_and(|r| r.id == id && r.refs == 0)
        {
            if let Err(e) = tables.delete_backend(id) {
                debug!(id, error = %e, "removing a backend");
            }
            self.backends.remove(&be);
            self.backend_by_id.remove(&id);
            self.backend_ids.release(id);
        }
    }
}

fn delete_slot(tables: &mut impl Tables, service_id: u32, slot: usize) {
    let key = SlotKey {
        service_id,
        slot: slot as u32,
    };
    if let Err(e) = tables.delete_slot(key) {
        debug!(service_id, slot, error = %e, "removing a slot");
    }
}

fn delete_member(tables: &mut impl Tables, service_id: u32, backend_id: u32) {
    let key = AffinityMatchKey {
        service_id,
        backend_id,
    };
    if let Err(e) = tables.delete_member(key) {
        debug!(service_id, backend_id, error = %e, "removing an affinity membership");
    }
}

/// New slot layout: backends that stay keep their slot; new ones fill the holes left
/// by removed ones, then the tail; leftover holes are filled from the end.
pub(super) fn place(old: &[u32], want: &[u32]) -> Vec<u32> {
    let wanted: HashSet<u32> = want.iter().copied().collect();
    let mut kept = HashSet::new();
    // A backend listed twice in the old slots keeps one of them.
    let mut slots: Vec<Option<u32>> = old
        .iter()
        .map(|id| (wanted.contains(id) && kept.insert(*id)).then_some(*id))
        .collect();
    let mut new_ids = want.iter().filter(|id| !kept.contains(id));
    for s in slots.iter_mut() {
        if s.is_none() {
            *s = new_ids.next().copied();
        }
    }
    slots.extend(new_ids.map(|id| Some(*id)));
    // Compact: move tail entries into the remaining holes.
    loop {
        while let Some(None) = slots.last() {
            slots.pop();
        }
        match slots.iter().position(Option::is_none) {
            Some(hole) => slots[hole] = slots.pop().flatten(),
            None => break,
        }
    }
    slots.into_iter().flatten().collect()
}
