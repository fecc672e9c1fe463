//! What the IPVS mode leaves in the kernel, removed: for `--cleanup`, and when the
//! agent starts in the other mode (as kube-proxy removes the leftovers of the modes it
//! is not running). Every IPVS virtual server goes except those whose address is in
//! `--ipvs-exclude-cidrs` (someone else's: kube-proxy's own cleanup flushes them too,
//! which its flag's promise does not cover), with the netfilter rules and ipsets this
//! mode creates (and the nfacct object its INVALID drop rules count in) and the dummy
//! interface holding the VIPs. A kernel without IPVS or
//! ipset has nothing to remove, nor has a node without the iptables tools any rules
//! of ours.

use ipnetwork::IpNetwork;

use super::addresses::DummyLink;
use super::invalid_drops;
use super::kernel::IpvsTable;
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
    /// Whether the nfacct object counting INVALID drops was there.
    pub invalid_counter: bool,
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
/// the dummy interface's name (`kube-ipvs0`), virtual servers with an address inside
/// `exclude` stay.
pub fn cleanup(link: &str, exclude: &[IpNetwork]) -> Result<Removed, DataplaneError> {
    let mut removed = Removed::default();
    match Ipvs::open() {
        Ok(mut ipvs) if exclude.is_empty() => {
            // One request for all (firewall-mark services too, as kube-proxy's flush).
            removed.virtual_servers = ipvs.services()?.len();
            if removed.virtual_servers > 0 {
                ipvs.flush()?;
            }
        }
        Ok(mut ipvs) => removed.virtual_servers = remove_virtual_servers(&mut ipvs, exclude)?,
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
    // After the rules that count in it.
    removed.invalid_counter = invalid_drops::remove_counter().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "leaving the INVALID drop counter");
        false
    });
    match Ipset::open() {
        Ok(mut ipset) => {
            for name in sets::all().chain([sets::REBUILD.to_owned()]) {
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

/// Deletes every virtual server of `table` whose address is outside `exclude`; how
/// many went. (Firewall-mark services have no address and are never listed: they are
/// not this mode's, and stay.)
pub fn remove_virtual_servers<T: IpvsTable>(
    table: &mut T,
    exclude: &[IpNetwork],
) -> Result<usize, DataplaneError> {
    let (mut gone, mut kept) = (0, 0);
    for svc in table.services()? {
        if exclude.iter().any(|net| net.contains(svc.id.addr)) {
            kept += 1;
            continue;
        }
        table.del_service(&svc.id)?;
        gone += 1;
    }
    if kept > 0 {
        tracing::info!(
            kept,
            "left the IPVS virtual servers inside --ipvs-exclude-cidrs"
        );
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::ipvs::fake::Fake;
    use crate::dataplane::ipvs::netlink::{Protocol, Service, ServiceId};

    fn svc(addr: &str, port: u16) -> Service {
        let id = ServiceId {
            protocol: Protocol::Tcp,
            addr: addr.parse().expect("an address"),
            port,
        };
        Service::new(id, "rr")
    }

    #[test]
    fn only_virtual_servers_outside_the_excluded_ranges_are_deleted_and_counted() {
        let mut fake = Fake::default();
        for s in [
            svc("10.96.0.10", 80),
            svc("10.96.0.10", 443),
            svc("192.168.50.7", 80),
            svc("fd00:96::10", 80),
            svc("fd00:ab::1", 53),
        ] {
            fake.state().services.insert(s.id, (s, Vec::new()));
        }
        let exclude: Vec<IpNetwork> = ["192.168.50.0/24", "fd00:ab::/32"]
            .iter()
            .map(|n| n.parse().expect("a CIDR"))
            .collect();
        let gone = remove_virtual_servers(&mut fake, &exclude).expect("removing");
        assert_eq!(gone, 3);
        let left: Vec<String> = fake
            .state()
            .services
            .keys()
            .map(ToString::to_string)
            .collect();
        assert_eq!(left, ["TCP 192.168.50.7:80", "TCP [fd00:ab::1]:53"]);
        // Nothing left outside them: a second run deletes nothing.
        assert_eq!(remove_virtual_servers(&mut fake, &exclude).ok(), Some(0));
    }

    #[test]
    fn a_failed_deletion_is_the_error_and_stops_the_cleanup() {
        let mut fake = Fake::default();
        let s = svc("10.96.0.10", 80);
        fake.state().services.insert(s.id, (s, Vec::new()));
        fake.state().fail = Some("del_service".into());
        let e = remove_virtual_servers(&mut fake, &[]).expect_err("refused");
        assert!(e.to_string().contains("10.96.0.10:80"), "{e}");
    }
}
