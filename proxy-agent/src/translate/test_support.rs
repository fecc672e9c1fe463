//! Builders for Services, EndpointSlices and nodes, and views of a [`Translation`] as
//! strings, shared by the translation's tests.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{FrontendKey, Protocol, Scope, VirtualService};
use crate::source::validate::{LABEL_SERVICE_NAME, namespace_of};
use crate::source::{Snapshot, World};
use crate::translate::{NodeContext, Translation, Translator, translate};

/// A ClusterIP service `ns/name` on `ip` with `(name, port, protocol)` ports; the
/// target port is a number 1000 above the port (slices decide the real one).
pub(super) fn svc(ns: &str, name: &str, ip: &str, ports: &[(&str, i32, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            ports: Some(
                ports
                    .iter()
                    .map(|&(name, port, protocol)| ServicePort {
                        name: Some(name.into()),
                        port,
                        protocol: Some(protocol.into()),
                        target_port: Some(IntOrString::Int(port.saturating_add(1000))),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The usual test service: `demo/web` on 10.96.0.10, port `http` 80/TCP.
pub(super) fn web() -> Service {
    svc("demo", "web", "10.96.0.10", &[("http", 80, "TCP")])
}

pub(super) fn spec(s: &mut Service) -> &mut ServiceSpec {
    s.spec.as_mut().unwrap()
}

pub(super) fn with(mut s: Service, f: impl FnOnce(&mut Service)) -> Service {
    f(&mut s);
    s
}

/// An EndpointSlice `ns/name` for `service` with `(name, port, protocol)` ports.
pub(super) fn slice(
    ns: &str,
    name: &str,
    service: &str,
    address_type: &str,
    ports: &[(&str, i32, &str)],
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([(
                LABEL_SERVICE_NAME.to_string(),
                service.to_string(),
            )])),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints,
        ports: Some(
            ports
                .iter()
                .map(|&(name, port, protocol)| EndpointPort {
                    name: Some(name.into()),
                    port: Some(port),
                    protocol: Some(protocol.into()),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

/// A slice of `demo/web` with port `http` 8080/TCP.
pub(super) fn web_slice(name: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
    slice(
        "demo",
        name,
        "web",
        "IPv4",
        &[("http", 8080, "TCP")],
        endpoints,
    )
}

/// An endpoint with no conditions set (which means ready).
pub(super) fn ep(address: &str) -> Endpoint {
    Endpoint {
        addresses: vec![address.into()],
        ..Default::default()
    }
}

pub(super) fn conditions(
    mut e: Endpoint,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
) -> Endpoint {
    e.conditions = Some(EndpointConditions {
        ready,
        serving,
        terminating,
    });
    e
}

pub(super) fn not_ready(e: Endpoint) -> Endpoint {
    conditions(e, Some(false), Some(false), Some(false))
}

/// Terminating and still serving (a pod in its grace period).
pub(super) fn terminating(e: Endpoint) -> Endpoint {
    conditions(e, Some(false), Some(true), Some(true))
}

pub(super) fn on(mut e: Endpoint, node: &str) -> Endpoint {
    e.node_name = Some(node.into());
    e
}

pub(super) fn for_zones(mut e: Endpoint, zones: &[&str]) -> Endpoint {
    let hints = e.hints.get_or_insert_with(EndpointHints::default);
    hints.for_zones = Some(
        zones
            .iter()
            .map(|z| ForZone {
                name: z.to_string(),
            })
            .collect(),
    );
    e
}

pub(super) fn for_nodes(mut e: Endpoint, nodes: &[&str]) -> Endpoint {
    let hints = e.hints.get_or_insert_with(EndpointHints::default);
    hints.for_nodes = Some(
        nodes
            .iter()
            .map(|n| ForNode {
                name: n.to_string(),
            })
            .collect(),
    );
    e
}

/// This node: `node-a` in `zone-a`, dual-stack.
pub(super) fn node() -> NodeContext {
    NodeContext {
        name: "node-a".into(),
        zone: Some("zone-a".into()),
        ipv4: true,
        ipv6: true,
    }
}

pub(super) fn snapshot(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Snapshot {
    let key = |m: &ObjectMeta| {
        (
            namespace_of(m).to_string(),
            m.name.clone().unwrap_or_default(),
        )
    };
    Snapshot {
        services: services
            .into_iter()
            .map(|s| (key(&s.metadata), Arc::new(s)))
            .collect(),
        slices: slices
            .into_iter()
            .map(|s| (key(&s.metadata), Arc::new(s)))
            .collect(),
    }
}

pub(super) fn run(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Translation {
    translate(&snapshot(services, slices), &node())
}

/// Parses a frontend as [`show`] writes it: `10.96.0.10:80/TCP`, `*:30080/TCP` (the
/// IPv4 NodePort), `[::]:30080/UDP` (the IPv6 one), with ` (external)` for the
/// external scope.
pub(super) fn frontend(s: &str) -> FrontendKey {
    let (s, scope) = match s.strip_suffix(" (external)") {
        Some(s) => (s, Scope::External),
        None => (s, Scope::Internal),
    };
    let (addr, proto) = s.rsplit_once('/').unwrap();
    let addr: SocketAddr = match addr.strip_prefix("*:") {
        Some(port) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port.parse().unwrap()),
        None => addr.parse().unwrap(),
    };
    FrontendKey {
        ip: addr.ip(),
        port: addr.port(),
        protocol: match proto {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => panic!("bad protocol {other}"),
        },
        scope,
    }
}

/// A frontend as [`frontend`] parses it: its `Display`, except that the IPv6
/// NodePort is `[::]:port` (both families' NodePorts display as `*:port`).
pub(super) fn show(f: &FrontendKey) -> String {
    if f.ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        let v4 = FrontendKey {
            ip: Ipv4Addr::UNSPECIFIED.into(),
            ..*f
        };
        v4.to_string().replacen('*', "[::]", 1)
    } else {
        f.to_string()
    }
}

/// The virtual service on `frontend` ("10.96.0.10:80/TCP"); panics if absent.
pub(super) fn vs<'a>(t: &'a Translation, f: &str) -> &'a VirtualService {
    t.desired
        .services
        .get(&frontend(f))
        .unwrap_or_else(|| panic!("no virtual service {f}; have {:?}", frontends(t)))
}

/// The backends of `frontend` as strings.
pub(super) fn backends(t: &Translation, f: &str) -> Vec<String> {
    vs(t, f).backends.iter().map(ToString::to_string).collect()
}

pub(super) fn frontends(t: &Translation) -> Vec<String> {
    t.desired.services.keys().map(show).collect()
}

/// Every virtual service as `frontend kind -> backends`, with ` from ranges` when it
/// has source ranges, in frontend order.
pub(super) fn table(t: &Translation) -> Vec<String> {
    t.desired
        .services
        .values()
        .map(|v| {
            let backends: Vec<String> = v.backends.iter().map(ToString::to_string).collect();
            let mut line = format!(
                "{} {}{} -> {}",
                show(&v.frontend),
                v.kind,
                if v.node_local { " (local)" } else { "" },
                if backends.is_empty() {
                    "(none)".to_string()
                } else {
                    backends.join(" ")
                }
            );
            if !v.source_ranges.is_empty() {
                let ranges: Vec<String> = v.source_ranges.iter().map(ToString::to_string).collect();
                line += &format!(" from {}", ranges.join(" "));
            }
            line
        })
        .collect()
}

pub(super) fn skipped(t: &Translation) -> Vec<String> {
    t.skipped
        .iter()
        .map(|s| format!("{}: {}", s.object, s.reason))
        .collect()
}

pub(super) const WEB: &str = "10.96.0.10:80/TCP";

pub(super) fn local_web() -> Service {
    with(web(), |s| {
        spec(s).internal_traffic_policy = Some("Local".into());
    })
}

pub(super) fn created(mut s: Service, at: &str) -> Service {
    s.metadata.creation_timestamp = Some(Time(at.parse().unwrap()));
    s
}

/// `s` as a NodePort service with `node_ports[i]` on its i-th port.
pub(super) fn node_ports(mut s: Service, node_ports: &[i32]) -> Service {
    spec(&mut s).type_ = Some("NodePort".into());
    for (p, &n) in spec(&mut s)
        .ports
        .as_mut()
        .unwrap()
        .iter_mut()
        .zip(node_ports)
    {
        p.node_port = Some(n);
    }
    s
}

/// `s` as a LoadBalancer service with these `status.loadBalancer.ingress` IPs.
pub(super) fn load_balancer(mut s: Service, ips: &[&str]) -> Service {
    spec(&mut s).type_ = Some("LoadBalancer".into());
    s.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(
                ips.iter()
                    .map(|ip| LoadBalancerIngress {
                        ip: Some(ip.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }),
        ..Default::default()
    });
    s
}

pub(super) fn external_local(s: Service) -> Service {
    with(s, |s| {
        spec(s).external_traffic_policy = Some("Local".into())
    })
}

/// `demo/web` as a NodePort service on 30080.
pub(super) fn web_node_port() -> Service {
    node_ports(web(), &[30080])
}

/// One endpoint on this node and one on node-b.
pub(super) fn spread() -> Vec<EndpointSlice> {
    vec![web_slice(
        "web-1",
        vec![
            on(ep("10.244.0.11"), "node-a"),
            on(ep("10.244.1.12"), "node-b"),
        ],
    )]
}

pub(super) const NP: &str = "*:30080/TCP";

pub(super) const NP_EXT: &str = "*:30080/TCP (external)";

pub(super) fn translator(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Translator {
    let mut world = World::default();
    world.reset(snapshot(services, slices));
    let mut t = Translator::default();
    t.rebuild(&world, &node());
    t
}

pub(super) const LB: &str = "192.0.2.100:80/TCP";

pub(super) const LB_EXT: &str = "192.0.2.100:80/TCP (external)";

pub(super) fn source_ranges(s: Service, ranges: &[&str]) -> Service {
    with(s, |s| {
        spec(s).load_balancer_source_ranges = Some(ranges.iter().map(|r| r.to_string()).collect());
    })
}
