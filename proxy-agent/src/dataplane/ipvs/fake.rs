//! In-memory IPVS table, ipsets and dummy interface for the backend's unit tests:
//! three handles on one state, which journals every write in order and can be told
//! to refuse one.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use super::kernel::{IpvsTable, SetTable, VipAddresses};
use super::netlink::{Destination, Entry, Service, ServiceId, SetSpec};
use crate::dataplane::DataplaneError;
use crate::model::NodeAddresses;

/// What the fake kernel holds.
#[derive(Debug, Default)]
pub struct State {
    pub services: BTreeMap<ServiceId, (Service, Vec<Destination>)>,
    pub sets: BTreeMap<String, Vec<Entry>>,
    pub link: bool,
    pub addrs: BTreeSet<IpAddr>,
    /// Every write, as `op object`, in order.
    pub journal: Vec<String>,
    /// A write whose journal line starts with this fails (and changes nothing).
    pub fail: Option<String>,
    /// Destinations (`addr:port`) that still have connections.
    pub busy: BTreeSet<SocketAddr>,
    /// What `node_addresses` finds.
    pub node_ips: Vec<IpAddr>,
}

impl State {
    /// Journals `line`, or refuses it.
    fn write(&mut self, line: String) -> Result<(), DataplaneError> {
        if self
            .fail
            .as_ref()
            .is_some_and(|f| line.starts_with(f.as_str()))
        {
            return Err(DataplaneError::Kernel {
                op: "fake",
                object: line,
                source: io::Error::from_raw_os_error(libc::ENOMEM),
            });
        }
        self.journal.push(line);
        Ok(())
    }

    /// The destinations of a service, `addr:port weight`, sorted.
    pub fn dests(&self, id: &ServiceId) -> Vec<String> {
        let mut out: Vec<String> = self
            .services
            .get(id)
            .map(|(_, d)| d.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|d| format!("{} w{}", SocketAddr::new(d.addr, d.port), d.weight))
            .collect();
        out.sort();
        out
    }
}

/// The shared state; each part is a handle on it.
#[derive(Clone, Debug, Default)]
pub struct Fake(pub Arc<Mutex<State>>);

impl Fake {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().expect("fake state lock")
    }
}

fn absent(what: String) -> DataplaneError {
    DataplaneError::Kernel {
        op: "fake",
        object: what,
        source: io::Error::from_raw_os_error(libc::ENOENT),
    }
}

fn dest_name(id: &ServiceId, d: &Destination) -> String {
    format!("{id} {} w{}", SocketAddr::new(d.addr, d.port), d.weight)
}

impl IpvsTable for Fake {
    fn services(&mut self) -> Result<Vec<Service>, DataplaneError> {
        Ok(self
            .state()
            .services
            .values()
            .map(|(s, _)| s.clone())
            .collect())
    }

    fn service(&mut self, id: &ServiceId) -> Result<Option<Service>, DataplaneError> {
        Ok(self.state().services.get(id).map(|(s, _)| s.clone()))
    }

    fn new_service(&mut self, svc: &Service) -> Result<(), DataplaneError> {
        let mut st = self.state();
        st.write(format!("new_service {}", svc.id))?;
        st.services.insert(svc.id, (svc.clone(), Vec::new()));
        Ok(())
    }

    fn set_service(&mut self, svc: &Service) -> Result<(), DataplaneError> {
        let mut st = self.state();
        st.write(format!("set_service {}", svc.id))?;
        match st.services.get_mut(&svc.id) {
            Some((s, _)) => *s = svc.clone(),
            None => return Err(absent(svc.id.to_string())),
        }
        Ok(())
    }

    fn del_service(&mut self, id: &ServiceId) -> Result<(), DataplaneError> {
        let mut st = self.state();
        st.write(format!("del_service {id}"))?;
        st.services.remove(id);
        Ok(())
    }

    fn dests(&mut self, id: &ServiceId) -> Result<Vec<Destination>, DataplaneError> {
        match self.state().services.get(id) {
            Some((_, d)) => Ok(d.clone()),
            None => Err(absent(id.to_string())),
        }
    }

    fn draining(&mut self, id: &ServiceId) -> Result<Vec<(Destination, u32)>, DataplaneError> {
        let st = self.state();
        match st.services.get(id) {
            Some((_, d)) => Ok(d
                .iter()
                .filter(|d| d.weight == 0)
                .map(|d| {
                    let busy = st.busy.contains(&SocketAddr::new(d.addr, d.port));
                    (d.clone(), u32::from(busy))
                })
                .collect()),
            None => Err(absent(id.to_string())),
        }
    }

    fn new_dest(&mut self, id: &ServiceId, dest: &Destination) -> Result<(), DataplaneError> {
        let mut st = self.state();
        st.write(format!("new_dest {}", dest_name(id, dest)))?;
        match st.services.get_mut(id) {
            Some((_, d)) => d.push(dest.clone()),
            None => return Err(absent(id.to_string())),
        }
        Ok(())
    }

    fn set_dest(&mut self, id: &ServiceId, dest: &Destination) -> Result<(), DataplaneError> {
        let mut st = self.state();
        st.write(format!("set_dest {}", dest_name(id, dest)))?;
        let found = st.services.get_mut(id).and_then(|(_, ds)| {
            ds.iter_mut()
                .find(|d| d.addr == dest.addr && d.port == dest.port)
        });
        match found {
            Some(d) => *d = dest.clone(),
            None => return Err(absent(dest_name(id, dest))),
        }
        Ok(())
    }

    fn del_dest(&mut self, id: &ServiceId, dest: &Destination) -> Result<(), DataplaneError> {
        let mut st = self.state();
        st.write(format!("del_dest {}", dest_name(id, dest)))?;
        if let Some((_, ds)) = st.services.get_mut(id) {
            ds.retain(|d| !(d.addr == dest.addr && d.port == dest.port));
        }
        Ok(())
    }
}

impl SetTable for Fake {
    fn ensure(&mut self, spec: &SetSpec) -> Result<(), DataplaneError> {
        let mut st = self.state();
        if !st.sets.contains_key(&spec.name) {
            st.write(format!("create_set {}", spec.name))?;
            st.sets.insert(spec.name.clone(), Vec::new());
        }
        Ok(())
    }

    fn add(&mut self, set: &str, entry: &Entry) -> Result<(), DataplaneError> {
        let mut st = self.state();
        st.write(format!("add_member {set} {entry}"))?;
        let members = st.sets.get_mut(set).ok_or_else(|| absent(set.into()))?;
        let bare = |e: &Entry| Entry {
            comment: None,
            ..e.clone()
        };
        members.retain(|m| bare(m) != bare(entry));
        members.push(entry.clone());
        Ok(())
    }

    fn del(&mut self, set: &str, entry: &Entry) -> Result<(), DataplaneError> {
        let mut st = self.state();
        st.write(format!("del_member {set} {entry}"))?;
        if let Some(members) = st.sets.get_mut(set) {
            members.retain(|m| {
                !(m.ip == entry.ip && m.port == entry.port && m.protocol == entry.protocol)
            });
        }
        Ok(())
    }

    fn entries(&mut self, set: &str) -> Result<Vec<Entry>, DataplaneError> {
        Ok(self.state().sets.get(set).cloned().unwrap_or_default())
    }
}

impl VipAddresses for Fake {
    fn ensure_link(&mut self) -> Result<(), DataplaneError> {
        let mut st = self.state();
        if !st.link {
            st.write("create_link".into())?;
            st.link = true;
        }
        Ok(())
    }

    fn addresses(&mut self) -> Result<Vec<IpAddr>, DataplaneError> {
        Ok(self.state().addrs.iter().copied().collect())
    }

    fn add(&mut self, ip: IpAddr) -> Result<(), DataplaneError> {
        let mut st = self.state();
        st.write(format!("add_address {ip}"))?;
        if !st.link {
            return Err(absent("kube-ipvs0".into()));
        }
        st.addrs.insert(ip);
        Ok(())
    }

    fn del(&mut self, ip: IpAddr) -> Result<(), DataplaneError> {
        let mut st = self.state();
        st.write(format!("del_address {ip}"))?;
        st.addrs.remove(&ip);
        Ok(())
    }

    fn node_addresses(&mut self, _node: &NodeAddresses) -> Result<Vec<IpAddr>, DataplaneError> {
        Ok(self.state().node_ips.clone())
    }
}
