//! The `proxy-agent` command line, with kube-proxy's flag names where they mean the
//! same, and what the rest of the daemon derives from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::dataplane::ebpf::conntrack::{ConntrackSizes, cores};
use crate::dataplane::ebpf::{DEFAULT_BPFFS, EbpfConfig, MapSizes};
use crate::model::NodePortAddresses;

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
    /// The data plane: `ebpf` (socket-level ClusterIPs, tc NodePorts with their own
    /// connection tracking) or `ipvs` (kube-proxy's IPVS mode; ClusterIP, ExternalIP
    /// and LoadBalancer IPs served on the node so far, NodePorts not yet).
    #[arg(long, value_enum, default_value_t = ProxyMode::Ebpf)]
    pub proxy_mode: ProxyMode,
    /// The IPVS scheduler of every virtual server (`--proxy-mode=ipvs`).
    #[arg(long, default_value = crate::dataplane::ipvs::DEFAULT_SCHEDULER,
          value_parser = clap::builder::PossibleValuesParser::new(IPVS_SCHEDULERS))]
    pub ipvs_scheduler: String,
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
    /// Assured flows the tc path tracks, overriding `--conntrack-max-per-core` and
    /// `--conntrack-min` (0: use them). Flows that are not assured yet have a table of
    /// their own (`--conntrack-unassured-max`).
    #[arg(long, default_value_t = 0)]
    pub conntrack_max: u32,
    /// Assured flows to track per CPU core (kube-proxy's flag); the table holds
    /// max(this × cores, `--conntrack-min`). 0: `--conntrack-min` alone.
    #[arg(long, default_value_t = 32_768)]
    pub conntrack_max_per_core: u32,
    /// The least number of assured flows to track, whatever the core count.
    #[arg(long, default_value_t = 131_072)]
    pub conntrack_min: u32,
    /// Flows not yet assured (handshake not proven, UDP not two-way) to track; the
    /// oldest are evicted to make room. 0: a quarter of the assured table.
    #[arg(long, default_value_t = 0)]
    pub conntrack_unassured_max: u32,
    /// Idle timeout of an established TCP flow on the tc path.
    #[arg(long, value_parser = duration, default_value = "24h")]
    pub conntrack_tcp_timeout_established: Duration,
    /// Idle timeout of a TCP flow whose handshake is not proven yet (netfilter's
    /// syn_sent/syn_recv).
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub conntrack_tcp_timeout_opening: Duration,
    /// Idle timeout of a TCP flow after FIN or RST.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub conntrack_tcp_timeout_closing: Duration,
    /// Idle timeout of a UDP flow that is not assured (no reply yet, or no datagram
    /// from the client after it), as netfilter's nf_conntrack_udp_timeout.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub conntrack_udp_timeout: Duration,
    /// Idle timeout of an assured UDP flow, as netfilter's
    /// nf_conntrack_udp_timeout_stream.
    #[arg(long, value_parser = duration, default_value = "120s")]
    pub conntrack_udp_timeout_stream: Duration,
    /// How often expired connection-tracking entries are removed.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub conntrack_gc_interval: Duration,
    /// Source ports for SNAT when the client's own port is taken (`MIN-MAX`); keep it
    /// outside net.ipv4.ip_local_port_range.
    #[arg(long, value_parser = port_range, default_value = "61000-65535")]
    pub snat_port_range: (u16, u16),
}

/// Which data plane backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyMode {
    /// The eBPF data plane.
    Ebpf,
    /// IPVS virtual servers and ipsets, as kube-proxy's IPVS mode.
    Ipvs,
}

/// The schedulers kube-proxy accepts for `--ipvs-scheduler`.
pub const IPVS_SCHEDULERS: [&str; 11] = [
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh",
];

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
            udp_stream_s: secs(self.conntrack_udp_timeout_stream),
        }
    }

    /// The connection tables' sizes on a machine with `cores` cores.
    pub fn conntrack_sizes(&self, cores: u32) -> ConntrackSizes {
        ConntrackSizes::new(
            self.conntrack_max,
            self.conntrack_max_per_core,
            self.conntrack_min,
            self.conntrack_unassured_max,
            cores,
        )
    }

    /// This node's name: `--hostname-override` (or `$NODE_NAME`), else the hostname.
    /// An unreadable or empty hostname is an error: an empty node name would silently
    /// break topology and `internalTrafficPolicy: Local`.
    pub fn node_name(&self) -> anyhow::Result<String> {
        if let Some(n) = self.hostname_override.as_deref().map(str::trim) {
            if n.is_empty() {
                bail!("--hostname-override (or $NODE_NAME) is empty");
            }
            return Ok(n.to_owned());
        }
        let path = "/proc/sys/kernel/hostname";
        let name = std::fs::read_to_string(path).with_context(|| {
            format!("reading the hostname from {path} (pass --hostname-override)")
        })?;
        let name = name.trim();
        if name.is_empty() {
            bail!("the hostname is empty (pass --hostname-override)");
        }
        Ok(name.to_owned())
    }

    /// The eBPF backend's settings.
    pub fn ebpf_config(&self, cgroup: PathBuf) -> EbpfConfig {
        EbpfConfig {
            bpffs: self.bpffs.clone(),
            cgroup,
            sizes: self.map_sizes(),
            tc: self.tc_config(),
            conntrack: self.conntrack_sizes(cores()),
            conntrack_gc_interval: self.conntrack_gc_interval,
            pod_interfaces: self.pod_interfaces.clone(),
        }
    }
}
