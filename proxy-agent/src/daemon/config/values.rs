//! The flags' value parsers: kube-proxy's formats (Go durations, comma-separated
//! CIDRs), with errors that say what was expected.

use std::time::Duration;

use ipnetwork::IpNetwork;

/// CIDRs given as one comma-separated flag value (`10.0.0.0/8,fd00::/8`); empty: none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<IpNetwork>);

/// Comma-separated CIDRs; each must have a prefix length (as Go's `net.ParseCIDR`
/// requires); host bits are cleared (`10.0.0.1/8` is `10.0.0.0/8`, as Go reads it).
pub(super) fn cidr_list(s: &str) -> Result<CidrList, String> {
    let mut out = Vec::new();
    for piece in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !piece.contains('/') {
            return Err(format!(
                "{piece:?} is not a CIDR: it has no /prefix length (like 10.0.0.0/8, or \
                 10.0.0.1/32 for one address)"
            ));
        }
        let net: IpNetwork = piece
            .parse()
            .map_err(|e| format!("{piece:?} is not a CIDR (like 10.0.0.0/8 or fd00::/8): {e}"))?;
        let net = IpNetwork::new(net.network(), net.prefix())
            .map_err(|e| format!("{piece:?} is not a CIDR: {e}"))?;
        out.push(net);
    }
    Ok(CidrList(out))
}

/// `--cluster-cidr`: as kube-proxy, one range, or one per family (dual-stack).
pub(super) fn cluster_cidrs(s: &str) -> Result<CidrList, String> {
    let list = cidr_list(s)?;
    for (i, a) in list.0.iter().enumerate() {
        if let Some(b) = list.0[i + 1..].iter().find(|b| b.is_ipv4() == a.is_ipv4()) {
            return Err(format!(
                "at most one range per family (one IPv4, one IPv6): {a} and {b} are both {}",
                if a.is_ipv4() { "IPv4" } else { "IPv6" }
            ));
        }
    }
    Ok(list)
}

/// A duration as kube-proxy's flags take them (`30s`, `1m30s`, `500ms`), or a number
/// of seconds (`30`, `0.5`); not negative.
pub(super) fn any_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{s:?} is not a duration of 0 s or more"));
    }
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 30s or 1m: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?} is negative"))
}

/// A resync period: at least 0.1 s, as `--sync-period`.
pub(super) fn sync_period(s: &str) -> Result<Duration, String> {
    let d = any_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?} is too short (at least 0.1 s)"));
    }
    Ok(d)
}

/// A minimum sync interval: 0 or more (checked against the resync period later).
pub(super) fn min_sync_period(s: &str) -> Result<Duration, String> {
    any_duration(s)
}

/// The kernel refuses an IPVS timeout over `INT_MAX / HZ` seconds; this bound holds
/// for every HZ up to 1000.
const IPVS_TIMEOUT_MAX_S: u64 = i32::MAX as u64 / 1000;

/// An IPVS timeout: whole seconds (what IPVS keeps), 0 for "the kernel's".
pub(super) fn ipvs_timeout(s: &str) -> Result<Duration, String> {
    let d = any_duration(s)?;
    if d.subsec_nanos() != 0 {
        return Err(format!(
            "{s:?} is not a whole number of seconds (IPVS keeps seconds)"
        ));
    }
    if d.as_secs() > IPVS_TIMEOUT_MAX_S {
        return Err(format!(
            "{s:?} is over the kernel's limit of {IPVS_TIMEOUT_MAX_S} s (24 days)"
        ));
    }
    Ok(d)
}

/// A Go-style duration (`24h`, `1h30m`, `90s`) or a number of seconds.
pub(super) fn duration(s: &str) -> Result<Duration, String> {
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

pub(super) fn port_range(s: &str) -> Result<(u16, u16), String> {
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

pub(super) fn humantime_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim_end_matches('s')
        .parse()
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))?;
    if !(0.0..=3600.0).contains(&secs) {
        return Err(format!("{s:?} is out of range (0..=3600 s)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub(super) fn positive_secs(s: &str) -> Result<Duration, String> {
    let d = humantime_secs(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?} is too short (at least 0.1 s)"));
    }
    Ok(d)
}

/// An IP address (`0.0.0.0`, `::`, `10.0.0.5`).
pub(super) fn ip_address(s: &str) -> Result<std::net::IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address (like 0.0.0.0, :: or 10.0.0.5)"))
}

/// A netfilter conntrack timeout sysctl: whole seconds, 0 for "leave the kernel's".
pub(super) fn sysctl_timeout(s: &str) -> Result<Duration, String> {
    let d = any_duration(s)?;
    if d.subsec_nanos() != 0 {
        return Err(format!(
            "{s:?} is not a whole number of seconds (the sysctl keeps seconds)"
        ));
    }
    if d.as_secs() > IPVS_TIMEOUT_MAX_S {
        return Err(format!(
            "{s:?} is over the kernel's limit of {IPVS_TIMEOUT_MAX_S} s (24 days)"
        ));
    }
    Ok(d)
}

/// `--config-sync-period`: more than 0, as kube-proxy's validation requires.
pub(super) fn config_sync_period(s: &str) -> Result<Duration, String> {
    let d = any_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be greater than 0"));
    }
    Ok(d)
}

/// How kube-proxy tells traffic from the cluster's pods from outside traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DetectLocalMode {
    /// Sources inside `--cluster-cidr` are local (kube-proxy's default).
    #[default]
    ClusterCidr,
}

/// `--detect-local-mode`: kube-proxy's names; only `ClusterCIDR` is implemented (the
/// others need the node's pod CIDR or interface names in the masquerade rules).
pub(super) fn detect_local_mode(s: &str) -> Result<DetectLocalMode, String> {
    match s.trim() {
        "" | "ClusterCIDR" => Ok(DetectLocalMode::ClusterCidr),
        m @ ("NodeCIDR" | "BridgeInterface" | "InterfaceNamePrefix") => Err(format!(
            "{m} is kube-proxy's but not implemented here; only ClusterCIDR is (local \
             traffic is the --cluster-cidr ranges)"
        )),
        m => Err(format!(
            "{m:?} is not a mode (ClusterCIDR, NodeCIDR, BridgeInterface, \
             InterfaceNamePrefix)"
        )),
    }
}
