//! The seams between the IPVS backend and the kernel: its IPVS table, its ipsets and
//! the addresses of its dummy interface, each a small trait so that the backend's
//! ordering and rollback are tested against in-memory fakes. The real impls are
//! here for IPVS and ipset ([`Ipvs`], [`Ipset`]), in [`super::addresses`] for the
//! dummy interface.
//!
//! Deletions are idempotent (an absent object is already deleted), so a retried
//! removal after a partial failure does not fail on what the first attempt did.

use std::net::IpAddr;

use super::netlink::{
    Destination, Entry, Ipset, IpsetErrno, IpsetError, Ipvs, IpvsError, Service, ServiceId, SetSpec,
};
use crate::dataplane::DataplaneError;
use crate::model::NodeAddresses;

/// The IPVS virtual servers and their real servers.
pub trait IpvsTable {
    /// Every virtual server.
    fn services(&mut self) -> Result<Vec<Service>, DataplaneError>;
    /// One virtual server, if present.
    fn service(&mut self, id: &ServiceId) -> Result<Option<Service>, DataplaneError>;
    /// Creates a virtual server (it must be absent).
    fn new_service(&mut self, svc: &Service) -> Result<(), DataplaneError>;
    /// Changes a virtual server's options.
    fn set_service(&mut self, svc: &Service) -> Result<(), DataplaneError>;
    /// Deletes a virtual server and its destinations; absent is fine.
    fn del_service(&mut self, id: &ServiceId) -> Result<(), DataplaneError>;
    /// The destinations of a virtual server, with their weights.
    fn dests(&mut self, id: &ServiceId) -> Result<Vec<Destination>, DataplaneError>;
    /// Adds a destination (it must be absent).
    fn new_dest(&mut self, id: &ServiceId, dest: &Destination) -> Result<(), DataplaneError>;
    /// Changes a destination's weight or forwarding.
    fn set_dest(&mut self, id: &ServiceId, dest: &Destination) -> Result<(), DataplaneError>;
    /// Deletes a destination; absent is fine.
    fn del_dest(&mut self, id: &ServiceId, dest: &Destination) -> Result<(), DataplaneError>;
    /// The destinations of a virtual server that are draining (weight 0), each with
    /// its connections (active and inactive).
    fn draining(&mut self, id: &ServiceId) -> Result<Vec<(Destination, u32)>, DataplaneError>;
}

/// The ipsets the backend keeps (`KUBE-CLUSTER-IP`, ...).
pub trait SetTable {
    /// Creates the set unless it exists.
    fn ensure(&mut self, spec: &SetSpec) -> Result<(), DataplaneError>;
    /// Adds (or re-adds, updating the comment) a member.
    fn add(&mut self, set: &str, entry: &Entry) -> Result<(), DataplaneError>;
    /// Deletes a member; absent (or an absent set) is fine.
    fn del(&mut self, set: &str, entry: &Entry) -> Result<(), DataplaneError>;
    /// The members of a set, with their comments; none if the set is absent.
    fn entries(&mut self, set: &str) -> Result<Vec<Entry>, DataplaneError>;
}

/// The addresses of the dummy interface (`kube-ipvs0`) that make the virtual IPs local,
/// so that IPVS sees their packets at `LOCAL_IN`.
pub trait VipAddresses {
    /// Creates the interface unless it exists.
    fn ensure_link(&mut self) -> Result<(), DataplaneError>;
    /// The interface's addresses (none if it is absent).
    fn addresses(&mut self) -> Result<Vec<IpAddr>, DataplaneError>;
    /// Adds a host address (/32, /128); present is fine.
    fn add(&mut self, ip: IpAddr) -> Result<(), DataplaneError>;
    /// Removes an address; absent is fine.
    fn del(&mut self, ip: IpAddr) -> Result<(), DataplaneError>;
    /// The addresses NodePorts are served on, as `--nodeport-addresses` selects them
    /// among this namespace's interfaces, the dummy interface's own excepted.
    fn node_addresses(&mut self, node: &NodeAddresses) -> Result<Vec<IpAddr>, DataplaneError>;
}

impl IpvsTable for Ipvs {
    fn services(&mut self) -> Result<Vec<Service>, DataplaneError> {
        Ok(Ipvs::services(self)?
            .into_iter()
            .map(|s| s.service)
            .collect())
    }

    fn service(&mut self, id: &ServiceId) -> Result<Option<Service>, DataplaneError> {
        Ok(Ipvs::service(self, id)?.map(|s| s.service))
    }

    fn new_service(&mut self, svc: &Service) -> Result<(), DataplaneError> {
        Ok(Ipvs::new_service(self, svc)?)
    }

    fn set_service(&mut self, svc: &Service) -> Result<(), DataplaneError> {
        Ok(Ipvs::set_service(self, svc)?)
    }

    fn del_service(&mut self, id: &ServiceId) -> Result<(), DataplaneError> {
        match Ipvs::del_service(self, id) {
            Ok(()) | Err(IpvsError::NoSuchService { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn dests(&mut self, id: &ServiceId) -> Result<Vec<Destination>, DataplaneError> {
        Ok(Ipvs::dests(self, id)?
            .into_iter()
            .map(|d| d.destination)
            .collect())
    }

    fn new_dest(&mut self, id: &ServiceId, dest: &Destination) -> Result<(), DataplaneError> {
        Ok(Ipvs::new_dest(self, id, dest)?)
    }

    fn draining(&mut self, id: &ServiceId) -> Result<Vec<(Destination, u32)>, DataplaneError> {
        Ok(Ipvs::dests(self, id)?
            .into_iter()
            .filter(|d| d.destination.weight == 0)
            .map(|d| {
                let conns = d.active_connections.saturating_add(d.inactive_connections);
                (d.destination, conns)
            })
            .collect())
    }

    fn set_dest(&mut self, id: &ServiceId, dest: &Destination) -> Result<(), DataplaneError> {
        Ok(Ipvs::set_dest(self, id, dest)?)
    }

    fn del_dest(&mut self, id: &ServiceId, dest: &Destination) -> Result<(), DataplaneError> {
        match Ipvs::del_dest(self, id, dest) {
            Ok(()) | Err(IpvsError::NoSuchDestination { .. } | IpvsError::NoSuchService { .. }) => {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl SetTable for Ipset {
    fn ensure(&mut self, spec: &SetSpec) -> Result<(), DataplaneError> {
        match self.create(spec, true) {
            // IPSET_ERR_EXIST, or plain EEXIST (Debian's 6.1 answers that).
            Err(IpsetError::Kernel {
                code: IpsetErrno::Exist | IpsetErrno::Os(libc::EEXIST),
                ..
            }) => rebuild(self, spec),
            other => Ok(other?),
        }
    }

    fn add(&mut self, set: &str, entry: &Entry) -> Result<(), DataplaneError> {
        // exist_ok: the kernel then rewrites the member's extensions (its comment).
        match Ipset::add(self, set, entry, true) {
            Ok(()) => Ok(()),
            // The kernel's answer has no size: the one the sets are created with
            // (a set someone else created may have another).
            Err(IpsetError::Kernel {
                code: IpsetErrno::HashFull,
                set,
                ..
            }) => Err(DataplaneError::Capacity {
                table: "ipset",
                capacity: super::sets::MAXELEM,
                what: set,
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn del(&mut self, set: &str, entry: &Entry) -> Result<(), DataplaneError> {
        match Ipset::del(self, set, entry, true) {
            // ENOENT: no such set, so no such member.
            Ok(())
            | Err(IpsetError::Kernel {
                code: IpsetErrno::Os(libc::ENOENT),
                ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn entries(&mut self, set: &str) -> Result<Vec<Entry>, DataplaneError> {
        Ok(self.list(set)?.map(|s| s.entries).unwrap_or_default())
    }
}

/// A set of that name exists with other parameters (kube-proxy's, made with ipset's
/// default maxelem, or a set of an older version of ours): rebuilt with `spec`
/// under a temporary name, its members copied, and swapped in, so that the rules
/// matching it never see it empty or missing.
fn rebuild(ipset: &mut Ipset, spec: &SetSpec) -> Result<(), DataplaneError> {
    let old = ipset.list(&spec.name)?.unwrap_or_default();
    tracing::info!(
        set = %spec.name, maxelem = ?old.maxelem, to = ?spec.maxelem, members = old.entries.len(),
        "rebuilding an ipset made with other parameters"
    );
    let tmp = SetSpec {
        name: super::sets::REBUILD.to_owned(),
        ..spec.clone()
    };
    // A leftover of an interrupted rebuild.
    ipset.destroy(super::sets::REBUILD)?;
    ipset.create(&tmp, false)?;
    for entry in &old.entries {
        ipset.add(super::sets::REBUILD, entry, true)?;
    }
    ipset.swap(&spec.name, super::sets::REBUILD)?;
    ipset.destroy(super::sets::REBUILD)?;
    Ok(())
}
