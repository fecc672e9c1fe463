//! The inverse of each write an upsert makes, kept in order so that a failed upsert
//! takes back what it did (last first) and the service keeps its previous state.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::kernel::{IpvsTable, SetTable, VipAddresses};
use super::netlink::{Destination, Entry, Service, ServiceId};
use crate::dataplane::DataplaneError;

/// One write taken back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Undo {
    /// A new virtual server (with whatever destinations it got).
    DelService(ServiceId),
    /// A virtual server's previous options.
    SetService(Service),
    /// A new destination.
    DelDest(ServiceId, Destination),
    /// A deleted destination.
    NewDest(ServiceId, Destination),
    /// A destination's previous weight and forwarding.
    SetDest(ServiceId, Destination),
    /// A new VIP.
    DelAddress(IpAddr),
    /// A new ipset member: the set's name and the member.
    DelMember(String, Entry),
    /// A deleted virtual server, with its destinations.
    NewService(Service, Vec<Destination>),
    /// A deleted ipset member.
    AddMember(String, Entry),
    /// A deleted VIP.
    AddAddress(IpAddr),
}

impl Undo {
    /// Takes the write back.
    pub fn apply(
        &self,
        table: &mut impl IpvsTable,
        sets: &mut impl SetTable,
        addrs: &mut impl VipAddresses,
    ) -> Result<(), DataplaneError> {
        match self {
            Undo::DelService(id) => table.del_service(id),
            Undo::SetService(old) => table.set_service(old),
            Undo::DelDest(id, dest) => table.del_dest(id, dest),
            Undo::NewDest(id, old) => table.new_dest(id, old),
            Undo::SetDest(id, old) => table.set_dest(id, old),
            Undo::DelAddress(ip) => addrs.del(*ip),
            Undo::DelMember(set, entry) => sets.del(set, entry),
            Undo::NewService(svc, dests) => {
                table.new_service(svc)?;
                dests.iter().try_for_each(|d| table.new_dest(&svc.id, d))
            }
            Undo::AddMember(set, entry) => sets.add(set, entry),
            Undo::AddAddress(ip) => {
                addrs.ensure_link()?;
                addrs.add(*ip)
            }
        }
    }
}

impl fmt::Display for Undo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Undo::DelService(id) => write!(f, "delete service {id}"),
            Undo::SetService(old) => write!(f, "restore service {}", old.id),
            Undo::DelDest(id, d) => write!(
                f,
                "delete destination {} of {id}",
                SocketAddr::new(d.addr, d.port)
            ),
            Undo::NewDest(id, d) => write!(
                f,
                "restore deleted destination {} of {id}",
                SocketAddr::new(d.addr, d.port)
            ),
            Undo::SetDest(id, d) => write!(
                f,
                "restore destination {} of {id} (weight {})",
                SocketAddr::new(d.addr, d.port),
                d.weight
            ),
            Undo::DelAddress(ip) => write!(f, "remove address {ip}"),
            Undo::DelMember(set, e) => write!(f, "delete {e} from {set}"),
            Undo::NewService(svc, _) => write!(f, "restore deleted service {}", svc.id),
            Undo::AddMember(set, e) => write!(f, "restore {e} in {set}"),
            Undo::AddAddress(ip) => write!(f, "restore address {ip}"),
        }
    }
}
