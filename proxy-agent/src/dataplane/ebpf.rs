//! The eBPF data plane: loads the socket-level programs, attaches them to a cgroup,
//! pins maps and links under bpffs (so traffic keeps flowing while the agent restarts
//! and a new agent adopts what the old one programmed), and writes services into the
//! maps in an order that never exposes a half-written service.

use std::collections::{BTreeMap, HashMap as StdHashMap};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aya::maps::Array;
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap, Map, MapData, MapError};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use futures::FutureExt as _;
use ipnetwork::IpNetwork;
use proxy_common as pc;
use proxy_common::{
    Addr, AffinityMatchKey, Backend, ServiceName, SlotKey, SourceRangeKey, maps, sizes,
};
use tracing::{debug, info, warn};

use super::{Dataplane, DataplaneError};
use crate::dataplane::netdev::{Device, DevicePlan};
use crate::model::{self, FrontendKind, Protocol, Scope, ServicePortName, VirtualService};

/// Default pin directory (on the bpffs at /sys/fs/bpf).
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/proxy-agent";

/// Pins of tc links start with this (`tc-in-<ifindex>-<name>`, `tc-out-...`).
const TC_PIN_PREFIX: &str = "tc-";

/// The compiled eBPF object (every program and map), built by build.rs. Empty when
/// built with `AYA_BUILD_SKIP=1`.
pub static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));

/// Map capacities. Changing one requires removing the pinned map (`--cleanup`).
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    /// `FRONTENDS`: service ports x VIPs.
    pub frontends: u32,
    /// `SLOTS` and `AFFINITY_MATCH`: backends summed over all services.
    pub slots: u32,
    /// `BACKENDS`: distinct backends.
    pub backends: u32,
    /// `AFFINITY`: remembered ClientIP affinities.
    pub affinity: u32,
    /// `REV_SOCK`: sockets whose peer was rewritten.
    pub rev_sock: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            frontends: sizes::FRONTENDS,
            slots: sizes::SLOTS,
            backends: sizes::BACKENDS,
            affinity: sizes::AFFINITY,
            rev_sock: sizes::REV_SOCK,
        }
    }
}

/// Where and how to load the data plane.
#[derive(Clone, Debug)]
pub struct EbpfConfig {
    /// Pin directory on a bpffs; maps go to `maps/`, links to `links/`.
    pub bpffs: PathBuf,
    /// The cgroup v2 directory the socket programs attach to.
    pub cgroup: PathBuf,
    /// Map capacities.
    pub sizes: MapSizes,
    /// Connection tracking of the tc programs.
    pub tc: pc::TcConfig,
    /// Capacity of the connection table (two entries per flow).
    pub conntrack_max: u32,
    /// `--pod-interfaces`.
    pub pod_interfaces: Vec<String>,
}

/// Why the data plane could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The object could not be loaded (verifier, map creation, pinning).
    #[error("loading the eBPF object: {0}")]
    Ebpf(#[from] aya::EbpfError),
    /// A program could not be loaded or attached.
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// The error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A link could not be pinned or adopted.
    #[error("link {name}: {message}")]
    Link {
        /// Program name.
        name: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A map was missing or of the wrong type.
    #[error("map {name}: {message}")]
    Map {
        /// Map name.
        name: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The embedded object is empty (built with AYA_BUILD_SKIP=1).
    #[error("this binary was built without its eBPF programs (AYA_BUILD_SKIP)")]
    NoPrograms,
}

/// What one programmed frontend looks like, as this agent knows it.
#[derive(Clone, Debug)]
struct Programmed {
    name: ServicePortName,
    frontend: model::FrontendKey,
    value: pc::FrontendValue,
    /// Backend id per slot.
    slots: Vec<u32>,
    /// The source ranges written to `SOURCE_RANGES` for this frontend.
    source_ranges: Vec<IpNetwork>,
}

/// The eBPF data plane.
pub struct EbpfDataplane {
    // Keeps the loaded programs alive for this process; the attachment itself lives in
    // the pinned links.
    _ebpf: Ebpf,
    frontends: HashMap<MapData, pc::FrontendKey, pc::FrontendValue>,
    slots: HashMap<MapData, SlotKey, u32>,
    backends: HashMap<MapData, u32, Backend>,
    affinity_match: HashMap<MapData, AffinityMatchKey, u32>,
    names: HashMap<MapData, u32, ServiceName>,
    source_ranges: LpmTrie<MapData, SourceRangeKey, u32>,
    ifaces: HashMap<MapData, u32, pc::Iface>,
    node_addrs: HashMap<MapData, Addr, pc::NodeAddr>,
    links_dir: PathBuf,
    /// The device plan last applied (None: none yet in this process).
    devices: Option<DevicePlan>,
    sizes: MapSizes,
    services: BTreeMap<model::FrontendKey, Programmed>,
    /// Backend -> (id, number of slots referencing it).
    backend_ids: StdHashMap<Backend, (u32, u32)>,
    backend_by_id: StdHashMap<u32, Backend>,
    next_backend_id: u32,
    next_service_id: u32,
    free_service_ids: Vec<u32>,
    free_backend_ids: Vec<u32>,
    slots_used: u32,
    pod_interfaces: Vec<String>,
    device_check: tokio::time::Interval,
    bpffs: PathBuf,
}

impl EbpfDataplane {
    /// Loads the programs (reusing pinned maps if present), attaches them to the
    /// cgroup (replacing links a previous agent pinned, without a gap), and adopts the
    /// services already in the maps.
    pub fn load(cfg: &EbpfConfig) -> Result<Self, LoadError> {
        if PROGRAMS.is_empty() {
            return Err(LoadError::NoPrograms);
        }
        let maps_dir = cfg.bpffs.join("maps");
        let links_dir = cfg.bpffs.join("links");
        for dir in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(dir).map_err(|source| LoadError::Io {
                what: "creating",
                path: dir.clone(),
                source,
            })?;
        }
        let s = cfg.sizes;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(maps::FRONTENDS, s.frontends)
            .map_max_entries(maps::SLOTS, s.slots)
            .map_max_entries(maps::AFFINITY_MATCH, s.slots)
            .map_max_entries(maps::BACKENDS, s.backends)
            .map_max_entries(maps::AFFINITY, s.affinity)
            .map_max_entries(maps::REV_SOCK, s.rev_sock)
            .map_max_entries(maps::SVC_NAMES, s.frontends)
            .map_max_entries(maps::CONNTRACK, cfg.conntrack_max)
            .load(PROGRAMS)?;
        for name in [pc::programs::TC_INGRESS, pc::programs::TC_EGRESS] {
            program::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(|source| LoadError::Program { name, source })?;
        }
        let mut tc_config: Array<MapData, pc::TcConfig> =
            take_map(&mut ebpf, maps::TC_CONFIG, Array::try_from)?;
        tc_config.set(0, cfg.tc, 0).map_err(|e| LoadError::Map {
            name: maps::TC_CONFIG,
            message: e.to_string(),
        })?;

        let links_dir_owned = links_dir.clone();
        let cgroup = File::open(&cfg.cgroup).map_err(|source| LoadError::Io {
            what: "opening cgroup",
            path: cfg.cgroup.clone(),
            source,
        })?;
        for name in pc::programs::ALL {
            attach(&mut ebpf, name, &cgroup, &links_dir)?;
        }

        let frontends = take_hash(&mut ebpf, maps::FRONTENDS)?;
        let slots = take_hash(&mut ebpf, maps::SLOTS)?;
        let backends = take_hash(&mut ebpf, maps::BACKENDS)?;
        let affinity_match = take_hash(&mut ebpf, maps::AFFINITY_MATCH)?;
        let names = take_hash(&mut ebpf, maps::SVC_NAMES)?;
        let source_ranges = take_map(&mut ebpf, maps::SOURCE_RANGES, LpmTrie::try_from)?;
        let ifaces = take_hash(&mut ebpf, maps::IFACES)?;
        let node_addrs = take_hash(&mut ebpf, maps::NODE_ADDRS)?;
        let mut dp = EbpfDataplane {
            _ebpf: ebpf,
            frontends,
            slots,
            backends,
            affinity_match,
            names,
            source_ranges,
            ifaces,
            node_addrs,
            links_dir: links_dir_owned,
            devices: None,
            sizes: s,
            services: BTreeMap::new(),
            backend_ids: StdHashMap::new(),
            backend_by_id: StdHashMap::new(),
            next_backend_id: 1,
            next_service_id: 1,
            free_service_ids: Vec::new(),
            free_backend_ids: Vec::new(),
            slots_used: 0,
            pod_interfaces: cfg.pod_interfaces.clone(),
            bpffs: cfg.bpffs.clone(),
            device_check: {
                let mut i = tokio::time::interval(std::time::Duration::from_secs(2));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            },
        };
        dp.adopt()?;
        info!(
            bpffs = %cfg.bpffs.display(),
            cgroup = %cfg.cgroup.display(),
            adopted = dp.services.len(),
            "eBPF data plane loaded"
        );
        Ok(dp)
    }

    /// Rebuilds the in-memory index from what a previous agent left in the maps, so
    /// that the first sync rewrites nothing that is already right.
    fn adopt(&mut self) -> Result<(), LoadError> {
        let map_err = |name: &'static str| {
            move |e: MapError| LoadError::Map {
                name,
                message: e.to_string(),
            }
        };
        for item in self.backends.iter() {
            let (id, be) = item.map_err(map_err(maps::BACKENDS))?;
            self.backend_by_id.insert(id, be);
            self.backend_ids.insert(be, (id, 0));
            self.next_backend_id = self.next_backend_id.max(id.saturating_add(1));
        }
        let mut ranges: StdHashMap<u32, Vec<IpNetwork>> = StdHashMap::new();
        for item in self.source_ranges.keys() {
            let key = item.map_err(map_err(maps::SOURCE_RANGES))?;
            if let Some((sid, net)) = source_range_of(&key) {
                ranges.entry(sid).or_default().push(net);
            }
        }
        let mut fronts = Vec::new();
        for item in self.frontends.iter() {
            fronts.push(item.map_err(map_err(maps::FRONTENDS))?);
        }
        for (key, value) in fronts {
            let Some(frontend) = model_frontend(&key) else {
                continue;
            };
            let mut slots = Vec::with_capacity(value.backend_count as usize);
            for slot in 0..value.backend_count {
                // A missing slot (deleted behind our back) reads as id 0, which no
                // backend has, so the next sync sees the difference and rewrites it.
                let id = match self.slots.get(
                    &SlotKey {
                        service_id: value.service_id,
                        slot,
                    },
                    0,
                ) {
                    Ok(id) => id,
                    Err(e) if is_not_found(&e) => 0,
                    Err(e) => return Err(map_err(maps::SLOTS)(e)),
                };
                if let Some(e) = self
                    .backend_by_id
                    .get(&id)
                    .and_then(|be| self.backend_ids.get_mut(be))
                {
                    e.1 += 1;
                }
                slots.push(id);
            }
            self.slots_used += value.backend_count;
            self.next_service_id = self.next_service_id.max(value.service_id.saturating_add(1));
            self.services.insert(
                frontend,
                Programmed {
                    name: self
                        .names
                        .get(&value.service_id, 0)
                        .map(|n| parse_name(n.as_str()))
                        .unwrap_or_else(|_| parse_name("")),
                    frontend,
                    value,
                    slots,
                    source_ranges: {
                        let mut r = ranges.remove(&value.service_id).unwrap_or_default();
                        r.sort();
                        r
                    },
                },
            );
        }
        // Backends no frontend references (a previous agent died mid-update).
        let orphans: Vec<Backend> = self
            .backend_ids
            .iter()
            .filter(|(_, (_, refs))| *refs == 0)
            .map(|(be, _)| *be)
            .collect();
        for be in orphans {
            self.release_backend(&be);
        }
        Ok(())
    }

    /// Attaches the tc programs to the planned interfaces (replacing a previous agent's
    /// links atomically, detaching from interfaces no longer planned) and writes the
    /// interface and NodePort address maps. Nothing changes when the plan is the same
    /// as last time.
    pub fn set_devices(&mut self, plan: &DevicePlan) -> Result<(), LoadError> {
        if self.devices.as_ref() == Some(plan) {
            return Ok(());
        }
        let map_err = |name: &'static str| {
            move |e: MapError| LoadError::Map {
                name,
                message: e.to_string(),
            }
        };
        // Maps first, so that the programs find their interface when they start.
        let mut want_ifaces = StdHashMap::new();
        for (dev, flags) in plan
            .external
            .iter()
            .map(|d| (d, pc::IFACE_F_EXTERNAL))
            .chain(plan.pod.iter().map(|d| (d, pc::IFACE_F_POD)))
        {
            let value = pc::Iface {
                v4: dev.v4.map(Addr::from).unwrap_or_default(),
                v6: dev.v6.map(Addr::from).unwrap_or_default(),
                flags,
                _pad: 0,
            };
            self.ifaces
                .insert(dev.index, value, 0)
                .map_err(map_err(maps::IFACES))?;
            want_ifaces.insert(dev.index, ());
        }
        let want_addrs: Vec<Addr> = plan
            .nodeport_addrs
            .iter()
            .map(|ip| Addr::from(*ip))
            .collect();
        for a in &want_addrs {
            self.node_addrs
                .insert(a, pc::NodeAddr { flags: 0 }, 0)
                .map_err(map_err(maps::NODE_ADDRS))?;
        }

        let mut wanted_pins = Vec::new();
        for dev in &plan.external {
            for (name, kind) in [
                (pc::programs::TC_INGRESS, TcAttachType::Ingress),
                (pc::programs::TC_EGRESS, TcAttachType::Egress),
            ] {
                wanted_pins.push(self.attach_tc(name, kind, dev)?);
            }
        }
        for dev in &plan.pod {
            wanted_pins.push(self.attach_tc(
                pc::programs::TC_INGRESS,
                TcAttachType::Ingress,
                dev,
            )?);
        }
        // Links on interfaces no longer planned: removing the pin detaches them.
        if let Ok(entries) = std::fs::read_dir(&self.links_dir) {
            for e in entries.flatten() {
                let path = e.path();
                let is_tc = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(TC_PIN_PREFIX));
                if is_tc && !wanted_pins.contains(&path) {
                    info!(pin = %path.display(), "detaching tc program");
                    if let Err(e) = std::fs::remove_file(&path) {
                        warn!(pin = %path.display(), error = %e, "removing a tc link pin");
                    }
                }
            }
        }
        let stale_ifaces: Vec<u32> = self
            .ifaces
            .keys()
            .filter_map(Result::ok)
            .filter(|i| !want_ifaces.contains_key(i))
            .collect();
        for i in stale_ifaces {
            let _ = self.ifaces.remove(&i);
        }
        let stale_addrs: Vec<Addr> = self
            .node_addrs
            .keys()
            .filter_map(Result::ok)
            .filter(|a| !want_addrs.contains(a))
            .collect();
        for a in stale_addrs {
            let _ = self.node_addrs.remove(&a);
        }
        info!(
            external = ?plan.external.iter().map(|d| &d.name).collect::<Vec<_>>(),
            pod = ?plan.pod.iter().map(|d| &d.name).collect::<Vec<_>>(),
            nodeport_addresses = ?plan.nodeport_addrs,
            "tc programs attached"
        );
        self.devices = Some(plan.clone());
        Ok(())
    }

    /// Attaches program `name` to `dev` in direction `kind` and pins the link,
    /// replacing a previous link pinned for the same interface in one step.
    fn attach_tc(
        &mut self,
        name: &'static str,
        kind: TcAttachType,
        dev: &Device,
    ) -> Result<PathBuf, LoadError> {
        let dir = if matches!(kind, TcAttachType::Ingress) {
            "in"
        } else {
            "out"
        };
        let pin = self
            .links_dir
            .join(format!("{TC_PIN_PREFIX}{dir}-{}-{}", dev.index, dev.name));
        let link_err = |message: String| LoadError::Link { name, message };
        let program = program::<SchedClassifier>(&mut self._ebpf, name)?;
        let mut id = None;
        if pin.exists() {
            // Atomic replacement of the previous agent's program on this interface.
            match PinnedLink::from_pin(&pin) {
                Ok(old) => {
                    let old = FdLink::from(old);
                    match SchedClassifierLink::try_from(old) {
                        Ok(link) => match program.attach_to_link(link) {
                            Ok(i) => id = Some(i),
                            Err(e) => {
                                debug!(pin = %pin.display(), error = %e, "replacing a tc link")
                            }
                        },
                        Err(e) => debug!(pin = %pin.display(), error = %e, "adopting a tc link"),
                    }
                }
                Err(e) => debug!(pin = %pin.display(), error = %e, "opening a tc link pin"),
            }
            if id.is_none() {
                let _ = std::fs::remove_file(&pin);
            }
        }
        let id = match id {
            Some(id) => id,
            None => program
                .attach(&dev.name, kind)
                .map_err(|source| LoadError::Program { name, source })?,
        };
        let link = program
            .take_link(id)
            .map_err(|source| LoadError::Program { name, source })?;
        let link: FdLink = link
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| link_err(e.to_string()))?;
        if pin.exists() {
            // Already pinned (the link we replaced the program of).
            return Ok(pin);
        }
        link.pin(&pin)
            .map_err(|e| link_err(format!("pinning {}: {e}", pin.display())))?;
        Ok(pin)
    }

    fn alloc_service_id(&mut self) -> u32 {
        self.free_service_ids.pop().unwrap_or_else(|| {
            let id = self.next_service_id;
            self.next_service_id += 1;
            id
        })
    }

    /// The id of `be`, allocating (and writing) it if new. The reference count is not
    /// changed here.
    fn backend_id(
        &mut self,
        be: Backend,
        created: &mut Vec<Backend>,
    ) -> Result<u32, DataplaneError> {
        if let Some((id, _)) = self.backend_ids.get(&be) {
            return Ok(*id);
        }
        let id = self.free_backend_ids.pop().unwrap_or_else(|| {
            let id = self.next_backend_id;
            self.next_backend_id += 1;
            id
        });
        if let Err(e) = self.backends.insert(id, be, 0) {
            self.free_backend_ids.push(id);
            return Err(map_error("insert", maps::BACKENDS, self.sizes.backends, e));
        }
        self.backend_ids.insert(be, (id, 0));
        self.backend_by_id.insert(id, be);
        created.push(be);
        Ok(id)
    }

    /// Drops a backend nobody references any more.
    fn release_backend(&mut self, be: &Backend) {
        if let Some((id, refs)) = self.backend_ids.get(be).copied()
            && refs == 0
        {
            if let Err(e) = self.backends.remove(&id) {
                debug!(id, error = %e, "removing backend");
            }
            self.backend_ids.remove(be);
            self.backend_by_id.remove(&id);
            self.free_backend_ids.push(id);
        }
    }

    fn adjust_refs(&mut self, id: u32, delta: i64) {
        if let Some(be) = self.backend_by_id.get(&id)
            && let Some(e) = self.backend_ids.get_mut(be)
        {
            e.1 = (i64::from(e.1) + delta).max(0) as u32;
        }
    }

    fn write_slot(&mut self, service_id: u32, slot: u32, id: u32) -> Result<(), DataplaneError> {
        self.slots
            .insert(SlotKey { service_id, slot }, id, 0)
            .map_err(|e| map_error("insert", maps::SLOTS, self.sizes.slots, e))
    }

    fn delete_slot(&mut self, service_id: u32, slot: u32) {
        if let Err(e) = self.slots.remove(&SlotKey { service_id, slot }) {
            debug!(service_id, slot, error = %e, "removing slot");
        }
    }

    fn delete_match(&mut self, service_id: u32, backend_id: u32) {
        let key = AffinityMatchKey {
            service_id,
            backend_id,
        };
        if let Err(e) = self.affinity_match.remove(&key) {
            debug!(service_id, backend_id, error = %e, "removing affinity match");
        }
    }

    /// Undoes the writes of a failed upsert: restores overwritten slots, deletes new
    /// slots, memberships and backends.
    fn roll_back(
        &mut self,
        service_id: u32,
        old_slots: &[u32],
        written: &[u32],
        new_matches: &[u32],
        created: &[Backend],
    ) {
        for &slot in written {
            match old_slots.get(slot as usize) {
                Some(&old) => {
                    let _ = self.write_slot(service_id, slot, old);
                }
                None => self.delete_slot(service_id, slot),
            }
        }
        for &id in new_matches {
            self.delete_match(service_id, id);
        }
        for be in created {
            self.release_backend(be);
        }
    }

    /// Programs one service: backends, memberships and slots first, the frontend with
    /// its new count last, surplus entries afterwards; a failure rolls back.
    fn upsert_service(&mut self, svc: &VirtualService) -> Result<(), DataplaneError> {
        let key = frontend_key(&svc.frontend);
        let proto = svc.frontend.protocol.number();
        let existing = self.services.get(&svc.frontend).cloned();
        let old_slots = existing
            .as_ref()
            .map(|p| p.slots.clone())
            .unwrap_or_default();
        let grow = svc.backends.len().saturating_sub(old_slots.len()) as u32;
        if self.slots_used.saturating_add(grow) > self.sizes.slots {
            return Err(DataplaneError::Capacity {
                table: maps::SLOTS,
                capacity: self.sizes.slots,
                what: svc.name.to_string(),
            });
        }
        if existing.is_none() && self.services.len() as u32 >= self.sizes.frontends {
            return Err(DataplaneError::Capacity {
                table: maps::FRONTENDS,
                capacity: self.sizes.frontends,
                what: svc.name.to_string(),
            });
        }
        let service_id = match &existing {
            Some(p) => p.value.service_id,
            None => self.alloc_service_id(),
        };

        // 1. Backends (new ones are written now; nothing references them yet).
        let mut created = Vec::new();
        let mut want = Vec::with_capacity(svc.backends.len());
        for addr in &svc.backends {
            match self.backend_id(backend(addr, proto), &mut created) {
                Ok(id) => want.push(id),
                Err(e) => {
                    self.roll_back(service_id, &old_slots, &[], &[], &created);
                    if existing.is_none() {
                        self.free_service_ids.push(service_id);
                    }
                    return Err(e);
                }
            }
        }

        // 2. Membership for affinity, before any slot can point at the backend.
        let mut new_matches = Vec::new();
        for &id in &want {
            if old_slots.contains(&id) || new_matches.contains(&id) {
                continue;
            }
            let k = AffinityMatchKey {
                service_id,
                backend_id: id,
            };
            if let Err(e) = self.affinity_match.insert(k, 1, 0) {
                let err = map_error("insert", maps::AFFINITY_MATCH, self.sizes.slots, e);
                self.roll_back(service_id, &old_slots, &[], &new_matches, &created);
                if existing.is_none() {
                    self.free_service_ids.push(service_id);
                }
                return Err(err);
            }
            new_matches.push(id);
        }

        // 3. Slots: kept backends stay where they are, so a one-endpoint change is a
        //    handful of writes; the count still covers the old length until step 4.
        let new_slots = place(&old_slots, &want);
        let mut written = Vec::new();
        for (slot, &id) in new_slots.iter().enumerate() {
            if old_slots.get(slot) == Some(&id) {
                continue;
            }
            if let Err(e) = self.write_slot(service_id, slot as u32, id) {
                self.roll_back(service_id, &old_slots, &written, &new_matches, &created);
                if existing.is_none() {
                    self.free_service_ids.push(service_id);
                }
                return Err(e);
            }
            written.push(slot as u32);
        }

        // 4. Source ranges that are new, before the frontend starts checking them.
        let old_ranges = existing
            .as_ref()
            .map(|p| p.source_ranges.clone())
            .unwrap_or_default();
        let mut ranges_added = Vec::new();
        for net in &svc.source_ranges {
            if old_ranges.contains(net) {
                continue;
            }
            if let Err(e) = self
                .source_ranges
                .insert(&source_range_key(service_id, net), 1, 0)
            {
                let err = map_error("insert", maps::SOURCE_RANGES, sizes::SOURCE_RANGES, e);
                self.remove_ranges(service_id, &ranges_added);
                self.roll_back(service_id, &old_slots, &written, &new_matches, &created);
                if existing.is_none() {
                    self.free_service_ids.push(service_id);
                }
                return Err(err);
            }
            ranges_added.push(*net);
        }

        // 5. The frontend, with the new count: from here on the new set is served.
        let mut flags = kind_flags(svc.kind);
        if svc.affinity_timeout_s.is_some() {
            flags |= pc::FRONTEND_F_AFFINITY;
        }
        if !svc.source_ranges.is_empty() {
            flags |= pc::FRONTEND_F_SOURCE_RANGES;
        }
        let value = pc::FrontendValue {
            service_id,
            backend_count: new_slots.len() as u32,
            flags,
            affinity_timeout_s: svc.affinity_timeout_s.unwrap_or(0),
        };
        if existing.as_ref().map(|p| p.value) != Some(value)
            && let Err(e) = self.frontends.insert(key, value, 0)
        {
            let err = map_error("insert", maps::FRONTENDS, self.sizes.frontends, e);
            self.remove_ranges(service_id, &ranges_added);
            self.roll_back(service_id, &old_slots, &written, &new_matches, &created);
            if existing.is_none() {
                self.free_service_ids.push(service_id);
            }
            return Err(err);
        }
        let gone: Vec<IpNetwork> = old_ranges
            .iter()
            .filter(|n| !svc.source_ranges.contains(n))
            .copied()
            .collect();
        self.remove_ranges(service_id, &gone);

        // For operators only; a failure here does not fail the service.
        if existing.as_ref().map(|p| &p.name) != Some(&svc.name)
            && let Err(e) =
                self.names
                    .insert(service_id, ServiceName::new(&svc.name.to_string()), 0)
        {
            debug!(service = %svc.name, error = %e, "recording the service name");
        }

        // 6. Shrink: slots past the new count, memberships and backends that left.
        for slot in new_slots.len()..old_slots.len() {
            self.delete_slot(service_id, slot as u32);
        }
        for &id in &want {
            self.adjust_refs(id, 1);
        }
        for &id in &old_slots {
            self.adjust_refs(id, -1);
        }
        for &id in &old_slots {
            if !want.contains(&id) {
                self.delete_match(service_id, id);
                if let Some(be) = self.backend_by_id.get(&id).copied() {
                    self.release_backend(&be);
                }
            }
        }
        self.slots_used = self.slots_used + new_slots.len() as u32 - old_slots.len() as u32;
        self.services.insert(
            svc.frontend,
            Programmed {
                name: svc.name.clone(),
                frontend: svc.frontend,
                value,
                slots: new_slots,
                source_ranges: svc.source_ranges.clone(),
            },
        );
        Ok(())
    }

    /// Deletes source ranges of a frontend (absent ones are fine).
    fn remove_ranges(&mut self, service_id: u32, nets: &[IpNetwork]) {
        for net in nets {
            if let Err(e) = self
                .source_ranges
                .remove(&source_range_key(service_id, net))
                && !is_not_found(&e)
            {
                debug!(%net, error = %e, "removing a source range");
            }
        }
    }

    /// Removes one frontend: the frontend first (new connections stop matching), then
    /// its slots, memberships and unreferenced backends.
    fn remove_service(&mut self, frontend: &model::FrontendKey) -> Result<(), DataplaneError> {
        let key = frontend_key(frontend);
        let Some(p) = self.services.get(frontend).cloned() else {
            return Ok(());
        };
        // The frontend first: new connections stop matching at once.
        match self.frontends.remove(&key) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(map_error(
                    "remove",
                    maps::FRONTENDS,
                    self.sizes.frontends,
                    e,
                ));
            }
        }
        let sid = p.value.service_id;
        for slot in 0..p.slots.len() {
            self.delete_slot(sid, slot as u32);
        }
        for &id in &p.slots {
            self.adjust_refs(id, -1);
        }
        let mut seen = Vec::new();
        for &id in &p.slots {
            if seen.contains(&id) {
                continue;
            }
            seen.push(id);
            self.delete_match(sid, id);
            if let Some(be) = self.backend_by_id.get(&id).copied() {
                self.release_backend(&be);
            }
        }
        self.slots_used -= p.slots.len() as u32;
        self.remove_ranges(sid, &p.source_ranges);
        let _ = self.names.remove(&sid);
        self.services.remove(frontend);
        self.free_service_ids.push(sid);
        Ok(())
    }
}

impl Dataplane for EbpfDataplane {
    fn mode(&self) -> &'static str {
        "ebpf"
    }

    fn set_node(&mut self, node: &model::NodeAddresses) -> Result<(), DataplaneError> {
        let ifaces =
            crate::dataplane::netdev::discover().map_err(|source| DataplaneError::Kernel {
                op: "listing",
                object: "network interfaces".into(),
                source,
            })?;
        let plan = crate::dataplane::netdev::plan(
            &ifaces,
            &node.nodeport_addresses,
            &node.node_ips,
            &crate::dataplane::netdev::default_route_interfaces(),
            &self.pod_interfaces,
        )
        .map_err(|e| {
            DataplaneError::Unsupported(format!(
                "--nodeport-addresses {}: {e}",
                node.nodeport_addresses
            ))
        })?;
        self.set_devices(&plan).map_err(|e| DataplaneError::Kernel {
            op: "attaching",
            object: "the tc programs".into(),
            source: io::Error::other(e.to_string()),
        })
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(crate::observe::metrics::DatapathCounters {
            bpffs: self.bpffs.clone(),
        }));
    }

    fn node_changed(&mut self) -> impl std::future::Future<Output = ()> + Send {
        self.device_check.tick().map(|_| ())
    }

    fn upsert(&mut self, svc: &VirtualService) -> Result<(), DataplaneError> {
        self.upsert_service(svc).map_err(|e| e.about(&svc.name))
    }

    fn remove(&mut self, frontend: &model::FrontendKey) -> Result<(), DataplaneError> {
        self.remove_service(frontend)
    }

    fn refresh(&mut self) -> Result<(), DataplaneError> {
        let names: Vec<(model::FrontendKey, ServicePortName)> = self
            .services
            .iter()
            .map(|(f, p)| (*f, p.name.clone()))
            .collect();
        self.services.clear();
        self.backend_ids.clear();
        self.backend_by_id.clear();
        self.free_service_ids.clear();
        self.free_backend_ids.clear();
        self.next_backend_id = 1;
        self.next_service_id = 1;
        self.slots_used = 0;
        self.adopt().map_err(|e| DataplaneError::Kernel {
            op: "reading back",
            object: "the maps".into(),
            source: io::Error::other(e.to_string()),
        })?;
        for (f, name) in names {
            if let Some(p) = self.services.get_mut(&f) {
                p.name = name;
            }
        }
        Ok(())
    }

    fn programmed(&self) -> Result<Vec<VirtualService>, DataplaneError> {
        Ok(self
            .services
            .values()
            .map(|p| {
                let mut backends: Vec<SocketAddr> = p
                    .slots
                    .iter()
                    .filter_map(|id| self.backend_by_id.get(id))
                    .map(|be| SocketAddr::new(be.addr.ip(), u16::from_be(be.port_be)))
                    .collect();
                backends.sort();
                backends.dedup();
                VirtualService {
                    name: p.name.clone(),
                    frontend: p.frontend,
                    backends,
                    affinity_timeout_s: (p.value.flags & pc::FRONTEND_F_AFFINITY != 0)
                        .then_some(p.value.affinity_timeout_s),
                    kind: kind_of(p.value.flags),
                    source_ranges: p.source_ranges.clone(),
                }
            })
            .collect())
    }
}

/// New slot layout: backends that stay keep their slot; new ones fill the holes left
/// by removed ones, then the tail; leftover holes are filled from the end.
fn place(old: &[u32], want: &[u32]) -> Vec<u32> {
    let wanted: std::collections::HashSet<u32> = want.iter().copied().collect();
    let mut kept = std::collections::HashSet::new();
    // A backend listed twice in the old slots keeps one of them.
    let mut slots: Vec<Option<u32>> = old
        .iter()
        .map(|id| (wanted.contains(id) && kept.insert(*id)).then_some(*id))
        .collect();
    let mut new_ids = want.iter().filter(|id| !kept.contains(id));
    for s in slots.iter_mut() {
        if s.is_none() {
            *s = new_ids.next().copied();
        }
    }
    slots.extend(new_ids.map(|id| Some(*id)));
    // Compact: move tail entries into the remaining holes.
    loop {
        while let Some(None) = slots.last() {
            slots.pop();
        }
        match slots.iter().position(Option::is_none) {
            Some(hole) => slots[hole] = slots.pop().flatten(),
            None => break,
        }
    }
    slots.into_iter().flatten().collect()
}

fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
    links_dir: &Path,
) -> Result<(), LoadError> {
    let program = program::<CgroupSockAddr>(ebpf, name)?;
    program
        .load()
        .map_err(|source| LoadError::Program { name, source })?;
    let pin = links_dir.join(name);
    // A previous agent's link keeps its program attached until ours is in place.
    let old = if pin.exists() {
        match PinnedLink::from_pin(&pin) {
            Ok(l) => Some(l),
            Err(e) => {
                return Err(LoadError::Link {
                    name,
                    message: format!("adopting {}: {e}", pin.display()),
                });
            }
        }
    } else {
        None
    };
    let id = program
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(|source| LoadError::Program { name, source })?;
    let link = program
        .take_link(id)
        .map_err(|source| LoadError::Program { name, source })?;
    let link: FdLink = link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| LoadError::Link {
            name,
            message: e.to_string(),
        })?;
    // Both programs run for a moment; that is harmless (the second sees a backend
    // address, not a VIP). The old one detaches when its last reference is dropped.
    let old = match old {
        Some(l) => Some(l.unpin().map_err(|e| LoadError::Link {
            name,
            message: format!("unpinning the previous link: {e}"),
        })?),
        None => None,
    };
    link.pin(&pin).map_err(|e| LoadError::Link {
        name,
        message: format!("pinning {}: {e}", pin.display()),
    })?;
    drop(old);
    Ok(())
}

/// Program `name` of the object, as its type.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| LoadError::Link {
            name,
            message: "program missing from the object".into(),
        })?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, LoadError> {
    take_map(ebpf, name, HashMap::try_from)
}

/// Takes map `name` out of the object as the typed map `convert` makes of it.
pub(crate) fn take_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(Map) -> Result<T, MapError>,
) -> Result<T, LoadError> {
    let map: Map = ebpf.take_map(name).ok_or_else(|| LoadError::Map {
        name,
        message: "missing from the object".into(),
    })?;
    convert(map).map_err(|e| LoadError::Map {
        name,
        message: e.to_string(),
    })
}

/// The `SOURCE_RANGES` key of one range of a frontend. The service id is matched
/// whole; an IPv4 range is stored IPv4-mapped, so its prefix is 96 bits longer.
pub fn source_range_key(service_id: u32, net: &IpNetwork) -> LpmKey<SourceRangeKey> {
    let mapped = if net.is_ipv4() { 96 } else { 0 };
    LpmKey::new(
        32 + mapped + u32::from(net.prefix()),
        SourceRangeKey {
            service_id_be: service_id.to_be(),
            addr: Addr::from(net.network()),
        },
    )
}

/// The service id and range of a `SOURCE_RANGES` key (None if malformed).
pub fn source_range_of(key: &LpmKey<SourceRangeKey>) -> Option<(u32, IpNetwork)> {
    let data = key.data();
    let ip = data.addr.ip();
    let mapped = if ip.is_ipv4() { 96 } else { 0 };
    let prefix = key.prefix_len().checked_sub(32 + mapped)?;
    let net = IpNetwork::new(ip, u8::try_from(prefix).ok()?).ok()?;
    Some((u32::from_be(data.service_id_be), net))
}

/// Removes every pin this agent made (detaching the programs) and the directory.
pub fn cleanup(bpffs: &Path) -> io::Result<()> {
    for sub in ["links", "maps"] {
        let dir = bpffs.join(sub);
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries {
                    std::fs::remove_file(e?.path())?;
                }
                std::fs::remove_dir(&dir)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::remove_dir(bpffs) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The map key of a model frontend.
pub fn frontend_key(f: &model::FrontendKey) -> pc::FrontendKey {
    pc::FrontendKey {
        addr: Addr::from(f.ip),
        port_be: f.port.to_be(),
        proto: f.protocol.number(),
        scope: match f.scope {
            Scope::Internal => pc::scope::INTERNAL,
            Scope::External => pc::scope::EXTERNAL,
        },
    }
}

/// The `Frontend::flags` bits of a frontend kind.
pub fn kind_flags(kind: FrontendKind) -> u32 {
    let k = match kind {
        FrontendKind::ClusterIp => pc::kind::CLUSTER_IP,
        FrontendKind::NodePort => pc::kind::NODE_PORT,
        FrontendKind::ExternalIp => pc::kind::EXTERNAL_IP,
        FrontendKind::LoadBalancer => pc::kind::LOAD_BALANCER,
    };
    k << pc::FRONTEND_KIND_SHIFT
}

/// The frontend kind stored in `Frontend::flags`.
pub fn kind_of(flags: u32) -> FrontendKind {
    match (flags & pc::FRONTEND_KIND_MASK) >> pc::FRONTEND_KIND_SHIFT {
        pc::kind::NODE_PORT => FrontendKind::NodePort,
        pc::kind::EXTERNAL_IP => FrontendKind::ExternalIp,
        pc::kind::LOAD_BALANCER => FrontendKind::LoadBalancer,
        _ => FrontendKind::ClusterIp,
    }
}

/// The model frontend of a map key (None for a protocol we do not program).
pub fn model_frontend(k: &pc::FrontendKey) -> Option<model::FrontendKey> {
    Some(model::FrontendKey {
        ip: k.addr.ip(),
        port: u16::from_be(k.port_be),
        protocol: Protocol::from_number(k.proto)?,
        scope: match k.scope {
            pc::scope::INTERNAL => Scope::Internal,
            pc::scope::EXTERNAL => Scope::External,
            _ => return None,
        },
    })
}

/// `namespace/name[:port]` back into its parts (as `ServicePortName` displays it).
pub fn parse_name(s: &str) -> ServicePortName {
    let (namespace, rest) = s.split_once('/').unwrap_or(("", s));
    let (name, port) = rest.split_once(':').unwrap_or((rest, ""));
    ServicePortName {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        port: port.to_owned(),
    }
}

fn backend(addr: &SocketAddr, proto: u8) -> Backend {
    Backend {
        addr: Addr::from(addr.ip()),
        port_be: addr.port().to_be(),
        proto,
        flags: 0,
    }
}

fn is_not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound)
        || matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

fn map_error(op: &'static str, map: &'static str, capacity: u32, e: MapError) -> DataplaneError {
    match &e {
        MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
            DataplaneError::Capacity {
                table: map,
                capacity,
                what: String::new(),
            }
        }
        MapError::SyscallError(s) => DataplaneError::Kernel {
            op,
            object: map.into(),
            source: io::Error::from_raw_os_error(s.io_error.raw_os_error().unwrap_or(libc::EIO)),
        },
        other => DataplaneError::Kernel {
            op,
            object: map.into(),
            source: io::Error::other(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::place;

    #[test]
    fn names_round_trip_through_their_display_form() {
        use super::parse_name;
        for s in ["default/web:http", "default/web", "ns/a-b"] {
            assert_eq!(parse_name(s).to_string(), s);
        }
    }

    #[test]
    fn kept_backends_keep_their_slots() {
        assert_eq!(place(&[1, 2, 3], &[1, 2, 3, 4]), vec![1, 2, 3, 4]);
        assert_eq!(place(&[1, 2, 3], &[3, 1]), vec![1, 3]);
        assert_eq!(place(&[1, 2, 3], &[1, 3, 5]), vec![1, 5, 3]);
    }

    #[test]
    fn removing_the_middle_moves_only_the_tail() {
        assert_eq!(place(&[1, 2, 3, 4, 5], &[1, 2, 4, 5]), vec![1, 2, 5, 4]);
    }

    #[test]
    fn empty_and_full_replacement() {
        assert_eq!(place(&[], &[7, 8]), vec![7, 8]);
        assert_eq!(place(&[1, 2], &[]), Vec::<u32>::new());
        assert_eq!(place(&[1, 2], &[3, 4]), vec![3, 4]);
    }
}
