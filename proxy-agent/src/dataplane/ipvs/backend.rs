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

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

use super::addresses::{DummyLink, LINK_NAME};
use super::adopt;
use super::invalid_drops::{self, InvalidDropped};
use super::kernel::{IpvsTable, SetTable, VipAddresses};
use super::netlink::{Destination, Entry, Ipset, Ipvs, Service, ServiceFlags, ServiceId};
use super::plan::{Plan, bare, is_twin, plan};
use super::rules;
use super::sets;
use super::stale::{StaleUdp, udp_servers};
use super::sysctl;
use super::undo::Undo;
use crate::dataplane::{Dataplane, DataplaneError};
use crate::model::{
    Capabilities, FrontendKey, FrontendKind, NodeAddresses, Protocol, VirtualService,
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
    /// `--conntrack-tcp-timeout-close-wait` (whole seconds):
    /// `nf_conntrack_tcp_timeout_close_wait`; `None` leaves the kernel's.
    pub conntrack_tcp_close_wait: Option<Duration>,
    /// How long a removed TCP endpoint drains (weight 0) while it still has
    /// connections; then it is deleted, and what it still carried is cut.
    pub drain_grace: Duration,
}

/// The default of [`Options::drain_grace`]: IPVS's own idle timeout of an established
/// TCP connection, so that only connections still busy after it are cut (kube-proxy
/// waits without bound; a connection kept alive forever would pin a dead endpoint).
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(15 * 60);

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
    /// Count those drops in the nfacct object
    /// [`rules::render::INVALID_DROPPED_COUNTER`] (set by [`IpvsDataplane::open`]
    /// once the object exists).
    pub count_invalid: bool,
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
            // kube-proxy's default.
            conntrack_tcp_close_wait: Some(Duration::from_secs(3600)),
            drain_grace: DEFAULT_DRAIN_GRACE,
        }
    }
}

/// The IPVS data plane, generic over its kernel parts for tests.
pub struct IpvsDataplane<T = Ipvs, S = Ipset, A = DummyLink> {
    table: T,
    sets: S,
    addrs: A,
    scheduler: String,
    exclude: Vec<IpNetwork>,
    /// What the kernel holds, by frontend, as [`Dataplane::programmed`] reports it.
    held: BTreeMap<FrontendKey, VirtualService>,
    /// The virtual servers each NodePort frontend has (one per node address, as they
    /// were when it was written or read back).
    node_servers: BTreeMap<FrontendKey, Vec<ServiceId>>,
    /// The NodePort addresses, once [`Dataplane::set_node`] resolved them.
    node_ips: Vec<IpAddr>,
    /// Whether the NodePorts are programmed on `node_ips` (false after a failure).
    node_applied: bool,
    /// How many held frontends use each set member and VIP: shared ones (a VIP with
    /// several ports, an endpoint behind several frontends) go with their last user.
    refs: Refs,
    /// The netfilter rules to keep installed (none over fakes).
    rules: Option<RuleOptions>,
    /// The health check node ports in `KUBE-HEALTH-CHECK-NODE-PORT`.
    health_ports: BTreeSet<u16>,
    /// See [`Options::drain_grace`].
    drain_grace: Duration,
    /// When each draining destination was first seen at weight 0 (set by an update,
    /// or found at a refresh after a restart).
    draining_since: HashMap<(ServiceId, SocketAddr), Instant>,
    /// The UDP conntrack reconciler (none over fakes).
    stale_udp: Option<StaleUdp>,
    /// Whether the installed INVALID drop rules count in kube-proxy's nfacct object.
    invalid_counted: Arc<AtomicBool>,
}

#[derive(Default)]
struct Refs {
    members: HashMap<(String, Entry), usize>,
    vips: HashMap<IpAddr, usize>,
}

impl Refs {
    fn add(&mut self, plan: &Plan) {
        for (set, e) in &plan.members {
            *self.members.entry((set.clone(), bare(e))).or_default() += 1;
        }
        for ip in &plan.vips {
            *self.vips.entry(*ip).or_default() += 1;
        }
    }

    fn sub(&mut self, plan: &Plan) {
        for (set, e) in &plan.members {
            let key = (set.clone(), bare(e));
            if let Some(n) = self.members.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.members.remove(&key);
                }
            }
        }
        for ip in &plan.vips {
            if let Some(n) = self.vips.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    self.vips.remove(ip);
                }
            }
        }
    }

    fn member(&self, set: &str, e: &Entry) -> usize {
        self.members
            .get(&(set.to_owned(), bare(e)))
            .copied()
            .unwrap_or(0)
    }

    fn vip(&self, ip: &IpAddr) -> usize {
        self.vips.get(ip).copied().unwrap_or(0)
    }
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
            tcp_close_wait_s: options.conntrack_tcp_close_wait.map(|d| d.as_secs()),
        })?;
        super::timeouts::apply(&mut table, &options.timeouts)?;
        let addrs = DummyLink::open(&options.link)?;
        let mut dp = IpvsDataplane::new(table, sets, addrs, options)?;
        // After the sets, which the rules match; the nfacct object before the rules
        // that name it.
        let mut rules = options.rules.clone();
        rules.count_invalid = rules.drop_invalid && invalid_drops::ensure_counter();
        dp.rules = Some(rules);
        dp.apply_rules()?;
        dp.stale_udp = Some(StaleUdp::default());
        Ok(dp)
    }
}

impl<T: IpvsTable, S: SetTable, A: VipAddresses> IpvsDataplane<T, S, A> {
    /// A backend over these parts: creates every set the rules match (empty ones
    /// too), then adopts what the parts hold.
    pub fn new(table: T, sets: S, addrs: A, options: &Options) -> Result<Self, DataplaneError> {
        let mut dp = IpvsDataplane {
            table,
            sets,
            addrs,
            scheduler: options.scheduler.clone(),
            exclude: options.exclude_cidrs.clone(),
            held: BTreeMap::new(),
            node_servers: BTreeMap::new(),
            node_ips: Vec::new(),
            node_applied: false,
            refs: Refs::default(),
            rules: None,
            health_ports: BTreeSet::new(),
            drain_grace: options.drain_grace,
            draining_since: HashMap::new(),
            stale_udp: None,
            invalid_counted: Arc::default(),
        };
        dp.ensure_sets()?;
        dp.read_back()?;
        Ok(dp)
    }

    /// Installs the netfilter rules in both families (again: kube-proxy rewrites them
    /// at every sync, repairing a flush behind its back).
    fn apply_rules(&mut self) -> Result<(), DataplaneError> {
        let Some(opts) = &mut self.rules else {
            return Ok(());
        };
        let mut applied = [false, true]
            .iter()
            .try_for_each(|v6| rules::apply(*v6, opts));
        if let (Err(e), true) = (&applied, opts.count_invalid) {
            // An nfacct object without the xt_nfacct match: kube-proxy's rules would
            // fail whole; ours drop uncounted instead.
            tracing::warn!(error = %e, "the counted INVALID drop rules did not load; dropping uncounted");
            opts.count_invalid = false;
            applied = [false, true]
                .iter()
                .try_for_each(|v6| rules::apply(*v6, opts));
        }
        self.invalid_counted
            .store(applied.is_ok() && opts.count_invalid, Ordering::Relaxed);
        applied.map_err(DataplaneError::from)
    }

    fn ensure_sets(&mut self) -> Result<(), DataplaneError> {
        for set in &sets::KUBE_SETS {
            for v6 in [false, true] {
                self.sets.ensure(&set.spec(v6))?;
            }
        }
        Ok(())
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

    /// What `svc` programs, with a NodePort's virtual servers as they are.
    fn plan_of(&self, svc: &VirtualService) -> Plan {
        let mut p = plan(svc, &self.node_ips);
        if let Some(servers) = self.node_servers.get(&svc.frontend) {
            p.servers.clone_from(servers);
        }
        p
    }

    /// Moves `svc` from `old` (what its previous state programmed; `rewrite`: that
    /// state drifted, so every member is written again) to its plan, recording how
    /// to undo each write.
    fn write(
        &mut self,
        svc: &VirtualService,
        old: &Plan,
        new: &Plan,
        rewrite: bool,
        undo: &mut Vec<Undo>,
    ) -> Result<(), DataplaneError> {
        // 0. Out of a set exempting from masquerading (externalTrafficPolicy became
        // Cluster) before any remote destination is added: its traffic must be
        // masqueraded from the first packet, or the replies would bypass the node.
        for (set, member) in dropped(old, new).filter(|(s, _)| sets::exempts_from_masquerade(s)) {
            if self.refs.member(set, member) <= 1 {
                self.sets.del(set, member)?;
                undo.push(Undo::AddMember(set.clone(), member.clone()));
            }
        }
        // 1. The set members, but for the exempting ones: a member is inert until
        // its address and port are served, and the rules must hold (masquerading,
        // source ranges) from the first packet a new server takes: a NodePort's is
        // reachable as soon as it exists.
        // A new frontend joins the exempting sets now too: it has no remote
        // destination to drain, and its first connection must keep its client.
        let new_frontend = old.servers.is_empty();
        self.add_members(new, old, rewrite, false, undo)?;
        if new_frontend {
            self.add_members(new, old, rewrite, true, undo)?;
        }
        // 2. The virtual servers and their destinations (removed ones drained).
        for id in &new.servers {
            self.write_server(*id, svc, undo)?;
        }
        // 3. Into the exempting sets (externalTrafficPolicy became Local) once the
        // remote destinations take no new connection.
        if !new_frontend {
            self.add_members(new, old, rewrite, true, undo)?;
        }
        // 4. The VIPs on the dummy interface: from here on the service is reachable.
        for ip in &new.vips {
            if self.refs.vip(ip) == 0 && !old.vips.contains(ip) {
                self.addrs.ensure_link()?;
                self.addrs.add(*ip)?;
                undo.push(Undo::DelAddress(*ip));
            }
        }
        // 5. What the old state had and the new one has not, once the new one serves:
        // virtual servers (a NodePort on an address the node no longer has), then
        // members and VIPs no other frontend uses.
        for id in old.servers.iter().filter(|id| !new.servers.contains(id)) {
            if let Some(old_svc) = self.table.service(id)? {
                let dests = self.table.dests(id)?;
                self.table.del_service(id)?;
                undo.push(Undo::NewService(old_svc, dests));
            }
        }
        for (set, member) in dropped(old, new).filter(|(s, _)| !sets::exempts_from_masquerade(s)) {
            if self.refs.member(set, member) <= 1 {
                self.sets.del(set, member)?;
                undo.push(Undo::AddMember(set.clone(), member.clone()));
            }
        }
        for ip in old.vips.iter().filter(|ip| !new.vips.contains(ip)) {
            if self.refs.vip(ip) <= 1 {
                self.addrs.del(*ip)?;
                undo.push(Undo::AddAddress(*ip));
            }
        }
        Ok(())
    }

    /// Adds `new`'s members of the exempting sets (`exempting`) or of the others,
    /// those `old` lacks (all if `rewrite`; re-added when their comment changed: the
    /// name follows a renamed service).
    fn add_members(
        &mut self,
        new: &Plan,
        old: &Plan,
        rewrite: bool,
        exempting: bool,
        undo: &mut Vec<Undo>,
    ) -> Result<(), DataplaneError> {
        for (set, member) in &new.members {
            if sets::exempts_from_masquerade(set) != exempting
                || (!rewrite && old.members.iter().any(|(s, m)| s == set && m == member))
            {
                continue;
            }
            let existed = self.refs.member(set, member) > 0;
            self.sets.add(set, member)?;
            if !existed {
                undo.push(Undo::DelMember(set.clone(), member.clone()));
            }
        }
        Ok(())
    }

    /// One virtual server of `svc` with its destinations.
    fn write_server(
        &mut self,
        id: ServiceId,
        svc: &VirtualService,
        undo: &mut Vec<Undo>,
    ) -> Result<(), DataplaneError> {
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

        // The new (and revived) destinations first, then the removed ones taken out,
        // so that no moment has fewer backends than both the old and the new set.
        // TCP ones are drained (weight 0: no new connections, the open ones finish;
        // `refresh` deletes them once they have none); UDP ones are deleted at once,
        // as kube-proxy does (a datagram "connection" never ends, and
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
            if svc.frontend.protocol == Protocol::Udp {
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
            self.draining_since.insert((id, endpoint), Instant::now());
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

    /// Programs `svc` from `old`'s plan; on failure takes its writes back.
    fn transition(
        &mut self,
        svc: &VirtualService,
        old: &Plan,
        new: &Plan,
        rewrite: bool,
    ) -> Result<(), DataplaneError> {
        let mut undo = Vec::new();
        match self.write(svc, old, new, rewrite, &mut undo) {
            Ok(()) => {
                self.refs.sub(old);
                self.refs.add(new);
                if svc.kind == FrontendKind::NodePort && !is_twin(svc) {
                    self.node_servers.insert(svc.frontend, new.servers.clone());
                }
                Ok(())
            }
            Err(e) => {
                self.roll_back(undo);
                Err(naming(e, &svc.name))
            }
        }
    }

    fn remove_frontend(&mut self, frontend: &FrontendKey) -> Result<(), DataplaneError> {
        let Some(svc) = self.held.get(frontend).cloned() else {
            // Not ours to know: a virtual server nobody names (drift) goes alone.
            return self.table.del_service(&service_id(frontend));
        };
        let old = self.plan_of(&svc);
        // The virtual servers first: the address then refuses connections (nothing
        // listens) instead of routing them elsewhere.
        for id in &old.servers {
            self.table.del_service(id)?;
        }
        for (set, member) in &old.members {
            if self.refs.member(set, member) <= 1 {
                self.sets.del(set, member)?;
            }
        }
        for ip in &old.vips {
            if self.refs.vip(ip) <= 1 {
                self.addrs.del(*ip)?;
            }
        }
        self.refs.sub(&old);
        self.node_servers.remove(frontend);
        Ok(())
    }

    fn excluded(&self, ip: &IpAddr) -> bool {
        excluded(&self.exclude, ip)
    }

    /// Reads everything the kernel holds into `held` (see [`super::adopt`]).
    fn read_back(&mut self) -> Result<(), DataplaneError> {
        let exclude = &self.exclude;
        let kernel = adopt::Kernel::read(&mut self.table, &mut self.sets, &mut self.addrs, |ip| {
            excluded(exclude, ip)
        })?;
        let adopted = adopt::adopt(&kernel, &self.node_ips, |id, affinity| {
            self.service(id, affinity)
        });
        self.refs = Refs::default();
        for svc in adopted.held.values() {
            let mut p = plan(svc, &self.node_ips);
            if let Some(servers) = adopted.node_servers.get(&svc.frontend) {
                p.servers.clone_from(servers);
            }
            self.refs.add(&p);
        }
        self.held = adopted.held;
        self.node_servers = adopted.node_servers;
        // Re-learnt each time, so a port removed behind the agent's back is re-added.
        self.health_ports = kernel
            .members
            .get(&sets::HEALTH_CHECK_NODE_PORT.name_for(false))
            .into_iter()
            .flatten()
            .filter_map(|e| e.port)
            .collect();
        Ok(())
    }

    /// Graceful termination's second half, at each full resync (kube-proxy checks
    /// every minute): a draining destination goes once it has no connection left, or
    /// once it has drained for the grace period.
    fn end_drains(&mut self) -> Result<(), DataplaneError> {
        let now = Instant::now();
        let ids: Vec<ServiceId> = self
            .held
            .values()
            .flat_map(|svc| self.plan_of(svc).servers)
            .collect();
        let mut still = HashMap::new();
        for id in ids {
            for (dest, conns) in self.table.draining(&id)? {
                let key = (id, SocketAddr::new(dest.addr, dest.port));
                let since = self.draining_since.get(&key).copied().unwrap_or(now);
                if conns > 0 && now.saturating_duration_since(since) < self.drain_grace {
                    still.insert(key, since);
                    continue;
                }
                if conns > 0 {
                    tracing::info!(
                        service = %id, endpoint = %key.1, connections = conns,
                        grace = ?self.drain_grace,
                        "drain grace period over: deleting the destination and its connections"
                    );
                }
                self.table.del_dest(&id, &dest)?;
            }
        }
        // Destinations that came back, or went with their service, are forgotten.
        self.draining_since = still;
        Ok(())
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
        Capabilities::all()
    }

    fn set_node(&mut self, node: &NodeAddresses) -> Result<(), DataplaneError> {
        let ips = self.addrs.node_addresses(node)?;
        if ips == self.node_ips && self.node_applied {
            return Ok(());
        }
        self.node_ips = ips;
        self.node_applied = false;
        // Each NodePort moves to the new addresses: virtual servers on the new ones
        // first, then those on addresses the node lost are deleted.
        let node_ports: Vec<VirtualService> = self
            .held
            .values()
            .filter(|s| s.kind == FrontendKind::NodePort && !is_twin(s))
            .cloned()
            .collect();
        for svc in &node_ports {
            let old = self.plan_of(svc);
            let new = plan(svc, &self.node_ips);
            self.transition(svc, &old, &new, false)?;
        }
        self.node_applied = true;
        Ok(())
    }

    fn upsert(&mut self, svc: &VirtualService) -> Result<(), DataplaneError> {
        if self.excluded(&svc.frontend.ip) {
            return Err(DataplaneError::Unsupported(format!(
                "{} is inside --ipvs-exclude-cidrs (service {})",
                svc.frontend, svc.name
            )));
        }
        let previous = self.held.get(&svc.frontend);
        let rewrite = previous.is_some_and(|p| p.name.name.is_empty());
        let old = previous.map(|p| self.plan_of(p)).unwrap_or_default();
        let new = plan(svc, &self.node_ips);
        self.transition(svc, &old, &new, rewrite)?;
        if let Some(stale) = &mut self.stale_udp {
            stale.programmed(self.held.get(&svc.frontend), svc);
        }
        self.held.insert(svc.frontend, self.held(svc).into_owned());
        Ok(())
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

    fn held<'a>(&self, svc: &'a VirtualService) -> Cow<'a, VirtualService> {
        adopt::stored(svc)
    }

    fn set_health_check_ports(&mut self, ports: &[u16]) -> Result<(), DataplaneError> {
        let want: BTreeSet<u16> = ports.iter().copied().collect();
        // Both families' sets: the rules of each match their own.
        let names = [false, true].map(|v6| sets::HEALTH_CHECK_NODE_PORT.name_for(v6));
        for port in want.difference(&self.health_ports) {
            for set in &names {
                self.sets.add(set, &Entry::port(*port))?;
            }
        }
        for port in self.health_ports.difference(&want) {
            for set in &names {
                self.sets.del(set, &Entry::port(*port))?;
            }
        }
        self.health_ports = want;
        Ok(())
    }

    fn refresh(&mut self) -> Result<(), DataplaneError> {
        if let Some(stale) = &mut self.stale_udp {
            stale.resync();
        }
        self.end_drains()?;
        // A set destroyed behind the agent's back (the rules need them all), and the
        // rules.
        self.ensure_sets()?;
        self.apply_rules()?;
        self.read_back()
    }

    fn after_sync(&mut self) {
        if let Some(mut stale) = self.stale_udp.take() {
            stale.run_if_due(|| {
                udp_servers(
                    self.held
                        .values()
                        .map(|svc| (svc, self.plan_of(svc).servers)),
                )
            });
            self.stale_udp = Some(stale);
        }
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        if let Some(stale) = &self.stale_udp {
            stale.metrics().register(registry);
        }
        if self.rules.as_ref().is_some_and(|r| r.drop_invalid) {
            registry.register_collector(Box::new(InvalidDropped::kernel(Arc::clone(
                &self.invalid_counted,
            ))));
        }
    }
}

fn service_id(frontend: &FrontendKey) -> ServiceId {
    ServiceId {
        protocol: sets::ipvs_protocol(frontend.protocol),
        addr: frontend.ip,
        port: frontend.port,
    }
}

/// The members `old` has and `new` has not (whatever their comments).
fn dropped<'a>(old: &'a Plan, new: &'a Plan) -> impl Iterator<Item = &'a (String, Entry)> {
    old.members.iter().filter(move |(set, member)| {
        !new.members
            .iter()
            .any(|(s, m)| s == set && bare(m) == bare(member))
    })
}

/// Whether `ip` is in one of `--ipvs-exclude-cidrs`.
fn excluded(exclude: &[IpNetwork], ip: &IpAddr) -> bool {
    exclude.iter().any(|n| n.contains(*ip))
}

fn same_endpoint(dest: &Destination, endpoint: &SocketAddr) -> bool {
    dest.addr == endpoint.ip() && dest.port == endpoint.port()
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
