//! [`IpvsDataplane`]: the [`Dataplane`] of kube-proxy's IPVS mode, over the kernel
//! parts of [`super::kernel`].
//!
//! Per frontend: one virtual server (`vip:port/proto`, the configured scheduler,
//! persistence for ClientIP affinity), its endpoints as masquerading destinations of
//! weight 1, the VIP on the dummy interface (which makes it local, so IPVS sees its
//! packets), and a member of the kind's ipset commented with the service's name.
//!
//! [`IpvsDataplane::open`] also sets the IPVS sysctls kube-proxy sets (see
//! [`super::sysctl`]).
//!
//! Writes are ordered so that every intermediate state serves traffic correctly: the
//! virtual server and its destinations come before the address that makes the VIP
//! reachable; new destinations before removed ones are drained. A failed write undoes
//! the ones before it (see [`super::undo`]), so the service keeps its previous state.
//!
//! What the backend reports as programmed is a mirror of the kernel, read back whole
//! at [`Dataplane::refresh`] (names from the ipset comments) and kept in step by each
//! successful write.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnetwork::IpNetwork;

use super::addresses::{DummyLink, LINK_NAME};
use super::kernel::{IpvsTable, SetTable, VipAddresses};
use super::netlink::{Destination, ForwardMethod, Ipset, Ipvs, Service, ServiceFlags, ServiceId};
use super::sets;
use super::sysctl;
use super::undo::Undo;
use crate::dataplane::{Dataplane, DataplaneError};
use crate::model::{
    Capabilities, Feature, FrontendKey, FrontendKind, NodeAddresses, Protocol, Scope,
    ServicePortName, VirtualService,
};

/// kube-proxy's default `--ipvs-scheduler`.
pub const DEFAULT_SCHEDULER: &str = "rr";

/// How the backend programs IPVS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The scheduler of every virtual server (`rr`, `wrr`, `lc`, ...).
    pub scheduler: String,
    /// The dummy interface holding the VIPs.
    pub link: String,
    /// `--ipvs-exclude-cidrs`: virtual servers whose address is in one of these are
    /// someone else's; never adopted, changed or cleaned up.
    pub exclude_cidrs: Vec<IpNetwork>,
    /// `--ipvs-strict-arp`: `arp_ignore=1`, `arp_announce=2`, so that the node does
    /// not answer ARP for the VIPs on the dummy interface.
    pub strict_arp: bool,
    /// `--ipvs-tcp-timeout`, `--ipvs-tcpfin-timeout`, `--ipvs-udp-timeout`.
    pub timeouts: Timeouts,
    /// The netfilter rules' inputs.
    pub rules: RuleOptions,
}

/// IPVS's connection timeouts; `None` leaves the kernel's value (kube-proxy's 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// Established TCP connections.
    pub tcp: Option<Duration>,
    /// TCP connections after a FIN.
    pub tcp_fin: Option<Duration>,
    /// UDP "connections".
    pub udp: Option<Duration>,
}

/// What the constant netfilter rules of the IPVS mode depend on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleOptions {
    /// `--cluster-cidr`: traffic to a ClusterIP from outside these is masqueraded.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// `--masquerade-all`: every ClusterIP connection is masqueraded.
    pub masquerade_all: bool,
    /// Drop forwarded packets conntrack finds INVALID (the reset bug's fix); off with
    /// `--conntrack-tcp-be-liberal`.
    pub drop_invalid: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scheduler: DEFAULT_SCHEDULER.to_owned(),
            link: LINK_NAME.to_owned(),
            exclude_cidrs: Vec::new(),
            strict_arp: false,
            timeouts: Timeouts::default(),
            rules: RuleOptions {
                drop_invalid: true,
                ..RuleOptions::default()
            },
        }
    }
}

/// The IPVS data plane, generic over its kernel parts for tests.
pub struct IpvsDataplane<T = Ipvs, S = Ipset, A = DummyLink> {
    table: T,
    sets: S,
    addrs: A,
    scheduler: String,
    /// What the kernel holds, by frontend, as [`Dataplane::programmed`] reports it.
    held: BTreeMap<FrontendKey, VirtualService>,
}

impl IpvsDataplane {
    /// Opens IPVS, ipset and rtnetlink in the calling thread's network namespace and
    /// adopts what the kernel already holds.
    ///
    /// Both modules are looked for before anything is changed; a kernel without one
    /// is told which ([`DataplaneError::Unavailable`]), with the mode that needs
    /// neither.
    pub fn open(options: &Options) -> Result<Self, DataplaneError> {
        let or_ebpf = |e: DataplaneError| match e {
            DataplaneError::Unavailable(what) => {
                DataplaneError::Unavailable(format!("{what} or use --proxy-mode=ebpf"))
            }
            e => e,
        };
        let mut table = Ipvs::open().map_err(|e| or_ebpf(e.into()))?;
        let sets = Ipset::open().map_err(|e| or_ebpf(e.into()))?;
        sysctl::apply(&sysctl::Settings {
            strict_arp: options.strict_arp,
            // The INVALID drop rule is left out exactly when conntrack is liberal.
            tcp_be_liberal: !options.rules.drop_invalid,
        })?;
        super::timeouts::apply(&mut table, &options.timeouts)?;
        let addrs = DummyLink::open(&options.link)?;
        IpvsDataplane::new(table, sets, addrs, &options.scheduler)
    }
}

impl<T: IpvsTable, S: SetTable, A: VipAddresses> IpvsDataplane<T, S, A> {
    /// A backend over these parts, adopting what they hold.
    pub fn new(table: T, sets: S, addrs: A, scheduler: &str) -> Result<Self, DataplaneError> {
        let mut dp = IpvsDataplane {
            table,
            sets,
            addrs,
            scheduler: scheduler.to_owned(),
            held: BTreeMap::new(),
        };
        dp.held = dp.read_back()?;
        Ok(dp)
    }

    /// The virtual server as this backend writes it.
    fn service(&self, id: ServiceId, affinity_timeout_s: Option<u32>) -> Service {
        let mut s = Service::new(id, &self.scheduler);
        if let Some(timeout) = affinity_timeout_s {
            // Netmask /32 (/128, from Service::new): each client sticks on its own.
            s.flags = ServiceFlags::PERSISTENT;
            s.timeout = timeout;
        }
        s
    }

    /// Writes `svc`, recording how to undo each write.
    fn apply(&mut self, svc: &VirtualService, undo: &mut Vec<Undo>) -> Result<(), DataplaneError> {
        let frontend = &svc.frontend;
        if frontend.scope == Scope::External {
            return Err(DataplaneError::Unsupported(
                "external-scope frontends (NodePorts, external traffic)".into(),
            ));
        }
        if !svc.source_ranges.is_empty() {
            return Err(DataplaneError::Unsupported(
                Feature::SourceRanges.to_string(),
            ));
        }
        let set = match sets::spec(svc.kind, frontend.ip) {
            Some(set) if !frontend.ip.is_unspecified() => set,
            _ => {
                return Err(DataplaneError::Unsupported(format!(
                    "{} frontends",
                    svc.kind
                )));
            }
        };
        let id = service_id(frontend);

        // 1. The virtual server: not reachable yet if new (its VIP is not local).
        let want = self.service(id, svc.affinity_timeout_s);
        match self.table.service(&id)? {
            None => {
                self.table.new_service(&want)?;
                undo.push(Undo::DelService(id));
            }
            Some(old) if old != want => {
                self.table.set_service(&want)?;
                undo.push(Undo::SetService(old));
            }
            Some(_) => {}
        }

        // 2. Destinations: the new (and revived) ones first, then the removed ones
        // taken out, so that no moment has fewer backends than both the old and the
        // new set. TCP ones are drained (weight 0: no new connections, the open ones
        // finish; `refresh` deletes them once they have none); UDP ones are deleted at
        // once, as kube-proxy does (a datagram "connection" never ends, and
        // expire_nodest_conn moves its next packet to a live destination).
        let current = self.table.dests(&id)?;
        let desired: BTreeSet<SocketAddr> = svc.backends.iter().copied().collect();
        for backend in &desired {
            let dest = Destination::masquerade(backend.ip(), backend.port());
            match current.iter().find(|d| same_endpoint(d, backend)) {
                None => {
                    self.table.new_dest(&id, &dest)?;
                    undo.push(Undo::DelDest(id, dest));
                }
                Some(old) if *old != dest => {
                    self.table.set_dest(&id, &dest)?;
                    undo.push(Undo::SetDest(id, old.clone()));
                }
                Some(_) => {}
            }
        }
        for old in &current {
            let endpoint = SocketAddr::new(old.addr, old.port);
            if desired.contains(&endpoint) {
                continue;
            }
            if frontend.protocol == Protocol::Udp {
                self.table.del_dest(&id, old)?;
                undo.push(Undo::NewDest(id, old.clone()));
                continue;
            }
            if old.weight == 0 {
                continue;
            }
            let drained = Destination {
                weight: 0,
                ..old.clone()
            };
            self.table.set_dest(&id, &drained)?;
            undo.push(Undo::SetDest(id, old.clone()));
        }

        // 3. The VIP on the dummy interface: from here on the service is reachable.
        if !self.addrs.addresses()?.contains(&frontend.ip) {
            self.addrs.ensure_link()?;
            self.addrs.add(frontend.ip)?;
            undo.push(Undo::DelAddress(frontend.ip));
        }

        // 4. The ipset member, naming the service (re-added: the comment follows a
        // renamed service).
        self.sets.ensure(&set)?;
        let member = sets::member(frontend).with_comment(&svc.name.to_string());
        self.sets.add(&set.name, &member)?;
        if !self.held.contains_key(frontend) {
            undo.push(Undo::DelMember(set.name, member));
        }
        Ok(())
    }

    /// Undoes `undo`'s writes, last first. Best effort: a failure here is logged and
    /// the next sync (or refresh) repairs what is left.
    fn roll_back(&mut self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            if let Err(e) = step.apply(&mut self.table, &mut self.sets, &mut self.addrs) {
                tracing::warn!(%step, error = %e, "rolling back a failed IPVS write");
            }
        }
    }

    fn remove_frontend(&mut self, frontend: &FrontendKey) -> Result<(), DataplaneError> {
        let kind = self
            .held
            .get(frontend)
            .map_or(FrontendKind::ClusterIp, |s| s.kind);
        // The virtual server first: its VIP then refuses connections (nothing
        // listens) instead of routing them elsewhere.
        self.table.del_service(&service_id(frontend))?;
        if let Some(set) = sets::spec(kind, frontend.ip) {
            self.sets.del(&set.name, &sets::member(frontend))?;
        }
        let shared = self
            .held
            .keys()
            .any(|k| k != frontend && k.ip == frontend.ip);
        if !shared && !frontend.ip.is_unspecified() {
            self.addrs.del(frontend.ip)?;
        }
        Ok(())
    }

    /// Everything the kernel holds, as [`Dataplane::programmed`] reports it.
    fn read_back(&mut self) -> Result<BTreeMap<FrontendKey, VirtualService>, DataplaneError> {
        let mut named: BTreeMap<(IpAddr, u16, u16), (FrontendKind, ServicePortName)> =
            BTreeMap::new();
        for (kind, set) in sets::all() {
            for entry in self.sets.entries(set)? {
                let (Some(ip), Some(protocol), Some(port)) = (entry.ip, entry.protocol, entry.port)
                else {
                    continue;
                };
                let name = entry
                    .comment
                    .as_deref()
                    .and_then(sets::parse_name)
                    .unwrap_or_else(unnamed);
                named.insert((ip, protocol.number(), port), (kind, name));
            }
        }
        let mut held = BTreeMap::new();
        for svc in self.table.services()? {
            // Only what this backend writes: TCP and UDP virtual servers by address.
            let Some(protocol) = sets::model_protocol(svc.id.protocol) else {
                continue;
            };
            let frontend = FrontendKey::internal(svc.id.addr, svc.id.port, protocol);
            let mut backends: Vec<SocketAddr> = self
                .table
                .dests(&svc.id)?
                .into_iter()
                .filter(|d| d.weight > 0 && d.forward == ForwardMethod::Masquerade)
                .map(|d| SocketAddr::new(d.addr, d.port))
                .collect();
            backends.sort();
            backends.dedup();
            // A virtual server without its member (a crash between the two writes)
            // reads as unnamed: drift, which the next sync repairs.
            let (kind, mut name) = named
                .remove(&(svc.id.addr, svc.id.protocol.number(), svc.id.port))
                .unwrap_or_else(|| (FrontendKind::ClusterIp, unnamed()));
            let affinity_timeout_s = svc
                .flags
                .contains(ServiceFlags::PERSISTENT)
                .then_some(svc.timeout);
            // Options a VirtualService cannot show (another scheduler, after a restart
            // with another --ipvs-scheduler; another netmask or flags) read as unnamed
            // too, so that the next sync rewrites them.
            if svc != self.service(svc.id, affinity_timeout_s) {
                name = unnamed();
            }
            held.insert(
                frontend,
                VirtualService {
                    name,
                    frontend,
                    backends,
                    affinity_timeout_s,
                    kind,
                    source_ranges: Vec::new(),
                },
            );
        }
        Ok(held)
    }
}

impl<T, S, A> Dataplane for IpvsDataplane<T, S, A>
where
    T: IpvsTable + Send,
    S: SetTable + Send,
    A: VipAddresses + Send,
{
    fn mode(&self) -> &'static str {
        "ipvs"
    }

    fn capabilities(&self) -> Capabilities {
        // External scope needs NodePorts and the netfilter rules of later work;
        // source ranges need the KUBE-LOAD-BALANCER-SOURCE-* sets and their rules.
        Capabilities {
            unsupported: vec![Feature::ExternalScope, Feature::SourceRanges],
        }
    }

    fn set_node(&mut self, _node: &NodeAddresses) -> Result<(), DataplaneError> {
        // Only NodePorts depend on the node's addresses, and they are refused.
        Ok(())
    }

    fn upsert(&mut self, svc: &VirtualService) -> Result<(), DataplaneError> {
        let mut undo = Vec::new();
        match self.apply(svc, &mut undo) {
            Ok(()) => {
                self.held.insert(svc.frontend, svc.clone());
                Ok(())
            }
            Err(e) => {
                self.roll_back(undo);
                Err(naming(e, &svc.name))
            }
        }
    }

    fn remove(&mut self, frontend: &FrontendKey) -> Result<(), DataplaneError> {
        match self.remove_frontend(frontend) {
            Ok(()) => {
                self.held.remove(frontend);
                Ok(())
            }
            Err(e) => Err(match self.held.get(frontend) {
                Some(svc) => naming(e, &svc.name),
                None => naming(e, frontend),
            }),
        }
    }

    fn programmed(&self) -> Result<Vec<VirtualService>, DataplaneError> {
        Ok(self.held.values().cloned().collect())
    }

    fn refresh(&mut self) -> Result<(), DataplaneError> {
        // Graceful termination's second half, at each full resync (kube-proxy checks
        // every minute): a drained destination, weight 0 with no connection left,
        // goes.
        let ids: Vec<ServiceId> = self.held.keys().map(service_id).collect();
        for id in &ids {
            for dest in self.table.drained(id)? {
                self.table.del_dest(id, &dest)?;
            }
        }
        self.held = self.read_back()?;
        Ok(())
    }
}

fn service_id(frontend: &FrontendKey) -> ServiceId {
    ServiceId {
        protocol: sets::ipvs_protocol(frontend.protocol),
        addr: frontend.ip,
        port: frontend.port,
    }
}

fn same_endpoint(dest: &Destination, endpoint: &SocketAddr) -> bool {
    dest.addr == endpoint.ip() && dest.port == endpoint.port()
}

fn unnamed() -> ServicePortName {
    ServicePortName {
        namespace: String::new(),
        name: String::new(),
        port: String::new(),
    }
}

/// `e`, saying which service it was about.
fn naming(e: DataplaneError, service: &impl std::fmt::Display) -> DataplaneError {
    match e {
        DataplaneError::Kernel { op, object, source } => DataplaneError::Kernel {
            op,
            object: format!("{object} (service {service})"),
            source,
        },
        DataplaneError::Unsupported(what) => {
            DataplaneError::Unsupported(format!("{what} (service {service})"))
        }
        capacity => capacity.about(service),
    }
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
