//! Object validation shared by every source.
//!
//! Each check returns the first problem found as a [`FieldError`] naming the field by a
//! JSON-path-like location (`spec.ports[1].port`). The rules are the subset of the API
//! server's validation that the translation layer relies on, so an object the API server
//! accepted is never rejected here; hand-written manifests get the same checks.
//!
//! Namespace: an object without `metadata.namespace` (or with an empty one) belongs to
//! the `default` namespace, as `kubectl apply` would put it; see [`namespace_of`].
//!
//! Fields that widen who can reach a Service are checked strictly: an entry of
//! `loadBalancerSourceRanges` that does not parse rejects the Service whole (kube-proxy
//! drops such an entry, which can leave a load balancer open to every source), so the
//! sources keep its last good version instead.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The namespace of objects that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The label that ties an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// The longest ClientIP affinity timeout the API server accepts (one day).
pub const MAX_AFFINITY_TIMEOUT_S: i32 = 86_400;

/// A problem with one field of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// A JSON-path-like location, e.g. `spec.ports[1].port`, `spec.clusterIP`,
    /// `endpoints[3].addresses[0]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// The object's namespace, `default` when it names none.
pub fn namespace_of(meta: &ObjectMeta) -> &str {
    match meta.namespace.as_deref() {
        None | Some("") => DEFAULT_NAMESPACE,
        Some(ns) => ns,
    }
}

/// Parses an IP address the way kube-proxy does (Go's `ParseIPSloppy`): IPv4 octets may
/// carry leading zeros (read as decimal, as objects created before Kubernetes 1.22 can
/// hold them), and an IPv4-mapped IPv6 address is the IPv4 address.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => Some(match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }),
        Ok(ip) => Some(ip),
        Err(_) => parse_ipv4_leading_zeros(s).map(IpAddr::V4),
    }
}

fn parse_ipv4_leading_zeros(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// Parses a `loadBalancerSourceRanges` entry: `address/prefix`, or a bare address
/// (a single host, `/32` or `/128`). Surrounding spaces are allowed (the API server
/// accepts them for historical reasons); the address parses like [`parse_ip`], and an
/// IPv4-mapped IPv6 range of prefix 96 or more is the IPv4 range it maps. The result
/// is normalized to its network address (`10.1.2.3/8` is `10.0.0.0/8`).
pub fn parse_cidr(s: &str) -> Option<IpNetwork> {
    let s = s.trim();
    let (addr, prefix) = match s.split_once('/') {
        Some((addr, prefix)) => {
            if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            (addr, Some(prefix.parse::<u8>().ok()?))
        }
        None => (s, None),
    };
    let (ip, prefix) = match addr.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => match (v6.to_ipv4_mapped(), prefix) {
            (Some(v4), None) => (IpAddr::V4(v4), 32),
            (Some(v4), Some(p)) if p >= 96 => (IpAddr::V4(v4), p - 96),
            (_, p) => (IpAddr::V6(v6), p.unwrap_or(128)),
        },
        Ok(IpAddr::V4(v4)) => (IpAddr::V4(v4), prefix.unwrap_or(32)),
        Err(_) => (
            IpAddr::V4(parse_ipv4_leading_zeros(addr)?),
            prefix.unwrap_or(32),
        ),
    };
    let net = IpNetwork::new(ip, prefix).ok()?;
    IpNetwork::new(net.network(), prefix).ok()
}

/// Why an address cannot be an external IP (the API server's `ValidateNonSpecialIP`),
/// if it cannot.
fn special_ip(ip: &IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("the unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        return Some("a link-local address");
    }
    let link_local_multicast = match ip {
        IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v6) => is_link_local_multicast_v6(v6),
    };
    if link_local_multicast {
        return Some("a link-local multicast address");
    }
    None
}

fn is_link_local_multicast_v6(v6: &Ipv6Addr) -> bool {
    let o = v6.octets();
    o[0] == 0xff && (o[1] & 0x0f) == 0x02
}

/// The family name Kubernetes uses for an address.
pub fn family_name(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// Checks a Service.
pub fn service(svc: &Service) -> Result<(), FieldError> {
    metadata(&svc.metadata, NameRule::Dns1035Label)?;
    let Some(spec) = svc.spec.as_ref() else {
        return Err(FieldError::new("spec", "is required"));
    };

    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(
        type_,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        return Err(FieldError::new(
            "spec.type",
            format!(
                "unknown service type {type_:?} (ClusterIP, NodePort, LoadBalancer or ExternalName)"
            ),
        ));
    }
    let external_name = type_ == "ExternalName";
    if external_name && spec.external_name.as_deref().unwrap_or("").is_empty() {
        return Err(FieldError::new(
            "spec.externalName",
            "is required for a service of type ExternalName",
        ));
    }

    let headless = cluster_ips(spec)?;

    let ports = spec.ports.as_deref().unwrap_or(&[]);
    if ports.is_empty() && !headless && !external_name {
        return Err(FieldError::new(
            "spec.ports",
            "at least one port is required (only headless and ExternalName services may have none)",
        ));
    }
    let mut names = BTreeSet::new();
    let mut port_protocols = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let protocol = service_port(port, &format!("spec.ports[{i}]"))?;
        let node_port = port.node_port.unwrap_or(0);
        if node_port != 0 {
            if type_ == "ClusterIP" {
                return Err(FieldError::new(
                    format!("spec.ports[{i}].nodePort"),
                    format!(
                        "{node_port} is set, but a service of type ClusterIP has no node ports \
                         (type NodePort or LoadBalancer)"
                    ),
                ));
            }
            if !node_ports.insert((node_port, protocol)) {
                return Err(FieldError::new(
                    format!("spec.ports[{i}].nodePort"),
                    format!("duplicate node port {node_port}/{protocol}"),
                ));
            }
        }
        let name = port.name.as_deref().unwrap_or("");
        if name.is_empty() && ports.len() > 1 {
            return Err(FieldError::new(
                format!("spec.ports[{i}].name"),
                "is required when the service has more than one port",
            ));
        }
        if !names.insert(name) {
            return Err(FieldError::new(
                format!("spec.ports[{i}].name"),
                format!("duplicate port name {name:?}"),
            ));
        }
        if !port_protocols.insert((port.port, protocol)) {
            return Err(FieldError::new(
                format!("spec.ports[{i}]"),
                format!("duplicate port {}/{protocol}", port.port),
            ));
        }
    }

    let affinity = spec.session_affinity.as_deref().unwrap_or("None");
    if !matches!(affinity, "None" | "ClientIP") {
        return Err(FieldError::new(
            "spec.sessionAffinity",
            format!("unknown session affinity {affinity:?} (None or ClientIP)"),
        ));
    }
    if let Some(timeout) = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        && !(1..=MAX_AFFINITY_TIMEOUT_S).contains(&timeout)
    {
        return Err(FieldError::new(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            format!("{timeout} is not in 1..={MAX_AFFINITY_TIMEOUT_S}"),
        ));
    }

    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        let Some(parsed) = parse_ip(ip) else {
            return Err(FieldError::new(
                field,
                format!("{ip:?} is not an IP address"),
            ));
        };
        if let Some(why) = special_ip(&parsed) {
            return Err(FieldError::new(
                field,
                format!("{ip:?} is {why}, which cannot be an external IP"),
            ));
        }
    }

    load_balancer(svc, spec, type_)?;

    if let Some(port) = spec.health_check_node_port
        && port != 0
    {
        port_number(port, "spec.healthCheckNodePort")?;
        // As the API server has it: only a Local LoadBalancer has a health check.
        if type_ != "LoadBalancer" || spec.external_traffic_policy.as_deref() != Some("Local") {
            return Err(FieldError::new(
                "spec.healthCheckNodePort",
                "may only be set when type is LoadBalancer and externalTrafficPolicy is Local"
                    .to_string(),
            ));
        }
    }

    for (field, policy) in [
        (
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        ),
        (
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        ),
    ] {
        if let Some(policy) = policy
            && !matches!(policy, "Cluster" | "Local")
        {
            return Err(FieldError::new(
                field,
                format!("unknown traffic policy {policy:?} (Cluster or Local)"),
            ));
        }
    }
    Ok(())
}

/// Checks `loadBalancerSourceRanges` and `status.loadBalancer.ingress`.
fn load_balancer(svc: &Service, spec: &ServiceSpec, type_: &str) -> Result<(), FieldError> {
    let ranges = spec.load_balancer_source_ranges.as_deref().unwrap_or(&[]);
    if !ranges.is_empty() && type_ != "LoadBalancer" {
        return Err(FieldError::new(
            "spec.loadBalancerSourceRanges",
            format!("may only be set on a service of type LoadBalancer, not {type_}"),
        ));
    }
    for (i, range) in ranges.iter().enumerate() {
        if parse_cidr(range).is_none() {
            return Err(FieldError::new(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!(
                    "{range:?} is not a CIDR (address/prefix) or an IP address; the service is \
                     not served rather than served to more sources than it allows"
                ),
            ));
        }
    }
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or(&[]);
    for (i, entry) in ingress.iter().enumerate() {
        if let Some(ip) = entry.ip.as_deref()
            && !ip.is_empty()
            && parse_ip(ip).is_none()
        {
            return Err(FieldError::new(
                format!("status.loadBalancer.ingress[{i}].ip"),
                format!("{ip:?} is not an IP address"),
            ));
        }
        if let Some(mode) = entry.ip_mode.as_deref()
            && !matches!(mode, "VIP" | "Proxy")
        {
            return Err(FieldError::new(
                format!("status.loadBalancer.ingress[{i}].ipMode"),
                format!("unknown IP mode {mode:?} (VIP or Proxy)"),
            ));
        }
    }
    Ok(())
}

/// Checks `clusterIP`, `clusterIPs` and `ipFamilies` together; returns whether the
/// service is headless.
fn cluster_ips(spec: &ServiceSpec) -> Result<bool, FieldError> {
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    let list = spec.cluster_ips.as_deref().unwrap_or(&[]);
    let headless = cluster_ip == "None" || list.first().is_some_and(|ip| ip == "None");

    if !cluster_ip.is_empty() && cluster_ip != "None" {
        match parse_ip(cluster_ip) {
            None => {
                return Err(FieldError::new(
                    "spec.clusterIP",
                    format!("{cluster_ip:?} is not an IP address, \"None\" or empty"),
                ));
            }
            Some(ip) if ip.is_unspecified() => {
                return Err(FieldError::new(
                    "spec.clusterIP",
                    format!("{cluster_ip:?} is the unspecified address"),
                ));
            }
            Some(_) => {}
        }
    }
    if list.len() > 2 {
        return Err(FieldError::new(
            "spec.clusterIPs",
            format!(
                "{} entries; at most 2 (one per IP family) are allowed",
                list.len()
            ),
        ));
    }
    let mut families = Vec::with_capacity(list.len());
    for (i, ip) in list.iter().enumerate() {
        let field = format!("spec.clusterIPs[{i}]");
        if ip == "None" {
            if list.len() > 1 {
                return Err(FieldError::new(field, "\"None\" must be the only entry"));
            }
            continue;
        }
        let Some(parsed) = parse_ip(ip) else {
            return Err(FieldError::new(
                field,
                format!("{ip:?} is not an IP address or \"None\""),
            ));
        };
        if parsed.is_unspecified() {
            return Err(FieldError::new(
                field,
                format!("{ip:?} is the unspecified address"),
            ));
        }
        if families.contains(&family_name(&parsed)) {
            return Err(FieldError::new(
                field,
                format!(
                    "{ip} is a second {} address; dual-stack needs one of each family",
                    family_name(&parsed)
                ),
            ));
        }
        families.push(family_name(&parsed));
    }
    if let Some(first) = list.first()
        && !cluster_ip.is_empty()
        && first != cluster_ip
    {
        return Err(FieldError::new(
            "spec.clusterIPs[0]",
            format!("{first:?} does not match spec.clusterIP {cluster_ip:?}"),
        ));
    }

    let declared = spec.ip_families.as_deref().unwrap_or(&[]);
    if declared.len() > 2 {
        return Err(FieldError::new(
            "spec.ipFamilies",
            format!("{} entries; at most 2 are allowed", declared.len()),
        ));
    }
    // With clusterIPs absent, the families are those of clusterIP.
    if families.is_empty()
        && let Some(ip) = parse_ip(cluster_ip)
    {
        families.push(family_name(&ip));
    }
    for (i, family) in declared.iter().enumerate() {
        let field = format!("spec.ipFamilies[{i}]");
        if !matches!(family.as_str(), "IPv4" | "IPv6") {
            return Err(FieldError::new(
                field,
                format!("unknown IP family {family:?} (IPv4 or IPv6)"),
            ));
        }
        if declared[..i].contains(family) {
            return Err(FieldError::new(field, format!("{family} is listed twice")));
        }
        if let Some(actual) = families.get(i)
            && actual != family
        {
            return Err(FieldError::new(
                field,
                format!("{family} does not match the cluster IP's family {actual}"),
            ));
        }
    }
    Ok(headless)
}

/// Checks one service port; returns its protocol.
fn service_port<'a>(port: &'a ServicePort, at: &str) -> Result<&'a str, FieldError> {
    port_number(port.port, &format!("{at}.port"))?;
    // 0 (or absent) means the port has no node port.
    if let Some(node_port) = port.node_port
        && node_port != 0
    {
        port_number(node_port, &format!("{at}.nodePort"))?;
    }
    match &port.target_port {
        None => {}
        Some(IntOrString::Int(n)) => port_number(*n, &format!("{at}.targetPort"))?,
        Some(IntOrString::String(name)) => {
            if let Err(why) = port_name(name) {
                return Err(FieldError::new(
                    format!("{at}.targetPort"),
                    format!("{name:?} is not a port number or a port name: {why}"),
                ));
            }
        }
    }
    protocol(port.protocol.as_deref(), &format!("{at}.protocol"))
}

/// Checks an EndpointSlice.
pub fn endpoint_slice(slice: &EndpointSlice) -> Result<(), FieldError> {
    metadata(&slice.metadata, NameRule::Dns1123Subdomain)?;
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(LABEL_SERVICE_NAME));
    match service {
        None => {
            return Err(FieldError::new(
                format!("metadata.labels[{LABEL_SERVICE_NAME}]"),
                "is required: it names the Service this slice belongs to",
            ));
        }
        Some(name) if name.is_empty() => {
            return Err(FieldError::new(
                format!("metadata.labels[{LABEL_SERVICE_NAME}]"),
                "must name a Service, not be empty",
            ));
        }
        Some(_) => {}
    }

    let address_type = slice.address_type.as_str();
    if !matches!(address_type, "IPv4" | "IPv6" | "FQDN") {
        return Err(FieldError::new(
            "addressType",
            format!("unknown address type {address_type:?} (IPv4, IPv6 or FQDN)"),
        ));
    }
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        if endpoint.addresses.is_empty() {
            return Err(FieldError::new(
                format!("endpoints[{i}].addresses"),
                "at least one address is required",
            ));
        }
        for (j, address) in endpoint.addresses.iter().enumerate() {
            let field = format!("endpoints[{i}].addresses[{j}]");
            let ok = match address_type {
                "IPv4" => matches!(parse_ip(address), Some(IpAddr::V4(_))),
                "IPv6" => matches!(parse_ip(address), Some(IpAddr::V6(_))),
                _ => !address.is_empty() && !address.contains(char::is_whitespace),
            };
            if !ok {
                let what = match address_type {
                    "FQDN" => "a host name".to_string(),
                    family => format!("an {family} address"),
                };
                return Err(FieldError::new(
                    field,
                    format!(
                        "{address:?} is not {what} (the slice's addressType is {address_type})"
                    ),
                ));
            }
        }
    }
    let mut names = BTreeSet::new();
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        if let Some(n) = port.port {
            port_number(n, &format!("ports[{i}].port"))?;
        }
        protocol(port.protocol.as_deref(), &format!("ports[{i}].protocol"))?;
        let name = port.name.as_deref().unwrap_or("");
        if !names.insert(name) {
            return Err(FieldError::new(
                format!("ports[{i}].name"),
                format!("duplicate port name {name:?}"),
            ));
        }
    }
    Ok(())
}

/// Which naming rule `metadata.name` follows.
#[derive(Clone, Copy)]
enum NameRule {
    /// Services: a DNS-1035 label (starts with a letter).
    Dns1035Label,
    /// EndpointSlices: a DNS-1123 subdomain.
    Dns1123Subdomain,
}

fn metadata(meta: &ObjectMeta, rule: NameRule) -> Result<(), FieldError> {
    let name = meta.name.as_deref().unwrap_or("");
    if name.is_empty() {
        return Err(FieldError::new("metadata.name", "is required"));
    }
    let name_ok = match rule {
        NameRule::Dns1035Label => {
            dns1123_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())
        }
        NameRule::Dns1123Subdomain => name.len() <= 253 && name.split('.').all(dns1123_label),
    };
    if !name_ok {
        let rule = match rule {
            NameRule::Dns1035Label => {
                "lowercase letters, digits and '-', starting with a letter and ending with a letter or digit, at most 63 characters"
            }
            NameRule::Dns1123Subdomain => {
                "dot-separated parts of lowercase letters, digits and '-', each starting and ending with a letter or digit"
            }
        };
        return Err(FieldError::new(
            "metadata.name",
            format!("{name:?} is not a valid name ({rule})"),
        ));
    }
    if let Some(ns) = meta.namespace.as_deref()
        && !ns.is_empty()
        && !dns1123_label(ns)
    {
        return Err(FieldError::new(
            "metadata.namespace",
            format!(
                "{ns:?} is not a valid namespace (lowercase letters, digits and '-', at most 63 characters)"
            ),
        ));
    }
    Ok(())
}

/// A DNS-1123 label: 1 to 63 of `[a-z0-9-]`, starting and ending with `[a-z0-9]`.
fn dns1123_label(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            bytes.len() <= 63
                && alnum(first)
                && alnum(last)
                && bytes.iter().all(|&b| alnum(b) || b == b'-')
        }
        _ => false,
    }
}

/// An IANA service name as used for named ports: 1 to 15 of `[a-z0-9-]`, at least one
/// letter, no leading, trailing or doubled '-'.
fn port_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("a port name must not be empty");
    }
    if s.len() > 15 {
        return Err("a port name has at most 15 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("a port name has only lowercase letters, digits and '-'");
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("a port name has at least one letter (write a number without quotes)");
    }
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return Err("a port name does not start or end with '-' or contain \"--\"");
    }
    Ok(())
}

fn port_number(n: i32, field: &str) -> Result<(), FieldError> {
    if (1..=65535).contains(&n) {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("{n} is not in 1..=65535")))
    }
}

/// Checks a protocol (absent means TCP, the API default); returns it.
fn protocol<'a>(protocol: Option<&'a str>, field: &str) -> Result<&'a str, FieldError> {
    match protocol {
        None => Ok("TCP"),
        Some(p @ ("TCP" | "UDP" | "SCTP")) => Ok(p),
        Some(other) => Err(FieldError::new(
            field,
            format!("unknown protocol {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{
        ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec,
        ServiceStatus, SessionAffinityConfig,
    };
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort};

    use super::*;

    fn svc() -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                cluster_ips: Some(vec!["10.96.0.10".into()]),
                ip_families: Some(vec!["IPv4".into()]),
                ports: Some(vec![port("http", 80)]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn port(name: &str, n: i32) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port: n,
            protocol: Some("TCP".into()),
            target_port: Some(IntOrString::Int(8080)),
            ..Default::default()
        }
    }

    fn with(f: impl FnOnce(&mut ServiceSpec)) -> Service {
        let mut s = svc();
        f(s.spec.as_mut().unwrap());
        s
    }

    fn slice() -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some("web-abc".into()),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([(
                    LABEL_SERVICE_NAME.to_string(),
                    "web".to_string(),
                )])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![Endpoint {
                addresses: vec!["10.244.0.11".into()],
                ..Default::default()
            }],
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        }
    }

    fn slice_with(f: impl FnOnce(&mut EndpointSlice)) -> EndpointSlice {
        let mut s = slice();
        f(&mut s);
        s
    }

    /// Asserts the error's rendering, `field: message`.
    fn err(result: Result<(), FieldError>) -> String {
        match result {
            Ok(()) => panic!("expected a validation error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_well_formed_service_and_slice_pass() {
        assert_eq!(service(&svc()), Ok(()));
        assert_eq!(endpoint_slice(&slice()), Ok(()));
    }

    #[test]
    fn field_errors_display_as_field_colon_message() {
        let e = FieldError::new("spec.ports[1].port", "70000 is not in 1..=65535");
        assert_eq!(
            e.to_string(),
            "spec.ports[1].port: 70000 is not in 1..=65535"
        );
    }

    #[test]
    fn a_service_without_a_name_is_rejected() {
        let mut s = svc();
        s.metadata.name = None;
        assert_eq!(err(service(&s)), "metadata.name: is required");
        s.metadata.name = Some(String::new());
        assert_eq!(err(service(&s)), "metadata.name: is required");
    }

    #[test]
    fn a_service_name_must_be_a_dns_label() {
        for bad in [
            "Web",
            "9web",
            "web-",
            "we_b",
            "web.example",
            &"a".repeat(64),
        ] {
            let mut s = svc();
            s.metadata.name = Some(bad.to_string());
            assert!(
                err(service(&s)).starts_with("metadata.name: "),
                "{bad} should be rejected"
            );
        }
        let mut s = svc();
        s.metadata.name = Some("web-2".into());
        assert_eq!(service(&s), Ok(()));
    }

    #[test]
    fn a_missing_or_empty_namespace_means_default() {
        let mut s = svc();
        s.metadata.namespace = None;
        assert_eq!(service(&s), Ok(()));
        assert_eq!(namespace_of(&s.metadata), "default");
        s.metadata.namespace = Some(String::new());
        assert_eq!(service(&s), Ok(()));
        assert_eq!(namespace_of(&s.metadata), "default");
        s.metadata.namespace = Some("demo".into());
        assert_eq!(namespace_of(&s.metadata), "demo");
    }

    #[test]
    fn an_invalid_namespace_is_rejected() {
        let mut s = svc();
        s.metadata.namespace = Some("Demo/x".into());
        assert_eq!(
            err(service(&s)),
            "metadata.namespace: \"Demo/x\" is not a valid namespace (lowercase letters, digits and '-', at most 63 characters)"
        );
    }

    #[test]
    fn a_service_without_spec_is_rejected() {
        let mut s = svc();
        s.spec = None;
        assert_eq!(err(service(&s)), "spec: is required");
    }

    #[test]
    fn an_unknown_service_type_is_rejected() {
        let s = with(|spec| spec.type_ = Some("Internal".into()));
        assert_eq!(
            err(service(&s)),
            "spec.type: unknown service type \"Internal\" (ClusterIP, NodePort, LoadBalancer or ExternalName)"
        );
        for ok in ["ClusterIP", "NodePort", "LoadBalancer"] {
            assert_eq!(service(&with(|spec| spec.type_ = Some(ok.into()))), Ok(()));
        }
    }

    #[test]
    fn an_external_name_service_needs_a_name_but_no_ports_or_ip() {
        let s = with(|spec| {
            spec.type_ = Some("ExternalName".into());
            spec.cluster_ip = None;
            spec.cluster_ips = None;
            spec.ip_families = None;
            spec.ports = None;
        });
        assert_eq!(
            err(service(&s)),
            "spec.externalName: is required for a service of type ExternalName"
        );
        let mut s = s;
        s.spec.as_mut().unwrap().external_name = Some("db.example.com".into());
        assert_eq!(service(&s), Ok(()));
    }

    #[test]
    fn cluster_ip_must_be_an_ip_none_or_empty() {
        for (ip, ok) in [
            ("10.96.0.10", true),
            ("fd00::10", true),
            ("None", true),
            ("", true),
            ("10.96.0.300", false),
            ("none", false),
            ("web", false),
        ] {
            let s = with(|spec| {
                spec.cluster_ip = Some(ip.into());
                spec.cluster_ips = None;
                spec.ip_families = None;
            });
            if ok {
                assert_eq!(service(&s), Ok(()), "{ip}");
            } else {
                assert_eq!(
                    err(service(&s)),
                    format!("spec.clusterIP: {ip:?} is not an IP address, \"None\" or empty")
                );
            }
        }
    }

    #[test]
    fn cluster_ips_entries_must_be_ips() {
        let s = with(|spec| {
            spec.cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::zz".into()]);
            spec.ip_families = None;
        });
        assert_eq!(
            err(service(&s)),
            "spec.clusterIPs[1]: \"fd00::zz\" is not an IP address or \"None\""
        );
    }

    #[test]
    fn cluster_ips_may_hold_one_address_per_family() {
        let dual = with(|spec| {
            spec.cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
            spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
        });
        assert_eq!(service(&dual), Ok(()));
        let same = with(|spec| {
            spec.cluster_ips = Some(vec!["10.96.0.10".into(), "10.96.0.11".into()]);
            spec.ip_families = None;
        });
        assert_eq!(
            err(service(&same)),
            "spec.clusterIPs[1]: 10.96.0.11 is a second IPv4 address; dual-stack needs one of each family"
        );
        let three = with(|spec| {
            spec.cluster_ips = Some(vec![
                "10.96.0.10".into(),
                "fd00::10".into(),
                "fd00::11".into(),
            ]);
        });
        assert_eq!(
            err(service(&three)),
            "spec.clusterIPs: 3 entries; at most 2 (one per IP family) are allowed"
        );
    }

    #[test]
    fn cluster_ips_first_entry_must_match_cluster_ip() {
        let s = with(|spec| spec.cluster_ips = Some(vec!["10.96.0.11".into()]));
        assert_eq!(
            err(service(&s)),
            "spec.clusterIPs[0]: \"10.96.0.11\" does not match spec.clusterIP \"10.96.0.10\""
        );
    }

    #[test]
    fn none_must_be_the_only_cluster_ip() {
        let s = with(|spec| {
            spec.cluster_ip = Some("None".into());
            spec.cluster_ips = Some(vec!["None".into(), "fd00::10".into()]);
            spec.ip_families = None;
        });
        assert_eq!(
            err(service(&s)),
            "spec.clusterIPs[0]: \"None\" must be the only entry"
        );
    }

    #[test]
    fn ip_families_must_be_known_distinct_and_match_the_cluster_ips() {
        let unknown = with(|spec| spec.ip_families = Some(vec!["IPv5".into()]));
        assert_eq!(
            err(service(&unknown)),
            "spec.ipFamilies[0]: unknown IP family \"IPv5\" (IPv4 or IPv6)"
        );
        let twice = with(|spec| {
            spec.cluster_ips = None;
            spec.ip_families = Some(vec!["IPv4".into(), "IPv4".into()]);
        });
        assert_eq!(
            err(service(&twice)),
            "spec.ipFamilies[1]: IPv4 is listed twice"
        );
        let mismatch = with(|spec| spec.ip_families = Some(vec!["IPv6".into()]));
        assert_eq!(
            err(service(&mismatch)),
            "spec.ipFamilies[0]: IPv6 does not match the cluster IP's family IPv4"
        );
        let too_many = with(|spec| {
            spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into(), "IPv4".into()]);
        });
        assert_eq!(
            err(service(&too_many)),
            "spec.ipFamilies: 3 entries; at most 2 are allowed"
        );
        // A headless dual-stack service lists families but no addresses.
        let headless = with(|spec| {
            spec.cluster_ip = Some("None".into());
            spec.cluster_ips = Some(vec!["None".into()]);
            spec.ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
        });
        assert_eq!(service(&headless), Ok(()));
    }

    #[test]
    fn ports_are_required_unless_headless_or_external_name() {
        let none = with(|spec| spec.ports = None);
        assert_eq!(
            err(service(&none)),
            "spec.ports: at least one port is required (only headless and ExternalName services may have none)"
        );
        let empty = with(|spec| spec.ports = Some(vec![]));
        assert!(service(&empty).is_err());
        let headless = with(|spec| {
            spec.cluster_ip = Some("None".into());
            spec.cluster_ips = Some(vec!["None".into()]);
            spec.ports = None;
        });
        assert_eq!(service(&headless), Ok(()));
    }

    #[test]
    fn port_numbers_must_be_in_range() {
        for (n, ok) in [
            (0, false),
            (1, true),
            (65535, true),
            (65536, false),
            (-1, false),
        ] {
            let s = with(|spec| spec.ports = Some(vec![port("http", n)]));
            if ok {
                assert_eq!(service(&s), Ok(()));
            } else {
                assert_eq!(
                    err(service(&s)),
                    format!("spec.ports[0].port: {n} is not in 1..=65535")
                );
            }
        }
        let second = with(|spec| spec.ports = Some(vec![port("http", 80), port("https", 70000)]));
        assert_eq!(
            err(service(&second)),
            "spec.ports[1].port: 70000 is not in 1..=65535"
        );
    }

    #[test]
    fn target_port_must_be_a_valid_number_or_name() {
        let cases: [(IntOrString, Option<&str>); 8] = [
            (IntOrString::Int(8080), None),
            (IntOrString::String("http".into()), None),
            (IntOrString::String("web-8080".into()), None),
            (
                IntOrString::Int(0),
                Some("spec.ports[0].targetPort: 0 is not in 1..=65535"),
            ),
            (
                IntOrString::Int(65536),
                Some("spec.ports[0].targetPort: 65536 is not in 1..=65535"),
            ),
            (
                IntOrString::String(String::new()),
                Some(
                    "spec.ports[0].targetPort: \"\" is not a port number or a port name: a port name must not be empty",
                ),
            ),
            (
                IntOrString::String("8080".into()),
                Some(
                    "spec.ports[0].targetPort: \"8080\" is not a port number or a port name: a port name has at least one letter (write a number without quotes)",
                ),
            ),
            (
                IntOrString::String("HTTP".into()),
                Some(
                    "spec.ports[0].targetPort: \"HTTP\" is not a port number or a port name: a port name has only lowercase letters, digits and '-'",
                ),
            ),
        ];
        for (target, expected) in cases {
            let s = with(|spec| {
                spec.ports.as_mut().unwrap()[0].target_port = Some(target.clone());
            });
            match expected {
                None => assert_eq!(service(&s), Ok(()), "{target:?}"),
                Some(msg) => assert_eq!(err(service(&s)), msg),
            }
        }
        for bad in ["a-very-long-port-name", "-http", "http-", "ht--tp"] {
            let s = with(|spec| {
                spec.ports.as_mut().unwrap()[0].target_port = Some(IntOrString::String(bad.into()));
            });
            assert!(
                err(service(&s)).starts_with("spec.ports[0].targetPort: "),
                "{bad}"
            );
        }
        let absent = with(|spec| spec.ports.as_mut().unwrap()[0].target_port = None);
        assert_eq!(service(&absent), Ok(()));
    }

    fn node_port_service(f: impl FnOnce(&mut ServiceSpec)) -> Service {
        with(|spec| {
            spec.type_ = Some("NodePort".into());
            f(spec);
        })
    }

    #[test]
    fn node_port_if_set_must_be_in_range_and_zero_means_none() {
        for (n, expected) in [
            (Some(0), None),
            (None, None),
            (Some(1), None),
            (Some(30080), None),
            (Some(65535), None),
            (
                Some(70000),
                Some("spec.ports[0].nodePort: 70000 is not in 1..=65535"),
            ),
            (
                Some(-1),
                Some("spec.ports[0].nodePort: -1 is not in 1..=65535"),
            ),
        ] {
            let s = node_port_service(|spec| spec.ports.as_mut().unwrap()[0].node_port = n);
            match expected {
                None => assert_eq!(service(&s), Ok(()), "{n:?}"),
                Some(msg) => assert_eq!(err(service(&s)), msg),
            }
        }
    }

    #[test]
    fn a_cluster_ip_service_may_not_have_node_ports() {
        let s = with(|spec| spec.ports.as_mut().unwrap()[0].node_port = Some(30080));
        assert_eq!(
            err(service(&s)),
            "spec.ports[0].nodePort: 30080 is set, but a service of type ClusterIP has no node ports (type NodePort or LoadBalancer)"
        );
        let zero = with(|spec| spec.ports.as_mut().unwrap()[0].node_port = Some(0));
        assert_eq!(service(&zero), Ok(()));
        let lb = with(|spec| {
            spec.type_ = Some("LoadBalancer".into());
            spec.ports.as_mut().unwrap()[0].node_port = Some(30080);
        });
        assert_eq!(service(&lb), Ok(()));
    }

    #[test]
    fn a_node_port_may_appear_once_per_protocol() {
        let s = node_port_service(|spec| {
            let mut a = port("a", 80);
            a.node_port = Some(30080);
            let mut b = port("b", 81);
            b.node_port = Some(30080);
            spec.ports = Some(vec![a, b]);
        });
        assert_eq!(
            err(service(&s)),
            "spec.ports[1].nodePort: duplicate node port 30080/TCP"
        );
        let s = node_port_service(|spec| {
            let mut tcp = port("dns-tcp", 53);
            tcp.node_port = Some(30053);
            let mut udp = port("dns-udp", 53);
            udp.protocol = Some("UDP".into());
            udp.node_port = Some(30053);
            spec.ports = Some(vec![tcp, udp]);
        });
        assert_eq!(service(&s), Ok(()));
    }

    #[test]
    fn health_check_node_port_if_set_must_be_in_range() {
        for (n, ok) in [
            (0, true),
            (1, true),
            (32000, true),
            (65536, false),
            (-5, false),
        ] {
            let s = with(|spec| {
                spec.type_ = Some("LoadBalancer".into());
                spec.external_traffic_policy = Some("Local".into());
                spec.health_check_node_port = Some(n);
            });
            if ok {
                assert_eq!(service(&s), Ok(()), "{n}");
            } else {
                assert_eq!(
                    err(service(&s)),
                    format!("spec.healthCheckNodePort: {n} is not in 1..=65535")
                );
            }
        }
    }

    #[test]
    fn only_a_local_load_balancer_may_have_a_health_check_node_port() {
        for (type_, policy) in [("NodePort", "Local"), ("LoadBalancer", "Cluster")] {
            let s = with(|spec| {
                spec.type_ = Some(type_.into());
                spec.external_traffic_policy = Some(policy.into());
                spec.health_check_node_port = Some(32000);
            });
            assert!(
                err(service(&s)).contains("may only be set when type is LoadBalancer"),
                "{type_}/{policy}"
            );
        }
    }

    fn load_balancer_with(f: impl FnOnce(&mut Service)) -> Service {
        let mut s = with(|spec| spec.type_ = Some("LoadBalancer".into()));
        f(&mut s);
        s
    }

    fn ranges(list: &[&str]) -> Service {
        load_balancer_with(|s| {
            s.spec.as_mut().unwrap().load_balancer_source_ranges =
                Some(list.iter().map(|r| r.to_string()).collect());
        })
    }

    #[test]
    fn load_balancer_source_ranges_must_be_cidrs_or_addresses() {
        let ok = ranges(&[
            "192.0.2.0/24",
            " 198.51.100.7 ",
            "2001:db8::/32",
            "0.0.0.0/0",
        ]);
        assert_eq!(service(&ok), Ok(()));
        for bad in [
            "192.0.2.0/33",
            "2001:db8::/129",
            "192.0.2.0/",
            "192.0.2.0/+8",
            "192.0.2/24",
            "example.com/24",
            "",
            "10.0.0.0/8,10.1.0.0/16",
        ] {
            let s = ranges(&["192.0.2.0/24", bad]);
            assert_eq!(
                err(service(&s)),
                format!(
                    "spec.loadBalancerSourceRanges[1]: {bad:?} is not a CIDR (address/prefix) or an IP address; the service is not served rather than served to more sources than it allows"
                )
            );
        }
    }

    #[test]
    fn load_balancer_source_ranges_need_a_load_balancer() {
        let s = with(|spec| {
            spec.type_ = Some("NodePort".into());
            spec.load_balancer_source_ranges = Some(vec!["192.0.2.0/24".into()]);
        });
        assert_eq!(
            err(service(&s)),
            "spec.loadBalancerSourceRanges: may only be set on a service of type LoadBalancer, not NodePort"
        );
        let empty = with(|spec| spec.load_balancer_source_ranges = Some(vec![]));
        assert_eq!(service(&empty), Ok(()));
    }

    #[test]
    fn cidrs_parse_like_kube_proxy_and_are_normalized() {
        let net = |s: &str| parse_cidr(s).map(|n| n.to_string());
        assert_eq!(net("192.0.2.0/24").as_deref(), Some("192.0.2.0/24"));
        assert_eq!(net("192.0.2.77/24").as_deref(), Some("192.0.2.0/24"));
        assert_eq!(net("192.0.2.77").as_deref(), Some("192.0.2.77/32"));
        assert_eq!(net("  10.0.0.0/8 ").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(net("010.000.0.0/8").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(net("2001:db8::1/32").as_deref(), Some("2001:db8::/32"));
        assert_eq!(net("2001:db8::1").as_deref(), Some("2001:db8::1/128"));
        assert_eq!(net("::ffff:192.0.2.0/120").as_deref(), Some("192.0.2.0/24"));
        assert_eq!(net("::ffff:192.0.2.9").as_deref(), Some("192.0.2.9/32"));
        assert_eq!(net("0.0.0.0/0").as_deref(), Some("0.0.0.0/0"));
        for bad in [
            "",
            "/8",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "fe80::1%eth0/64",
            "x",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
    }

    #[test]
    fn external_ips_may_not_be_special_addresses() {
        for (ip, why) in [
            ("0.0.0.0", "the unspecified address"),
            ("::", "the unspecified address"),
            ("127.0.0.1", "a loopback address"),
            ("::1", "a loopback address"),
            ("::ffff:127.0.0.1", "a loopback address"),
            ("169.254.1.1", "a link-local address"),
            ("fe80::1", "a link-local address"),
            ("224.0.0.251", "a link-local multicast address"),
            ("ff02::fb", "a link-local multicast address"),
        ] {
            let s = with(|spec| spec.external_ips = Some(vec![ip.into()]));
            assert_eq!(
                err(service(&s)),
                format!("spec.externalIPs[0]: {ip:?} is {why}, which cannot be an external IP")
            );
        }
        for ok in ["192.0.2.1", "2001:db8::1", "224.0.1.1", "ff05::1"] {
            let s = with(|spec| spec.external_ips = Some(vec![ok.into()]));
            assert_eq!(service(&s), Ok(()), "{ok}");
        }
    }

    #[test]
    fn an_unspecified_cluster_ip_is_rejected() {
        let s = with(|spec| {
            spec.cluster_ip = Some("0.0.0.0".into());
            spec.cluster_ips = None;
        });
        assert_eq!(
            err(service(&s)),
            "spec.clusterIP: \"0.0.0.0\" is the unspecified address"
        );
        let s = with(|spec| {
            spec.cluster_ip = None;
            spec.cluster_ips = Some(vec!["::".into()]);
            spec.ip_families = None;
        });
        assert_eq!(
            err(service(&s)),
            "spec.clusterIPs[0]: \"::\" is the unspecified address"
        );
    }

    fn ingress(ip: Option<&str>, mode: Option<&str>) -> Service {
        load_balancer_with(|s| {
            s.status = Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![
                        LoadBalancerIngress {
                            hostname: Some("lb.example.com".into()),
                            ..Default::default()
                        },
                        LoadBalancerIngress {
                            ip: ip.map(Into::into),
                            ip_mode: mode.map(Into::into),
                            ..Default::default()
                        },
                    ]),
                }),
                ..Default::default()
            });
        })
    }

    #[test]
    fn load_balancer_ingress_ips_must_be_ips_with_a_known_mode() {
        for (ip, mode) in [
            (Some("192.0.2.10"), None),
            (Some("192.0.2.10"), Some("VIP")),
            (Some("2001:db8::10"), Some("Proxy")),
            (None, None),
            (Some(""), None),
        ] {
            assert_eq!(service(&ingress(ip, mode)), Ok(()), "{ip:?} {mode:?}");
        }
        assert_eq!(
            err(service(&ingress(Some("192.0.2.300"), None))),
            "status.loadBalancer.ingress[1].ip: \"192.0.2.300\" is not an IP address"
        );
        assert_eq!(
            err(service(&ingress(Some("192.0.2.10"), Some("Tunnel")))),
            "status.loadBalancer.ingress[1].ipMode: unknown IP mode \"Tunnel\" (VIP or Proxy)"
        );
    }

    #[test]
    fn service_port_protocol_must_be_tcp_udp_or_sctp() {
        for ok in ["TCP", "UDP", "SCTP"] {
            let s = with(|spec| spec.ports.as_mut().unwrap()[0].protocol = Some(ok.into()));
            assert_eq!(service(&s), Ok(()));
        }
        let absent = with(|spec| spec.ports.as_mut().unwrap()[0].protocol = None);
        assert_eq!(service(&absent), Ok(()));
        for bad in ["ICMP", "tcp", ""] {
            let s = with(|spec| spec.ports.as_mut().unwrap()[0].protocol = Some(bad.into()));
            assert_eq!(
                err(service(&s)),
                format!("spec.ports[0].protocol: unknown protocol {bad:?}")
            );
        }
    }

    #[test]
    fn port_names_must_be_unique() {
        let s = with(|spec| spec.ports = Some(vec![port("http", 80), port("http", 81)]));
        assert_eq!(
            err(service(&s)),
            "spec.ports[1].name: duplicate port name \"http\""
        );
    }

    #[test]
    fn every_port_of_a_multi_port_service_is_named() {
        let s = with(|spec| spec.ports = Some(vec![port("http", 80), port("", 81)]));
        assert_eq!(
            err(service(&s)),
            "spec.ports[1].name: is required when the service has more than one port"
        );
        let single = with(|spec| spec.ports = Some(vec![port("", 80)]));
        assert_eq!(service(&single), Ok(()));
    }

    #[test]
    fn the_same_port_and_protocol_twice_is_rejected() {
        let s = with(|spec| spec.ports = Some(vec![port("a", 80), port("b", 80)]));
        assert_eq!(err(service(&s)), "spec.ports[1]: duplicate port 80/TCP");
        let udp = with(|spec| {
            let mut dns = port("dns-udp", 53);
            dns.protocol = Some("UDP".into());
            spec.ports = Some(vec![port("dns-tcp", 53), dns]);
        });
        assert_eq!(service(&udp), Ok(()));
    }

    #[test]
    fn session_affinity_must_be_none_or_client_ip() {
        for ok in ["None", "ClientIP"] {
            let s = with(|spec| spec.session_affinity = Some(ok.into()));
            assert_eq!(service(&s), Ok(()));
        }
        let s = with(|spec| spec.session_affinity = Some("Cookie".into()));
        assert_eq!(
            err(service(&s)),
            "spec.sessionAffinity: unknown session affinity \"Cookie\" (None or ClientIP)"
        );
    }

    #[test]
    fn affinity_timeout_must_be_between_one_second_and_one_day() {
        for (t, ok) in [
            (0, false),
            (1, true),
            (10800, true),
            (86400, true),
            (86401, false),
        ] {
            let s = with(|spec| {
                spec.session_affinity = Some("ClientIP".into());
                spec.session_affinity_config = Some(SessionAffinityConfig {
                    client_ip: Some(ClientIPConfig {
                        timeout_seconds: Some(t),
                    }),
                });
            });
            if ok {
                assert_eq!(service(&s), Ok(()));
            } else {
                assert_eq!(
                    err(service(&s)),
                    format!(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} is not in 1..=86400"
                    )
                );
            }
        }
    }

    #[test]
    fn external_ips_must_be_ips() {
        let s = with(|spec| {
            spec.external_ips = Some(vec!["192.0.2.1".into(), "example.com".into()]);
        });
        assert_eq!(
            err(service(&s)),
            "spec.externalIPs[1]: \"example.com\" is not an IP address"
        );
    }

    #[test]
    fn traffic_policies_must_be_cluster_or_local() {
        let s = with(|spec| spec.internal_traffic_policy = Some("PreferLocal".into()));
        assert_eq!(
            err(service(&s)),
            "spec.internalTrafficPolicy: unknown traffic policy \"PreferLocal\" (Cluster or Local)"
        );
        let s = with(|spec| spec.external_traffic_policy = Some("Global".into()));
        assert_eq!(
            err(service(&s)),
            "spec.externalTrafficPolicy: unknown traffic policy \"Global\" (Cluster or Local)"
        );
        let s = with(|spec| spec.internal_traffic_policy = Some("Local".into()));
        assert_eq!(service(&s), Ok(()));
    }

    #[test]
    fn ips_parse_like_kube_proxy() {
        assert_eq!(parse_ip("10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_ip("010.000.0.01"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            parse_ip("::ffff:10.0.0.1"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_ip("fd00::1"), Some("fd00::1".parse().unwrap()));
        for bad in ["", "10.0.0", "10.0.0.1.2", "10.0.0.256", "1.2.3.0004", "x"] {
            assert_eq!(parse_ip(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_slice_without_a_name_is_rejected() {
        let s = slice_with(|s| s.metadata.name = None);
        assert_eq!(err(endpoint_slice(&s)), "metadata.name: is required");
    }

    #[test]
    fn a_slice_name_may_be_a_dns_subdomain() {
        let s = slice_with(|s| s.metadata.name = Some("web.abc-1".into()));
        assert_eq!(endpoint_slice(&s), Ok(()));
        let s = slice_with(|s| s.metadata.name = Some("web..abc".into()));
        assert!(
            err(endpoint_slice(&s)).starts_with("metadata.name: \"web..abc\" is not a valid name")
        );
    }

    #[test]
    fn a_slice_without_the_service_name_label_is_rejected() {
        let s = slice_with(|s| s.metadata.labels = None);
        assert_eq!(
            err(endpoint_slice(&s)),
            "metadata.labels[kubernetes.io/service-name]: is required: it names the Service this slice belongs to"
        );
        let s = slice_with(|s| {
            s.metadata.labels = Some(BTreeMap::from([(
                LABEL_SERVICE_NAME.to_string(),
                String::new(),
            )]));
        });
        assert_eq!(
            err(endpoint_slice(&s)),
            "metadata.labels[kubernetes.io/service-name]: must name a Service, not be empty"
        );
    }

    #[test]
    fn slice_address_type_must_be_known() {
        let s = slice_with(|s| s.address_type = "IPX".into());
        assert_eq!(
            err(endpoint_slice(&s)),
            "addressType: unknown address type \"IPX\" (IPv4, IPv6 or FQDN)"
        );
    }

    #[test]
    fn slice_addresses_must_match_the_address_type() {
        let cases = [
            ("IPv4", "10.244.0.11", true),
            ("IPv4", "fd00::11", false),
            ("IPv4", "10.244.0.300", false),
            ("IPv6", "fd00::11", true),
            ("IPv6", "10.244.0.11", false),
            ("FQDN", "db.example.com", true),
            ("FQDN", "", false),
        ];
        for (family, address, ok) in cases {
            let s = slice_with(|s| {
                s.address_type = family.into();
                s.endpoints[0].addresses = vec![address.into()];
            });
            if ok {
                assert_eq!(endpoint_slice(&s), Ok(()), "{family} {address}");
            } else {
                assert!(
                    err(endpoint_slice(&s))
                        .starts_with(&format!("endpoints[0].addresses[0]: {address:?} is not ")),
                    "{family} {address}"
                );
            }
        }
        let s = slice_with(|s| {
            s.endpoints.push(Endpoint {
                addresses: vec!["10.244.0.12".into(), "10.244.0.x".into()],
                ..Default::default()
            });
        });
        assert_eq!(
            err(endpoint_slice(&s)),
            "endpoints[1].addresses[1]: \"10.244.0.x\" is not an IPv4 address (the slice's addressType is IPv4)"
        );
    }

    #[test]
    fn a_slice_endpoint_needs_an_address() {
        let s = slice_with(|s| s.endpoints[0].addresses.clear());
        assert_eq!(
            err(endpoint_slice(&s)),
            "endpoints[0].addresses: at least one address is required"
        );
    }

    #[test]
    fn slice_ports_must_be_in_range_if_set() {
        let s = slice_with(|s| s.ports.as_mut().unwrap()[0].port = Some(0));
        assert_eq!(
            err(endpoint_slice(&s)),
            "ports[0].port: 0 is not in 1..=65535"
        );
        let s = slice_with(|s| s.ports.as_mut().unwrap()[0].port = Some(65536));
        assert_eq!(
            err(endpoint_slice(&s)),
            "ports[0].port: 65536 is not in 1..=65535"
        );
        let s = slice_with(|s| s.ports.as_mut().unwrap()[0].port = None);
        assert_eq!(endpoint_slice(&s), Ok(()));
        let s = slice_with(|s| s.ports = None);
        assert_eq!(endpoint_slice(&s), Ok(()));
    }

    #[test]
    fn slice_port_protocol_must_be_known() {
        let s = slice_with(|s| s.ports.as_mut().unwrap()[0].protocol = Some("QUIC".into()));
        assert_eq!(
            err(endpoint_slice(&s)),
            "ports[0].protocol: unknown protocol \"QUIC\""
        );
    }

    #[test]
    fn slice_port_names_must_be_unique() {
        let s = slice_with(|s| {
            let dup = s.ports.as_ref().unwrap()[0].clone();
            s.ports.as_mut().unwrap().push(dup);
        });
        assert_eq!(
            err(endpoint_slice(&s)),
            "ports[1].name: duplicate port name \"http\""
        );
    }
}
