//! One Service's frontends, before conflicts with other Services are settled: which
//! Services are served at all, and the order in which the parts are put together
//! (ClusterIPs, externalIPs, load balancer IPs and their source ranges, then each port's
//! frontends, then the health check).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;

use super::cluster_ip::ClusterIps;
use super::endpoints::endpoints;
use super::frontends::{Frontends, Port};
use super::health_check::Health;
use super::source_ranges::SourceRanges;
use super::{
    DEFAULT_AFFINITY_TIMEOUT_S, NodeContext, Skipped, external_ip, load_balancer, node_port,
};
use crate::model::{HealthCheck, Protocol, ServicePortName, VirtualService};
use crate::source::validate::{self, namespace_of};

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
    /// Whether the [`Translator`](super::Translator) notes it (its `noted` set).
    pub(super) fn noteworthy(&self) -> bool {
        self.no_local_endpoints > 0
            || self.no_local_endpoints_external
            || self.health_check.is_some()
    }
}

/// Where the problems of one Service go: [`Skipped`] entries naming it.
pub(super) struct Report<'a> {
    /// `Service namespace/name`.
    object: String,
    skipped: &'a mut Vec<Skipped>,
}

impl Report<'_> {
    /// Records that part of the Service (or all of it) is not served, and why.
    pub(super) fn skip(&mut self, reason: String) {
        self.skipped.push(Skipped {
            object: self.object.clone(),
            reason,
        });
    }
}

/// What the Service asks for besides addresses and ports.
#[derive(Clone, Copy, Debug)]
pub(super) struct Policy {
    /// `type: LoadBalancer`.
    pub(super) load_balancer: bool,
    /// `type: NodePort` or `LoadBalancer`: ports may have a `nodePort`.
    pub(super) node_ports: bool,
    /// `internalTrafficPolicy: Local`.
    pub(super) internal_local: bool,
    /// `externalTrafficPolicy: Local`.
    pub(super) external_local: bool,
    /// The ClientIP affinity timeout, for every frontend of the Service; `None`: no
    /// affinity.
    pub(super) affinity_timeout_s: Option<u32>,
}

impl Policy {
    fn of(spec: &ServiceSpec) -> Policy {
        let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
        Policy {
            load_balancer: service_type == "LoadBalancer",
            node_ports: matches!(service_type, "NodePort" | "LoadBalancer"),
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            affinity_timeout_s: affinity_timeout(spec),
        }
    }
}

/// Translates one Service, given the usable slices labelled with it. `None`: nothing
/// to serve (why, if it is worth saying, is in `skipped`).
pub(super) fn service(
    svc: &Service,
    service_slices: &[&EndpointSlice],
    node: &NodeContext,
    skipped: &mut Vec<Skipped>,
) -> Option<Candidate> {
    if not_for_kube_proxy(svc) {
        return None;
    }
    let namespace = namespace_of(&svc.metadata);
    let name = svc.metadata.name.as_deref().unwrap_or("");
    let id = format!("{namespace}/{name}");
    let mut report = Report {
        object: format!("Service {id}"),
        skipped,
    };
    if let Err(e) = validate::service(svc) {
        report.skip(e.to_string());
        return None;
    }
    let spec = svc.spec.as_ref()?;

    let cluster_ips = ClusterIps::of(spec, node, &mut report)?;
    let policy = Policy::of(spec);
    let external_ips = external_ip::addresses(spec, &cluster_ips, &mut report);
    let lb_ips = load_balancer::addresses(svc, &policy, &cluster_ips, &mut report);
    let ranges = SourceRanges::of(spec);
    ranges.report_closed(&lb_ips, &mut report);
    let mut health = Health::of(spec, &policy, &cluster_ips);

    let mut frontends = Frontends::new(policy, lb_ips, external_ips, ranges);
    for port in spec.ports.iter().flatten() {
        let Some(protocol) = protocol(port, &mut report) else {
            continue;
        };
        let Ok(number) = u16::try_from(port.port) else {
            continue;
        };
        let port_frontends = Port {
            name: ServicePortName {
                namespace: namespace.to_string(),
                name: name.to_string(),
                port: port.name.clone().unwrap_or_default(),
            },
            protocol,
            number,
            node_port: node_port::of(port, &policy),
        };
        for &vip in &cluster_ips.here {
            let endpoints = endpoints(service_slices, port, protocol, vip, node);
            if let Some(health) = &mut health {
                health.count(&endpoints);
            }
            frontends.add(&port_frontends, vip, &endpoints, node);
        }
    }

    Some(Candidate {
        id,
        created: svc.metadata.creation_timestamp.as_ref().map(|t| t.0),
        services: frontends.services,
        no_local_endpoints: frontends.no_local_endpoints,
        no_local_endpoints_external: frontends.no_local_endpoints_external,
        health_check: health.map(|h| h.check(namespace, name)),
    })
}

/// Services kube-proxy leaves alone without a word: those outside its selector
/// (labelled `service.kubernetes.io/service-proxy-name`, another proxy's, or
/// `service.kubernetes.io/headless`), `ExternalName` and headless (`clusterIP: None`)
/// ones.
fn not_for_kube_proxy(svc: &Service) -> bool {
    let labels = svc.metadata.labels.iter().flatten();
    if !crate::source::selected(labels.map(|(k, _)| k.as_str())) {
        return true;
    }
    let Some(spec) = &svc.spec else {
        return false;
    };
    let headless = spec.cluster_ip.as_deref() == Some("None")
        || spec
            .cluster_ips
            .as_ref()
            .and_then(|ips| ips.first())
            .is_some_and(|ip| ip == "None");
    spec.type_.as_deref() == Some("ExternalName") || headless
}

/// The ClientIP affinity timeout: the Service's, or three hours; `None` without
/// ClientIP affinity.
fn affinity_timeout(spec: &ServiceSpec) -> Option<u32> {
    match spec.session_affinity.as_deref() {
        Some("ClientIP") => Some(
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S),
        ),
        _ => None,
    }
}

/// The port's protocol, if the data plane serves it (TCP, the default, and UDP); other
/// protocols are reported and the port left out.
fn protocol(port: &ServicePort, report: &mut Report<'_>) -> Option<Protocol> {
    match port.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        other => {
            report.skip(format!(
                "port {} ({}/{other}): {other} is not supported by this data plane yet; \
                 the service's other ports are served",
                port_label(port),
                port.port
            ));
            None
        }
    }
}

fn port_label(port: &ServicePort) -> String {
    match port.name.as_deref() {
        Some(name) if !name.is_empty() => format!("{name:?}"),
        _ => "(unnamed)".into(),
    }
}

#[cfg(test)]
mod tests;
