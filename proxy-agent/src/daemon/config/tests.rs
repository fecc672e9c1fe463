//! The command line: kube-proxy's IPVS flags parsed, defaulted, refused, and turned
//! into the settings the daemon hands on.

use std::time::Duration;

use clap::Parser as _;
use ipnetwork::IpNetwork;

use super::*;

fn parse(args: &[&str]) -> Result<Config, clap::Error> {
    let mut all = vec!["proxy-agent", "--manifests", "/nonexistent"];
    all.extend_from_slice(args);
    Config::try_parse_from(all)
}

fn config(args: &[&str]) -> Config {
    parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The error clap prints for `args`.
fn refusal(args: &[&str]) -> String {
    match parse(args) {
        Ok(_) => panic!("{args:?} accepted"),
        Err(e) => e.to_string(),
    }
}

fn cidr(s: &str) -> IpNetwork {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn without_ipvs_flags_the_options_are_kube_proxys_defaults() {
    let cfg = config(&["--proxy-mode", "ipvs"]);
    assert_eq!(cfg.ipvs_options(), ipvs::Options::default());
    let o = cfg.ipvs_options();
    assert_eq!(
        (o.scheduler.as_str(), o.link.as_str()),
        ("rr", "kube-ipvs0")
    );
    assert!(
        o.rules.drop_invalid,
        "the INVALID drop rule is kube-proxy's default"
    );
    assert_eq!(o.timeouts, ipvs::Timeouts::default());
    let t = cfg.timing().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (t.sync_period, t.min_sync_period),
        (Duration::from_secs(30), Duration::from_millis(50))
    );
    assert!(cfg.ineffective_flags().is_empty());
    assert!(config(&[]).ineffective_flags().is_empty());
}

#[test]
fn every_ipvs_flag_reaches_the_ipvs_options() {
    let cfg = config(&[
        "--proxy-mode=ipvs",
        "--ipvs-scheduler=wlc",
        "--ipvs-exclude-cidrs=192.168.50.0/24, fd00:ab::/32",
        "--ipvs-strict-arp",
        "--ipvs-tcp-timeout=15m",
        "--ipvs-tcpfin-timeout=0",
        "--ipvs-udp-timeout=45",
        "--cluster-cidr=10.244.0.0/16,fd00:244::/56",
        "--masquerade-all",
        "--conntrack-tcp-be-liberal",
    ]);
    let o = cfg.ipvs_options();
    assert_eq!(o.scheduler, "wlc");
    assert_eq!(
        o.exclude_cidrs,
        [cidr("192.168.50.0/24"), cidr("fd00:ab::/32")]
    );
    assert!(o.strict_arp);
    assert_eq!(
        o.timeouts,
        ipvs::Timeouts {
            tcp: Some(Duration::from_secs(900)),
            tcp_fin: None,
            udp: Some(Duration::from_secs(45)),
        }
    );
    assert_eq!(
        o.rules,
        ipvs::RuleOptions {
            cluster_cidrs: vec![cidr("10.244.0.0/16"), cidr("fd00:244::/56")],
            masquerade_all: true,
            drop_invalid: false,
            count_invalid: false,
        }
    );
    assert!(cfg.ineffective_flags().is_empty(), "all count in IPVS mode");
}

#[test]
fn an_invalid_cidr_is_refused_naming_it_and_why() {
    let e = refusal(&["--ipvs-exclude-cidrs", "10.0.0.0/8,10.0.0.0/33"]);
    assert!(
        e.contains("invalid value '10.0.0.0/8,10.0.0.0/33' for '--ipvs-exclude-cidrs <CIDRS>'")
            && e.contains("\"10.0.0.0/33\" is not a CIDR"),
        "{e}"
    );
    let e = refusal(&["--ipvs-exclude-cidrs", "10.0.0.1"]);
    assert!(
        e.contains("\"10.0.0.1\" is not a CIDR: it has no /prefix length"),
        "{e}"
    );
    let e = refusal(&["--cluster-cidr", "pods"]);
    assert!(
        e.contains("'--cluster-cidr <CIDRS>'") && e.contains("\"pods\""),
        "{e}"
    );
    // Host bits are cleared, as Go's ParseCIDR does; an empty value is no CIDR.
    let cfg = config(&["--ipvs-exclude-cidrs", "10.1.2.3/8,"]);
    assert_eq!(cfg.ipvs_exclude_cidrs.0, [cidr("10.0.0.0/8")]);
    assert!(
        config(&["--ipvs-exclude-cidrs="])
            .ipvs_exclude_cidrs
            .0
            .is_empty()
    );
}

#[test]
fn the_cluster_cidr_takes_one_range_per_family() {
    let e = refusal(&["--cluster-cidr", "10.244.0.0/16,10.245.0.0/16"]);
    assert!(
        e.contains("at most one range per family")
            && e.contains("10.244.0.0/16 and 10.245.0.0/16 are both IPv4"),
        "{e}"
    );
    let cfg = config(&["--cluster-cidr", "fd00:244::/56"]);
    assert_eq!(cfg.cluster_cidr.0, [cidr("fd00:244::/56")]);
}

#[test]
fn ipvs_timeouts_are_whole_seconds_within_the_kernels_limit() {
    let cfg = config(&["--ipvs-tcp-timeout", "1h30m", "--ipvs-udp-timeout", "500"]);
    assert_eq!(cfg.ipvs_tcp_timeout, Duration::from_secs(5400));
    assert_eq!(cfg.ipvs_udp_timeout, Duration::from_secs(500));
    let e = refusal(&["--ipvs-tcpfin-timeout", "1500ms"]);
    assert!(
        e.contains("\"1500ms\" is not a whole number of seconds"),
        "{e}"
    );
    let e = refusal(&["--ipvs-udp-timeout", "2147484"]);
    assert!(e.contains("over the kernel's limit of 2147483 s"), "{e}");
    let e = refusal(&["--ipvs-tcp-timeout=-5s"]);
    assert!(e.contains("'--ipvs-tcp-timeout <DURATION>'"), "{e}");
    let e = refusal(&["--ipvs-tcp-timeout", "soon"]);
    assert!(
        e.contains("\"soon\" is not a duration like 500ms, 30s or 1m"),
        "{e}"
    );
}

#[test]
fn the_ipvs_sync_periods_count_only_in_ipvs_mode_and_only_when_given() {
    let both = [
        "--sync-period=10",
        "--min-sync-period=0.5",
        "--ipvs-sync-period=1m",
        "--ipvs-min-sync-period=2s",
    ];
    let timing = |mode: &str, args: &[&str]| {
        let mut all = vec!["--proxy-mode", mode];
        all.extend_from_slice(args);
        let t = config(&all).timing().unwrap_or_else(|e| panic!("{e}"));
        (t.sync_period, t.min_sync_period)
    };
    let secs = Duration::from_secs;
    assert_eq!(timing("ipvs", &both), (secs(60), secs(2)));
    assert_eq!(
        timing("ebpf", &both),
        (secs(10), Duration::from_millis(500))
    );
    // Only the minimum given: the resync period stays --sync-period's.
    assert_eq!(
        timing("ipvs", &["--sync-period=10", "--ipvs-min-sync-period=0"]),
        (secs(10), Duration::ZERO)
    );
    let ebpf = config(&both);
    assert_eq!(
        ebpf.ineffective_flags(),
        ["--ipvs-sync-period", "--ipvs-min-sync-period"]
    );
}

#[test]
fn a_minimum_sync_interval_over_the_resync_period_is_refused_naming_both_flags() {
    let cfg = config(&["--proxy-mode=ipvs", "--ipvs-min-sync-period=5m"]);
    let e = cfg
        .timing()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(
        e,
        "--ipvs-min-sync-period (300s) is longer than the resync period --sync-period (30s): \
         lower --ipvs-min-sync-period or raise --sync-period"
    );
    let e = refusal(&["--ipvs-sync-period", "50ms"]);
    assert!(e.contains("\"50ms\" is too short (at least 0.1 s)"), "{e}");
}

#[test]
fn in_the_ebpf_mode_ipvs_only_flags_are_named_as_doing_nothing() {
    let cfg = config(&[
        "--conntrack-tcp-be-liberal",
        "--masquerade-all",
        "--ipvs-exclude-cidrs=10.0.0.0/8",
        "--ipvs-strict-arp",
    ]);
    assert_eq!(
        cfg.ineffective_flags(),
        [
            "--ipvs-strict-arp",
            "--masquerade-all",
            "--conntrack-tcp-be-liberal"
        ]
    );
    let ipvs = config(&["--proxy-mode=ipvs", "--pod-interfaces=cbr0"]);
    assert_eq!(ipvs.ineffective_flags(), ["--pod-interfaces"]);
}

#[test]
fn modes_and_schedulers_are_refused_with_the_valid_choices() {
    let e = refusal(&["--proxy-mode", "iptables"]);
    assert!(
        e.contains("invalid value 'iptables' for '--proxy-mode <PROXY_MODE>'")
            && e.contains("[possible values: ebpf, ipvs]"),
        "{e}"
    );
    let e = refusal(&["--ipvs-scheduler", "fastest"]);
    assert!(
        e.contains("rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh"),
        "{e}"
    );
}
