//! The node daemon's wiring: configuration, data plane set-up, and the sync loop that
//! takes snapshots from a source through translation into the reconciler.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::{Context, bail};
use tracing::{info, info_span, warn};

use crate::dataplane::Dataplane;
use crate::dataplane::ebpf::{EbpfConfig, EbpfDataplane, MapSizes};
use crate::healthcheck::HealthCheckServers;
use crate::http::Health;
use crate::metrics::{Metrics, Reason, TrafficPolicy};
use crate::model::{NodeAddresses, NodePortAddresses};
use crate::reconcile::Reconciler;
use crate::source::kubernetes::{Changes, KubeSource, NodeInfo};
use crate::source::manifests::ManifestSource;
use crate::source::{Update, World};
use crate::translate::{NodeContext, Translator};

pub use crate::dataplane::ebpf::DEFAULT_BPFFS;

/// `proxy-agent` command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "proxy-agent",
    version,
    about = "eBPF Kubernetes service proxy (node agent)"
)]
pub struct Config {
    /// Read Services and EndpointSlices from YAML/JSON manifests in this directory
    /// (watched for changes) instead of a Kubernetes API server.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig to reach the API server. Default: in-cluster configuration, else
    /// $KUBECONFIG or ~/.kube/config.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The cgroup v2 directory whose processes are load-balanced at the socket layer.
    /// Default: the root of the cgroup2 mount.
    #[arg(long, value_name = "PATH")]
    pub cgroup_path: Option<PathBuf>,
    /// Where maps and program links are pinned, on a bpffs.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// This node's name (topology, internalTrafficPolicy). Default: $NODE_NAME, else
    /// the hostname.
    #[arg(long, env = "NODE_NAME")]
    pub hostname_override: Option<String>,
    /// Remove everything this agent pinned (detaching its programs) and exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Where `/metrics` and `/proxyMode` are served (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: SocketAddr,
    /// Where `/healthz` and `/livez` are served (port 0: any free port).
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: SocketAddr,
    /// Full resync interval (also repairs drift); a change left unapplied for twice
    /// this long makes /healthz answer 503.
    #[arg(long, value_parser = positive_secs, default_value = "30")]
    pub sync_period: Duration,
    /// Minimum time between the starts of two syncs; changes arriving meanwhile are
    /// coalesced into one sync.
    #[arg(long, value_parser = humantime_secs, default_value = "0.05")]
    pub min_sync_period: Duration,
    /// Capacity of the frontends map (service ports x VIPs).
    #[arg(long, default_value_t = proxy_common::sizes::FRONTENDS)]
    pub max_frontends: u32,
    /// Capacity of the backend slot map (endpoints summed over services).
    #[arg(long, default_value_t = proxy_common::sizes::SLOTS)]
    pub max_slots: u32,
    /// Capacity of the backends map (distinct endpoints).
    #[arg(long, default_value_t = proxy_common::sizes::BACKENDS)]
    pub max_backends: u32,
    /// Capacity of the ClientIP affinity map (LRU).
    #[arg(long, default_value_t = proxy_common::sizes::AFFINITY)]
    pub max_affinity: u32,
    /// Capacity of the reverse socket map (LRU).
    #[arg(long, default_value_t = proxy_common::sizes::REV_SOCK)]
    pub max_rev_sock: u32,
    /// Where NodePorts are served: comma-separated CIDRs (every local address inside
    /// them), `primary` (the node's primary address of each family), or `none` (no
    /// NodePorts, no tc programs on external interfaces). Loopback addresses only when a
    /// range names them.
    #[arg(long, default_value = "primary")]
    pub nodeport_addresses: NodePortAddresses,
    /// Pod-facing interfaces that also get the tc ingress program (hairpin, pods
    /// outside the cgroup, replies of local backends); names, or prefixes ending in
    /// `*`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub pod_interfaces: Vec<String>,
    /// Capacity of the tc path's connection table (two entries per flow). When full,
    /// new flows are dropped and counted; existing ones are unaffected.
    #[arg(long, default_value_t = proxy_common::sizes::CONNTRACK)]
    pub conntrack_max: u32,
    /// Idle timeout of an established TCP flow on the tc path.
    #[arg(long, value_parser = duration, default_value = "24h")]
    pub conntrack_tcp_timeout_established: Duration,
    /// Idle timeout of a TCP flow whose handshake has not completed.
    #[arg(long, value_parser = duration, default_value = "60s")]
    pub conntrack_tcp_timeout_opening: Duration,
    /// Idle timeout of a TCP flow after FIN or RST.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub conntrack_tcp_timeout_closing: Duration,
    /// Idle timeout of a UDP flow on the tc path.
    #[arg(long, value_parser = duration, default_value = "60s")]
    pub conntrack_udp_timeout: Duration,
    /// How often expired connection-tracking entries are removed.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub conntrack_gc_interval: Duration,
    /// Source ports for SNAT when the client's own port is taken (`MIN-MAX`); keep it
    /// outside net.ipv4.ip_local_port_range.
    #[arg(long, value_parser = port_range, default_value = "61000-65535")]
    pub snat_port_range: (u16, u16),
}

/// A Go-style duration (`24h`, `1h30m`, `90s`) or a number of seconds.
fn duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 90s, 10m or 24h: {e}"))?;
    let d = Duration::try_from(d).map_err(|_| format!("{s:?} is negative"))?;
    if d.as_secs() == 0 || d.as_secs() > u64::from(u32::MAX) {
        return Err(format!("{s:?} is out of range (1 s to 136 years)"));
    }
    Ok(d)
}

fn port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not MIN-MAX"))?;
    let parse = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|e| format!("{p:?} is not a port: {e}"))
    };
    let (a, b) = (parse(a)?, parse(b)?);
    if a == 0 || a > b {
        return Err(format!("{s:?}: need 1 <= MIN <= MAX"));
    }
    Ok((a, b))
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim_end_matches('s')
        .parse()
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))?;
    if !(0.0..=3600.0).contains(&secs) {
        return Err(format!("{s:?} is out of range (0..=3600 s)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn positive_secs(s: &str) -> Result<Duration, String> {
    let d = humantime_secs(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?} is too short (at least 0.1 s)"));
    }
    Ok(d)
}

impl Config {
    fn map_sizes(&self) -> MapSizes {
        MapSizes {
            frontends: self.max_frontends,
            slots: self.max_slots,
            backends: self.max_backends,
            affinity: self.max_affinity,
            rev_sock: self.max_rev_sock,
        }
    }

    fn tc_config(&self) -> proxy_common::TcConfig {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1);
        proxy_common::TcConfig {
            tcp_opening_s: secs(self.conntrack_tcp_timeout_opening),
            tcp_established_s: secs(self.conntrack_tcp_timeout_established),
            tcp_closing_s: secs(self.conntrack_tcp_timeout_closing),
            udp_s: secs(self.conntrack_udp_timeout),
            snat_port_min: self.snat_port_range.0,
            snat_port_max: self.snat_port_range.1,
            flags: 0,
        }
    }

    fn node_name(&self) -> String {
        if let Some(n) = &self.hostname_override {
            return n.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }
}

/// Runs the agent until SIGINT/SIGTERM. Pinned state stays behind on exit so traffic
/// keeps flowing until the next agent adopts it (use `--cleanup` to remove it).
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    if cfg.cleanup {
        crate::dataplane::ebpf::cleanup(&cfg.bpffs)
            .with_context(|| format!("removing pins under {}", cfg.bpffs.display()))?;
        info!(bpffs = %cfg.bpffs.display(), "cleaned up");
        return Ok(());
    }
    let node_name = cfg.node_name();
    let mut source = match &cfg.manifests {
        Some(dir) => Source::Manifests(
            ManifestSource::new(dir.clone())
                .with_context(|| format!("watching {}", dir.display()))?,
        ),
        None => Source::Kube(KubeSource::start(kube_client(&cfg).await?, &node_name)),
    };
    let cgroup = match &cfg.cgroup_path {
        Some(p) => p.clone(),
        None => cgroup2_root().context("finding the cgroup2 mount (pass --cgroup-path)")?,
    };
    let dataplane = EbpfDataplane::load(&EbpfConfig {
        bpffs: cfg.bpffs.clone(),
        cgroup,
        sizes: cfg.map_sizes(),
        tc: cfg.tc_config(),
        conntrack_max: cfg.conntrack_max,
        conntrack_gc_interval: cfg.conntrack_gc_interval,
        pod_interfaces: cfg.pod_interfaces.clone(),
    })
    .context("loading the eBPF data plane")?;
    let reconciler = Reconciler::new(dataplane).context("reading the programmed state")?;
    let metrics = Metrics::new(|r| reconciler.dataplane().register_metrics(r));
    let health = Health::new(cfg.sync_period * 2);
    crate::http::serve(
        cfg.metrics_bind_address,
        cfg.healthz_bind_address,
        Arc::clone(&metrics),
        Arc::clone(&health),
    )
    .await
    .context("starting the metrics and health servers")?;

    // kube-proxy serves health check ports on every address; so do we (dual-stack).
    let health_checks = {
        let health = Arc::clone(&health);
        HealthCheckServers::new(
            std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            move || health.is_healthy(),
        )
    };
    let mut pipeline = Pipeline {
        nodeport_addresses: cfg.nodeport_addresses.clone(),
        node_error: None,
        health_checks,
        node_ips: Vec::new(),
        world: World::default(),
        translator: Translator::default(),
        reconciler,
        node: None,
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    info!(source = %source.describe(), node = %node_name, "agent running");
    let mut full = false;
    let mut last_sync;
    // A fixed schedule, not a quiet-period timer: a busy cluster still gets its full
    // resyncs (and drift repair).
    let mut resync = tokio::time::interval(cfg.sync_period);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    pipeline.set_node();
    loop {
        let (node, deleting, node_ips) = source.node(&node_name);
        health
            .node_deleting
            .store(deleting, std::sync::atomic::Ordering::Relaxed);
        last_sync = Instant::now();
        pipeline.sync(&mut source, node, node_ips, full);
        full = false;
        let stop = loop {
            tokio::select! {
                _ = source.changed() => {
                    health.queued();
                    metrics.last_queued.set(unix_now());
                    break false;
                }
                _ = resync.tick() => {
                    full = true;
                    break false;
                }
                // Interfaces come and go (a pod's veth, an address moving): attach to
                // them soon, without waiting for a full resync.
                _ = pipeline.reconciler.dataplane_mut().node_changed() => pipeline.set_node(),
                _ = tokio::signal::ctrl_c() => break true,
                _ = sigterm.recv() => break true,
            }
        };
        if stop {
            break;
        }
        // Rate-limit like kube-proxy's --min-sync-period: a change after a quiet spell
        // is applied at once; during a burst, whatever arrives while we wait joins the
        // next sync.
        let since = last_sync.elapsed();
        if since < cfg.min_sync_period {
            tokio::time::sleep(cfg.min_sync_period - since).await;
        }
    }
    info!("stopping; the data plane stays programmed until the next agent adopts it");
    Ok(())
}

async fn kube_client(cfg: &Config) -> anyhow::Result<kube::Client> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration (in-cluster, $KUBECONFIG or ~/.kube/config); pass --kubeconfig or --manifests")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// Where the world comes from.
enum Source {
    Manifests(ManifestSource),
    Kube(KubeSource),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Manifests(m) => format!("manifests in {}", m.dir().display()),
            Source::Kube(_) => "Kubernetes API".into(),
        }
    }

    async fn changed(&mut self) {
        match self {
            Source::Manifests(m) => m.changed().await,
            Source::Kube(k) => k.changed().await,
        }
    }

    /// What changed (None until a Kubernetes source has listed everything once), the
    /// input problems seen, and the change counts since the last call.
    fn take(&mut self) -> (Option<Update>, Vec<String>, Changes) {
        match self {
            Source::Manifests(m) => {
                let (snap, errors) = m.load();
                let errors = errors.iter().map(ToString::to_string).collect();
                (Some(Update::Reset(snap)), errors, Changes::default())
            }
            Source::Kube(k) => k.take(),
        }
    }

    /// This node as the source knows it, whether it is being deleted, and its
    /// InternalIPs. Without a Node object (manifest mode, or before it is seen) both
    /// families are assumed.
    fn node(&self, name: &str) -> (NodeContext, bool, Vec<std::net::IpAddr>) {
        let info = match self {
            Source::Manifests(_) => NodeInfo::default(),
            Source::Kube(k) => k.node(),
        };
        let (ipv4, ipv6) = info.families.unwrap_or((true, true));
        let ctx = NodeContext {
            name: name.to_owned(),
            zone: info.zone,
            ipv4,
            ipv6,
        };
        (ctx, info.deleting, info.internal_ips)
    }
}

/// When the change behind an EndpointSlice was triggered (the EndpointSlice
/// controller's `endpoints.kubernetes.io/last-change-trigger-time` annotation).
fn trigger_time(
    slice: &k8s_openapi::api::discovery::v1::EndpointSlice,
) -> Option<std::time::SystemTime> {
    let value = slice
        .metadata
        .annotations
        .as_ref()?
        .get("endpoints.kubernetes.io/last-change-trigger-time")?;
    let ts: jiff::Timestamp = value.parse().ok()?;
    Some(std::time::SystemTime::from(ts))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Sources -> world -> translation -> reconciler, one sync at a time.
struct Pipeline {
    /// `--nodeport-addresses`.
    nodeport_addresses: NodePortAddresses,
    /// The last problem setting the node, so that a lasting one is logged once.
    node_error: Option<String>,
    health_checks: HealthCheckServers,
    /// The Node's InternalIPs the devices were last planned with.
    node_ips: Vec<std::net::IpAddr>,
    world: World,
    translator: Translator,
    reconciler: Reconciler<EbpfDataplane>,
    /// The node context of the last translation (None before the first).
    node: Option<NodeContext>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Pipeline {
    /// Tells the data plane where NodePorts are served (a no-op when nothing changed).
    /// A failure is logged (once while it lasts) and leaves the previous attachment in
    /// place; ClusterIPs keep working.
    fn set_node(&mut self) {
        let node = NodeAddresses {
            nodeport_addresses: self.nodeport_addresses.clone(),
            node_ips: self.node_ips.clone(),
        };
        match self.reconciler.dataplane_mut().set_node(&node) {
            Ok(()) => self.node_error = None,
            Err(e) => {
                let e = format!("setting up NodePorts: {e}; NodePorts may not be served");
                if self.node_error.as_ref() != Some(&e) {
                    warn!("{e}");
                    self.node_error = Some(e);
                }
            }
        }
    }

    /// Takes what the source has and applies it. `full` re-translates everything and
    /// re-reads the kernel state (the periodic resync that repairs drift).
    fn sync(
        &mut self,
        source: &mut Source,
        node: NodeContext,
        node_ips: Vec<std::net::IpAddr>,
        full: bool,
    ) {
        let _span = info_span!("sync", full).entered();
        let started = Instant::now();
        let (update, errors, changes) = source.take();
        let m = &Arc::clone(&self.metrics);
        m.service_changes.inc_by(changes.services);
        m.endpoint_changes.inc_by(changes.endpoint_slices);
        m.input_errors.inc_by(errors.len() as u64);
        for e in &errors {
            warn!("{e}");
        }
        let Some(update) = update else {
            info!("waiting for the initial lists; the data plane keeps its current state");
            return;
        };
        let mut triggers = Vec::new();
        let dirty = match update {
            Update::Reset(snapshot) => {
                self.world.reset(snapshot);
                None
            }
            Update::Changes { services, slices } => {
                triggers.extend(
                    slices
                        .iter()
                        .filter_map(|(_, s)| trigger_time(s.as_deref()?)),
                );
                Some(self.world.apply(services, slices))
            }
        };
        if full || self.node.is_none() || self.node_ips != node_ips {
            self.node_ips = node_ips;
            self.set_node();
        }
        let rebuild = full || self.node.as_ref() != Some(&node);
        let translate_started = Instant::now();
        let incremental = dirty.is_some() && !rebuild;
        let changed = match dirty {
            Some(dirty) if !rebuild => self.translator.update(&self.world, dirty, &node),
            _ => self.translator.rebuild(&self.world, &node),
        };
        self.node = Some(node);
        for s in self.translator.last_skipped() {
            warn!(object = %s.object, reason = %s.reason, "skipped");
        }
        let desired = self.translator.desired();
        let translate_us = translate_started.elapsed().as_micros();
        let apply_started = Instant::now();
        // After a reset the translator's previous state says nothing about what the
        // maps hold (a restarted agent adopted them): compare everything.
        let report = if full {
            self.reconciler.resync(desired)
        } else if incremental {
            self.reconciler.apply_changed(desired, &changed)
        } else {
            self.reconciler.apply(desired)
        };
        let apply_us = apply_started.elapsed().as_micros();
        let now = std::time::SystemTime::now();
        for t in triggers {
            if let Ok(d) = now.duration_since(t) {
                m.network_programming.observe(d.as_secs_f64());
            }
        }
        let reason = |r: &str| Reason {
            reason: r.to_owned(),
        };
        for (_, e) in &report.failed {
            m.programming_failures
                .get_or_create(&reason(e.metric_label()))
                .inc();
        }
        m.skipped
            .get_or_create(&reason("translation"))
            .set(self.translator.skipped_count() as i64);
        m.no_local_endpoints
            .get_or_create(&TrafficPolicy {
                traffic_policy: "internal".into(),
            })
            .set(self.translator.no_local_endpoints() as i64);
        m.no_local_endpoints
            .get_or_create(&TrafficPolicy {
                traffic_policy: "external".into(),
            })
            .set(self.translator.no_local_endpoints_external() as i64);
        let bind_errors = self.health_checks.sync(&self.translator.health_checks());
        m.health_check_bind_errors.inc_by(bind_errors.len() as u64);
        let applied = self.reconciler.applied();
        m.services.set(applied.len() as i64);
        m.backends
            .set(applied.values().map(|s| s.backends.len() as i64).sum());
        m.sync_duration.observe(started.elapsed().as_secs_f64());
        m.last_sync.set(unix_now());
        self.health.updated();
        // From the first change of this batch reaching the agent to the maps holding it.
        let latency_us = changes.since.map(|t| t.elapsed().as_micros()).unwrap_or(0);
        info!(
            latency_us,
            translate_us,
            apply_us,
            services = desired.services.len(),
            changed = changed.len(),
            upserted = report.upserted,
            removed = report.removed,
            unchanged = report.unchanged,
            failed = report.failed.len(),
            input_errors = errors.len(),
            skipped = self.translator.skipped_count(),
            "synced"
        );
    }
}

/// The mount point of the cgroup v2 hierarchy.
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    for line in mounts.lines() {
        // mountinfo: ... mount-point ... - fstype source options
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2")
            && let Some(mp) = left.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(mp));
        }
    }
    bail!("no cgroup2 filesystem is mounted")
}

/// The `proxy-agent` binary: logging, command line, runtime. Shared with the test
/// harness's copy of the binary so both run exactly this.
pub fn main() -> anyhow::Result<()> {
    use clap::Parser as _;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = Config::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(cfg))
}
