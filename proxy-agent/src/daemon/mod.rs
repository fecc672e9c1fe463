//! The node daemon: wires a source, the translation, the reconciler over a data plane
//! backend and the observers, then runs the sync loop until SIGINT/SIGTERM.

pub mod config;
pub mod pipeline;
pub mod privileges;
pub mod schedule;
pub mod sync_loop;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use tracing::{info, warn};

pub use config::{Config, ProxyMode};

use crate::dataplane::Dataplane;
use crate::dataplane::ebpf::EbpfDataplane;
use crate::dataplane::ipvs::{self, IpvsDataplane};
use crate::error_text::chain;
use crate::observe::healthcheck::HealthCheckServers;
use crate::observe::http::Health;
use crate::observe::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::source::Source;
use crate::source::kubernetes::KubeSource;
use crate::source::manifests::ManifestSource;
use pipeline::Pipeline;

/// Runs the agent until SIGINT/SIGTERM. Pinned state stays behind on exit so traffic
/// keeps flowing until the next agent adopts it (use `--cleanup` to remove it).
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    if cfg.cleanup {
        return cleanup(&cfg);
    }
    // Before anything changes: too few capabilities fail here, naming the missing
    // one, rather than halfway through loading. A process whose capabilities cannot
    // be read is let through, to fail (or not) on its own.
    match privileges::check(cfg.proxy_mode) {
        Ok(()) => {}
        Err(e @ privileges::PrivilegeError::Missing { .. }) => return Err(e.into()),
        Err(e) => {
            warn!(error = %chain(&e), "capabilities not checked")
        }
    }
    // Refused before anything changes.
    cfg.timing()?;
    let ineffective = cfg.ineffective_flags();
    if !ineffective.is_empty() {
        info!(
            flags = %ineffective.join(" "),
            mode = ?cfg.proxy_mode,
            "flags given that have no effect in this --proxy-mode"
        );
    }
    let node_name = cfg.node_name()?;
    match &cfg.manifests {
        Some(dir) => {
            let source = ManifestSource::new(dir.clone()).map_err(|e| {
                let fix = e.fix().to_owned();
                anyhow::Error::new(e).context(crate::observe::errors::Advice {
                    problem: format!("watching {}", dir.display()),
                    fix,
                })
            })?;
            serve(&cfg, node_name, source).await
        }
        None => {
            let (client, server) = kube_client(&cfg).await?;
            let source = KubeSource::start(client, &server, &node_name);
            serve(&cfg, node_name, source).await
        }
    }
}

/// Loads the data plane `--proxy-mode` names, then serves `source` with it.
async fn serve(cfg: &Config, node_name: String, source: impl Source) -> anyhow::Result<()> {
    match cfg.proxy_mode {
        ProxyMode::Ebpf => {
            let cgroup = match &cfg.cgroup_path {
                Some(p) => p.clone(),
                None => cgroup2_root().context("finding the cgroup2 mount (pass --cgroup-path)")?,
            };
            // IPVS would still answer for the VIPs on kube-ipvs0: its state goes. A
            // failure to look is no reason not to serve.
            if let Err(e) = cleanup_ipvs(&cfg.ipvs_exclude_cidrs.0) {
                warn!(error = %chain(e.as_ref()), "could not remove the IPVS mode's leftovers");
            }
            let dataplane = EbpfDataplane::load(&cfg.ebpf_config(cgroup))
                .context("loading the eBPF data plane")?;
            serve_with(cfg, node_name, source, dataplane).await
        }
        ProxyMode::Ipvs => {
            // The eBPF data plane would still answer for the services: its pins go.
            let removed = crate::dataplane::ebpf::cleanup(&cfg.bpffs).with_context(|| {
                format!(
                    "removing the eBPF data plane's pins under {}",
                    cfg.bpffs.display()
                )
            })?;
            if !removed.is_empty() {
                info!(
                    bpffs = %cfg.bpffs.display(),
                    maps = removed.maps,
                    links = removed.cgroup_links + removed.tc_links,
                    "removed the eBPF data plane's pins"
                );
            }
            let options = cfg.ipvs_options();
            let dataplane = IpvsDataplane::open(&options).context("opening the IPVS data plane")?;
            info!(scheduler = %options.scheduler, link = %options.link, "IPVS data plane opened");
            serve_with(cfg, node_name, source, dataplane).await
        }
    }
}

/// Starts the observers and runs the loop over `source` and `dataplane`.
async fn serve_with<D: Dataplane>(
    cfg: &Config,
    node_name: String,
    mut source: impl Source,
    dataplane: D,
) -> anyhow::Result<()> {
    let timing = cfg.timing()?;
    let metrics = Metrics::new(|r| dataplane.register_metrics(r));
    let reconciler = Reconciler::new(dataplane).context("reading the programmed state")?;
    let health = Health::new(timing.sync_period * 2);
    let observers = crate::observe::runtime::start().context("starting the observers' runtime")?;
    crate::observe::http::serve(
        &observers,
        reconciler.dataplane().mode(),
        cfg.metrics_bind_address,
        cfg.healthz_bind_address,
        Arc::clone(&metrics),
        Arc::clone(&health),
    )
    .context("starting the metrics and health servers")?;
    // kube-proxy serves health check ports on every address; so do we (dual-stack).
    let health_checks = {
        let health = Arc::clone(&health);
        HealthCheckServers::new(
            std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            move || health.is_healthy(),
        )
        .on(observers)
    };
    let mut pipeline = Pipeline::new(
        node_name.clone(),
        cfg.nodeport_addresses.clone(),
        reconciler,
        health_checks,
        Arc::clone(&metrics),
        Arc::clone(&health),
    )
    .with_bind_address(cfg.bind_address);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    };
    info!(source = %source.describe(), node = %node_name, "agent running");
    sync_loop::run(
        &mut source,
        &mut pipeline,
        timing,
        &metrics,
        &health,
        shutdown,
    )
    .await;
    Ok(())
}

/// `--cleanup`: removes what either mode left behind, whatever `--proxy-mode` says,
/// and prints what went (on stdout, for the operator who ran it).
fn cleanup(cfg: &Config) -> anyhow::Result<()> {
    let pins = crate::dataplane::ebpf::cleanup(&cfg.bpffs)
        .with_context(|| format!("removing pins under {}", cfg.bpffs.display()))?;
    let ipvs = cleanup_ipvs(&cfg.ipvs_exclude_cidrs.0)?;
    println!("{}", cleanup_summary(&cfg.bpffs, &pins, &ipvs));
    Ok(())
}

/// The line `--cleanup` prints.
fn cleanup_summary(
    bpffs: &std::path::Path,
    pins: &crate::dataplane::ebpf::bpffs::Removed,
    ipvs: &ipvs::cleanup::Removed,
) -> String {
    if pins.is_empty() && ipvs.is_empty() {
        return format!(
            "cleanup: nothing to remove (no pins under {}, no IPVS state)",
            bpffs.display()
        );
    }
    let rules = match (ipvs.rules_v4, ipvs.rules_v6) {
        (true, true) => "IPv4 and IPv6",
        (true, false) => "IPv4",
        (false, true) => "IPv6",
        (false, false) => "no",
    };
    format!(
        "cleanup: removed {} map pins, {} program links ({} cgroup, {} tc) and {} directories \
         from {}; {} IPVS virtual servers, {rules} iptables rules, {} ipsets{}",
        pins.maps,
        pins.cgroup_links + pins.tc_links,
        pins.cgroup_links,
        pins.tc_links,
        pins.dirs,
        bpffs.display(),
        ipvs.virtual_servers,
        ipvs.sets.len(),
        if ipvs.link {
            ", the kube-ipvs0 interface"
        } else {
            ""
        },
    )
}

/// Removes what the IPVS mode left (see [`ipvs::cleanup`]) but the virtual servers
/// inside `exclude`, saying what it removed.
fn cleanup_ipvs(exclude: &[ipnetwork::IpNetwork]) -> anyhow::Result<ipvs::cleanup::Removed> {
    let link = ipvs::Options::default().link;
    let removed = ipvs::cleanup::cleanup(&link, exclude)
        .context("removing the IPVS mode's virtual servers, netfilter rules, sets and link")?;
    if !removed.is_empty() {
        info!(
            virtual_servers = removed.virtual_servers,
            rules_v4 = removed.rules_v4,
            rules_v6 = removed.rules_v6,
            invalid_counter = removed.invalid_counter,
            sets = removed.sets.len(),
            link = removed.link,
            "removed the IPVS mode's state"
        );
    }
    Ok(removed)
}

/// The client, and the URL of the API server it talks to (for error messages).
async fn kube_client(cfg: &Config) -> anyhow::Result<(kube::Client, String)> {
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
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)
        .with_context(|| format!("building the Kubernetes client for {server}"))?;
    Ok((client, server))
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
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Before logging: -v (on the command line or in the file) sets its level.
    let loaded = match Config::load(&args) {
        Ok(loaded) => loaded,
        Err(config::LoadError::CommandLine(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    let cfg = loaded.config;
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cfg.log_filter()));
    // Asking for the programs' log is asking to see it, whatever the filter says.
    if let Some(d) = cfg.bpf_log_directive() {
        filter = filter.add_directive(d);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    for note in &loaded.notes {
        info!("{note}");
    }
    // One thread for the sources, the loop and the sync (a change reaches the maps
    // without crossing threads); the observers have a runtime of their own.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(cfg))
}
