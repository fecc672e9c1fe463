//! `--config` under the command line: precedence, refusals, and the new flags.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::file::tests::kubeadm_config_conf;
use super::*;

/// A file under the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "proxy-agent-config-{}-{}.conf",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        TempFile(path)
    }

    fn arg(&self) -> String {
        format!("--config={}", self.0.display())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn load(args: &[&str]) -> Result<Loaded, LoadError> {
    let mut all = vec!["proxy-agent"];
    all.extend_from_slice(args);
    let all: Vec<OsString> = all.into_iter().map(OsString::from).collect();
    Config::load(&all)
}

fn loaded(args: &[&str]) -> Loaded {
    load(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn refusal(args: &[&str]) -> String {
    match load(args) {
        Ok(l) => panic!("{args:?} accepted: {:?}", l.config),
        Err(e) => e.to_string(),
    }
}

fn with_type(body: &str) -> String {
    format!("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{body}")
}

fn cidr(s: &str) -> ipnetwork::IpNetwork {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn the_kubeadm_configmap_sets_what_it_says_and_leaves_the_rest_at_the_defaults() {
    let f = TempFile::new(&kubeadm_config_conf());
    let l = loaded(&[&f.arg()]);
    let c = &l.config;
    assert_eq!(c.proxy_mode, ProxyMode::Ipvs);
    assert_eq!(
        c.kubeconfig.as_deref(),
        Some(std::path::Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
    );
    assert_eq!(c.cluster_cidr.0, [cidr("10.244.0.0/16")]);
    assert_eq!(
        c.metrics_bind_address,
        SocketAddr::from(([0, 0, 0, 0], 10249))
    );
    assert!(c.ipvs_strict_arp);
    // Zero values in the file are kube-proxy's defaults, which are the flags'.
    let defaults = loaded(&["--proxy-mode=ipvs"]).config;
    assert_eq!(c.healthz_bind_address, defaults.healthz_bind_address);
    let periods = |c: &Config| c.timing().map(|t| (t.sync_period, t.min_sync_period)).ok();
    assert_eq!(periods(c), periods(&defaults));
    assert_eq!(c.conntrack_max_per_core, 32_768);
    assert_eq!(c.conntrack_min, 131_072);
    assert_eq!(c.config_sync_period, Duration::from_secs(900));
    assert_eq!(
        c.ipvs_options().conntrack_tcp_close_wait,
        Some(Duration::from_secs(3600))
    );
    assert_eq!(l.notes, Vec::<String>::new(), "nothing to say: mode ipvs");
}

#[test]
fn flags_on_the_command_line_override_the_file() {
    let f = TempFile::new(&kubeadm_config_conf());
    let l = loaded(&[
        "--metrics-bind-address=127.0.0.1:9999",
        &f.arg(),
        "--proxy-mode",
        "ebpf",
        "--cluster-cidr=10.100.0.0/16",
    ]);
    let c = &l.config;
    assert_eq!(c.proxy_mode, ProxyMode::Ebpf);
    assert_eq!(c.cluster_cidr.0, [cidr("10.100.0.0/16")]);
    assert_eq!(c.metrics_bind_address.port(), 9999);
    // Not on the command line: still the file's.
    assert!(c.ipvs_strict_arp);
    assert_eq!(
        l.notes,
        [
            "flags given on the command line override the configuration file: \
          --proxy-mode (mode), --metrics-bind-address (metricsBindAddress), \
          --cluster-cidr (clusterCIDR)"
        ]
    );
}

#[test]
fn an_iptables_or_default_mode_runs_the_ebpf_data_plane_and_says_so() {
    let f = TempFile::new(&with_type("mode: iptables\n"));
    let l = loaded(&[&f.arg()]);
    assert_eq!(l.config.proxy_mode, ProxyMode::Ebpf);
    assert_eq!(l.notes.len(), 1);
    assert!(
        l.notes[0].starts_with("mode iptables in the configuration file: serving with the eBPF"),
        "{:?}",
        l.notes
    );
}

#[test]
fn a_file_value_its_flag_refuses_is_an_error_naming_the_field_and_the_flag() {
    for (body, want) in [
        (
            "conntrack: {min: -1}\n",
            "conntrack.min: -1 is not in 0..=4294967295 (the value of --conntrack-min)",
        ),
        (
            "clusterCIDR: 10.244.0.0/16,10.245.0.0/16\n",
            "clusterCIDR: at most one range per family (one IPv4, one IPv6): 10.244.0.0/16 \
             and 10.245.0.0/16 are both IPv4 (the value of --cluster-cidr)",
        ),
        ("ipvs: {scheduler: fastest}\n", "ipvs.scheduler: "),
        (
            "bindAddress: node-a\n",
            "bindAddress: \"node-a\" is not an IP address (like 0.0.0.0, :: or 10.0.0.5) \
             (the value of --bind-address)",
        ),
        (
            "detectLocalMode: NodeCIDR\n",
            "detectLocalMode: NodeCIDR is kube-proxy's but not implemented here",
        ),
        ("healthzBindAddress: 0.0.0.0\n", "healthzBindAddress: "),
    ] {
        let f = TempFile::new(&with_type(body));
        let e = refusal(&[&f.arg()]);
        let prefix = format!("the configuration file {}: {want}", f.0.display());
        assert!(e.starts_with(&prefix), "{body}: {e}");
    }
}

#[test]
fn an_unknown_field_or_a_missing_file_is_an_error_naming_the_file() {
    let f = TempFile::new(&with_type("conntrack:\n  maxPerCorex: 1\n"));
    let e = refusal(&[&f.arg()]);
    assert!(
        e.starts_with(&format!(
            "the configuration file {}: conntrack.maxPerCorex: unknown field; expected",
            f.0.display()
        )),
        "{e}"
    );
    let e = refusal(&["--config=/nonexistent/config.conf"]);
    assert!(
        e.starts_with("reading the configuration file /nonexistent/config.conf: "),
        "{e}"
    );
}

#[test]
fn with_manifests_as_the_source_the_files_kubeconfig_is_set_aside() {
    let f = TempFile::new(&kubeadm_config_conf());
    let l = loaded(&["--manifests=/nonexistent", &f.arg()]);
    assert_eq!(l.config.kubeconfig, None);
    assert_eq!(
        l.notes,
        [
            "configuration file fields with no meaning for this proxy, ignored: \
          clientConnection.kubeconfig (--manifests is the source)"
        ]
    );
}

#[test]
fn verbosity_maps_to_tracing_levels_from_the_flag_or_the_file() {
    for (v, filter) in [
        ("0", "info,proxy_agent=info"),
        ("1", "info,proxy_agent=info"),
        ("2", "info,proxy_agent=debug"),
        ("3", "info,proxy_agent=debug"),
        ("4", "info,proxy_agent=trace"),
        ("9", "info,proxy_agent=trace"),
    ] {
        assert_eq!(loaded(&["-v", v]).config.log_filter(), filter, "-v {v}");
        assert_eq!(loaded(&[&format!("--v={v}")]).config.log_filter(), filter);
    }
    let f = TempFile::new(&with_type("logging: {verbosity: 2}\n"));
    assert_eq!(loaded(&[&f.arg()]).config.v, 2);
    assert_eq!(loaded(&[&f.arg(), "-v=5"]).config.v, 5);
    assert!(refusal(&["--v=loud"]).contains("'--v <LEVEL>'"));
}

#[test]
fn the_new_flags_have_kube_proxys_defaults_and_check_their_values() {
    let c = loaded(&[]).config;
    assert_eq!(c.config_sync_period, Duration::from_secs(15 * 60));
    assert_eq!(
        c.conntrack_tcp_timeout_close_wait,
        Duration::from_secs(3600)
    );
    assert_eq!(c.bind_address, IpAddr::from([0, 0, 0, 0]));
    assert_eq!(c.detect_local_mode, DetectLocalMode::ClusterCidr);
    assert_eq!(c.config, None);

    let c = loaded(&[
        "--proxy-mode=ipvs",
        "--config-sync-period=1m",
        "--conntrack-tcp-timeout-close-wait=0",
        "--bind-address=fd00::5",
        "--detect-local-mode=ClusterCIDR",
    ])
    .config;
    assert_eq!(c.config_sync_period, Duration::from_secs(60));
    assert_eq!(
        c.ipvs_options().conntrack_tcp_close_wait,
        None,
        "0: the kernel's"
    );
    assert_eq!(
        c.bind_address,
        "fd00::5"
            .parse::<IpAddr>()
            .unwrap_or_else(|e| panic!("{e}"))
    );

    for (args, want) in [
        (
            &["--config-sync-period=0"][..],
            "\"0\": must be greater than 0",
        ),
        (
            &["--conntrack-tcp-timeout-close-wait=1.5s"],
            "\"1.5s\" is not a whole number of seconds (the sysctl keeps seconds)",
        ),
        (&["--bind-address=0.0.0.0:80"], "is not an IP address"),
        (
            &["--detect-local-mode=BridgeInterface"],
            "BridgeInterface is kube-proxy's but not implemented here",
        ),
        (
            &["--detect-local-mode=Pods"],
            "\"Pods\" is not a mode (ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix)",
        ),
    ] {
        let e = refusal(args);
        assert!(e.contains(want), "{args:?}: {e}");
    }
}

#[test]
fn the_close_wait_timeout_is_an_ipvs_mode_setting() {
    let ebpf = loaded(&["--conntrack-tcp-timeout-close-wait=2h"]).config;
    assert_eq!(
        ebpf.ineffective_flags(),
        ["--conntrack-tcp-timeout-close-wait"]
    );
    let ipvs = loaded(&["--proxy-mode=ipvs", "--conntrack-tcp-timeout-close-wait=2h"]).config;
    assert_eq!(
        ipvs.ipvs_options().conntrack_tcp_close_wait,
        Some(Duration::from_secs(7200))
    );
    assert!(ipvs.ineffective_flags().is_empty());
}

#[test]
fn help_groups_the_flags_under_kube_proxys_headings() {
    use clap::CommandFactory as _;
    let help = Config::command().render_long_help().to_string();
    let mut at = Vec::new();
    for heading in [
        "Kubernetes:",
        "Networking:",
        "Conntrack:",
        "IPVS:",
        "eBPF:",
        "Observability:",
        "Misc:",
    ] {
        at.push(
            help.find(heading)
                .unwrap_or_else(|| panic!("no {heading} in\n{help}")),
        );
    }
    // Each flag under its heading: the next heading comes after it.
    let under = |flag: &str, heading: &str| {
        let h = help.find(heading).unwrap_or_default();
        let f = help.find(flag).unwrap_or_else(|| panic!("no {flag}"));
        let next = at
            .iter()
            .copied()
            .filter(|&a| a > h)
            .min()
            .unwrap_or(help.len());
        assert!(h < f && f < next, "{flag} is not under {heading}:\n{help}");
    };
    under("--conntrack-tcp-timeout-close-wait", "Conntrack:");
    under("--ipvs-scheduler", "IPVS:");
    under("--bind-address", "Networking:");
    under("--config-sync-period", "Kubernetes:");
    under("-v, --v <LEVEL>", "Observability:");
    under("--config <FILE>", "Misc:");
}
