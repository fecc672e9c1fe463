//! The node daemon's wiring: configuration, data plane set-up, and the sync loop that
//! takes snapshots from a source through translation into the reconciler.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tracing::{info, info_span, warn};

use crate::dataplane::ebpf::{EbpfConfig, EbpfDataplane, MapSizes};
use crate::reconcile::Reconciler;
use crate::source::manifests::ManifestSource;
use crate::translate::{self, NodeContext};

/// Default pin directory (on the bpffs at /sys/fs/bpf).
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/proxy-agent";

/// `proxy-agent` command line.
#[derive(Debug, clap::Parser)]
#[command(name = "proxy-agent", version, about = "eBPF Kubernetes service proxy (node agent)")]
pub struct Config {
    /// Read Services and EndpointSlices from YAML/JSON manifests in this directory
    /// (watched for changes) instead of a Kubernetes API server.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
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
    /// Minimum time between two syncs; bursts of changes are coalesced into one.
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
    let Some(dir) = cfg.manifests.clone() else {
        bail!("no source configured: pass --manifests DIR");
    };
    ensure_bpffs(&cfg.bpffs)?;
    let cgroup = match &cfg.cgroup_path {
        Some(p) => p.clone(),
        None => cgroup2_root().context("finding the cgroup2 mount (pass --cgroup-path)")?,
    };
    let dataplane = EbpfDataplane::load(&EbpfConfig {
        bpffs: cfg.bpffs.clone(),
        cgroup,
        sizes: cfg.map_sizes(),
    })
    .context("loading the eBPF data plane")?;
    let mut reconciler = Reconciler::new(dataplane).context("reading the programmed state")?;
    let node = NodeContext {
        name: cfg.node_name(),
        zone: None,
        ipv4: true,
        ipv6: true,
    };

    let mut source = ManifestSource::new(dir.clone())
        .with_context(|| format!("watching {}", dir.display()))?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    info!(manifests = %dir.display(), node = %node.name, "agent running");
    loop {
        sync(&mut source, &node, &mut reconciler);
        tokio::select! {
            _ = source.changed() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
        tokio::time::sleep(cfg.min_sync_period).await;
    }
    info!("stopping; the data plane stays programmed until the next agent adopts it");
    Ok(())
}

fn sync(
    source: &mut ManifestSource,
    node: &NodeContext,
    reconciler: &mut Reconciler<EbpfDataplane>,
) {
    let _span = info_span!("sync").entered();
    let (snapshot, errors) = source.load();
    for e in &errors {
        warn!("{e}");
    }
    let translation = translate::translate(&snapshot, node);
    for s in &translation.skipped {
        warn!(object = %s.object, reason = %s.reason, "skipped");
    }
    let report = reconciler.apply(&translation.desired);
    info!(
        services = translation.desired.services.len(),
        upserted = report.upserted,
        removed = report.removed,
        unchanged = report.unchanged,
        failed = report.failed.len(),
        input_errors = errors.len(),
        skipped = translation.skipped.len(),
        "synced"
    );
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Makes sure the pin directory is on a bpffs, mounting /sys/fs/bpf if the default
/// location is used and nothing is mounted there yet.
fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    let parent = dir.parent().unwrap_or(dir);
    if is_bpffs(parent) || is_bpffs(dir) {
        return Ok(());
    }
    let sys = Path::new("/sys/fs/bpf");
    if parent == sys {
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .context("running mount -t bpf")?;
        if status.success() && is_bpffs(sys) {
            info!("mounted bpffs at /sys/fs/bpf");
            return Ok(());
        }
    }
    bail!(
        "{} is not on a bpffs (mount one with `mount -t bpf bpf {}`)",
        dir.display(),
        parent.display()
    )
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
