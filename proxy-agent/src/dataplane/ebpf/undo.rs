//! An undo log over [`Tables`]: each write made through it records how to reverse it,
//! and dropping the log without [`Undo::commit`] reverses them all, newest first.
//!
//! Programming a service writes several tables before the one write (its frontend)
//! that makes the new state visible; a failure on the way must leave the tables as
//! they were. With the log, every early return (`?`) rolls back by itself.

use ipnetwork::IpNetwork;
use proxy_common as pc;
use proxy_common::{AffinityMatchKey, Backend, SlotKey};
use tracing::debug;

use super::tables::Tables;
use crate::dataplane::DataplaneError;

/// How to reverse one write.
#[derive(Debug)]
enum Inverse {
    DeleteBackend(u32),
    /// Put the previous backend id back, or delete the slot if there was none.
    RestoreSlot(SlotKey, Option<u32>),
    DeleteMember(AffinityMatchKey),
    DeleteSourceRange(u32, IpNetwork),
    /// Put the previous value back, or delete the frontend if there was none.
    RestoreFrontend(pc::FrontendKey, Option<pc::FrontendValue>),
}

/// Writes that are reversed on drop unless committed.
pub(super) struct Undo<'t, T: Tables> {
    tables: &'t mut T,
    inverse: Vec<Inverse>,
}

impl<'t, T: Tables> Undo<'t, T> {
    /// An empty log over `tables`.
    pub(super) fn new(tables: &'t mut T) -> Self {
        Undo {
            tables,
            inverse: Vec::new(),
        }
    }

    /// Writes a new backend (undo: delete it).
    pub(super) fn put_backend(&mut self, id: u32, be: &Backend) -> Result<(), DataplaneError> {
        self.tables.put_backend(id, be)?;
        self.inverse.push(Inverse::DeleteBackend(id));
        Ok(())
    }

    /// Writes a slot whose previous content was `previous` (undo: restore it).
    pub(super) fn put_slot(
        &mut self,
        key: SlotKey,
        backend_id: u32,
        previous: Option<u32>,
    ) -> Result<(), DataplaneError> {
        self.tables.put_slot(key, backend_id)?;
        self.inverse.push(Inverse::RestoreSlot(key, previous));
        Ok(())
    }

    /// Writes a new membership (undo: delete it).
    pub(super) fn put_member(&mut self, key: AffinityMatchKey) -> Result<(), DataplaneError> {
        self.tables.put_member(key)?;
        self.inverse.push(Inverse::DeleteMember(key));
        Ok(())
    }

    /// Writes a new source range (undo: delete it).
    pub(super) fn put_source_range(
        &mut self,
        service_id: u32,
        net: &IpNetwork,
    ) -> Result<(), DataplaneError> {
        self.tables.put_source_range(service_id, net)?;
        self.inverse
            .push(Inverse::DeleteSourceRange(service_id, *net));
        Ok(())
    }

    /// Writes a frontend whose previous value was `previous` (undo: restore it).
    pub(super) fn put_frontend(
        &mut self,
        key: &pc::FrontendKey,
        value: &pc::FrontendValue,
        previous: Option<pc::FrontendValue>,
    ) -> Result<(), DataplaneError> {
        self.tables.put_frontend(key, value)?;
        self.inverse.push(Inverse::RestoreFrontend(*key, previous));
        Ok(())
    }

    /// Keeps every write made so far.
    pub(super) fn commit(mut self) {
        self.inverse.clear();
    }
}

impl<T: Tables> Drop for Undo<'_, T> {
    fn drop(&mut self) {
        while let Some(inv) = self.inverse.pop() {
            let t = &mut *self.tables;
            let result = match inv {
                Inverse::DeleteBackend(id) => t.delete_backend(id),
                Inverse::RestoreSlot(key, Some(id)) => t.put_slot(key, id),
                Inverse::RestoreSlot(key, None) => t.delete_slot(key),
                Inverse::DeleteMember(key) => t.delete_member(key),
                Inverse::DeleteSourceRange(sid, net) => t.delete_source_range(sid, &net),
                Inverse::RestoreFrontend(key, Some(v)) => t.put_frontend(&key, &v),
                Inverse::RestoreFrontend(key, None) => t.delete_frontend(&key),
            };
            // Nothing better to do than go on: what stays behind is either unreachable
            // (an entry past the frontend's count, an unreferenced backend) or repaired
            // by the next full resync, which re-reads the tables.
            if let Err(e) = result {
                debug!(error = %e, "rolling back a write");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::dataplane::ebpf::fake::FakeTables;

    fn be(n: u8) -> Backend {
        Backend {
            addr: pc::Addr::from(std::net::IpAddr::from([10, 0, 0, n])),
            port_be: 80u16.to_be(),
            proto: pc::proto::TCP,
            flags: 0,
        }
    }

    fn slot(slot: u32) -> SlotKey {
        SlotKey {
            service_id: 1,
            slot,
        }
    }

    #[test]
    fn dropping_the_log_reverses_every_write_newest_first() {
        let mut t = FakeTables::default();
        t.contents.slots.insert(slot(0), 7);
        let before = t.contents.clone();
        {
            let mut u = Undo::new(&mut t);
            u.put_backend(1, &be(1)).unwrap();
            u.put_member(AffinityMatchKey {
                service_id: 1,
                backend_id: 1,
            })
            .unwrap();
            u.put_slot(slot(0), 1, Some(7)).unwrap();
            u.put_slot(slot(1), 1, None).unwrap();
            u.put_source_range(1, &"10.0.0.0/8".parse().unwrap())
                .unwrap();
            u.put_frontend(
                &pc::FrontendKey::default(),
                &pc::FrontendValue::default(),
                None,
            )
            .unwrap();
        }
        assert_eq!(t.contents, before);
    }

    #[test]
    fn a_committed_log_keeps_its_writes() {
        let mut t = FakeTables::default();
        let mut u = Undo::new(&mut t);
        u.put_backend(1, &be(1)).unwrap();
        u.put_slot(slot(0), 1, None).unwrap();
        u.commit();
        assert_eq!(t.contents.backends.len(), 1);
        assert_eq!(t.contents.slots.get(&slot(0)), Some(&1));
    }

    #[test]
    fn a_failed_write_is_not_recorded_and_the_earlier_ones_are_reversed() {
        let mut t = FakeTables::default();
        t.fail_nth_write_from_now(2);
        {
            let mut u = Undo::new(&mut t);
            u.put_backend(1, &be(1)).unwrap();
            assert!(u.put_backend(2, &be(2)).is_err());
        }
        assert!(t.failed);
        assert_eq!(t.contents, Default::default());
    }
}
