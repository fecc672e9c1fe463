//! One Service's frontends, before conflicts with other Services are settled.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;

use super::endpoints::{cluster_endpoints, endpoints, local_endpoints};
use super::{DEFAULT_AFFINITY_TIMEOUT_S, LABEL_SERVICE_PROXY_NAME, NodeContext, Skipped};
use crate::model::{
    FrontendKey, FrontendKind, HealthCheck, Protocol, Scope, ServicePortName, VirtualService,
};
use crate::source::validate::{self, family_name, namespace_of, parse_cidr, parse_ip};

/// A Service's frontends before frontend conflicts are settled.
#[derive(Debug)]
pub(super) struct Candidate {
    /// `namespace/name`.
    pub(super) id: String,
    pub(super) created: Option<Timestamp>,
    pub(super) services: Vec<VirtualService>,
    /// Frontends with `internalTrafficPolicy: Local` that have usable endpoints, but
    /// none on this node (kube-proxy's `sync_proxy_rules_no_local_endpoints_total`).
    pub(super) no_local_endpoints: usize,
    /// `externalTrafficPolicy: Local`, and some external frontend has no local endpoint
    /// while the Service has usable endpoints.
    pub(super) no_local_endpoints_external: bool,
    /// The Service's `healthCheckNodePort`, if it has one to answer.
    pub(super) health_check: Option<HealthCheck>,
}

impl Candidate {
    /// Whether [`Translator::noted`] tracks it.
    pub(super) fn noteworthy(&self) -> bool {
        self.no_local_endpoints > 0
            || self.no_local_endpoints_external
            || self.health_check.is_some()
    }
}

pub(super) fn service(
    svc: &Service,
    service_slices: &[&EndpointSlice],
    node: &NodeContext,
    skipped: &mut Vec<Skipped>,
) -> Option<Candidate> {
    if svc
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME))
    {
        return None;
    }
    let namespace = namespace_of(&svc.metadata);
    let name = svc.metadata.name.as_deref().unwrap_or("");
    let id = format!("{namespace}/{name}");
    let object = format!("Service {id}");
    let mut skip = |reason: String| {
        skipped.push(Skipped {
            object: object.clone(),
            reason,
        });
    };

    if let Some(spec) = &svc.spec {
        let headless = spec.cluster_ip.as_deref() == Some("None")
            || spec
                .cluster_ips
                .as_ref()
                .and_then(|ips| ips.first())
                .is_some_and(|ip| ip == "None");
        if spec.type_.as_deref() == Some("ExternalName") || headless {
            return None;
        }
    }
    if let Err(e) = validate::service(svc) {
        skip(e.to_string());
        return None;
    }
    let spec = svc.spec.as_ref()?;

    let cluster_ips: Vec<IpAddr> = match spec.cluster_ips.as_deref() {
        Some(list) if !list.is_empty() => list.iter().filter_map(|ip| parse_ip(ip)).collect(),
        _ => spec
            .cluster_ip
            .as_deref()
            .and_then(parse_ip)
            .into_iter()
            .collect(),
    };
    if cluster_ips.is_empty() {
        skip(
            "has no clusterIP: nothing to serve (this agent does not allocate ClusterIPs; \
             set spec.clusterIP)"
                .into(),
        );
        return None;
    }
    let mut vips = Vec::with_capacity(cluster_ips.len());
    for &ip in &cluster_ips {
        let has_family = match ip {
            IpAddr::V4(_) => node.ipv4,
            IpAddr::V6(_) => node.ipv6,
        };
        if has_family {
            vips.push(ip);
        } else {
            skip(format!(
                "ClusterIP {ip} is {}, which this node does not have: its frontends are not served",
                family_name(&ip)
            ));
        }
    }

    let affinity_timeout_s = match spec.session_affinity.as_deref() {
        Some("ClientIP") => Some(
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S),
        ),
        _ => None,
    };
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    let load_balancer = service_type == "LoadBalancer";
    let has_node_ports = matches!(service_type, "NodePort" | "LoadBalancer");
    let same_family = |a: &IpAddr, b: &IpAddr| a.is_ipv4() == b.is_ipv4();
    // An external address is served if the Service has a ClusterIP of its family (kube-
    // proxy programs a family only for Services with a ClusterIP of it) and the node has
    // the family (else the ClusterIP's own entry explains why nothing is served).
    let unserved = |ip: &IpAddr, what: &str| -> Option<String> {
        (!cluster_ips.iter().any(|c| same_family(c, ip))).then(|| {
            format!(
                "{what} {ip} is {family}, but the Service has no {family} ClusterIP: it is \
                 not served (kube-proxy ignores it too)",
                family = family_name(ip)
            )
        })
    };
    let served = |ip: &IpAddr| vips.iter().any(|v| same_family(v, ip));

    let mut external_ips: Vec<IpAddr> = Vec::new();
    for ip in spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| parse_ip(ip))
    {
        if let Some(why) = unserved(&ip, "externalIP") {
            skip(why);
        } else if served(&ip) && !external_ips.contains(&ip) {
            external_ips.push(ip);
        }
    }
    let mut lb_ips: Vec<IpAddr> = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .filter(|_| load_balancer)
        .unwrap_or(&[]);
    for entry in ingress {
        // Hostname-only entries (some cloud load balancers) name no address; `ipMode:
        // Proxy` load balancers deliver to the node addresses, not to this IP.
        if entry.ip_mode.as_deref().is_some_and(|m| m != "VIP") {
            continue;
        }
        let Some(ip) = entry.ip.as_deref().and_then(parse_ip) else {
            continue;
        };
        if ip.is_unspecified() {
            skip(format!(
                "load balancer IP {ip} is the unspecified address: it is not served"
            ));
        } else if let Some(why) = unserved(&ip, "load balancer IP") {
            skip(why);
        } else if served(&ip) && !lb_ips.contains(&ip) {
            lb_ips.push(ip);
        }
    }

    // loadBalancerSourceRanges by family. `None`: the Service lists ranges, none of the
    // family, so no outside client of the family may connect. An entry that does not
    // parse (validation rejects those) can only narrow this, never widen it.
    let range_entries = spec.load_balancer_source_ranges.as_deref().unwrap_or(&[]);
    let mut ranges: Vec<IpNetwork> = range_entries.iter().filter_map(|r| parse_cidr(r)).collect();
    ranges.sort();
    ranges.dedup();
    let ranges_for = |ip: &IpAddr| -> Option<Vec<IpNetwork>> {
        let of_family: Vec<IpNetwork> = ranges
            .iter()
            .filter(|r| r.is_ipv4() == ip.is_ipv4())
            .copied()
            .collect();
        (range_entries.is_empty() || !of_family.is_empty()).then_some(of_family)
    };
    for ip in &lb_ips {
        if ranges_for(ip).is_none() {
            skip(format!(
                "load balancer IP {ip}: spec.loadBalancerSourceRanges lists no {} range, so no \
                 client outside the node may connect: its external frontends are not \
                 programmed (clients on this node are still served)",
                family_name(ip)
            ));
        }
    }

    // kube-proxy's service health server: LoadBalancer + Local only, and only on a node
    // that serves one of the Service's families.
    let health_port = spec
        .health_check_node_port
        .filter(|_| load_balancer && external_local && !vips.is_empty())
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0);

    let mut services = Vec::new();
    // Every frontend the Service has produced so far: a second claim to one of them
    // (an externalIP equal to its own ClusterIP or load balancer IP) is dropped, so the
    // first in the order ClusterIP, LoadBalancer, ExternalIP wins.
    let mut claimed = BTreeSet::new();
    let mut no_local_endpoints = 0;
    let mut no_local_endpoints_external = false;
    let mut local_ready = BTreeSet::new();
    for port in spec.ports.iter().flatten() {
        let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                skip(format!(
                    "port {} ({}/{other}): {other} is not supported by this data plane yet; \
                     the service's other ports are served",
                    port_label(port),
                    port.port
                ));
                continue;
            }
        };
        let Ok(port_number) = u16::try_from(port.port) else {
            continue;
        };
        let node_port = port
            .node_port
            .filter(|_| has_node_ports)
            .and_then(|n| u16::try_from(n).ok())
            .filter(|&n| n != 0);
        let port_name = ServicePortName {
            namespace: namespace.to_string(),
            name: name.to_string(),
            port: port.name.clone().unwrap_or_default(),
        };
        for &vip in &vips {
            let endpoints = endpoints(service_slices, port, protocol, vip, node);
            if health_port.is_some() {
                local_ready.extend(
                    endpoints
                        .iter()
                        .filter(|e| e.local && e.ready)
                        .map(|e| e.addr.ip()),
                );
            }
            let usable = endpoints.iter().any(|e| e.ready || e.serving_terminating());
            let cluster = cluster_endpoints(&endpoints, node);
            let local = if internal_local || external_local {
                local_endpoints(&endpoints)
            } else {
                Vec::new()
            };
            if internal_local && local.is_empty() && usable {
                no_local_endpoints += 1;
            }
            let external_backends = if external_local { &local } else { &cluster };
            let mut add = |ip: IpAddr,
                           port: u16,
                           scope: Scope,
                           kind: FrontendKind,
                           backends: &[SocketAddr],
                           source_ranges: Option<Vec<IpNetwork>>| {
                let frontend = FrontendKey {
                    ip,
                    port,
                    protocol,
                    scope,
                };
                if !claimed.insert(frontend) {
                    return false;
                }
                // `None`: nobody may connect; the frontend stays claimed, unprogrammed.
                let Some(source_ranges) = source_ranges else {
                    return false;
                };
                services.push(VirtualService {
                    name: port_name.clone(),
                    frontend,
                    backends: backends.to_vec(),
                    affinity_timeout_s,
                    kind,
                    source_ranges,
                });
                true
            };

            let clusterip_backends = if internal_local { &local } else { &cluster };
            add(
                vip,
                port_number,
                Scope::Internal,
                FrontendKind::ClusterIp,
                clusterip_backends,
                Some(Vec::new()),
            );
            let mut external = false;
            let lbs = lb_ips.iter().filter(|ip| same_family(ip, &vip));
            let eips = external_ips.iter().filter(|ip| same_family(ip, &vip));
            for (&ip, kind) in lbs
                .map(|ip| (ip, FrontendKind::LoadBalancer))
                .chain(eips.map(|ip| (ip, FrontendKind::ExternalIp)))
            {
                let ranges = match kind {
                    FrontendKind::LoadBalancer => ranges_for(&ip),
                    _ => Some(Vec::new()),
                };
                add(
                    ip,
                    port_number,
                    Scope::Internal,
                    kind,
                    &cluster,
                    Some(Vec::new()),
                );
                external |= add(
                    ip,
                    port_number,
                    Scope::External,
                    kind,
                    external_backends,
                    ranges,
                );
            }
            if let Some(node_port) = node_port {
                let any = match vip {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                };
                let kind = FrontendKind::NodePort;
                add(
                    any,
                    node_port,
                    Scope::Internal,
                    kind,
                    &cluster,
                    Some(Vec::new()),
                );
                external |= add(
                    any,
                    node_port,
                    Scope::External,
                    kind,
                    external_backends,
                    Some(Vec::new()),
                );
            }
            if external_local && external && local.is_empty() && usable {
                no_local_endpoints_external = true;
            }
        }
    }

    let health_check = health_port.map(|port| HealthCheck {
        namespace: namespace.to_string(),
        name: name.to_string(),
        port,
        local_endpoints: local_ready.len(),
    });
    Some(Candidate {
        id,
        created: svc.metadata.creation_timestamp.as_ref().map(|t| t.0),
        services,
        no_local_endpoints,
        no_local_endpoints_external,
        health_check,
    })
}

fn port_label(port: &ServicePort) -> String {
    match port.name.as_deref() {
        Some(name) if !name.is_empty() => format!("{name:?}"),
        _ => "(unnamed)".into(),
    }
}

#[cfg(test)]
mod tests;
