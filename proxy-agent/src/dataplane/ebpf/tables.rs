//! The kernel tables behind the service programming, as a seam: [`Tables`] is every
//! write [`super::services`] makes and everything it reads back, implemented by the
//! real maps ([`MapTables`]) and, in tests, by an in-memory fake that can fail any
//! write, so id allocation, reference counts and rollback are tested without a kernel.
//!
//! [`read_back`] is the one reader of what is programmed: the agent adopts a previous
//! agent's services with it, and `proxyctl list` shows them with it.

use std::collections::{BTreeMap, HashMap as StdHashMap};
use std::path::Path;

use aya::Ebpf;
use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap, MapData, PerCpuArray};
use ipnetwork::IpNetwork;
use proxy_common as pc;
use proxy_common::{
    AffinityMatchKey, Backend, ServiceName, SlotKey, SourceRangeKey, Stats, maps, sizes,
};
use tracing::debug;

use super::MapSizes;
use super::error::{is_not_found, kernel, map_error};
use super::keys::{source_range_key, source_range_of};
use super::load::{LoadError, take_map};
use super::pins::{self, PinError};
use super::stats::{self, StatsIds};
use crate::dataplane::DataplaneError;

/// The tables a service is programmed into. Deleting an absent key succeeds (a delete
/// makes sure the key is gone); every error is already in data plane terms.
pub trait Tables {
    /// `BACKENDS[id] = backend`.
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DataplaneError>;
    /// Deletes `BACKENDS[id]`.
    fn delete_backend(&mut self, id: u32) -> Result<(), DataplaneError>;
    /// `SLOTS[key] = backend_id`.
    fn put_slot(&mut self, key: SlotKey, backend_id: u32) -> Result<(), DataplaneError>;
    /// Deletes `SLOTS[key]`.
    fn delete_slot(&mut self, key: SlotKey) -> Result<(), DataplaneError>;
    /// Marks a backend as a member of a service (`AFFINITY_MATCH`).
    fn put_member(&mut self, key: AffinityMatchKey) -> Result<(), DataplaneError>;
    /// Deletes a membership.
    fn delete_member(&mut self, key: AffinityMatchKey) -> Result<(), DataplaneError>;
    /// Allows source range `net` for service `service_id` (`SOURCE_RANGES`).
    fn put_source_range(&mut self, service_id: u32, net: &IpNetwork) -> Result<(), DataplaneError>;
    /// Deletes a source range.
    fn delete_source_range(
        &mut self,
        service_id: u32,
        net: &IpNetwork,
    ) -> Result<(), DataplaneError>;
    /// `FRONTENDS[key] = value`.
    fn put_frontend(
        &mut self,
        key: &pc::FrontendKey,
        value: &pc::FrontendValue,
    ) -> Result<(), DataplaneError>;
    /// Deletes `FRONTENDS[key]`.
    fn delete_frontend(&mut self, key: &pc::FrontendKey) -> Result<(), DataplaneError>;
    /// `SVC_NAMES[service_id] = name`.
    fn put_name(&mut self, service_id: u32, name: &ServiceName) -> Result<(), DataplaneError>;
    /// Deletes `SVC_NAMES[service_id]`.
    fn delete_name(&mut self, service_id: u32) -> Result<(), DataplaneError>;

    /// Every backend.
    fn backends(&self) -> Result<Vec<(u32, Backend)>, DataplaneError>;
    /// Every frontend.
    fn frontends(&self) -> Result<Vec<(pc::FrontendKey, pc::FrontendValue)>, DataplaneError>;
    /// One slot (None if absent).
    fn slot(&self, key: SlotKey) -> Result<Option<u32>, DataplaneError>;
    /// One recorded service name (None if absent).
    fn name(&self, service_id: u32) -> Result<Option<ServiceName>, DataplaneError>;
    /// Every source range, by service id.
    fn source_ranges(&self) -> Result<Vec<(u32, IpNetwork)>, DataplaneError>;
}

/// One frontend as the tables hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldFrontend {
    /// Its key.
    pub key: pc::FrontendKey,
    /// Its value: service id, backend count, flags.
    pub value: pc::FrontendValue,
    /// The recorded `namespace/name:port` (None if not recorded or unreadable).
    pub name: Option<String>,
    /// The backend id of each slot `0..backend_count`; None where the slot is missing
    /// (deleted behind the agent's back).
    pub slots: Vec<Option<u32>>,
    /// Its source ranges, sorted (whether or not its flags enforce them).
    pub source_ranges: Vec<IpNetwork>,
}

/// Everything programmed, read back from the tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// The frontends, in the order the map walked them.
    pub frontends: Vec<HeldFrontend>,
    /// Every backend by id, referenced or not.
    pub backends: BTreeMap<u32, Backend>,
}

/// Reads everything programmed.
pub fn read_back(tables: &impl Tables) -> Result<Held, DataplaneError> {
    let backends = tables.backends()?.into_iter().collect();
    let mut ranges: StdHashMap<u32, Vec<IpNetwork>> = StdHashMap::new();
    for (id, net) in tables.source_ranges()? {
        ranges.entry(id).or_default().push(net);
    }
    let mut frontends = Vec::new();
    for (key, value) in tables.frontends()? {
        let sid = value.service_id;
        let mut slots = Vec::new();
        for slot in 0..value.backend_count {
            slots.push(tables.slot(SlotKey {
                service_id: sid,
                slot,
            })?);
        }
        // Names are for operators only: an unreadable one is shown as unknown.
        let name = tables
            .name(sid)
            .ok()
            .flatten()
            .map(|n| n.as_str().to_owned());
        let mut source_ranges = ranges.remove(&sid).unwrap_or_default();
        source_ranges.sort();
        frontends.push(HeldFrontend {
            key,
            value,
            name,
            slots,
            source_ranges,
        });
    }
    Ok(Held {
        frontends,
        backends,
    })
}

/// The real maps.
pub struct MapTables {
    frontends: HashMap<MapData, pc::FrontendKey, pc::FrontendValue>,
    slots: HashMap<MapData, SlotKey, u32>,
    backends: HashMap<MapData, u32, Backend>,
    affinity_match: HashMap<MapData, AffinityMatchKey, u32>,
    /// None only when opened from the pins of a data plane that predates the map.
    names: Option<HashMap<MapData, u32, ServiceName>>,
    /// Likewise.
    source_ranges: Option<LpmTrie<MapData, SourceRangeKey, u32>>,
    /// The memberships' stats ids; None when opened from the pins (read only).
    stats: Option<StatsIds<PerCpuArray<MapData, Stats>>>,
    sizes: MapSizes,
}

impl MapTables {
    /// Takes the service maps out of the loaded object.
    pub(super) fn from_object(ebpf: &mut Ebpf, sizes: MapSizes) -> Result<Self, LoadError> {
        Ok(MapTables {
            frontends: take_map(ebpf, maps::FRONTENDS, HashMap::try_from)?,
            slots: take_map(ebpf, maps::SLOTS, HashMap::try_from)?,
            backends: take_map(ebpf, maps::BACKENDS, HashMap::try_from)?,
            affinity_match: take_map(ebpf, maps::AFFINITY_MATCH, HashMap::try_from)?,
            names: Some(take_map(ebpf, maps::SVC_NAMES, HashMap::try_from)?),
            source_ranges: Some(take_map(ebpf, maps::SOURCE_RANGES, LpmTrie::try_from)?),
            stats: None,
            sizes,
        }
        .with_stats(take_map(ebpf, maps::STATS, PerCpuArray::try_from)?))
    }

    /// Takes over the statistics: counting on, and the memberships' stats ids as a
    /// previous agent left them (renumbering what it left without one). A membership
    /// that cannot be rewritten keeps counting as it did, or not at all: statistics
    /// never stop a start.
    fn with_stats(mut self, mut array: PerCpuArray<MapData, Stats>) -> Self {
        if let Err(e) = stats::set_enabled(&mut array, true) {
            debug!(error = %e, "turning the statistics on");
        }
        let capacity = array.len();
        let mut ids = StatsIds::new(array, capacity);
        let held: Vec<(AffinityMatchKey, u32)> = self.affinity_match.iter().flatten().collect();
        for (key, value) in ids.adopt(&held) {
            if let Err(e) = self.affinity_match.insert(key, value, 0) {
                debug!(?key, error = %e, "renumbering a membership's statistics");
            }
        }
        self.stats = Some(ids);
        self
    }

    /// The statistics table's gauges (default ones, never set, when read only).
    pub(super) fn stats_gauges(&self) -> stats::StatsGauges {
        self.stats
            .as_ref()
            .map(StatsIds::gauges)
            .unwrap_or_default()
    }

    /// Opens the maps pinned under `bpffs`, for reading what an agent programmed.
    pub fn from_pins(bpffs: &Path) -> Result<Self, PinError> {
        Ok(MapTables {
            frontends: pins::open(bpffs, maps::FRONTENDS)?,
            slots: pins::open(bpffs, maps::SLOTS)?,
            backends: pins::open(bpffs, maps::BACKENDS)?,
            affinity_match: pins::open(bpffs, maps::AFFINITY_MATCH)?,
            names: pins::open_optional(bpffs, maps::SVC_NAMES)?,
            source_ranges: pins::open_optional(bpffs, maps::SOURCE_RANGES)?,
            stats: None,
            sizes: MapSizes::default(),
        })
    }

    /// The recorded name of a service, if any: what `proxyctl` shows next to ids.
    pub fn service_name(&self, service_id: u32) -> Option<String> {
        self.name(service_id)
            .ok()
            .flatten()
            .map(|n| n.as_str().to_owned())
    }

    /// One backend (None if absent or unreadable).
    pub fn backend(&self, id: u32) -> Option<Backend> {
        self.backends.get(&id, 0).ok()
    }
}

/// A map this table set was opened without.
fn not_pinned(op: &'static str, map: &'static str) -> DataplaneError {
    kernel(
        op,
        map,
        std::io::Error::new(std::io::ErrorKind::NotFound, "the map is not pinned"),
    )
}

/// Deletes `key`; an absent key is success.
fn delete<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
    capacity: u32,
) -> Result<(), DataplaneError> {
    match map.remove(key) {
        Err(e) if !is_not_found(&e) => Err(map_error("delete", name, capacity, e)),
        _ => Ok(()),
    }
}

impl Tables for MapTables {
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DataplaneError> {
        self.backends
            .insert(id, backend, 0)
            .map_err(|e| map_error("insert", maps::BACKENDS, self.sizes.backends, e))
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), DataplaneError> {
        delete(&mut self.backends, &id, maps::BACKENDS, self.sizes.backends)
    }

    fn put_slot(&mut self, key: SlotKey, backend_id: u32) -> Result<(), DataplaneError> {
        self.slots
            .insert(key, backend_id, 0)
            .map_err(|e| map_error("insert", maps::SLOTS, self.sizes.slots, e))
    }

    fn delete_slot(&mut self, key: SlotKey) -> Result<(), DataplaneError> {
        delete(&mut self.slots, &key, maps::SLOTS, self.sizes.slots)
    }

    fn put_member(&mut self, key: AffinityMatchKey) -> Result<(), DataplaneError> {
        // A new membership counts from zero (its slot is reset before it is named).
        let value = self.stats.as_mut().map_or(1, |ids| ids.assign(key));
        let r = self
            .affinity_match
            .insert(key, value, 0)
            .map_err(|e| map_error("insert", maps::AFFINITY_MATCH, self.sizes.slots, e));
        if r.is_err()
            && let Some(ids) = self.stats.as_mut()
        {
            ids.release(&key);
        }
        r
    }

    fn delete_member(&mut self, key: AffinityMatchKey) -> Result<(), DataplaneError> {
        delete(
            &mut self.affinity_match,
            &key,
            maps::AFFINITY_MATCH,
            self.sizes.slots,
        )?;
        if let Some(ids) = self.stats.as_mut() {
            ids.release(&key);
        }
        Ok(())
    }

    fn put_source_range(&mut self, service_id: u32, net: &IpNetwork) -> Result<(), DataplaneError> {
        let trie = self
            .source_ranges
            .as_mut()
            .ok_or_else(|| not_pinned("insert", maps::SOURCE_RANGES))?;
        trie.insert(&source_range_key(service_id, net), 1, 0)
            .map_err(|e| map_error("insert", maps::SOURCE_RANGES, sizes::SOURCE_RANGES, e))
    }

    fn delete_source_range(
        &mut self,
        service_id: u32,
        net: &IpNetwork,
    ) -> Result<(), DataplaneError> {
        let Some(trie) = self.source_ranges.as_mut() else {
            return Ok(());
        };
        match trie.remove(&source_range_key(service_id, net)) {
            Err(e) if !is_not_found(&e) => Err(map_error(
                "delete",
                maps::SOURCE_RANGES,
                sizes::SOURCE_RANGES,
                e,
            )),
            _ => Ok(()),
        }
    }

    fn put_frontend(
        &mut self,
        key: &pc::FrontendKey,
        value: &pc::FrontendValue,
    ) -> Result<(), DataplaneError> {
        self.frontends
            .insert(key, value, 0)
            .map_err(|e| map_error("insert", maps::FRONTENDS, self.sizes.frontends, e))
    }

    fn delete_frontend(&mut self, key: &pc::FrontendKey) -> Result<(), DataplaneError> {
        delete(
            &mut self.frontends,
            key,
            maps::FRONTENDS,
            self.sizes.frontends,
        )
    }

    fn put_name(&mut self, service_id: u32, name: &ServiceName) -> Result<(), DataplaneError> {
        let names = self
            .names
            .as_mut()
            .ok_or_else(|| not_pinned("insert", maps::SVC_NAMES))?;
        names
            .insert(service_id, name, 0)
            .map_err(|e| map_error("insert", maps::SVC_NAMES, self.sizes.frontends, e))
    }

    fn delete_name(&mut self, service_id: u32) -> Result<(), DataplaneError> {
        match self.names.as_mut() {
            Some(names) => delete(names, &service_id, maps::SVC_NAMES, self.sizes.frontends),
            None => Ok(()),
        }
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>, DataplaneError> {
        self.backends
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| map_error("read", maps::BACKENDS, self.sizes.backends, e))
    }

    fn frontends(&self) -> Result<Vec<(pc::FrontendKey, pc::FrontendValue)>, DataplaneError> {
        self.frontends
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| map_error("read", maps::FRONTENDS, self.sizes.frontends, e))
    }

    fn slot(&self, key: SlotKey) -> Result<Option<u32>, DataplaneError> {
        match self.slots.get(&key, 0) {
            Ok(id) => Ok(Some(id)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_error("lookup", maps::SLOTS, self.sizes.slots, e)),
        }
    }

    fn name(&self, service_id: u32) -> Result<Option<ServiceName>, DataplaneError> {
        let Some(names) = &self.names else {
            return Ok(None);
        };
        match names.get(&service_id, 0) {
            Ok(n) => Ok(Some(n)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_error(
                "lookup",
                maps::SVC_NAMES,
                self.sizes.frontends,
                e,
            )),
        }
    }

    fn source_ranges(&self) -> Result<Vec<(u32, IpNetwork)>, DataplaneError> {
        let Some(trie) = &self.source_ranges else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for key in trie.keys() {
            let key =
                key.map_err(|e| map_error("read", maps::SOURCE_RANGES, sizes::SOURCE_RANGES, e))?;
            // A malformed key cannot be ours; it matches nothing the programs look up.
            out.extend(source_range_of(&key));
        }
        Ok(out)
    }
}
