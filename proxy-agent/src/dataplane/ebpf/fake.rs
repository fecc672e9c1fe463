//! In-memory [`Tables`] for tests: the contents as plain collections (compared whole),
//! and faults to inject: fail the Nth write, or a table that holds only so many keys.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::{BTreeSet, HashMap, HashSet};

use ipnetwork::IpNetwork;
use proxy_common as pc;
use proxy_common::{AffinityMatchKey, Backend, ServiceName, SlotKey, maps};

use super::tables::Tables;
use crate::dataplane::DataplaneError;

/// What the tables hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    pub backends: HashMap<u32, Backend>,
    pub slots: HashMap<SlotKey, u32>,
    pub members: HashSet<AffinityMatchKey>,
    pub source_ranges: BTreeSet<(u32, IpNetwork)>,
    pub frontends: HashMap<pc::FrontendKey, pc::FrontendValue>,
    pub names: HashMap<u32, ServiceName>,
}

/// The fake.
#[derive(Clone, Debug, Default)]
pub struct FakeTables {
    pub contents: Contents,
    /// Writes (puts and deletes) attempted so far.
    pub writes: usize,
    /// The write number (1-based, counted over the fake's life) that fails with EIO.
    pub fail_write: Option<usize>,
    /// Whether the write to fail was reached.
    pub failed: bool,
    /// Tables (by map name) that hold at most this many keys: a put of a new key past
    /// it fails like a full kernel map.
    pub capacity: HashMap<&'static str, usize>,
    /// Reads of `SLOTS` fail (an unreadable map).
    pub fail_slot_reads: bool,
    /// When set, the contents after every successful write are appended: what a
    /// lookup in the data plane could see between two writes.
    pub history: Option<Vec<Contents>>,
}

impl FakeTables {
    /// Fails the `n`th write from now (1: the next one).
    pub fn fail_nth_write_from_now(&mut self, n: usize) {
        self.fail_write = Some(self.writes + n);
        self.failed = false;
    }

    fn write(
        &mut self,
        op: &'static str,
        map: &'static str,
        len: usize,
        new_key: bool,
    ) -> Result<(), DataplaneError> {
        self.writes += 1;
        if self.fail_write == Some(self.writes) {
            self.failed = true;
            return Err(DataplaneError::Kernel {
                op,
                object: map.into(),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        if let Some(&cap) = self.capacity.get(map)
            && new_key
            && len >= cap
        {
            return Err(DataplaneError::Capacity {
                table: map,
                capacity: cap as u32,
                what: String::new(),
            });
        }
        Ok(())
    }

    /// Records the contents after a successful write (see `history`).
    fn written(&mut self) -> Result<(), DataplaneError> {
        if let Some(h) = &mut self.history {
            h.push(self.contents.clone());
        }
        Ok(())
    }
}

impl Tables for FakeTables {
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DataplaneError> {
        let c = &self.contents.backends;
        self.write("insert", maps::BACKENDS, c.len(), !c.contains_key(&id))?;
        self.contents.backends.insert(id, *backend);
        self.written()
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.write("delete", maps::BACKENDS, 0, false)?;
        self.contents.backends.remove(&id);
        self.written()
    }

    fn put_slot(&mut self, key: SlotKey, backend_id: u32) -> Result<(), DataplaneError> {
        let c = &self.contents.slots;
        self.write("insert", maps::SLOTS, c.len(), !c.contains_key(&key))?;
        self.contents.slots.insert(key, backend_id);
        self.written()
    }

    fn delete_slot(&mut self, key: SlotKey) -> Result<(), DataplaneError> {
        self.write("delete", maps::SLOTS, 0, false)?;
        self.contents.slots.remove(&key);
        self.written()
    }

    fn put_member(&mut self, key: AffinityMatchKey) -> Result<(), DataplaneError> {
        let c = &self.contents.members;
        self.write("insert", maps::AFFINITY_MATCH, c.len(), !c.contains(&key))?;
        self.contents.members.insert(key);
        self.written()
    }

    fn delete_member(&mut self, key: AffinityMatchKey) -> Result<(), DataplaneError> {
        self.write("delete", maps::AFFINITY_MATCH, 0, false)?;
        self.contents.members.remove(&key);
        self.written()
    }

    fn put_source_range(&mut self, service_id: u32, net: &IpNetwork) -> Result<(), DataplaneError> {
        let c = &self.contents.source_ranges;
        let new = !c.contains(&(service_id, *net));
        self.write("insert", maps::SOURCE_RANGES, c.len(), new)?;
        self.contents.source_ranges.insert((service_id, *net));
        self.written()
    }

    fn delete_source_range(
        &mut self,
        service_id: u32,
        net: &IpNetwork,
    ) -> Result<(), DataplaneError> {
        self.write("delete", maps::SOURCE_RANGES, 0, false)?;
        self.contents.source_ranges.remove(&(service_id, *net));
        self.written()
    }

    fn put_frontend(
        &mut self,
        key: &pc::FrontendKey,
        value: &pc::FrontendValue,
    ) -> Result<(), DataplaneError> {
        let c = &self.contents.frontends;
        self.write("insert", maps::FRONTENDS, c.len(), !c.contains_key(key))?;
        self.contents.frontends.insert(*key, *value);
        self.written()
    }

    fn delete_frontend(&mut self, key: &pc::FrontendKey) -> Result<(), DataplaneError> {
        self.write("delete", maps::FRONTENDS, 0, false)?;
        self.contents.frontends.remove(key);
        self.written()
    }

    fn put_name(&mut self, service_id: u32, name: &ServiceName) -> Result<(), DataplaneError> {
        let c = &self.contents.names;
        self.write(
            "insert",
            maps::SVC_NAMES,
            c.len(),
            !c.contains_key(&service_id),
        )?;
        self.contents.names.insert(service_id, *name);
        self.written()
    }

    fn delete_name(&mut self, service_id: u32) -> Result<(), DataplaneError> {
        self.write("delete", maps::SVC_NAMES, 0, false)?;
        self.contents.names.remove(&service_id);
        self.written()
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>, DataplaneError> {
        Ok(self
            .contents
            .backends
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn frontends(&self) -> Result<Vec<(pc::FrontendKey, pc::FrontendValue)>, DataplaneError> {
        Ok(self
            .contents
            .frontends
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn slot(&self, key: SlotKey) -> Result<Option<u32>, DataplaneError> {
        if self.fail_slot_reads {
            return Err(DataplaneError::Kernel {
                op: "lookup",
                object: maps::SLOTS.into(),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        Ok(self.contents.slots.get(&key).copied())
    }

    fn name(&self, service_id: u32) -> Result<Option<ServiceName>, DataplaneError> {
        Ok(self.contents.names.get(&service_id).copied())
    }

    fn source_ranges(&self) -> Result<Vec<(u32, IpNetwork)>, DataplaneError> {
        Ok(self.contents.source_ranges.iter().copied().collect())
    }
}
