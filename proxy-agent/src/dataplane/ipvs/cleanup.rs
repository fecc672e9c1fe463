//! What the IPVS mode leaves in the kernel, removed: for `--cleanup`, and when the
//! agent starts in the other mode (as kube-proxy removes the leftovers of the modes it
//! is not running). Every IPVS virtual server goes (kube-proxy flushes them all too),
//! with the ipsets this mode creates and the dummy interface holding the VIPs. A kernel
//! without IPVS or ipset has nothing to remove.

use super::addresses::DummyLink;
use super::netlink::{Ipset, IpsetError, Ipvs, IpvsError};
use super::sets;
use crate::dataplane::DataplaneError;

/// What [`cleanup`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// IPVS virtual servers (with their destinations).
    pub virtual_servers: usize,
    /// ipsets, by name.
    pub sets: Vec<String>,
    /// Whether the dummy interface was there.
    pub link: bool,
}

impl Removed {
    /// Whether there was nothing to remove.
    pub fn is_empty(&self) -> bool {
        *self == Removed::default()
    }
}

/// Removes the IPVS mode's state in the calling thread's network namespace; `link` is
/// the dummy interface's name (`kube-ipvs0`).
pub fn cleanup(link: &str) -> Result<Removed, DataplaneError> {
    let mut removed = Removed::default();
    match Ipvs::open() {
        Ok(mut ipvs) => {
            removed.virtual_servers = ipvs.services()?.len();
            if removed.virtual_servers > 0 {
                ipvs.flush()?;
            }
        }
        Err(IpvsError::NoIpvs) => {}
        Err(e) => return Err(e.into()),
    }
    match Ipset::open() {
        Ok(mut ipset) => {
            for name in sets::all() {
                if ipset.list(&name)?.is_some() {
                    ipset.destroy(&name)?;
                    removed.sets.push(name);
                }
            }
        }
        Err(IpsetError::NoIpset(_)) => {}
        Err(e) => return Err(e.into()),
    }
    removed.link = DummyLink::open(link)?.delete()?;
    Ok(removed)
}
