//! The `proxy-agent` command line, with kube-proxy's flag names where they mean the
//! same, and what the rest of the daemon derives from it.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use super::sync_loop::Timing;
use crate::dataplane::ebpf::conntrack::{ConntrackSizes, cores};
use crate::dataplane::ebpf::{DEFAULT_BPFFS, EbpfConfig, MapSizes};
use crate::dataplane::ipvs;
use crate::model::NodePortAddresses;
use values::*;
pub use values::{CidrList, DetectLocalMode};

mod file;
mod merge;
mod values;

pub use file::{FileError, KubeProxyConfiguration, Translation};
pub use merge::MergeError;

/// `proxy-agent` command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "proxy-agent",
    version,
    about = "eBPF Kubernetes service proxy (node agent)"
)]
pub struct Config {
    /// kube-proxy's configuration file (a `KubeProxyConfiguration`,
    /// kubeproxy.config.k8s.io/v1alpha1, as in kubeadm's `kube-proxy` ConfigMap). Flags
    /// given on the command line override its values.
    #[arg(long, help_heading = "Misc", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Read Services and EndpointSlices from YAML/JSON manifests in this directory
    /// (watched for changes) instead of a Kubernetes API server.
    #[arg(
        long,
        help_heading = "Kubernetes",
        value_name = "DIR",
        conflicts_with = "kubeconfig"
    )]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig to reach the API server. Default: in-cluster configuration, else
    /// $KUBECONFIG or ~/.kube/config.
    #[arg(long, help_heading = "Kubernetes", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The cgroup v2 directory whose processes are load-balanced at the socket layer.
    /// Default: the root of the cgroup2 mount.
    #[arg(long, help_heading = "eBPF", value_name = "PATH")]
    pub cgroup_path: Option<PathBuf>,
    /// Where maps and program links are pinned, on a bpffs.
    #[arg(long, help_heading = "eBPF", value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// This node's name (topology, internalTrafficPolicy). Default: $NODE_NAME, else
    /// the hostname.
    #[arg(long, help_heading = "Kubernetes", env = "NODE_NAME")]
    pub hostname_override: Option<String>,
    /// How often kube-proxy's informers re-deliver their cache. Accepted for
    /// compatibility: the watches here are event-driven, and the full resync every
    /// `--sync-period` already re-applies the whole state. More than 0.
    #[arg(long, help_heading = "Kubernetes", value_name = "DURATION",
          value_parser = config_sync_period, default_value = "15m")]
    pub config_sync_period: Duration,
    /// Remove everything this agent pinned (detaching its programs) and exit.
    #[arg(long, help_heading = "Misc")]
    pub cleanup: bool,
    /// The data plane: `ebpf` (socket-level ClusterIPs, tc NodePorts with their own
    /// connection tracking) or `ipvs` (kube-proxy's IPVS mode; ClusterIP, ExternalIP
    /// and LoadBalancer IPs served on the node so far, NodePorts not yet).
    #[arg(long, help_heading = "Networking", value_enum, default_value_t = ProxyMode::Ebpf)]
    pub proxy_mode: ProxyMode,
    /// The IPVS scheduler of every virtual server (`--proxy-mode=ipvs`).
    #[arg(long, help_heading = "IPVS", default_value = crate::dataplane::ipvs::DEFAULT_SCHEDULER,
          value_parser = clap::builder::PossibleValuesParser::new(IPVS_SCHEDULERS))]
    pub ipvs_scheduler: String,
    /// With `--proxy-mode=ipvs`, the full resync interval, in place of `--sync-period`.
    /// As in kube-proxy, the `--ipvs-*-sync-period` flags count only in IPVS mode and
    /// only when given (its other modes take `--iptables-*-sync-period`; ours
    /// `--sync-period` and `--min-sync-period`). Default: `--sync-period` (30s).
    /// A duration (`30s`, `1m`) or seconds.
    #[arg(long, help_heading = "IPVS", value_name = "DURATION", value_parser = sync_period)]
    pub ipvs_sync_period: Option<Duration>,
    /// With `--proxy-mode=ipvs`, the minimum time between the starts of two syncs, in
    /// place of `--min-sync-period` (0: each change at once; at most the resync
    /// period). Default: `--min-sync-period` (0.05 s; kube-proxy's is 1 s).
    #[arg(long, help_heading = "IPVS", value_name = "DURATION", value_parser = min_sync_period)]
    pub ipvs_min_sync_period: Option<Duration>,
    /// IPVS virtual servers whose address is inside one of these CIDRs
    /// (comma-separated) are someone else's: never adopted, changed or removed, also
    /// by `--cleanup` and by the eBPF mode's removal of the IPVS mode's leftovers.
    #[arg(long, help_heading = "IPVS", value_name = "CIDRS", value_parser = cidr_list, default_value = "",
          hide_default_value = true)]
    pub ipvs_exclude_cidrs: CidrList,
    /// Strict ARP (`net.ipv4.conf.all.arp_ignore=1`, `arp_announce=2`): the node answers
    /// ARP only for addresses of the interface asked, so never for the VIPs on
    /// kube-ipvs0 (MetalLB and kube-vip in L2 mode need it). IPVS mode.
    #[arg(long, help_heading = "IPVS")]
    pub ipvs_strict_arp: bool,
    /// Idle timeout of IPVS TCP connections (`ipvsadm --set`), whole seconds; 0 leaves
    /// the kernel's (900s unless changed). IPVS mode.
    #[arg(long, help_heading = "IPVS", value_name = "DURATION", value_parser = ipvs_timeout, default_value = "0")]
    pub ipvs_tcp_timeout: Duration,
    /// Timeout of IPVS TCP connections after a FIN, whole seconds; 0 leaves the
    /// kernel's (120s unless changed). IPVS mode.
    #[arg(long, help_heading = "IPVS", value_name = "DURATION", value_parser = ipvs_timeout, default_value = "0")]
    pub ipvs_tcpfin_timeout: Duration,
    /// Idle timeout of IPVS UDP "connections", whole seconds; 0 leaves the kernel's
    /// (300s unless changed). IPVS mode.
    #[arg(long, help_heading = "IPVS", value_name = "DURATION", value_parser = ipvs_timeout, default_value = "0")]
    pub ipvs_udp_timeout: Duration,
    /// The pods' address ranges, comma-separated, at most one per family. In IPVS mode
    /// connections to a ClusterIP from outside them are masqueraded. Not used by the
    /// eBPF mode.
    #[arg(long, help_heading = "Networking", value_name = "CIDRS", value_parser = cluster_cidrs, default_value = "",
          hide_default_value = true)]
    pub cluster_cidr: CidrList,
    /// Masquerade (SNAT) every connection to a ClusterIP (IPVS mode; some CNI plugins
    /// need it). No effect in the eBPF mode, whose ClusterIPs are translated at the
    /// socket, with no NAT to masquerade.
    #[arg(long, help_heading = "Networking")]
    pub masquerade_all: bool,
    /// kube-proxy's `--bind-address`: an address other than `0.0.0.0` or `::` is this
    /// node's primary address of its family (taken before the Node's InternalIPs for
    /// `--nodeport-addresses=primary`), as kube-proxy derives its node IP from it.
    #[arg(long, help_heading = "Networking", value_name = "IP", value_parser = ip_address,
          default_value = "0.0.0.0")]
    pub bind_address: std::net::IpAddr,
    /// How traffic from this cluster's pods is told from outside traffic (what the IPVS
    /// mode does not masquerade): `ClusterCIDR`, the `--cluster-cidr` ranges, is the
    /// one implemented; kube-proxy's other modes are refused.
    #[arg(long, help_heading = "Networking", value_name = "MODE",
          value_parser = detect_local_mode, default_value = "ClusterCIDR")]
    pub detect_local_mode: DetectLocalMode,
    /// Liberal TCP tracking (`net.netfilter.nf_conntrack_tcp_be_liberal=1`):
    /// out-of-window segments are not INVALID, so none escapes NAT to reset the
    /// connection (kubernetes issue 74839), and the rule dropping INVALID packets is
    /// left out, as in kube-proxy. IPVS mode. No effect in the eBPF mode: none of its
    /// connections goes through netfilter's NAT (ClusterIPs are translated at the
    /// socket, NodePorts by its own connection tracking, which has no such reset).
    #[arg(long, help_heading = "Conntrack")]
    pub conntrack_tcp_be_liberal: bool,
    /// `net.netfilter.nf_conntrack_tcp_timeout_close_wait`, as kube-proxy sets it
    /// (whole seconds; 0 leaves the kernel's). IPVS mode: the eBPF mode's connections
    /// do not go through netfilter's NAT, so it leaves the host's sysctls alone.
    #[arg(long, help_heading = "Conntrack", value_name = "DURATION",
          value_parser = sysctl_timeout, default_value = "1h")]
    pub conntrack_tcp_timeout_close_wait: Duration,
    /// Where `/metrics` and `/proxyMode` are served (port 0: any free port).
    #[arg(
        long,
        help_heading = "Observability",
        default_value = "127.0.0.1:10249"
    )]
    pub metrics_bind_address: SocketAddr,
    /// Where `/healthz` and `/livez` are served (port 0: any free port).
    #[arg(long, help_heading = "Observability", default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: SocketAddr,
    /// Log verbosity, kube-proxy's `-v`: 0-1 info, 2-3 debug, 4 and more trace (for
    /// this agent's own logs; libraries stay at info). `RUST_LOG`, when set, wins.
    #[arg(
        short = 'v',
        long = "v",
        help_heading = "Observability",
        value_name = "LEVEL",
        default_value_t = 0
    )]
    pub v: u8,
    /// Full resync interval (also repairs drift); a change left unapplied for twice
    /// this long makes /healthz answer 503.
    #[arg(long, help_heading = "Networking", value_parser = positive_secs, default_value = "30")]
    pub sync_period: Duration,
    /// Minimum time between the starts of two syncs; changes arriving meanwhile are
    /// coalesced into one sync. At most `--sync-period`.
    #[arg(long, help_heading = "Networking", value_parser = humantime_secs, default_value = "0.05")]
    pub min_sync_period: Duration,
    /// Capacity of the frontends map (service ports x VIPs).
    #[arg(long, help_heading = "eBPF", default_value_t = proxy_common::sizes::FRONTENDS)]
    pub max_frontends: u32,
    /// Capacity of the backend slot map (endpoints summed over services).
    #[arg(long, help_heading = "eBPF", default_value_t = proxy_common::sizes::SLOTS)]
    pub max_slots: u32,
    /// Capacity of the backends map (distinct endpoints).
    #[arg(long, help_heading = "eBPF", default_value_t = proxy_common::sizes::BACKENDS)]
    pub max_backends: u32,
    /// Capacity of the ClientIP affinity map (LRU).
    #[arg(long, help_heading = "eBPF", default_value_t = proxy_common::sizes::AFFINITY)]
    pub max_affinity: u32,
    /// Capacity of the reverse socket map (LRU).
    #[arg(long, help_heading = "eBPF", default_value_t = proxy_common::sizes::REV_SOCK)]
    pub max_rev_sock: u32,
    /// Where NodePorts are served: comma-separated CIDRs (every local address inside
    /// them), `primary` (the node's primary address of each family), or `none` (no
    /// NodePorts, no tc programs on external interfaces). Loopback addresses only when a
    /// range names them.
    #[arg(long, help_heading = "Networking", default_value = "primary")]
    pub nodeport_addresses: NodePortAddresses,
    /// Pod-facing interfaces that also get the tc ingress program (hairpin, pods
    /// outside the cgroup, replies of local backends); names, or prefixes ending in
    /// `*`, comma-separated.
    #[arg(long, help_heading = "eBPF", value_delimiter = ',')]
    pub pod_interfaces: Vec<String>,
    /// Where pod network namespaces are bind-mounted (CNI plugins and container
    /// runtimes pin them here): a connected UDP socket in one of them, balanced to a
    /// backend that leaves its service, is destroyed so that it reconnects (needs
    /// CAP_SYS_ADMIN to enter them; the agent's own namespace is always searched).
    #[arg(long, help_heading = "eBPF", default_value = crate::dataplane::ebpf::udp_sockets::DEFAULT_POD_NETNS_DIR)]
    pub pod_netns_dir: PathBuf,
    /// The eBPF programs' own debug logging (aya-log) into the agent's log, target
    /// `proxy_ebpf`. Off by default, and then free: the statements are verified away.
    #[arg(long, help_heading = "eBPF", value_enum, default_value = "off")]
    pub bpf_log_level: crate::dataplane::ebpf::log::BpfLogLevel,
    /// Assured flows the tc path tracks, overriding `--conntrack-max-per-core` and
    /// `--conntrack-min` (0: use them). Flows that are not assured yet have a table of
    /// their own (`--conntrack-unassured-max`).
    #[arg(long, help_heading = "Conntrack", default_value_t = 0)]
    pub conntrack_max: u32,
    /// Assured flows to track per CPU core (kube-proxy's flag); the table holds
    /// max(this × cores, `--conntrack-min`). 0: `--conntrack-min` alone.
    #[arg(long, help_heading = "Conntrack", default_value_t = 32_768)]
    pub conntrack_max_per_core: u32,
    /// The least number of assured flows to track, whatever the core count.
    #[arg(long, help_heading = "Conntrack", default_value_t = 131_072)]
    pub conntrack_min: u32,
    /// Flows not yet assured (handshake not proven, UDP not two-way) to track; the
    /// oldest are evicted to make room. 0: a quarter of the assured table.
    #[arg(long, help_heading = "Conntrack", default_value_t = 0)]
    pub conntrack_unassured_max: u32,
    /// Idle timeout of an established TCP flow on the tc path.
    #[arg(long, help_heading = "Conntrack", value_parser = duration, default_value = "24h")]
    pub conntrack_tcp_timeout_established: Duration,
    /// Idle timeout of a TCP flow whose handshake is not proven yet (netfilter's
    /// syn_sent/syn_recv).
    #[arg(long, help_heading = "Conntrack", value_parser = duration, default_value = "30s")]
    pub conntrack_tcp_timeout_opening: Duration,
    /// Idle timeout of a TCP flow after FIN or RST.
    #[arg(long, help_heading = "Conntrack", value_parser = duration, default_value = "30s")]
    pub conntrack_tcp_timeout_closing: Duration,
    /// Idle timeout of a UDP flow that is not assured (no reply yet, or no datagram
    /// from the client after it), as netfilter's nf_conntrack_udp_timeout.
    #[arg(long, help_heading = "Conntrack", value_parser = duration, default_value = "30s")]
    pub conntrack_udp_timeout: Duration,
    /// Idle timeout of an assured UDP flow, as netfilter's
    /// nf_conntrack_udp_timeout_stream.
    #[arg(long, help_heading = "Conntrack", value_parser = duration, default_value = "120s")]
    pub conntrack_udp_timeout_stream: Duration,
    /// How often expired connection-tracking entries are removed.
    #[arg(long, help_heading = "Conntrack", value_parser = duration, default_value = "10s")]
    pub conntrack_gc_interval: Duration,
    /// Source ports for SNAT when the client's own port is taken (`MIN-MAX`); keep it
    /// outside net.ipv4.ip_local_port_range.
    #[arg(long, help_heading = "eBPF", value_parser = port_range, default_value = "61000-65535")]
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

/// The command line with its `--config` file under it, and what to log about the file
/// once logging is set up (it depends on `-v`).
#[derive(Debug)]
pub struct Loaded {
    /// The settings.
    pub config: Config,
    /// INFO lines: how the file's `mode` was read, the flags that override the file,
    /// and the file's fields that have no meaning here.
    pub notes: Vec<String>,
}

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The command line itself (also `--help` and `--version`, which clap prints).
    #[error(transparent)]
    CommandLine(#[from] clap::Error),
    /// The file could not be read.
    #[error("reading the configuration file {path}: {source}")]
    Read {
        /// `--config`.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a configuration kube-proxy would take.
    #[error("the configuration file {path}: {source}")]
    File {
        /// `--config`.
        path: PathBuf,
        /// Why.
        source: FileError,
    },
    /// A value of the file that its flag refuses.
    #[error("the configuration file {path}: {source}")]
    Merge {
        /// `--config`.
        path: PathBuf,
        /// Why.
        source: MergeError,
    },
}

impl Config {
    /// Parses `args` (program name first) and, with `--config`, the file under them.
    pub fn load(args: &[OsString]) -> Result<Loaded, LoadError> {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let cmd = Config::command();
        let cli = cmd.clone().try_get_matches_from(args)?;
        let config = Config::from_arg_matches(&cli)?;
        let Some(path) = config.config.clone() else {
            return Ok(Loaded {
                config,
                notes: Vec::new(),
            });
        };
        let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?;
        let translation = file::decode(&text)
            .and_then(|f| f.translate())
            .map_err(|source| LoadError::File {
                path: path.clone(),
                source,
            })?;
        let (translation, notes) = merge::notes(&cli, translation);
        let merged = merge::file_args(&cmd, &cli, &translation)
            .and_then(|file_args| merge::merged(&cmd, args, file_args))
            .map_err(|source| LoadError::Merge {
                path: path.clone(),
                source,
            })?;
        let config = Config::from_arg_matches(&merged)?;
        Ok(Loaded { config, notes })
    }

    /// The log filter for `-v` (when `RUST_LOG` is not set): kube-proxy's levels, for
    /// this agent's own logs.
    pub fn log_filter(&self) -> String {
        let level = match self.v {
            0 | 1 => "info",
            2 | 3 => "debug",
            _ => "trace",
        };
        format!("info,proxy_agent={level}")
    }

    /// `proxy_ebpf=LEVEL` for `--bpf-log-level` other than off.
    pub fn bpf_log_directive(&self) -> Option<tracing_subscriber::filter::Directive> {
        use crate::dataplane::ebpf::log::BpfLogLevel::*;
        let level = match self.bpf_log_level {
            Off => return None,
            Error => "error",
            Warn => "warn",
            Info => "info",
            Debug => "debug",
            Trace => "trace",
        };
        format!("proxy_ebpf={level}").parse().ok()
    }

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

    /// The sync loop's periods in `--proxy-mode`: in IPVS mode `--ipvs-sync-period` and
    /// `--ipvs-min-sync-period` where given (kube-proxy's rule), else `--sync-period`
    /// and `--min-sync-period`. A minimum over the resync period is refused, as
    /// kube-proxy's validation does.
    pub fn timing(&self) -> anyhow::Result<Timing> {
        let ipvs = self.proxy_mode == ProxyMode::Ipvs;
        let (sync, sync_flag) = match self.ipvs_sync_period {
            Some(d) if ipvs => (d, "--ipvs-sync-period"),
            _ => (self.sync_period, "--sync-period"),
        };
        let (min, min_flag) = match self.ipvs_min_sync_period {
            Some(d) if ipvs => (d, "--ipvs-min-sync-period"),
            _ => (self.min_sync_period, "--min-sync-period"),
        };
        if min > sync {
            bail!(
                "{min_flag} ({min:?}) is longer than the resync period {sync_flag} ({sync:?}): \
                 lower {min_flag} or raise {sync_flag}"
            );
        }
        Ok(Timing {
            sync_period: sync,
            min_sync_period: min,
        })
    }

    /// The IPVS backend's settings.
    pub fn ipvs_options(&self) -> ipvs::Options {
        let given = |d: Duration| (!d.is_zero()).then_some(d);
        ipvs::Options {
            scheduler: self.ipvs_scheduler.clone(),
            exclude_cidrs: self.ipvs_exclude_cidrs.0.clone(),
            strict_arp: self.ipvs_strict_arp,
            timeouts: ipvs::Timeouts {
                tcp: given(self.ipvs_tcp_timeout),
                tcp_fin: given(self.ipvs_tcpfin_timeout),
                udp: given(self.ipvs_udp_timeout),
            },
            rules: ipvs::RuleOptions {
                cluster_cidrs: self.cluster_cidr.0.clone(),
                masquerade_all: self.masquerade_all,
                drop_invalid: !self.conntrack_tcp_be_liberal,
                ..ipvs::RuleOptions::default()
            },
            conntrack_tcp_close_wait: given(self.conntrack_tcp_timeout_close_wait),
            ..ipvs::Options::default()
        }
    }

    /// The flags given that do nothing in `--proxy-mode`, for one line in the log.
    /// (`--ipvs-exclude-cidrs` is not one: the eBPF mode's removal of IPVS leftovers
    /// spares them.)
    pub fn ineffective_flags(&self) -> Vec<&'static str> {
        let flags = match self.proxy_mode {
            ProxyMode::Ebpf => vec![
                (
                    self.ipvs_scheduler != ipvs::DEFAULT_SCHEDULER,
                    "--ipvs-scheduler",
                ),
                (self.ipvs_sync_period.is_some(), "--ipvs-sync-period"),
                (
                    self.ipvs_min_sync_period.is_some(),
                    "--ipvs-min-sync-period",
                ),
                (self.ipvs_strict_arp, "--ipvs-strict-arp"),
                (!self.ipvs_tcp_timeout.is_zero(), "--ipvs-tcp-timeout"),
                (!self.ipvs_tcpfin_timeout.is_zero(), "--ipvs-tcpfin-timeout"),
                (!self.ipvs_udp_timeout.is_zero(), "--ipvs-udp-timeout"),
                (!self.cluster_cidr.0.is_empty(), "--cluster-cidr"),
                (self.masquerade_all, "--masquerade-all"),
                (self.conntrack_tcp_be_liberal, "--conntrack-tcp-be-liberal"),
                (
                    self.conntrack_tcp_timeout_close_wait != Duration::from_secs(3600),
                    "--conntrack-tcp-timeout-close-wait",
                ),
            ],
            ProxyMode::Ipvs => vec![
                (self.cgroup_path.is_some(), "--cgroup-path"),
                (!self.pod_interfaces.is_empty(), "--pod-interfaces"),
                (
                    self.pod_netns_dir.as_os_str()
                        != crate::dataplane::ebpf::udp_sockets::DEFAULT_POD_NETNS_DIR,
                    "--pod-netns-dir",
                ),
                (
                    self.bpf_log_level != crate::dataplane::ebpf::log::BpfLogLevel::Off,
                    "--bpf-log-level",
                ),
            ],
        };
        flags
            .into_iter()
            .filter_map(|(given, name)| given.then_some(name))
            .collect()
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
            pod_netns_dir: self.pod_netns_dir.clone(),
            bpf_log: self.bpf_log_level,
        }
    }
}

#[cfg(test)]
mod load_tests;
#[cfg(test)]
mod tests;
