//! What the IPVS mode leaves in the kernel, removed: for `--cleanup`, and when the
//! agent starts in the other mode (as kube-proxy removes the leftovers of the modes it
//! is not running). Every IPVS virtual server goes (kube-proxy flushes them all too),
//! with the netfilter rules and ipsets this mode creates and the dummy interface
//! holding the VIPs. A kernel without IPVS or ipset has nothing to remove, nor has a
//! node without the iptables tools any rules of ours.

use super::addresses::DummyLink;
use super::netlink::{Ipset, IpsetError, Ipvs, IpvsError};
use super::rules::{self, RulesError};
use super::sets;
use crate::dataplane::DataplaneError;

/// What [`cleanup`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// IPVS virtual servers (with their destinations).
    pub virtual_servers: usize,
    /// Whether IPv4 netfilter rules were there (iptables).
    pub rules_v4: bool,
    /// Whether IPv6 netfilter rules were there (ip6tables).
    pub rules_v6: bool,
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
    // Before the sets: a set that a rule matches cannot be destroyed.
    for (v6, removed) in [
        (false, &mut removed.rules_v4),
        (true, &mut removed.rules_v6),
    ] {
        *removed = match rules::remove(v6) {
            Err(RulesError::NotFound { .. }) => false,
            other => other?,
        };
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
