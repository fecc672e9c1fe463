//! The file as kubeadm writes it, strict decoding, and each field's flag.

use std::time::Duration;

use super::*;

/// The `config.conf` body of the kubeadm-style ConfigMap fixture.
pub(in crate::daemon::config) fn kubeadm_config_conf() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/kube-proxy-configmap.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let cm: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    cm["data"]["config.conf"]
        .as_str()
        .unwrap_or_else(|| panic!("{path} has no data.\"config.conf\""))
        .to_owned()
}

/// A minimal file with `body` (YAML at the top level) after its type.
fn file(body: &str) -> String {
    format!("apiVersion: {API_VERSION}\nkind: {KIND}\n{body}")
}

fn translate(body: &str) -> Translation {
    decode(&file(body))
        .and_then(|c| c.translate())
        .unwrap_or_else(|e| panic!("{body}: {e}"))
}

fn refusal(text: &str) -> String {
    match decode(text).and_then(|c| c.translate()) {
        Ok(t) => panic!("{text} accepted: {t:?}"),
        Err(e) => e.to_string(),
    }
}

/// `(field, --flag=value)` of each flag, for comparing.
fn flags(t: &Translation) -> Vec<(&'static str, String)> {
    t.flags
        .iter()
        .map(|f| {
            let arg = match &f.value {
                Some(v) => format!("--{}={v}", f.flag),
                None => format!("--{}", f.flag),
            };
            (f.field, arg)
        })
        .collect()
}

#[test]
fn the_kubeadm_configmap_decodes_and_only_its_set_fields_become_flags() {
    let t = decode(&kubeadm_config_conf())
        .and_then(|c| c.translate())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        flags(&t),
        [
            ("mode", "--proxy-mode=ipvs".to_owned()),
            (
                "clientConnection.kubeconfig",
                "--kubeconfig=/var/lib/kube-proxy/kubeconfig.conf".to_owned()
            ),
            ("bindAddress", "--bind-address=0.0.0.0".to_owned()),
            (
                "metricsBindAddress",
                "--metrics-bind-address=0.0.0.0:10249".to_owned()
            ),
            ("clusterCIDR", "--cluster-cidr=10.244.0.0/16".to_owned()),
            ("ipvs.strictARP", "--ipvs-strict-arp".to_owned()),
        ]
    );
    // Every other field is at its zero value: nothing to say about it.
    assert_eq!(t.ignored, Vec::<String>::new());
    assert_eq!(t.mode_note, None);
}

#[test]
fn an_unknown_field_is_an_error_naming_its_path() {
    let e = refusal(&file("conntrack:\n  maxPerCorex: 1\n"));
    assert_eq!(
        e,
        "conntrack.maxPerCorex: unknown field; expected one of `maxPerCore`, `min`, \
         `tcpEstablishedTimeout`, `tcpCloseWaitTimeout`, `tcpBeLiberal`, `udpTimeout`, \
         `udpStreamTimeout` at line 4 column 3"
    );
    for (body, path, name) in [
        ("conntrack:\n  maxPerCorex: 1\n", "conntrack", "maxPerCorex"),
        ("ipvs:\n  schedular: rr\n", "ipvs", "schedular"),
        ("clusterCidr: 10.0.0.0/8\n", "", "clusterCidr"),
        ("detectLocal:\n  bridge: cbr0\n", "detectLocal", "bridge"),
        (
            "clientConnection:\n  kubeConfig: /x\n",
            "clientConnection",
            "kubeConfig",
        ),
        ("logging:\n  level: 2\n", "logging", "level"),
    ] {
        let e = refusal(&file(body));
        let want = if path.is_empty() {
            format!("{name}: unknown field; expected one of `apiVersion`, `kind`, ")
        } else {
            format!("{path}.{name}: unknown field; expected ")
        };
        assert!(e.starts_with(&want), "{body}: {e}");
    }
}

#[test]
fn a_value_of_the_wrong_type_names_its_field() {
    for (body, path) in [
        ("conntrack:\n  min: lots\n", "conntrack.min"),
        (
            "conntrack:\n  tcpCloseWaitTimeout: 1 hour\n",
            "conntrack.tcpCloseWaitTimeout",
        ),
        ("ipvs:\n  strictARP: maybe\n", "ipvs.strictARP"),
        ("syncPeriod: -5s\n", "syncPeriod"),
        ("nodePortAddresses: 10.0.0.0/8\n", "nodePortAddresses"),
    ] {
        let e = refusal(&file(body));
        assert!(e.starts_with(&format!("{path}: ")), "{body}: {e}");
    }
}

#[test]
fn only_kube_proxys_api_version_and_kind_are_read() {
    let e = refusal("kind: KubeProxyConfiguration\n");
    assert_eq!(
        e,
        "apiVersion is \"\"; expected \"kubeproxy.config.k8s.io/v1alpha1\""
    );
    let e = refusal("apiVersion: kubeproxy.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n");
    assert!(
        e.starts_with("apiVersion is \"kubeproxy.config.k8s.io/v1beta1\""),
        "{e}"
    );
    let e = refusal(&format!(
        "apiVersion: {API_VERSION}\nkind: KubeletConfiguration\n"
    ));
    assert_eq!(
        e,
        "kind is \"KubeletConfiguration\"; expected \"KubeProxyConfiguration\""
    );
    let e = refusal("{ not yaml");
    assert!(!e.is_empty());
}

#[test]
fn kube_proxys_modes_map_onto_the_two_data_planes() {
    for (mode, flag, note) in [
        ("\"\"", "--proxy-mode=ebpf", true),
        ("iptables", "--proxy-mode=ebpf", true),
        ("nftables", "--proxy-mode=ebpf", true),
        ("ipvs", "--proxy-mode=ipvs", false),
    ] {
        let t = translate(&format!("mode: {mode}\n"));
        assert_eq!(flags(&t), [("mode", flag.to_owned())], "{mode}");
        assert_eq!(t.mode_note.is_some(), note, "{mode}");
        if let Some(n) = &t.mode_note {
            assert!(n.contains("serving with the eBPF data plane"), "{n}");
        }
    }
    // Absent: as "".
    assert!(translate("").mode_note.is_some());
    for bad in ["userspace", "kernelspace", "IPVS"] {
        let e = refusal(&file(&format!("mode: {bad}\n")));
        assert_eq!(
            e,
            format!(
                "mode: \"{bad}\" is not a kube-proxy mode on Linux (\"\" (the default), \
                 iptables, ipvs, nftables)"
            )
        );
    }
}

#[test]
fn every_field_with_a_meaning_becomes_its_flag() {
    let t = translate(
        "mode: ipvs
clientConnection: {kubeconfig: /etc/kp/kubeconfig}
logging: {verbosity: 4}
hostnameOverride: node-a
bindAddress: 10.0.0.5
healthzBindAddress: 0.0.0.0:10266
metricsBindAddress: 127.0.0.1:10259
clusterCIDR: 10.244.0.0/16,fd00:244::/56
nodePortAddresses: [10.0.0.0/8, fd00::/64]
detectLocalMode: ClusterCIDR
configSyncPeriod: 5m0s
syncPeriod: 1m0s
minSyncPeriod: 2s
conntrack:
  maxPerCore: 0
  min: 65536
  tcpEstablishedTimeout: 12h0m0s
  tcpCloseWaitTimeout: 30m0s
  tcpBeLiberal: true
  udpTimeout: 45s
  udpStreamTimeout: 3m0s
iptables: {masqueradeAll: true}
ipvs:
  scheduler: wlc
  excludeCIDRs: [192.168.50.0/24]
  strictARP: true
  syncPeriod: 45s
  minSyncPeriod: 500ms
  tcpTimeout: 15m0s
  tcpFinTimeout: 2m0s
  udpTimeout: 5m0s
",
    );
    let s = |v: &str| v.to_owned();
    assert_eq!(
        flags(&t),
        [
            ("mode", s("--proxy-mode=ipvs")),
            (
                "clientConnection.kubeconfig",
                s("--kubeconfig=/etc/kp/kubeconfig")
            ),
            ("logging.verbosity", s("--v=4")),
            ("hostnameOverride", s("--hostname-override=node-a")),
            ("bindAddress", s("--bind-address=10.0.0.5")),
            (
                "healthzBindAddress",
                s("--healthz-bind-address=0.0.0.0:10266")
            ),
            (
                "metricsBindAddress",
                s("--metrics-bind-address=127.0.0.1:10259")
            ),
            (
                "clusterCIDR",
                s("--cluster-cidr=10.244.0.0/16,fd00:244::/56")
            ),
            (
                "nodePortAddresses",
                s("--nodeport-addresses=10.0.0.0/8,fd00::/64")
            ),
            ("detectLocalMode", s("--detect-local-mode=ClusterCIDR")),
            ("configSyncPeriod", s("--config-sync-period=300")),
            ("syncPeriod", s("--sync-period=60")),
            ("minSyncPeriod", s("--min-sync-period=2")),
            ("conntrack.maxPerCore", s("--conntrack-max-per-core=0")),
            ("conntrack.min", s("--conntrack-min=65536")),
            (
                "conntrack.tcpEstablishedTimeout",
                s("--conntrack-tcp-timeout-established=43200")
            ),
            (
                "conntrack.tcpCloseWaitTimeout",
                s("--conntrack-tcp-timeout-close-wait=1800")
            ),
            ("conntrack.tcpBeLiberal", s("--conntrack-tcp-be-liberal")),
            ("conntrack.udpTimeout", s("--conntrack-udp-timeout=45")),
            (
                "conntrack.udpStreamTimeout",
                s("--conntrack-udp-timeout-stream=180")
            ),
            ("iptables.masqueradeAll", s("--masquerade-all")),
            ("ipvs.scheduler", s("--ipvs-scheduler=wlc")),
            (
                "ipvs.excludeCIDRs",
                s("--ipvs-exclude-cidrs=192.168.50.0/24")
            ),
            ("ipvs.strictARP", s("--ipvs-strict-arp")),
            ("ipvs.syncPeriod", s("--ipvs-sync-period=45")),
            ("ipvs.minSyncPeriod", s("--ipvs-min-sync-period=0.5")),
            ("ipvs.tcpTimeout", s("--ipvs-tcp-timeout=900")),
            ("ipvs.tcpFinTimeout", s("--ipvs-tcpfin-timeout=120")),
            ("ipvs.udpTimeout", s("--ipvs-udp-timeout=300")),
        ]
    );
    assert_eq!(t.ignored, Vec::<String>::new());
}

#[test]
fn the_sync_periods_and_masquerade_all_come_from_the_section_of_the_mode() {
    let sections = "iptables: {syncPeriod: 10s, minSyncPeriod: 1s, masqueradeAll: true}
nftables: {syncPeriod: 20s, minSyncPeriod: 2s, masqueradeAll: false}
";
    let iptables = translate(&format!("mode: iptables\n{sections}"));
    assert_eq!(
        flags(&iptables)[1..],
        [
            ("iptables.masqueradeAll", "--masquerade-all".to_owned()),
            ("iptables.syncPeriod", "--sync-period=10".to_owned()),
            ("iptables.minSyncPeriod", "--min-sync-period=1".to_owned()),
        ]
    );
    assert_eq!(
        iptables.ignored,
        ["nftables.syncPeriod", "nftables.minSyncPeriod"]
    );
    let nftables = translate(&format!("mode: nftables\n{sections}"));
    assert_eq!(
        flags(&nftables)[1..],
        [
            ("nftables.syncPeriod", "--sync-period=20".to_owned()),
            ("nftables.minSyncPeriod", "--min-sync-period=2".to_owned()),
        ]
    );
    assert_eq!(
        nftables.ignored,
        [
            "iptables.masqueradeAll",
            "iptables.syncPeriod",
            "iptables.minSyncPeriod"
        ]
    );
    // The IPVS mode reads iptables.masqueradeAll, as kube-proxy's IPVS proxier does.
    let ipvs = translate(&format!("mode: ipvs\n{sections}"));
    assert_eq!(
        flags(&ipvs)[1..],
        [("iptables.masqueradeAll", "--masquerade-all".to_owned())]
    );
}

#[test]
fn fields_with_no_meaning_here_are_named_once_each() {
    let t = translate(
        "featureGates: {SomeGate: true}
clientConnection: {qps: 50, burst: 100, contentType: application/json}
logging: {format: json, flushFrequency: 5s}
enableProfiling: true
showHiddenMetricsForVersion: \"1.30\"
detectLocal: {bridgeInterface: cbr0}
oomScoreAdj: -999
portRange: 30000-32767
iptables: {masqueradeBit: 14, localhostNodePorts: false}
winkernel: {networkName: vxlan0}
",
    );
    assert_eq!(
        t.ignored,
        [
            "clientConnection.contentType",
            "clientConnection.qps",
            "clientConnection.burst",
            "logging.format",
            "logging.flushFrequency",
            "enableProfiling",
            "showHiddenMetricsForVersion",
            "detectLocal.bridgeInterface",
            "iptables.masqueradeBit",
            "iptables.localhostNodePorts",
            "featureGates",
            "oomScoreAdj",
            "portRange",
            "winkernel",
        ]
    );
    assert_eq!(flags(&t), [("mode", "--proxy-mode=ebpf".to_owned())]);
}

#[test]
fn null_and_zero_mean_the_default_but_a_pointer_set_to_zero_is_applied() {
    let t = translate(
        "conntrack: {maxPerCore: null, min: 0, tcpCloseWaitTimeout: 0s, \
         tcpEstablishedTimeout: 0s, udpTimeout: 0s}
syncPeriod: 0s
configSyncPeriod: 0s
hostnameOverride: \"\"
nodePortAddresses: []
",
    );
    assert_eq!(
        flags(&t)[1..],
        [
            ("conntrack.min", "--conntrack-min=0".to_owned()),
            (
                "conntrack.tcpCloseWaitTimeout",
                "--conntrack-tcp-timeout-close-wait=0".to_owned()
            ),
        ]
    );
}

#[test]
fn go_durations_parse_as_metav1_duration_writes_them() {
    let ms = Duration::from_millis;
    for (text, want) in [
        ("0s", Some(Duration::ZERO)),
        ("0", Some(Duration::ZERO)),
        ("30s", Some(ms(30_000))),
        ("1m0s", Some(ms(60_000))),
        ("15m0s", Some(ms(900_000))),
        ("24h0m0s", Some(ms(86_400_000))),
        ("1h30m", Some(ms(5_400_000))),
        ("1.5h", Some(ms(5_400_000))),
        ("500ms", Some(ms(500))),
        ("1m30.5s", Some(ms(90_500))),
        ("2us", Some(Duration::from_micros(2))),
        ("", None),
        ("30", None),
        ("-1s", None),
        ("1d", None),
        ("s", None),
        ("1..5s", None),
    ] {
        assert_eq!(parse_go_duration(text).ok(), want, "{text:?}");
    }
}
