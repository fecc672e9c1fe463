//! The eBPF data plane: loads the socket-level and tc programs, attaches them (to a
//! cgroup, to the node's devices), pins maps and links under bpffs (so traffic keeps
//! flowing while the agent restarts and a new agent adopts what the old one
//! programmed), and writes services into the maps in an order that never exposes a
//! half-written service.
//!
//! - [`load`]: the object, the cgroup programs and their pinned links;
//! - [`bpffs`]: the pin root (mounting bpffs, `--cleanup`);
//! - [`devices`]: the tc programs on the node's interfaces and the NodePort addresses;
//! - [`services`]: the service index and its write order (documented there), over the
//!   [`tables`] seam, with [`undo`] rolling back a failed upsert;
//! - [`keys`]: model <-> map conversions;
//! - [`conntrack`], [`counters`], [`metrics`]: the connection table and its collector,
//!   the programs' counters, and what the backend exports;
//! - [`stats`]: the traffic statistics per service and backend (stats ids, reading);
//! - [`pins`] and [`inspect`]: reading the pinned maps, for `proxyctl`;
//! - [`udp_sockets`]: connected UDP sockets of a backend that left are destroyed, so
//!   that they reconnect to one that is there.

pub mod bpffs;
pub mod conntrack;
pub mod counters;
mod devices;
mod error;
#[cfg(test)]
mod fake;
pub mod inspect;
pub mod keys;
pub mod load;
pub mod log;
pub mod metrics;
pub mod monitor;
pub mod pins;
mod services;
pub mod stats;
pub mod tables;
pub mod udp_sockets;
mod undo;

use std::borrow::Cow;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use aya::Ebpf;
use proxy_common as pc;
use proxy_common::sizes;
use tracing::{debug, info, warn};

pub use bpffs::{cleanup, ensure_bpffs, is_bpffs};
pub use load::LoadError;

use self::devices::Devices;
use self::metrics::{EbpfMetrics, GcMetrics};
use self::services::Services;
use self::tables::MapTables;
use self::udp_sockets::UdpSockets;
use super::netdev::DeviceWatch;
use super::{Dataplane, DataplaneError};
use crate::model::{FrontendKey, NodeAddresses, VirtualService};

/// Default pin directory (on the bpffs at /sys/fs/bpf).
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/proxy-agent";

/// The compiled eBPF object (every program and map), built by build.rs. Empty when
/// built with `AYA_BUILD_SKIP=1`.
pub static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));

/// Map capacities. Changing one requires removing the pinned map (`--cleanup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// The connection tables' sizes.
    pub conntrack: conntrack::ConntrackSizes,
    /// How often idle flows are collected from the connection table (zero: never).
    pub conntrack_gc_interval: Duration,
    /// `--pod-interfaces`: pod-facing interfaces that get the tc ingress program;
    /// names, or prefixes ending in `*`.
    pub pod_interfaces: Vec<String>,
    /// `--pod-netns-dir`: where pod network namespaces are bind-mounted, searched for
    /// connected UDP sockets of a backend that left.
    pub pod_netns_dir: PathBuf,
    /// `--bpf-log-level`: the programs' debug logging (off: none, at no cost).
    pub bpf_log: log::BpfLogLevel,
}

/// Aborts a task when dropped: the backend's side tasks live as long as it does.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The eBPF data plane.
pub struct EbpfDataplane {
    // Keeps the loaded programs alive for this process (the attachments themselves live
    // in the pinned links) and gives the tc programs to attach to new devices.
    ebpf: Ebpf,
    tables: MapTables,
    services: Services,
    devices: Devices,
    /// Link, address and route notifications ([`Dataplane::node_changed`]).
    watch: DeviceWatch,
    metrics: EbpfMetrics,
    udp_sockets: UdpSockets,
    _gc: AbortOnDrop,
    _log: Option<AbortOnDrop>,
}

impl EbpfDataplane {
    /// Loads the programs (reusing pinned maps if present, mounting bpffs at
    /// /sys/fs/bpf if needed), attaches them to the cgroup (replacing links a previous
    /// agent pinned, without a gap), adopts the services already in the maps, and
    /// starts the connection-table collector. Must be called within a Tokio runtime;
    /// the collector stops when the data plane is dropped.
    pub fn load(cfg: &EbpfConfig) -> Result<Self, LoadError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(LoadError::NoRuntime);
        }
        bpffs::ensure_bpffs(&cfg.bpffs).map_err(LoadError::Bpffs)?;
        let mut ebpf = load::load_and_attach(cfg)?;
        let mut tables = MapTables::from_object(&mut ebpf, cfg.sizes)?;
        let devices = Devices::new(
            &mut ebpf,
            &load::links_dir(&cfg.bpffs),
            cfg.pod_interfaces.clone(),
        )?;
        let services = Services::adopt(&mut tables, cfg.sizes).map_err(LoadError::Adopt)?;
        let metrics = EbpfMetrics {
            gc: GcMetrics::default(),
            memory: load::map_memory(&cfg.bpffs),
            bpffs: cfg.bpffs.clone(),
            stats: tables.stats_gauges(),
        };
        let gc = conntrack::spawn_gc(
            cfg.bpffs.clone(),
            cfg.conntrack_gc_interval,
            metrics.gc.clone(),
        );
        // Before the daemon's first `set_node` lists the interfaces, so that nothing
        // that changes in between is missed.
        let watch = DeviceWatch::new().map_err(LoadError::DeviceWatch)?;
        if services.write_order() == services::WriteOrder::Unsafe {
            warn!(
                "{} is set: services are written in a WRONG order (test-only; \
                 traffic during updates will fail)",
                services::UNSAFE_WRITE_ORDER_ENV
            );
        }
        let udp_sockets = UdpSockets::start(cfg.bpffs.clone(), cfg.pod_netns_dir.clone());
        let log = log::spawn(&mut ebpf, cfg.bpf_log).map(AbortOnDrop);
        info!(
            bpffs = %cfg.bpffs.display(),
            cgroup = %cfg.cgroup.display(),
            adopted = services.len(),
            "eBPF data plane loaded"
        );
        Ok(EbpfDataplane {
            ebpf,
            tables,
            services,
            devices,
            watch,
            metrics,
            udp_sockets,
            _gc: AbortOnDrop(gc),
            _log: log,
        })
    }
}

impl Dataplane for EbpfDataplane {
    fn mode(&self) -> &'static str {
        "ebpf"
    }

    fn set_node(&mut self, node: &NodeAddresses) -> Result<(), DataplaneError> {
        self.devices.set_node(&mut self.ebpf, node)
    }

    fn upsert(&mut self, svc: &VirtualService) -> Result<(), DataplaneError> {
        let watched = udp_sockets::watched(&svc.frontend);
        let before = watched
            .then(|| self.services.backends_of(&svc.frontend))
            .flatten();
        self.services
            .upsert(&mut self.tables, svc)
            .map_err(|e| e.about(&svc.name))?;
        if before.is_some() {
            let after = self.services.backends_of(&svc.frontend);
            self.udp_sockets
                .departed(udp_sockets::departures(&svc.frontend, before, after));
        }
        Ok(())
    }

    fn remove(&mut self, frontend: &FrontendKey) -> Result<(), DataplaneError> {
        let before = udp_sockets::watched(frontend)
            .then(|| self.services.backends_of(frontend))
            .flatten();
        self.services.remove(&mut self.tables, frontend)?;
        self.udp_sockets
            .departed(udp_sockets::departures(frontend, before, None));
        Ok(())
    }

    fn programmed(&self) -> Result<Vec<VirtualService>, DataplaneError> {
        Ok(self.services.programmed())
    }

    fn held<'a>(&self, svc: &'a VirtualService) -> Cow<'a, VirtualService> {
        // Only a name too long for SVC_NAMES and the policy flag differ from what was
        // asked for: the programs need no flag, as they masquerade only when the
        // backend's replies would not come back through them (a remote backend).
        match (keys::held_name(&svc.name), svc.node_local) {
            (None, false) => Cow::Borrowed(svc),
            (name, _) => Cow::Owned(VirtualService {
                name: name.unwrap_or_else(|| svc.name.clone()),
                node_local: false,
                ..svc.clone()
            }),
        }
    }

    fn refresh(&mut self) -> Result<(), DataplaneError> {
        self.services.refresh(&mut self.tables)
    }

    fn node_changed(&mut self) -> impl Future<Output = ()> + Send {
        // Cancel-safe: `DeviceWatch::changed` takes nothing from the socket that it
        // does not act on in the same poll.
        let watch = &mut self.watch;
        async move {
            let change = watch.changed().await;
            debug!(%change, "network devices changed");
        }
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
        self.udp_sockets.register(registry);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn config(bpffs: &str) -> EbpfConfig {
        EbpfConfig {
            bpffs: bpffs.into(),
            cgroup: "/nonexistent/cgroup".into(),
            sizes: MapSizes::default(),
            tc: pc::TcConfig::default(),
            conntrack: conntrack::ConntrackSizes::new(512, 0, 0, 0, 1),
            conntrack_gc_interval: Duration::from_secs(10),
            pod_interfaces: Vec::new(),
            pod_netns_dir: udp_sockets::DEFAULT_POD_NETNS_DIR.into(),
            bpf_log: log::BpfLogLevel::Off,
        }
    }

    #[test]
    fn loading_outside_a_runtime_is_an_error_not_a_panic() {
        let e = EbpfDataplane::load(&config("/nonexistent/proxy-agent")).err();
        assert!(matches!(e, Some(LoadError::NoRuntime)), "{e:?}");
    }

    #[tokio::test]
    async fn a_pin_directory_off_bpffs_is_refused_before_anything_is_loaded() {
        let dir = std::env::temp_dir().join(format!("ebpf-load-{}", std::process::id()));
        let e = EbpfDataplane::load(&config(&dir.join("agent").to_string_lossy())).err();
        assert!(matches!(e, Some(LoadError::Bpffs(_))), "{e:?}");
        assert!(!dir.exists(), "nothing was created");
    }

    #[tokio::test]
    async fn side_tasks_stop_when_their_owner_is_dropped() {
        let held = Arc::new(());
        let in_task = Arc::clone(&held);
        let task = AbortOnDrop(tokio::spawn(async move {
            let _keep = in_task;
            std::future::pending::<()>().await;
        }));
        tokio::task::yield_now().await;
        assert_eq!(Arc::strong_count(&held), 2);
        drop(task);
        // The aborted task drops its future (and what it holds) when next polled.
        for _ in 0..100 {
            if Arc::strong_count(&held) == 1 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the task outlived its owner");
    }
}
