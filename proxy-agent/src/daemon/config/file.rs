//! The `--config` file: kube-proxy's `KubeProxyConfiguration`
//! (`kubeproxy.config.k8s.io/v1alpha1`) as kubeadm writes it into the `kube-proxy`
//! ConfigMap's `config.conf`.
//!
//! Decoding is strict, as kube-proxy's: an unknown field is an error naming its path.
//! kubeadm writes every field, unset ones as zero values (`0s`, `""`, `null`, `false`),
//! and kube-proxy defaults those; so a zero value here means "the flag's default", and
//! only set values are turned into the flags that mean the same ([`Translation`]). The
//! flags' own parsers then check them, so a file value is held to exactly the rules of
//! its flag.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// The only `apiVersion` kube-proxy reads.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// The only `kind`.
pub const KIND: &str = "KubeProxyConfiguration";
/// kube-proxy's `mode` values, as an error lists them.
pub const MODES: &str = "\"\" (the default), iptables, ipvs, nftables";

/// Why a configuration file was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// Not YAML (or JSON), a field of the wrong type, or an unknown field; the message
    /// starts with the field's path.
    #[error("{0}")]
    Decode(String),
    /// `apiVersion` or `kind` is missing or not kube-proxy's.
    #[error("{field} is {found:?}; expected {expected:?}")]
    Type {
        /// `apiVersion` or `kind`.
        field: &'static str,
        /// What the file has (empty: nothing).
        found: String,
        /// What kube-proxy reads.
        expected: &'static str,
    },
    /// A field whose value has no counterpart here.
    #[error("{field}: {message}")]
    Value {
        /// The field's path (`mode`).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// A Go `time.Duration` as `metav1.Duration` writes it: `30s`, `1m0s`, `15m0s`, `0s`,
/// `1h2m3.5s`, `500ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, not `String::deserialize` then parse: serde_yaml gives an error
        // raised inside the visitor the value's full path.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = GoDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration like 30s, 1m0s or 1h30m")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<GoDuration, E> {
                parse_go_duration(s).map(GoDuration).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Go's `time.ParseDuration`, for durations that are not negative.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 30s, 1m0s or 1h30m");
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() || rest.starts_with('-') {
        return Err(bad());
    }
    rest = rest.strip_prefix('+').unwrap_or(rest);
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(number_len);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// `KubeProxyConfiguration` v1alpha1: every field kube-proxy 1.29 to 1.35 reads. All
/// optional, as kube-proxy defaults what is absent.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "kube-proxy's fields, documented by its API reference"
)]
pub struct KubeProxyConfiguration {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub feature_gates: Option<BTreeMap<String, bool>>,
    pub client_connection: Option<ClientConnection>,
    pub logging: Option<Logging>,
    pub hostname_override: Option<String>,
    pub bind_address: Option<String>,
    pub healthz_bind_address: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub bind_address_hard_fail: Option<bool>,
    pub enable_profiling: Option<bool>,
    pub show_hidden_metrics_for_version: Option<String>,
    pub mode: Option<String>,
    pub iptables: Option<Iptables>,
    pub ipvs: Option<Ipvs>,
    pub nftables: Option<Nftables>,
    pub winkernel: Option<Winkernel>,
    pub detect_local_mode: Option<String>,
    pub detect_local: Option<DetectLocal>,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    pub node_port_addresses: Option<Vec<String>>,
    pub oom_score_adj: Option<i32>,
    pub conntrack: Option<Conntrack>,
    pub config_sync_period: Option<GoDuration>,
    pub port_range: Option<String>,
    pub sync_period: Option<GoDuration>,
    pub min_sync_period: Option<GoDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs, reason = "kube-proxy's fields")]
pub struct ClientConnection {
    pub kubeconfig: Option<String>,
    pub accept_content_types: Option<String>,
    pub content_type: Option<String>,
    pub qps: Option<f64>,
    pub burst: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs, reason = "component-base's LoggingConfiguration")]
pub struct Logging {
    pub format: Option<String>,
    /// A number of nanoseconds or a duration string.
    pub flush_frequency: Option<serde_yaml::Value>,
    pub verbosity: Option<u32>,
    pub vmodule: Option<serde_yaml::Value>,
    pub options: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs, reason = "kube-proxy's fields")]
pub struct Iptables {
    pub masquerade_bit: Option<i32>,
    pub masquerade_all: Option<bool>,
    pub localhost_node_ports: Option<bool>,
    pub sync_period: Option<GoDuration>,
    pub min_sync_period: Option<GoDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs, reason = "kube-proxy's fields")]
pub struct Nftables {
    pub masquerade_bit: Option<i32>,
    pub masquerade_all: Option<bool>,
    pub sync_period: Option<GoDuration>,
    pub min_sync_period: Option<GoDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs, reason = "kube-proxy's fields")]
pub struct Ipvs {
    pub sync_period: Option<GoDuration>,
    pub min_sync_period: Option<GoDuration>,
    pub scheduler: Option<String>,
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    pub strict_arp: Option<bool>,
    pub tcp_timeout: Option<GoDuration>,
    pub tcp_fin_timeout: Option<GoDuration>,
    pub udp_timeout: Option<GoDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs, reason = "kube-proxy's fields")]
pub struct Winkernel {
    pub network_name: Option<String>,
    pub source_vip: Option<String>,
    #[serde(rename = "enableDSR")]
    pub enable_dsr: Option<bool>,
    pub root_hns_endpoint_name: Option<String>,
    pub forward_health_check_vip: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs, reason = "kube-proxy's fields")]
pub struct DetectLocal {
    pub bridge_interface: Option<String>,
    pub interface_name_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs, reason = "kube-proxy's fields")]
pub struct Conntrack {
    pub max_per_core: Option<i32>,
    pub min: Option<i32>,
    pub tcp_established_timeout: Option<GoDuration>,
    pub tcp_close_wait_timeout: Option<GoDuration>,
    pub tcp_be_liberal: Option<bool>,
    pub udp_timeout: Option<GoDuration>,
    pub udp_stream_timeout: Option<GoDuration>,
}

/// One file value as the flag that means the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileFlag {
    /// The field's path in the file (`conntrack.maxPerCore`).
    pub field: &'static str,
    /// The flag's long name, without dashes (`conntrack-max-per-core`).
    pub flag: &'static str,
    /// Its value; `None` for a switch that is on.
    pub value: Option<String>,
}

/// What a file says, in the command line's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Translation {
    /// The set fields that have a meaning here, as flags, in the file's order.
    pub flags: Vec<FileFlag>,
    /// The set fields that have no meaning here (each to be logged once).
    pub ignored: Vec<String>,
    /// How `mode` was read, for one INFO line; `None` when it is `ipvs` or absent.
    pub mode_note: Option<String>,
}

/// Decodes a `config.conf` body (YAML or JSON), strictly, and checks its type.
pub fn decode(text: &str) -> Result<KubeProxyConfiguration, FileError> {
    let cfg: KubeProxyConfiguration =
        serde_yaml::from_str(text).map_err(|e| FileError::Decode(field_first(e.to_string())))?;
    let check = |field, found: &Option<String>, expected| match found.as_deref() {
        Some(f) if f == expected => Ok(()),
        f => Err(FileError::Type {
            field,
            found: f.unwrap_or("").to_owned(),
            expected,
        }),
    };
    check("apiVersion", &cfg.api_version, API_VERSION)?;
    check("kind", &cfg.kind, KIND)?;
    Ok(cfg)
}

/// serde_yaml names an unknown field after its parent's path (`conntrack: unknown
/// field `maxPerCorex``); the field's own path comes first, as for other errors.
fn field_first(message: String) -> String {
    let (parent, rest) = match message.split_once(": unknown field `") {
        Some((parent, rest)) => (format!("{parent}."), rest),
        None => match message.strip_prefix("unknown field `") {
            Some(rest) => (String::new(), rest),
            None => return message,
        },
    };
    let Some((name, tail)) = rest.split_once('`') else {
        return message;
    };
    let tail = tail.strip_prefix(", ").unwrap_or(tail);
    format!("{parent}{name}: unknown field; {tail}")
}

/// A duration as the flags take it (seconds, with a fraction if any).
fn secs(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        d.as_secs_f64().to_string()
    }
}

/// Collects flags and ignored fields.
#[derive(Default)]
struct Out(Translation);

impl Out {
    fn flag(&mut self, field: &'static str, flag: &'static str, value: String) {
        self.0.flags.push(FileFlag {
            field,
            flag,
            value: Some(value),
        });
    }

    /// A non-empty string.
    fn text(&mut self, field: &'static str, flag: &'static str, v: &Option<String>) {
        if let Some(v) = v.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            self.flag(field, flag, v.to_owned());
        }
    }

    /// A duration other than 0 (kube-proxy's "unset, take the default").
    fn nonzero(&mut self, field: &'static str, flag: &'static str, v: &Option<GoDuration>) {
        if let Some(GoDuration(d)) = v.filter(|d| !d.0.is_zero()) {
            self.flag(field, flag, secs(d));
        }
    }

    /// A switch turned on (off is every switch's default).
    fn switch(&mut self, field: &'static str, flag: &'static str, v: Option<bool>) {
        if v == Some(true) {
            self.0.flags.push(FileFlag {
                field,
                flag,
                value: None,
            });
        }
    }

    /// A field with no meaning here, if set to something other than its zero value.
    fn ignore(&mut self, field: &str, set: bool) {
        if set {
            self.0.ignored.push(field.to_owned());
        }
    }
}

fn text_set(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|v| !v.trim().is_empty())
}

fn duration_set(v: &Option<GoDuration>) -> bool {
    v.is_some_and(|d| !d.0.is_zero())
}

/// A YAML value other than null, 0, "", "0" or an empty mapping or sequence.
fn value_set(v: &Option<serde_yaml::Value>) -> bool {
    use serde_yaml::Value;
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty() && s != "0",
        Some(Value::Sequence(s)) => !s.is_empty(),
        Some(Value::Mapping(m)) => m.values().any(|v| value_set(&Some(v.clone()))),
        Some(Value::Tagged(_)) => true,
    }
}

impl KubeProxyConfiguration {
    /// The file in the command line's terms; refuses a `mode` kube-proxy would refuse.
    pub fn translate(&self) -> Result<Translation, FileError> {
        let mut out = Out::default();
        let mode = self.mode.as_deref().map(str::trim).unwrap_or("");
        match mode {
            "ipvs" => out.flag("mode", "proxy-mode", "ipvs".into()),
            "" | "iptables" | "nftables" => {
                let named = if mode.is_empty() {
                    "\"\" (kube-proxy's default, iptables)".to_owned()
                } else {
                    mode.to_owned()
                };
                out.0.mode_note = Some(format!(
                    "mode {named} in the configuration file: serving with the eBPF data \
                     plane, which replaces kube-proxy's iptables and nftables modes"
                ));
                out.flag("mode", "proxy-mode", "ebpf".into());
            }
            other => {
                return Err(FileError::Value {
                    field: "mode",
                    message: format!("{other:?} is not a kube-proxy mode on Linux ({MODES})"),
                });
            }
        }

        let cc = self.client_connection.as_ref();
        out.text(
            "clientConnection.kubeconfig",
            "kubeconfig",
            cc.map_or(&None, |c| &c.kubeconfig),
        );
        if let Some(c) = cc {
            out.ignore(
                "clientConnection.acceptContentTypes",
                text_set(&c.accept_content_types),
            );
            out.ignore("clientConnection.contentType", text_set(&c.content_type));
            out.ignore("clientConnection.qps", c.qps.is_some_and(|q| q != 0.0));
            out.ignore("clientConnection.burst", c.burst.is_some_and(|b| b != 0));
        }
        if let Some(l) = &self.logging {
            if let Some(v) = l.verbosity.filter(|v| *v != 0) {
                out.flag("logging.verbosity", "v", v.to_string());
            }
            out.ignore(
                "logging.format",
                text_set(&l.format) && l.format.as_deref() != Some("text"),
            );
            out.ignore("logging.flushFrequency", value_set(&l.flush_frequency));
            out.ignore("logging.vmodule", value_set(&l.vmodule));
            out.ignore("logging.options", value_set(&l.options));
        }
        out.text(
            "hostnameOverride",
            "hostname-override",
            &self.hostname_override,
        );
        out.text("bindAddress", "bind-address", &self.bind_address);
        out.text(
            "healthzBindAddress",
            "healthz-bind-address",
            &self.healthz_bind_address,
        );
        out.text(
            "metricsBindAddress",
            "metrics-bind-address",
            &self.metrics_bind_address,
        );
        // bindAddressHardFail needs nothing: the agent always fails when it cannot bind.
        out.ignore("enableProfiling", self.enable_profiling == Some(true));
        out.ignore(
            "showHiddenMetricsForVersion",
            text_set(&self.show_hidden_metrics_for_version),
        );
        out.text("clusterCIDR", "cluster-cidr", &self.cluster_cidr);
        if let Some(list) = self.node_port_addresses.as_ref().filter(|l| !l.is_empty()) {
            out.flag("nodePortAddresses", "nodeport-addresses", list.join(","));
        }
        out.text(
            "detectLocalMode",
            "detect-local-mode",
            &self.detect_local_mode,
        );
        if let Some(d) = &self.detect_local {
            // Only read by the BridgeInterface and InterfaceNamePrefix modes, which
            // --detect-local-mode refuses.
            out.ignore("detectLocal.bridgeInterface", text_set(&d.bridge_interface));
            out.ignore(
                "detectLocal.interfaceNamePrefix",
                text_set(&d.interface_name_prefix),
            );
        }
        out.nonzero(
            "configSyncPeriod",
            "config-sync-period",
            &self.config_sync_period,
        );
        out.nonzero("syncPeriod", "sync-period", &self.sync_period);
        out.nonzero("minSyncPeriod", "min-sync-period", &self.min_sync_period);
        self.conntrack(&mut out);
        self.mode_sections(mode, &mut out);

        out.ignore(
            "featureGates",
            self.feature_gates.as_ref().is_some_and(|g| !g.is_empty()),
        );
        out.ignore("oomScoreAdj", self.oom_score_adj.is_some());
        out.ignore("portRange", text_set(&self.port_range));
        if let Some(w) = &self.winkernel {
            let set = text_set(&w.network_name)
                || text_set(&w.source_vip)
                || text_set(&w.root_hns_endpoint_name)
                || w.enable_dsr == Some(true)
                || w.forward_health_check_vip == Some(true);
            out.ignore("winkernel", set);
        }
        Ok(out.0)
    }

    fn conntrack(&self, out: &mut Out) {
        let Some(c) = &self.conntrack else { return };
        // Pointers in kube-proxy: null is "the default", any number (0 too) is applied.
        let count = |v: Option<i32>| v.map(|n| n.to_string());
        if let Some(v) = count(c.max_per_core) {
            out.flag("conntrack.maxPerCore", "conntrack-max-per-core", v);
        }
        if let Some(v) = count(c.min) {
            out.flag("conntrack.min", "conntrack-min", v);
        }
        // 0 is kube-proxy's "leave the kernel's": for the eBPF conntrack, whose flows
        // need a timeout, that is the flag's default.
        out.nonzero(
            "conntrack.tcpEstablishedTimeout",
            "conntrack-tcp-timeout-established",
            &c.tcp_established_timeout,
        );
        if let Some(GoDuration(d)) = c.tcp_close_wait_timeout {
            out.flag(
                "conntrack.tcpCloseWaitTimeout",
                "conntrack-tcp-timeout-close-wait",
                secs(d),
            );
        }
        out.switch(
            "conntrack.tcpBeLiberal",
            "conntrack-tcp-be-liberal",
            c.tcp_be_liberal,
        );
        out.nonzero(
            "conntrack.udpTimeout",
            "conntrack-udp-timeout",
            &c.udp_timeout,
        );
        out.nonzero(
            "conntrack.udpStreamTimeout",
            "conntrack-udp-timeout-stream",
            &c.udp_stream_timeout,
        );
    }

    /// `iptables`, `ipvs` and `nftables`: the section of the mode in use gives the sync
    /// periods (kube-proxy reads only that one); `masqueradeAll` comes from
    /// `nftables` in that mode, else from `iptables` (which the IPVS mode reads too).
    fn mode_sections(&self, mode: &str, out: &mut Out) {
        if let Some(t) = &self.iptables {
            if mode != "nftables" {
                out.switch("iptables.masqueradeAll", "masquerade-all", t.masquerade_all);
            } else {
                out.ignore("iptables.masqueradeAll", t.masquerade_all == Some(true));
            }
            if mode.is_empty() || mode == "iptables" {
                out.nonzero("iptables.syncPeriod", "sync-period", &t.sync_period);
                out.nonzero(
                    "iptables.minSyncPeriod",
                    "min-sync-period",
                    &t.min_sync_period,
                );
            } else {
                out.ignore("iptables.syncPeriod", duration_set(&t.sync_period));
                out.ignore("iptables.minSyncPeriod", duration_set(&t.min_sync_period));
            }
            out.ignore("iptables.masqueradeBit", t.masquerade_bit.is_some());
            out.ignore(
                "iptables.localhostNodePorts",
                t.localhost_node_ports.is_some(),
            );
        }
        if let Some(n) = &self.nftables {
            if mode == "nftables" {
                out.switch("nftables.masqueradeAll", "masquerade-all", n.masquerade_all);
                out.nonzero("nftables.syncPeriod", "sync-period", &n.sync_period);
                out.nonzero(
                    "nftables.minSyncPeriod",
                    "min-sync-period",
                    &n.min_sync_period,
                );
            } else {
                out.ignore("nftables.masqueradeAll", n.masquerade_all == Some(true));
                out.ignore("nftables.syncPeriod", duration_set(&n.sync_period));
                out.ignore("nftables.minSyncPeriod", duration_set(&n.min_sync_period));
            }
            out.ignore("nftables.masqueradeBit", n.masquerade_bit.is_some());
        }
        if let Some(i) = &self.ipvs {
            // The IPVS flags are read in IPVS mode only; in the eBPF mode they are
            // named as ineffective, as on the command line.
            out.text("ipvs.scheduler", "ipvs-scheduler", &i.scheduler);
            if let Some(list) = i.exclude_cidrs.as_ref().filter(|l| !l.is_empty()) {
                out.flag("ipvs.excludeCIDRs", "ipvs-exclude-cidrs", list.join(","));
            }
            out.switch("ipvs.strictARP", "ipvs-strict-arp", i.strict_arp);
            out.nonzero("ipvs.syncPeriod", "ipvs-sync-period", &i.sync_period);
            out.nonzero(
                "ipvs.minSyncPeriod",
                "ipvs-min-sync-period",
                &i.min_sync_period,
            );
            out.nonzero("ipvs.tcpTimeout", "ipvs-tcp-timeout", &i.tcp_timeout);
            out.nonzero(
                "ipvs.tcpFinTimeout",
                "ipvs-tcpfin-timeout",
                &i.tcp_fin_timeout,
            );
            out.nonzero("ipvs.udpTimeout", "ipvs-udp-timeout", &i.udp_timeout);
        }
    }
}

#[cfg(test)]
pub(super) mod tests;
