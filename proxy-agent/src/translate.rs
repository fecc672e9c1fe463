//! The pure translation layer: Services and EndpointSlices in, [`DesiredState`] out.
//! No I/O; this is where kube-proxy's Service semantics live.
//!
//! For every Service, every port and every ClusterIP (one per family) becomes one
//! [`VirtualService`]. The rules, after kube-proxy (`pkg/proxy`: `endpointslicecache.go`,
//! `topology.go`, `servicechangetracker.go`):
//!
//! - Skipped silently: Services labelled `service.kubernetes.io/service-proxy-name`
//!   (another proxy owns them), `ExternalName` Services and headless Services
//!   (`clusterIP: None`). Skipped with a [`Skipped`] entry: Services that fail
//!   [`validate::service`] (whole, never half), Services with no ClusterIP at all, SCTP
//!   ports (the other ports are still served), ClusterIPs of a family this node lacks,
//!   and the loser of two Services claiming the same frontend.
//! - EndpointSlices belong to the Service named by their `kubernetes.io/service-name`
//!   label in their namespace; a slice port matches a service port by name and protocol
//!   and gives the target port number (this is how a named `targetPort` resolves). Only
//!   an endpoint's first address is used; an address seen in several slices counts once,
//!   the non-terminating copy winning. Invalid slices are reported and ignored; FQDN
//!   slices are ignored.
//! - Usable endpoints are the ready ones (`ready` unset counts as ready); when none is,
//!   the ones that are serving and terminating. `internalTrafficPolicy: Local` narrows
//!   this to endpoints on this node, with its own terminating fallback, and no local
//!   endpoint means no backends (connections refused).
//! - Topology, as kube-proxy 1.33+ decides it (`topologyModeFromHints`): when every
//!   ready endpoint has a node hint and one is for this node, only endpoints hinted for
//!   this node are used; else when every ready endpoint has a zone hint and one is for
//!   this node's zone, only those. The Service's `trafficDistribution` and
//!   `service.kubernetes.io/topology-mode` are not read here: the EndpointSlice
//!   controller writes hints only for Services that ask for them, and kube-proxy trusts
//!   the hints. Topology never applies to the terminating fallback or to a `Local`
//!   policy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::jiff::Timestamp;

use crate::model::{
    DesiredState, Frontend, FrontendKind, Protocol, ServicePortName, VirtualService,
};
use crate::source::{ObjectKey, Snapshot, World};
use crate::validate::{self, LABEL_SERVICE_NAME, family_name, namespace_of, parse_ip};

/// Services with this label belong to another service proxy.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";

/// The EndpointSlice controller marks the slices of headless Services with this label;
/// kube-proxy does not watch them.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";

/// The ClientIP affinity timeout when a Service does not set one (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// What the translation needs to know about the node it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeContext {
    /// The node's name, compared with endpoints' `nodeName` (empty: no endpoint is local).
    pub name: String,
    /// The node's `topology.kubernetes.io/zone` label, if any.
    pub zone: Option<String>,
    /// Whether the node has IPv4.
    pub ipv4: bool,
    /// Whether the node has IPv6.
    pub ipv6: bool,
}

/// An object, or part of one, that is not served, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// `Service ns/name` or `EndpointSlice ns/name`.
    pub object: String,
    /// Why.
    pub reason: String,
}

/// The result of [`translate`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Translation {
    /// What the data plane should serve.
    pub desired: DesiredState,
    /// What was left out, in a stable order.
    pub skipped: Vec<Skipped>,
}

/// Translates a snapshot into the data plane's desired state for `node`.
pub fn translate(snapshot: &Snapshot, node: &NodeContext) -> Translation {
    let mut skipped = Vec::new();
    let slices = index_slices(snapshot, &mut skipped);

    let mut candidates = Vec::new();
    for svc in snapshot.services.values() {
        let own = slices
            .get(&(
                namespace_of(&svc.metadata),
                svc.metadata.name.as_deref().unwrap_or(""),
            ))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if let Some(candidate) = service(svc, own, node, &mut skipped) {
            candidates.push(candidate);
        }
    }

    let (desired, losers) = settle(candidates.iter());
    skipped.extend(losers.into_values());
    Translation { desired, skipped }
}

/// Incremental translation, with the same results as [`translate`]: it keeps each
/// Service's translation and redoes only those whose Service or EndpointSlices
/// changed, so that one changed endpoint costs the same with 10 or 10,000 Services.
/// Frontend conflicts are settled incrementally while there are none (the normal
/// case), and from scratch otherwise.
#[derive(Debug, Default)]
pub struct Translator {
    /// Each Service's candidate (None: not served) and what it skipped.
    services: BTreeMap<ObjectKey, (Option<Candidate>, Vec<Skipped>)>,
    desired: DesiredState,
    /// Which Service serves each frontend.
    owner: BTreeMap<Frontend, ObjectKey>,
    /// Services left out by a frontend conflict.
    losers: BTreeMap<String, Skipped>,
    /// What the last update skipped (of the Services it translated, and conflicts).
    last_skipped: Vec<Skipped>,
    /// Skipped entries over all Services.
    skipped_count: usize,
    /// Local-policy frontends without a local endpoint, over all Services.
    no_local_endpoints: usize,
}

impl Translator {
    /// What the data plane should serve.
    pub fn desired(&self) -> &DesiredState {
        &self.desired
    }

    /// Everything left out, in a stable order.
    pub fn skipped(&self) -> Vec<Skipped> {
        let mut out: Vec<Skipped> = self
            .services
            .values()
            .flat_map(|(_, s)| s.iter().cloned())
            .collect();
        out.extend(self.losers.values().cloned());
        out
    }

    /// What the last [`Translator::update`] or [`Translator::rebuild`] skipped: the
    /// problems of the Services it translated, and every frontend conflict.
    pub fn last_skipped(&self) -> &[Skipped] {
        &self.last_skipped
    }

    /// Frontends with `internalTrafficPolicy: Local` that have endpoints, none of them
    /// on this node (their connections are refused).
    pub fn no_local_endpoints(&self) -> usize {
        self.no_local_endpoints
    }

    /// How many entries [`Translator::skipped`] would return.
    pub fn skipped_count(&self) -> usize {
        self.skipped_count
    }

    /// Translates every Service again (a new world, or a new node context). Returns
    /// the frontends whose desired state changed.
    pub fn rebuild(&mut self, world: &World, node: &NodeContext) -> BTreeSet<Frontend> {
        let before = std::mem::take(&mut self.desired);
        self.services.clear();
        self.owner.clear();
        self.losers.clear();
        self.skipped_count = 0;
        self.no_local_endpoints = 0;
        let keys: Vec<ObjectKey> = world.snapshot().services.keys().cloned().collect();
        let mut changed = self.update(world, keys, node);
        for (f, vs) in &before.services {
            if self.desired.services.get(f) != Some(vs) {
                changed.insert(*f);
            }
        }
        changed
    }

    /// Translates the Services `dirty` again. Returns the frontends whose desired
    /// state changed.
    pub fn update(
        &mut self,
        world: &World,
        dirty: impl IntoIterator<Item = ObjectKey>,
        node: &NodeContext,
    ) -> BTreeSet<Frontend> {
        let mut changed = BTreeSet::new();
        let mut contested = !self.losers.is_empty();
        let mut keys = Vec::new();
        self.last_skipped.clear();
        for key in dirty {
            let mut skipped = Vec::new();
            let candidate = world.snapshot().services.get(&key).and_then(|svc| {
                let mut slices = world.slices_of(&key);
                slices.retain(|sl| usable_slice(sl, &mut skipped).is_some());
                service(svc, &slices, node, &mut skipped)
            });
            if let Some(c) = &candidate {
                contested |= c
                    .services
                    .iter()
                    .any(|vs| self.owner.get(&vs.frontend).is_some_and(|o| *o != key));
            }
            self.last_skipped.extend(skipped.iter().cloned());
            self.skipped_count += skipped.len();
            self.no_local_endpoints += candidate.as_ref().map_or(0, |c| c.no_local_endpoints);
            // The frontends this Service held before are released (and maybe retaken).
            let old = if world.snapshot().services.contains_key(&key) {
                self.services.insert(key.clone(), (candidate, skipped))
            } else {
                self.services.remove(&key)
            };
            if let Some((old_candidate, old_skipped)) = &old {
                self.skipped_count -= old_skipped.len().min(self.skipped_count);
                let n = old_candidate.as_ref().map_or(0, |c| c.no_local_endpoints);
                self.no_local_endpoints -= n.min(self.no_local_endpoints);
            }
            if let Some((Some(old), _)) = old {
                for vs in &old.services {
                    if self.owner.get(&vs.frontend) == Some(&key) {
                        changed.insert(vs.frontend);
                    }
                }
            }
            keys.push(key);
        }

        if contested {
            return self.settle_all(changed);
        }
        for f in &changed {
            self.owner.remove(f);
            self.desired.services.remove(f);
        }
        for key in keys {
            let Some((Some(c), _)) = self.services.get(&key) else {
                continue;
            };
            // Two of this batch's Services on one frontend: settle from scratch.
            if c.services
                .iter()
                .any(|vs| self.owner.get(&vs.frontend).is_some_and(|o| *o != key))
            {
                return self.settle_all(changed);
            }
            for vs in &c.services {
                self.owner.insert(vs.frontend, key.clone());
                self.desired.insert(vs.clone());
                changed.insert(vs.frontend);
            }
        }
        changed
    }

    /// Settles every conflict from scratch; returns `changed` plus every frontend whose
    /// desired state differs from before.
    fn settle_all(&mut self, mut changed: BTreeSet<Frontend>) -> BTreeSet<Frontend> {
        let (desired, losers) = settle(self.services.values().filter_map(|(c, _)| c.as_ref()));
        for (f, vs) in &desired.services {
            if self.desired.services.get(f) != Some(vs) {
                changed.insert(*f);
            }
        }
        for f in self.desired.services.keys() {
            if !desired.services.contains_key(f) {
                changed.insert(*f);
            }
        }
        self.owner = desired
            .services
            .values()
            .map(|vs| {
                (
                    vs.frontend,
                    (vs.name.namespace.clone(), vs.name.name.clone()),
                )
            })
            .collect();
        self.desired = desired;
        self.skipped_count -= self.losers.len().min(self.skipped_count);
        self.skipped_count += losers.len();
        self.last_skipped.extend(losers.values().cloned());
        self.losers = losers;
        changed
    }
}

/// Settles frontend conflicts. Two Services on one frontend: the older wins, then the
/// smaller namespace/name. A timestamp-less Service (typical of hand-written manifests)
/// counts as newest. Claims are made in that order, so a Service is only ever displaced
/// by one that is actually served, and a loser is left out whole. Returns the desired
/// state and the losers by `namespace/name`.
fn settle<'a>(
    candidates: impl Iterator<Item = &'a Candidate>,
) -> (DesiredState, BTreeMap<String, Skipped>) {
    let mut candidates: Vec<&Candidate> = candidates.collect();
    candidates.sort_by(|a, b| {
        (a.created.is_none(), a.created, &a.id).cmp(&(b.created.is_none(), b.created, &b.id))
    });
    let mut desired = DesiredState::default();
    let mut owner: BTreeMap<Frontend, &str> = BTreeMap::new();
    let mut losers = BTreeMap::new();
    for candidate in candidates {
        let clash = candidate
            .services
            .iter()
            .find_map(|vs| owner.get(&vs.frontend).map(|o| (vs.frontend, *o)));
        if let Some((frontend, winner)) = clash {
            losers.insert(
                candidate.id.clone(),
                Skipped {
                    object: format!("Service {}", candidate.id),
                    reason: format!(
                        "frontend {frontend} is already served by Service {winner}, which is older \
                         (or as old and sorts first); Service {} is not served",
                        candidate.id
                    ),
                },
            );
            continue;
        }
        for vs in &candidate.services {
            owner.insert(vs.frontend, &candidate.id);
            desired.insert(vs.clone());
        }
    }
    (desired, losers)
}

/// A Service's frontends before frontend conflicts are settled.
#[derive(Debug)]
struct Candidate {
    /// `namespace/name`.
    id: String,
    created: Option<Timestamp>,
    services: Vec<VirtualService>,
    /// Frontends with `internalTrafficPolicy: Local` that have endpoints, but none on
    /// this node (kube-proxy's `sync_proxy_rules_no_local_endpoints_total`).
    no_local_endpoints: usize,
}

/// Valid IP slices grouped by (namespace, service name), in slice-name order.
type SliceIndex<'a> = BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>;

fn index_slices<'a>(snapshot: &'a Snapshot, skipped: &mut Vec<Skipped>) -> SliceIndex<'a> {
    let mut index = SliceIndex::new();
    for slice in snapshot.slices.values() {
        if let Some(service) = usable_slice(slice, skipped) {
            index
                .entry((namespace_of(&slice.metadata), service))
                .or_default()
                .push(slice);
        }
    }
    index
}

/// The Service a slice serves, if the slice is usable: valid, of an IP family, and not
/// one kube-proxy's informers ignore. Invalid slices are reported.
fn usable_slice<'a>(slice: &'a EndpointSlice, skipped: &mut Vec<Skipped>) -> Option<&'a str> {
    let labels = slice.metadata.labels.as_ref();
    // kube-proxy's informers never see these.
    if labels.is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME))
        || labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS))
    {
        return None;
    }
    if let Err(e) = validate::endpoint_slice(slice) {
        skipped.push(Skipped {
            object: format!(
                "EndpointSlice {}/{}",
                namespace_of(&slice.metadata),
                slice.metadata.name.as_deref().unwrap_or("")
            ),
            reason: e.to_string(),
        });
        return None;
    }
    if slice.address_type == "FQDN" {
        return None;
    }
    labels
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .map(String::as_str)
}

fn service(
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
    for ip in cluster_ips {
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
    let local_policy = spec.internal_traffic_policy.as_deref() == Some("Local");

    let mut services = Vec::new();
    let mut no_local_endpoints = 0;
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
        for &vip in &vips {
            let endpoints = endpoints(service_slices, port, protocol, vip, node);
            let backends = if local_policy {
                local_endpoints(&endpoints)
            } else {
                cluster_endpoints(&endpoints, node)
            };
            if local_policy && backends.is_empty() && !endpoints.is_empty() {
                no_local_endpoints += 1;
            }
            services.push(VirtualService {
                name: ServicePortName {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    port: port.name.clone().unwrap_or_default(),
                },
                frontend: Frontend::internal(vip, port_number, protocol),
                backends,
                affinity_timeout_s,
                kind: FrontendKind::ClusterIp,
                source_ranges: Vec::new(),
            });
        }
    }
    Some(Candidate {
        id,
        created: svc.metadata.creation_timestamp.as_ref().map(|t| t.0),
        services,
        no_local_endpoints,
    })
}

fn port_label(port: &ServicePort) -> String {
    match port.name.as_deref() {
        Some(name) if !name.is_empty() => format!("{name:?}"),
        _ => "(unnamed)".into(),
    }
}

/// One endpoint as kube-proxy sees it for one service port.
#[derive(Debug)]
struct Ep<'a> {
    addr: SocketAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    zone_hints: BTreeSet<&'a str>,
    node_hints: BTreeSet<&'a str>,
}

impl Ep<'_> {
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// The endpoints of one service port in the VIP's family, deduplicated by ip:port.
fn endpoints<'a>(
    slices: &[&'a EndpointSlice],
    port: &ServicePort,
    protocol: Protocol,
    vip: IpAddr,
    node: &NodeContext,
) -> Vec<Ep<'a>> {
    let family = family_name(&vip);
    let port_name = port.name.as_deref().unwrap_or("");
    let mut by_addr: BTreeMap<SocketAddr, Ep<'a>> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.address_type == family) {
        for slice_port in slice.ports.iter().flatten() {
            // The API server defaults an absent name to "" and protocol to TCP.
            if slice_port.name.as_deref().unwrap_or("") != port_name
                || slice_port.protocol.as_deref().unwrap_or("TCP") != protocol.to_string()
            {
                continue;
            }
            // An absent port (meant as "all ports") is not supported, as in kube-proxy.
            let Some(target) = slice_port.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            if target == 0 {
                continue;
            }
            for endpoint in &slice.endpoints {
                let Some(ep) = endpoint_info(endpoint, target, vip, node) else {
                    continue;
                };
                // The same address in two slices (an endpoint moving between slices, or
                // an IP reused by a new pod while the old one terminates): prefer the
                // copy that is not terminating.
                if !by_addr.contains_key(&ep.addr) || !ep.terminating {
                    by_addr.insert(ep.addr, ep);
                }
            }
        }
    }
    by_addr.into_values().collect()
}

fn endpoint_info<'a>(
    endpoint: &'a Endpoint,
    target: u16,
    vip: IpAddr,
    node: &NodeContext,
) -> Option<Ep<'a>> {
    // Consumers use the first address only (EndpointSlice API contract).
    let ip = parse_ip(endpoint.addresses.first()?)?;
    if ip.is_ipv4() != vip.is_ipv4() {
        return None;
    }
    let conditions = endpoint.conditions.as_ref();
    let hints = endpoint.hints.as_ref();
    Some(Ep {
        addr: SocketAddr::new(ip, target),
        ready: conditions.and_then(|c| c.ready).unwrap_or(true),
        serving: conditions.and_then(|c| c.serving).unwrap_or(true),
        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        local: !node.name.is_empty() && endpoint.node_name.as_deref() == Some(node.name.as_str()),
        zone_hints: hints
            .and_then(|h| h.for_zones.as_ref())
            .into_iter()
            .flatten()
            .map(|z| z.name.as_str())
            .collect(),
        node_hints: hints
            .and_then(|h| h.for_nodes.as_ref())
            .into_iter()
            .flatten()
            .map(|n| n.name.as_str())
            .collect(),
    })
}

/// Which hints restrict the cluster endpoint set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopologyMode {
    /// No restriction.
    None,
    /// Only endpoints hinted for this node.
    SameNode,
    /// Only endpoints hinted for this node's zone.
    SameZone,
}

/// kube-proxy's `topologyModeFromHints`: hints count only if every ready endpoint has
/// one of the kind and at least one names this node (zone).
fn topology_mode(endpoints: &[Ep<'_>], node: &str, zone: &str) -> TopologyMode {
    let ready: Vec<&Ep<'_>> = endpoints.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return TopologyMode::None;
    }
    if ready.iter().all(|e| !e.node_hints.is_empty())
        && ready.iter().any(|e| e.node_hints.contains(node))
    {
        return TopologyMode::SameNode;
    }
    if ready.iter().all(|e| !e.zone_hints.is_empty())
        && ready.iter().any(|e| e.zone_hints.contains(zone))
    {
        return TopologyMode::SameZone;
    }
    TopologyMode::None
}

/// The Cluster traffic policy's endpoints (kube-proxy's `CategorizeEndpoints`).
fn cluster_endpoints(endpoints: &[Ep<'_>], node: &NodeContext) -> Vec<SocketAddr> {
    let zone = node.zone.as_deref().unwrap_or("");
    let mode = topology_mode(endpoints, &node.name, zone);
    let available = |e: &Ep<'_>| match mode {
        TopologyMode::None => true,
        TopologyMode::SameNode => e.node_hints.contains(node.name.as_str()),
        TopologyMode::SameZone => e.zone_hints.contains(zone),
    };
    let ready: Vec<SocketAddr> = endpoints
        .iter()
        .filter(|e| e.ready && available(e))
        .map(|e| e.addr)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    // No ready endpoint anywhere (the topology mode would have been None otherwise):
    // fall back to endpoints still serving while they terminate, ignoring topology.
    endpoints
        .iter()
        .filter(|e| e.serving_terminating())
        .map(|e| e.addr)
        .collect()
}

/// The Local traffic policy's endpoints: this node's ready ones, else this node's
/// serving-and-terminating ones; never topology-filtered.
fn local_endpoints(endpoints: &[Ep<'_>]) -> Vec<SocketAddr> {
    let ready: Vec<SocketAddr> = endpoints
        .iter()
        .filter(|e| e.local && e.ready)
        .map(|e| e.addr)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .iter()
        .filter(|e| e.local && e.serving_terminating())
        .map(|e| e.addr)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::sync::Arc;

    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{
        ClientIPConfig, ServicePort, ServiceSpec, SessionAffinityConfig,
    };
    use k8s_openapi::api::discovery::v1::{
        EndpointConditions, EndpointHints, EndpointPort, ForNode, ForZone,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;

    // ---- builders ------------------------------------------------------------------

    /// A ClusterIP service `ns/name` on `ip` with `(name, port, protocol)` ports; the
    /// target port is a number 1000 above the port (slices decide the real one).
    fn svc(ns: &str, name: &str, ip: &str, ports: &[(&str, i32, &str)]) -> Service {
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
    fn web() -> Service {
        svc("demo", "web", "10.96.0.10", &[("http", 80, "TCP")])
    }

    fn spec(s: &mut Service) -> &mut ServiceSpec {
        s.spec.as_mut().unwrap()
    }

    fn with(mut s: Service, f: impl FnOnce(&mut Service)) -> Service {
        f(&mut s);
        s
    }

    /// An EndpointSlice `ns/name` for `service` with `(name, port, protocol)` ports.
    fn slice(
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
    fn web_slice(name: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
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
    fn ep(address: &str) -> Endpoint {
        Endpoint {
            addresses: vec![address.into()],
            ..Default::default()
        }
    }

    fn conditions(
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

    fn not_ready(e: Endpoint) -> Endpoint {
        conditions(e, Some(false), Some(false), Some(false))
    }

    /// Terminating and still serving (a pod in its grace period).
    fn terminating(e: Endpoint) -> Endpoint {
        conditions(e, Some(false), Some(true), Some(true))
    }

    fn on(mut e: Endpoint, node: &str) -> Endpoint {
        e.node_name = Some(node.into());
        e
    }

    fn for_zones(mut e: Endpoint, zones: &[&str]) -> Endpoint {
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

    fn for_nodes(mut e: Endpoint, nodes: &[&str]) -> Endpoint {
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
    fn node() -> NodeContext {
        NodeContext {
            name: "node-a".into(),
            zone: Some("zone-a".into()),
            ipv4: true,
            ipv6: true,
        }
    }

    fn snapshot(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Snapshot {
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

    fn run(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Translation {
        translate(&snapshot(services, slices), &node())
    }

    fn frontend(s: &str) -> Frontend {
        let (addr, proto) = s.rsplit_once('/').unwrap();
        let addr: SocketAddr = addr.parse().unwrap();
        Frontend::internal(
            addr.ip(),
            addr.port(),
            match proto {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                other => panic!("bad protocol {other}"),
            },
        )
    }

    /// The virtual service on `frontend` ("10.96.0.10:80/TCP"); panics if absent.
    fn vs<'a>(t: &'a Translation, f: &str) -> &'a VirtualService {
        t.desired
            .services
            .get(&frontend(f))
            .unwrap_or_else(|| panic!("no virtual service {f}; have {:?}", frontends(t)))
    }

    /// The backends of `frontend` as strings.
    fn backends(t: &Translation, f: &str) -> Vec<String> {
        vs(t, f).backends.iter().map(ToString::to_string).collect()
    }

    fn frontends(t: &Translation) -> Vec<String> {
        t.desired.services.keys().map(ToString::to_string).collect()
    }

    fn skipped(t: &Translation) -> Vec<String> {
        t.skipped
            .iter()
            .map(|s| format!("{}: {}", s.object, s.reason))
            .collect()
    }

    const WEB: &str = "10.96.0.10:80/TCP";

    // ---- services, ports, frontends -------------------------------------------------

    #[test]
    fn a_cluster_ip_service_balances_over_its_ready_endpoints() {
        let t = run(
            vec![web()],
            vec![web_slice(
                "web-1",
                vec![ep("10.244.0.12"), ep("10.244.0.11"), ep("10.244.1.13")],
            )],
        );
        assert_eq!(
            vs(&t, WEB),
            &VirtualService {
                name: ServicePortName {
                    namespace: "demo".into(),
                    name: "web".into(),
                    port: "http".into(),
                },
                frontend: frontend(WEB),
                backends: vec![
                    "10.244.0.11:8080".parse().unwrap(),
                    "10.244.0.12:8080".parse().unwrap(),
                    "10.244.1.13:8080".parse().unwrap(),
                ],
                affinity_timeout_s: None,
                kind: FrontendKind::ClusterIp,
                source_ranges: Vec::new(),
            }
        );
        assert_eq!(frontends(&t), [WEB]);
        assert!(t.skipped.is_empty(), "{:?}", t.skipped);
    }

    #[test]
    fn each_port_of_a_service_becomes_its_own_frontend() {
        let s = svc(
            "demo",
            "dns",
            "10.96.0.53",
            &[
                ("dns", 53, "UDP"),
                ("dns-tcp", 53, "TCP"),
                ("metrics", 9153, "TCP"),
            ],
        );
        let sl = slice(
            "demo",
            "dns-1",
            "dns",
            "IPv4",
            &[
                ("dns", 5353, "UDP"),
                ("dns-tcp", 5353, "TCP"),
                ("metrics", 9153, "TCP"),
            ],
            vec![ep("10.244.0.5")],
        );
        let t = run(vec![s], vec![sl]);
        assert_eq!(
            frontends(&t),
            [
                "10.96.0.53:53/TCP",
                "10.96.0.53:53/UDP",
                "10.96.0.53:9153/TCP"
            ]
        );
        assert_eq!(backends(&t, "10.96.0.53:53/UDP"), ["10.244.0.5:5353"]);
        assert_eq!(backends(&t, "10.96.0.53:53/TCP"), ["10.244.0.5:5353"]);
        assert_eq!(backends(&t, "10.96.0.53:9153/TCP"), ["10.244.0.5:9153"]);
        assert_eq!(vs(&t, "10.96.0.53:53/TCP").name.port, "dns-tcp");
    }

    #[test]
    fn slice_ports_match_service_ports_by_name_not_by_number() {
        // The slice lists "metrics" first and uses numbers unrelated to the service's.
        let s = svc(
            "demo",
            "web",
            "10.96.0.10",
            &[("http", 80, "TCP"), ("metrics", 9090, "TCP")],
        );
        let sl = slice(
            "demo",
            "web-1",
            "web",
            "IPv4",
            &[("metrics", 80, "TCP"), ("http", 9090, "TCP")],
            vec![ep("10.244.0.11")],
        );
        let t = run(vec![s], vec![sl]);
        assert_eq!(backends(&t, WEB), ["10.244.0.11:9090"]);
        assert_eq!(backends(&t, "10.96.0.10:9090/TCP"), ["10.244.0.11:80"]);
    }

    #[test]
    fn a_slice_port_with_the_right_name_but_another_protocol_does_not_match() {
        let sl = slice(
            "demo",
            "web-1",
            "web",
            "IPv4",
            &[("http", 8080, "UDP")],
            vec![ep("10.244.0.11")],
        );
        let t = run(vec![web()], vec![sl]);
        assert_eq!(backends(&t, WEB), Vec::<String>::new());
    }

    #[test]
    fn a_named_target_port_resolves_through_the_slice_port_number() {
        let s = with(web(), |s| {
            spec(s).ports.as_mut().unwrap()[0].target_port =
                Some(IntOrString::String("web".into()));
        });
        // Pods may name the port differently per pod; the slices carry the numbers.
        let t = run(
            vec![s],
            vec![
                web_slice("web-1", vec![ep("10.244.0.11")]),
                slice(
                    "demo",
                    "web-2",
                    "web",
                    "IPv4",
                    &[("http", 8443, "TCP")],
                    vec![ep("10.244.0.12")],
                ),
            ],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.0.12:8443"]);
    }

    #[test]
    fn an_unnamed_single_port_matches_an_unnamed_slice_port() {
        let s = svc("demo", "web", "10.96.0.10", &[("", 80, "TCP")]);
        let mut sl = web_slice("web-1", vec![ep("10.244.0.11")]);
        sl.ports.as_mut().unwrap()[0].name = None;
        sl.ports.as_mut().unwrap()[0].protocol = None; // defaults to TCP
        let t = run(vec![s], vec![sl]);
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
        assert_eq!(vs(&t, WEB).name.to_string(), "demo/web");
    }

    #[test]
    fn a_slice_port_without_a_number_is_ignored() {
        let mut sl = web_slice("web-1", vec![ep("10.244.0.11")]);
        sl.ports.as_mut().unwrap()[0].port = None;
        let t = run(vec![web()], vec![sl]);
        assert_eq!(backends(&t, WEB), Vec::<String>::new());
    }

    #[test]
    fn a_service_without_endpoints_is_served_with_no_backends_so_connections_are_refused() {
        let t = run(vec![web()], vec![]);
        assert_eq!(backends(&t, WEB), Vec::<String>::new());
        let t = run(vec![web()], vec![web_slice("web-1", vec![])]);
        assert_eq!(backends(&t, WEB), Vec::<String>::new());
    }

    #[test]
    fn a_service_without_a_namespace_is_in_default() {
        let mut s = svc("default", "web", "10.96.0.10", &[("http", 80, "TCP")]);
        s.metadata.namespace = None;
        let mut sl = slice(
            "default",
            "web-1",
            "web",
            "IPv4",
            &[("http", 8080, "TCP")],
            vec![ep("10.244.0.11")],
        );
        sl.metadata.namespace = None;
        let t = run(vec![s], vec![sl]);
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
        assert_eq!(vs(&t, WEB).name.namespace, "default");
    }

    // ---- slices ---------------------------------------------------------------------

    #[test]
    fn slices_belong_to_the_service_named_by_their_label_in_the_same_namespace() {
        let t = run(
            vec![web()],
            vec![
                web_slice("web-1", vec![ep("10.244.0.11")]),
                // Same service name, other namespace.
                slice(
                    "other",
                    "web-1",
                    "web",
                    "IPv4",
                    &[("http", 8080, "TCP")],
                    vec![ep("10.244.9.9")],
                ),
                // Same namespace, other service; the slice's own name is irrelevant.
                slice(
                    "demo",
                    "web-2",
                    "api",
                    "IPv4",
                    &[("http", 8080, "TCP")],
                    vec![ep("10.244.8.8")],
                ),
            ],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
    }

    #[test]
    fn endpoints_from_several_slices_are_merged_and_deduplicated() {
        let t = run(
            vec![web()],
            vec![
                web_slice("web-1", vec![ep("10.244.0.11"), ep("10.244.0.12")]),
                web_slice("web-2", vec![ep("10.244.0.12"), ep("10.244.0.13")]),
            ],
        );
        assert_eq!(
            backends(&t, WEB),
            ["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.13:8080"]
        );
    }

    #[test]
    fn the_same_ip_on_two_target_ports_gives_two_backends() {
        let t = run(
            vec![web()],
            vec![
                web_slice("web-1", vec![ep("10.244.0.11")]),
                slice(
                    "demo",
                    "web-2",
                    "web",
                    "IPv4",
                    &[("http", 8081, "TCP")],
                    vec![ep("10.244.0.11")],
                ),
            ],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.0.11:8081"]);
    }

    #[test]
    fn a_duplicate_endpoint_prefers_the_copy_that_is_not_terminating() {
        // A pod IP reused while the old pod terminates: whichever slice comes first,
        // the live copy decides, so the endpoint stays ready.
        for (first, second) in [
            (terminating(ep("10.244.0.11")), ep("10.244.0.11")),
            (ep("10.244.0.11"), terminating(ep("10.244.0.11"))),
        ] {
            let t = run(
                vec![web()],
                vec![
                    web_slice("web-1", vec![first]),
                    web_slice("web-2", vec![second, ep("10.244.0.12")]),
                ],
            );
            assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.0.12:8080"]);
        }
        // If both copies terminate, it is a terminating endpoint: not used while
        // another is ready.
        let t = run(
            vec![web()],
            vec![
                web_slice("web-1", vec![terminating(ep("10.244.0.11"))]),
                web_slice(
                    "web-2",
                    vec![terminating(ep("10.244.0.11")), ep("10.244.0.12")],
                ),
            ],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.12:8080"]);
    }

    #[test]
    fn only_the_first_address_of_an_endpoint_is_used() {
        let mut e = ep("10.244.0.11");
        e.addresses.push("10.244.0.99".into());
        let t = run(vec![web()], vec![web_slice("web-1", vec![e])]);
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
    }

    #[test]
    fn an_invalid_slice_is_reported_and_ignored_while_valid_ones_are_used() {
        let bad = web_slice("web-2", vec![ep("10.244.0.300")]);
        let t = run(
            vec![web()],
            vec![web_slice("web-1", vec![ep("10.244.0.11")]), bad],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
        assert_eq!(
            skipped(&t),
            [
                "EndpointSlice demo/web-2: endpoints[0].addresses[0]: \"10.244.0.300\" is not an IPv4 address (the slice's addressType is IPv4)"
            ]
        );
    }

    #[test]
    fn a_slice_without_the_service_name_label_is_reported_and_ignored() {
        let mut sl = web_slice("web-1", vec![ep("10.244.0.11")]);
        sl.metadata.labels = None;
        let t = run(vec![web()], vec![sl]);
        assert_eq!(backends(&t, WEB), Vec::<String>::new());
        assert_eq!(
            skipped(&t),
            [
                "EndpointSlice demo/web-1: metadata.labels[kubernetes.io/service-name]: is required: it names the Service this slice belongs to"
            ]
        );
    }

    #[test]
    fn fqdn_slices_and_slices_kube_proxy_does_not_watch_are_ignored_silently() {
        let fqdn = slice(
            "demo",
            "web-fqdn",
            "web",
            "FQDN",
            &[("http", 8080, "TCP")],
            vec![ep("web.example.com")],
        );
        let mut foreign = web_slice("web-foreign", vec![ep("10.244.0.21")]);
        foreign
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_SERVICE_PROXY_NAME.into(), "other-proxy".into());
        let mut headless = web_slice("web-headless", vec![ep("10.244.0.22")]);
        headless
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_HEADLESS.into(), String::new());
        let t = run(vec![web()], vec![fqdn, foreign, headless]);
        assert_eq!(backends(&t, WEB), Vec::<String>::new());
        assert!(t.skipped.is_empty(), "{:?}", t.skipped);
    }

    #[test]
    fn slices_of_a_family_only_feed_frontends_of_that_family() {
        let s = with(web(), |s| {
            spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
            spec(s).ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
        });
        let t = run(
            vec![s],
            vec![
                web_slice("web-v4", vec![ep("10.244.0.11")]),
                slice(
                    "demo",
                    "web-v6",
                    "web",
                    "IPv6",
                    &[("http", 8080, "TCP")],
                    vec![ep("fd00:244::11"), ep("fd00:244::12")],
                ),
            ],
        );
        assert_eq!(frontends(&t), [WEB, "[fd00::10]:80/TCP"]);
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
        assert_eq!(
            backends(&t, "[fd00::10]:80/TCP"),
            ["[fd00:244::11]:8080", "[fd00:244::12]:8080"]
        );
    }

    // ---- endpoint conditions ----------------------------------------------------------

    #[test]
    fn an_endpoint_is_ready_unless_ready_is_false() {
        let t = run(
            vec![web()],
            vec![web_slice(
                "web-1",
                vec![
                    ep("10.244.0.11"),
                    conditions(ep("10.244.0.12"), Some(true), None, None),
                    conditions(ep("10.244.0.13"), None, Some(false), Some(false)),
                    not_ready(ep("10.244.0.14")),
                    conditions(ep("10.244.0.15"), Some(false), None, None),
                ],
            )],
        );
        assert_eq!(
            backends(&t, WEB),
            ["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.13:8080"]
        );
    }

    #[test]
    fn terminating_endpoints_are_not_used_while_any_endpoint_is_ready() {
        let t = run(
            vec![web()],
            vec![web_slice(
                "web-1",
                vec![terminating(ep("10.244.0.11")), ep("10.244.1.12")],
            )],
        );
        assert_eq!(backends(&t, WEB), ["10.244.1.12:8080"]);
    }

    #[test]
    fn serving_terminating_endpoints_are_used_when_no_endpoint_is_ready() {
        let t = run(
            vec![web()],
            vec![web_slice(
                "web-1",
                vec![
                    terminating(ep("10.244.0.11")),
                    terminating(ep("10.244.1.12")),
                    not_ready(ep("10.244.0.13")),
                    // Terminating but no longer serving: never used.
                    conditions(ep("10.244.0.14"), Some(false), Some(false), Some(true)),
                    // Serving (unset) and terminating.
                    conditions(ep("10.244.0.15"), Some(false), None, Some(true)),
                ],
            )],
        );
        assert_eq!(
            backends(&t, WEB),
            ["10.244.0.11:8080", "10.244.0.15:8080", "10.244.1.12:8080"]
        );
    }

    #[test]
    fn serving_but_not_terminating_endpoints_are_never_a_fallback() {
        let t = run(
            vec![web()],
            vec![web_slice(
                "web-1",
                vec![conditions(
                    ep("10.244.0.11"),
                    Some(false),
                    Some(true),
                    Some(false),
                )],
            )],
        );
        assert_eq!(backends(&t, WEB), Vec::<String>::new());
    }

    // ---- internalTrafficPolicy ----------------------------------------------------------

    fn local_web() -> Service {
        with(web(), |s| {
            spec(s).internal_traffic_policy = Some("Local".into());
        })
    }

    #[test]
    fn internal_traffic_policy_local_uses_only_this_nodes_endpoints() {
        let t = run(
            vec![local_web()],
            vec![web_slice(
                "web-1",
                vec![
                    on(ep("10.244.0.11"), "node-a"),
                    on(ep("10.244.0.12"), "node-a"),
                    on(ep("10.244.1.13"), "node-b"),
                    ep("10.244.2.14"),
                ],
            )],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.0.12:8080"]);
    }

    #[test]
    fn internal_traffic_policy_local_without_a_local_endpoint_has_no_backends() {
        let t = run(
            vec![local_web()],
            vec![web_slice(
                "web-1",
                vec![
                    on(ep("10.244.1.13"), "node-b"),
                    not_ready(on(ep("10.244.0.11"), "node-a")),
                ],
            )],
        );
        assert_eq!(backends(&t, WEB), Vec::<String>::new());
        assert!(t.skipped.is_empty());
    }

    #[test]
    fn local_policy_frontends_without_a_local_endpoint_are_counted() {
        let mut world = World::default();
        world.reset(snapshot(
            vec![local_web()],
            vec![web_slice("web-1", vec![on(ep("10.244.1.5"), "node-b")])],
        ));
        let mut t = Translator::default();
        t.rebuild(&world, &node());
        assert_eq!(t.no_local_endpoints(), 1);
        let dirty = world.apply(
            vec![],
            vec![(
                ("demo".into(), "web-1".into()),
                Some(Arc::new(web_slice(
                    "web-1",
                    vec![on(ep("10.244.0.5"), "node-a")],
                ))),
            )],
        );
        t.update(&world, dirty, &node());
        assert_eq!(t.no_local_endpoints(), 0);
    }

    #[test]
    fn internal_traffic_policy_cluster_is_the_default_and_uses_every_node() {
        let s = with(web(), |s| {
            spec(s).internal_traffic_policy = Some("Cluster".into())
        });
        let t = run(
            vec![s],
            vec![web_slice(
                "web-1",
                vec![
                    on(ep("10.244.0.11"), "node-a"),
                    on(ep("10.244.1.13"), "node-b"),
                ],
            )],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.1.13:8080"]);
    }

    #[test]
    fn local_policy_falls_back_to_local_terminating_endpoints_even_when_remote_ones_are_ready() {
        let t = run(
            vec![local_web()],
            vec![web_slice(
                "web-1",
                vec![
                    terminating(on(ep("10.244.0.11"), "node-a")),
                    on(ep("10.244.1.13"), "node-b"),
                ],
            )],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
    }

    #[test]
    fn local_policy_prefers_local_ready_endpoints_over_local_terminating_ones() {
        let t = run(
            vec![local_web()],
            vec![web_slice(
                "web-1",
                vec![
                    terminating(on(ep("10.244.0.11"), "node-a")),
                    on(ep("10.244.0.12"), "node-a"),
                ],
            )],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.12:8080"]);
    }

    #[test]
    fn cluster_policy_falls_back_to_terminating_endpoints_on_any_node() {
        let t = run(
            vec![web()],
            vec![web_slice(
                "web-1",
                vec![
                    terminating(on(ep("10.244.0.11"), "node-a")),
                    terminating(on(ep("10.244.1.13"), "node-b")),
                ],
            )],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.1.13:8080"]);
    }

    #[test]
    fn a_node_without_a_name_has_no_local_endpoints() {
        let mut n = node();
        n.name = String::new();
        let mut e = ep("10.244.0.11");
        e.node_name = Some(String::new());
        let t = translate(
            &snapshot(vec![local_web()], vec![web_slice("web-1", vec![e])]),
            &n,
        );
        assert_eq!(backends(&t, WEB), Vec::<String>::new());
    }

    // ---- topology ---------------------------------------------------------------------

    #[test]
    fn zone_hints_restrict_endpoints_to_this_zone_when_every_ready_endpoint_has_one() {
        let t = run(
            vec![web()],
            vec![web_slice(
                "web-1",
                vec![
                    for_zones(ep("10.244.0.11"), &["zone-a"]),
                    for_zones(ep("10.244.1.12"), &["zone-b"]),
                    for_zones(ep("10.244.2.13"), &["zone-c", "zone-a"]),
                ],
            )],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.2.13:8080"]);
    }

    #[test]
    fn zone_hints_are_ignored_when_a_ready_endpoint_has_none() {
        let t = run(
            vec![web()],
            vec![web_slice(
                "web-1",
                vec![
                    for_zones(ep("10.244.0.11"), &["zone-a"]),
                    ep("10.244.1.12"),
                    for_zones(ep("10.244.2.13"), &[]), // an empty list is no hint
                ],
            )],
        );
        assert_eq!(
            backends(&t, WEB),
            ["10.244.0.11:8080", "10.244.1.12:8080", "10.244.2.13:8080"]
        );
    }

    #[test]
    fn zone_hints_are_ignored_when_none_is_for_this_zone() {
        let t = run(
            vec![web()],
            vec![web_slice(
                "web-1",
                vec![
                    for_zones(ep("10.244.1.11"), &["zone-b"]),
                    for_zones(ep("10.244.2.12"), &["zone-c"]),
                ],
            )],
        );
        assert_eq!(backends(&t, WEB), ["10.244.1.11:8080", "10.244.2.12:8080"]);
    }

    #[test]
    fn zone_hints_are_ignored_on_a_node_without_a_zone() {
        let mut n = node();
        n.zone = None;
        let t = translate(
            &snapshot(
                vec![web()],
                vec![web_slice(
                    "web-1",
                    vec![
                        for_zones(ep("10.244.0.11"), &["zone-a"]),
                        for_zones(ep("10.244.1.12"), &["zone-b"]),
                    ],
                )],
            ),
            &n,
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.1.12:8080"]);
    }

    #[test]
    fn endpoints_that_are_not_ready_do_not_need_hints() {
        let t = run(
            vec![web()],
            vec![web_slice(
                "web-1",
                vec![
                    for_zones(ep("10.244.0.11"), &["zone-a"]),
                    for_zones(ep("10.244.1.12"), &["zone-b"]),
                    not_ready(ep("10.244.0.13")),
                    terminating(ep("10.244.0.14")),
                ],
            )],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
    }

    #[test]
    fn node_hints_restrict_endpoints_to_this_node_when_every_ready_endpoint_has_one() {
        // PreferSameNode: the controller writes node and zone hints; node hints win.
        let t = run(
            vec![web()],
            vec![web_slice(
                "web-1",
                vec![
                    for_zones(for_nodes(ep("10.244.0.11"), &["node-a"]), &["zone-a"]),
                    for_zones(for_nodes(ep("10.244.0.12"), &["node-c"]), &["zone-a"]),
                    for_zones(for_nodes(ep("10.244.1.13"), &["node-b"]), &["zone-b"]),
                ],
            )],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
    }

    #[test]
    fn node_hints_fall_back_to_zone_hints_when_none_is_for_this_node() {
        let t = run(
            vec![web()],
            vec![web_slice(
                "web-1",
                vec![
                    for_zones(for_nodes(ep("10.244.0.12"), &["node-c"]), &["zone-a"]),
                    for_zones(for_nodes(ep("10.244.1.13"), &["node-b"]), &["zone-b"]),
                ],
            )],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.12:8080"]);
    }

    #[test]
    fn node_hints_are_ignored_when_a_ready_endpoint_has_none() {
        let t = run(
            vec![web()],
            vec![web_slice(
                "web-1",
                vec![for_nodes(ep("10.244.0.11"), &["node-a"]), ep("10.244.1.13")],
            )],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.1.13:8080"]);
    }

    #[test]
    fn topology_does_not_apply_to_the_terminating_fallback() {
        let t = run(
            vec![web()],
            vec![web_slice(
                "web-1",
                vec![
                    terminating(for_zones(ep("10.244.0.11"), &["zone-a"])),
                    terminating(for_zones(ep("10.244.1.12"), &["zone-b"])),
                ],
            )],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.1.12:8080"]);
    }

    #[test]
    fn topology_does_not_apply_under_a_local_traffic_policy() {
        let t = run(
            vec![local_web()],
            vec![web_slice(
                "web-1",
                vec![
                    on(for_zones(ep("10.244.0.11"), &["zone-b"]), "node-a"),
                    on(for_zones(ep("10.244.0.12"), &["zone-a"]), "node-a"),
                    on(for_zones(ep("10.244.1.13"), &["zone-a"]), "node-b"),
                ],
            )],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.0.12:8080"]);
    }

    #[test]
    fn hints_decide_topology_whatever_the_service_asks_for_as_in_kube_proxy() {
        // kube-proxy 1.33+ trusts the hints: the EndpointSlice controller writes them
        // only for services with trafficDistribution or topology-mode: Auto.
        let slices = || {
            vec![web_slice(
                "web-1",
                vec![
                    for_zones(ep("10.244.0.11"), &["zone-a"]),
                    for_zones(ep("10.244.1.12"), &["zone-b"]),
                ],
            )]
        };
        let prefer_close = with(web(), |s| {
            spec(s).traffic_distribution = Some("PreferClose".into());
        });
        let prefer_same_zone = with(web(), |s| {
            spec(s).traffic_distribution = Some("PreferSameZone".into());
        });
        let annotated = with(web(), |s| {
            s.metadata.annotations = Some(BTreeMap::from([(
                "service.kubernetes.io/topology-mode".to_string(),
                "Auto".to_string(),
            )]));
        });
        let legacy = with(web(), |s| {
            s.metadata.annotations = Some(BTreeMap::from([(
                "service.kubernetes.io/topology-aware-hints".to_string(),
                "auto".to_string(),
            )]));
        });
        for s in [web(), prefer_close, prefer_same_zone, annotated, legacy] {
            let t = run(vec![s], slices());
            assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
        }
        // Without hints, trafficDistribution alone changes nothing.
        let prefer_close = with(web(), |s| {
            spec(s).traffic_distribution = Some("PreferClose".into());
        });
        let t = run(
            vec![prefer_close],
            vec![web_slice(
                "web-1",
                vec![
                    on(ep("10.244.0.11"), "node-a"),
                    on(ep("10.244.1.12"), "node-b"),
                ],
            )],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.1.12:8080"]);
    }

    // ---- session affinity ---------------------------------------------------------------

    #[test]
    fn client_ip_affinity_uses_the_configured_timeout_or_three_hours() {
        let affinity = |timeout: Option<i32>| {
            with(web(), |s| {
                spec(s).session_affinity = Some("ClientIP".into());
                spec(s).session_affinity_config = timeout.map(|t| SessionAffinityConfig {
                    client_ip: Some(ClientIPConfig {
                        timeout_seconds: Some(t),
                    }),
                });
            })
        };
        let t = run(vec![affinity(Some(60))], vec![]);
        assert_eq!(vs(&t, WEB).affinity_timeout_s, Some(60));
        let t = run(vec![affinity(None)], vec![]);
        assert_eq!(vs(&t, WEB).affinity_timeout_s, Some(10800));
        let none = with(web(), |s| spec(s).session_affinity = Some("None".into()));
        let t = run(vec![none], vec![]);
        assert_eq!(vs(&t, WEB).affinity_timeout_s, None);
        let t = run(vec![web()], vec![]);
        assert_eq!(vs(&t, WEB).affinity_timeout_s, None);
    }

    #[test]
    fn affinity_applies_to_every_port_and_family_of_the_service() {
        let s = with(
            svc(
                "demo",
                "web",
                "10.96.0.10",
                &[("http", 80, "TCP"), ("q", 5000, "UDP")],
            ),
            |s| {
                spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
                spec(s).session_affinity = Some("ClientIP".into());
            },
        );
        let t = run(vec![s], vec![]);
        assert_eq!(t.desired.services.len(), 4);
        assert!(
            t.desired
                .services
                .values()
                .all(|v| v.affinity_timeout_s == Some(10800))
        );
    }

    // ---- families -----------------------------------------------------------------------

    #[test]
    fn a_dual_stack_service_gets_one_frontend_per_family_and_port() {
        let s = with(
            svc(
                "demo",
                "web",
                "fd00::10",
                &[("http", 80, "TCP"), ("dns", 53, "UDP")],
            ),
            |s| {
                spec(s).cluster_ips = Some(vec!["fd00::10".into(), "10.96.0.10".into()]);
                spec(s).ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
            },
        );
        let t = run(vec![s], vec![]);
        assert_eq!(
            frontends(&t),
            [
                "10.96.0.10:53/UDP",
                "10.96.0.10:80/TCP",
                "[fd00::10]:53/UDP",
                "[fd00::10]:80/TCP"
            ]
        );
    }

    #[test]
    fn a_single_stack_ipv6_service_is_served() {
        let s = svc("demo", "web", "fd00::10", &[("http", 80, "TCP")]);
        let sl = slice(
            "demo",
            "web-1",
            "web",
            "IPv6",
            &[("http", 8080, "TCP")],
            vec![ep("fd00:244::11")],
        );
        let t = run(vec![s], vec![sl]);
        assert_eq!(backends(&t, "[fd00::10]:80/TCP"), ["[fd00:244::11]:8080"]);
    }

    #[test]
    fn cluster_ip_alone_is_enough_without_cluster_ips() {
        let s = with(web(), |s| spec(s).cluster_ips = None);
        let t = run(vec![s], vec![web_slice("web-1", vec![ep("10.244.0.11")])]);
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
    }

    #[test]
    fn a_family_the_node_does_not_have_is_skipped_and_reported() {
        let s = with(web(), |s| {
            spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
        });
        let mut n = node();
        n.ipv6 = false;
        let t = translate(&snapshot(vec![s.clone()], vec![]), &n);
        assert_eq!(frontends(&t), [WEB]);
        assert_eq!(
            skipped(&t),
            [
                "Service demo/web: ClusterIP fd00::10 is IPv6, which this node does not have: its frontends are not served"
            ]
        );
        let mut n = node();
        n.ipv4 = false;
        let t = translate(&snapshot(vec![s], vec![]), &n);
        assert_eq!(frontends(&t), ["[fd00::10]:80/TCP"]);
        assert_eq!(t.skipped.len(), 1);
        assert!(
            t.skipped[0]
                .reason
                .starts_with("ClusterIP 10.96.0.10 is IPv4")
        );
    }

    // ---- skipping -----------------------------------------------------------------------

    #[test]
    fn headless_external_name_and_other_proxies_services_are_skipped_silently() {
        let headless = with(
            svc("demo", "headless", "None", &[("http", 80, "TCP")]),
            |s| {
                spec(s).cluster_ips = Some(vec!["None".into()]);
            },
        );
        let headless_no_ports = with(svc("demo", "headless2", "None", &[]), |s| {
            spec(s).ports = None;
        });
        let external = with(svc("demo", "ext", "", &[("http", 80, "TCP")]), |s| {
            spec(s).type_ = Some("ExternalName".into());
            spec(s).external_name = Some("db.example.com".into());
            spec(s).cluster_ips = None;
        });
        let foreign = with(
            svc("demo", "foreign", "10.96.0.20", &[("http", 80, "TCP")]),
            |s| {
                s.metadata.labels = Some(BTreeMap::from([(
                    LABEL_SERVICE_PROXY_NAME.to_string(),
                    "other-proxy".to_string(),
                )]));
            },
        );
        let t = run(
            vec![headless, headless_no_ports, external, foreign],
            vec![slice(
                "demo",
                "headless-1",
                "headless",
                "IPv4",
                &[("http", 8080, "TCP")],
                vec![ep("10.244.0.11")],
            )],
        );
        assert!(t.desired.services.is_empty());
        assert!(t.skipped.is_empty(), "{:?}", t.skipped);
    }

    #[test]
    fn a_service_without_a_cluster_ip_is_reported() {
        let s = with(web(), |s| {
            spec(s).cluster_ip = None;
            spec(s).cluster_ips = None;
        });
        let t = run(vec![s], vec![]);
        assert!(t.desired.services.is_empty());
        assert_eq!(
            skipped(&t),
            [
                "Service demo/web: has no clusterIP: nothing to serve (this agent does not allocate ClusterIPs; set spec.clusterIP)"
            ]
        );
    }

    #[test]
    fn sctp_ports_are_reported_and_the_other_ports_still_served() {
        let s = svc(
            "demo",
            "sig",
            "10.96.0.30",
            &[("http", 80, "TCP"), ("sig", 3868, "SCTP")],
        );
        let t = run(vec![s], vec![]);
        assert_eq!(frontends(&t), ["10.96.0.30:80/TCP"]);
        assert_eq!(
            skipped(&t),
            [
                "Service demo/sig: port \"sig\" (3868/SCTP): SCTP is not supported by this data plane yet; the service's other ports are served"
            ]
        );
    }

    #[test]
    fn an_invalid_service_is_skipped_whole_with_the_field_error() {
        let s = svc(
            "demo",
            "web",
            "10.96.0.10",
            &[("http", 80, "TCP"), ("admin", 70000, "TCP")],
        );
        let t = run(vec![s], vec![web_slice("web-1", vec![ep("10.244.0.11")])]);
        assert!(t.desired.services.is_empty(), "{:?}", frontends(&t));
        assert_eq!(
            skipped(&t),
            ["Service demo/web: spec.ports[1].port: 70000 is not in 1..=65535"]
        );
        let s = with(web(), |s| {
            spec(s).ports.as_mut().unwrap()[0].protocol = Some("ICMP".into());
        });
        let t = run(vec![s], vec![]);
        assert_eq!(
            skipped(&t),
            ["Service demo/web: spec.ports[0].protocol: unknown protocol \"ICMP\""]
        );
    }

    #[test]
    fn an_invalid_service_does_not_affect_others() {
        let bad = with(
            svc("demo", "bad", "10.96.0.99", &[("http", 80, "TCP")]),
            |s| {
                spec(s).cluster_ip = Some("10.96.0.999".into());
                spec(s).cluster_ips = None;
            },
        );
        let t = run(
            vec![bad, web()],
            vec![web_slice("web-1", vec![ep("10.244.0.11")])],
        );
        assert_eq!(frontends(&t), [WEB]);
        assert_eq!(
            skipped(&t),
            [
                "Service demo/bad: spec.clusterIP: \"10.96.0.999\" is not an IP address, \"None\" or empty"
            ]
        );
    }

    // ---- frontend conflicts -------------------------------------------------------------

    fn created(mut s: Service, at: &str) -> Service {
        s.metadata.creation_timestamp = Some(Time(at.parse().unwrap()));
        s
    }

    #[test]
    fn of_two_services_on_one_frontend_the_older_wins_and_the_loser_is_reported() {
        let old = created(
            svc("zzz", "old", "10.96.0.10", &[("http", 80, "TCP")]),
            "2024-01-01T00:00:00Z",
        );
        let new = created(
            svc(
                "aaa",
                "new",
                "10.96.0.10",
                &[("http", 80, "TCP"), ("other", 81, "TCP")],
            ),
            "2025-01-01T00:00:00Z",
        );
        let t = run(vec![new, old], vec![]);
        assert_eq!(frontends(&t), [WEB]);
        assert_eq!(vs(&t, WEB).name.to_string(), "zzz/old:http");
        assert_eq!(
            skipped(&t),
            [
                "Service aaa/new: frontend 10.96.0.10:80/TCP is already served by Service zzz/old, which is older (or as old and sorts first); Service aaa/new is not served"
            ]
        );
    }

    #[test]
    fn of_two_equally_old_services_the_smaller_namespace_and_name_wins() {
        let at = "2024-01-01T00:00:00Z";
        let a = created(svc("demo", "a", "10.96.0.10", &[("http", 80, "TCP")]), at);
        let b = created(svc("demo", "b", "10.96.0.10", &[("http", 80, "TCP")]), at);
        let t = run(vec![b, a], vec![]);
        assert_eq!(vs(&t, WEB).name.name, "a");
        assert_eq!(t.skipped.len(), 1);
        assert_eq!(t.skipped[0].object, "Service demo/b");
        // Without timestamps (hand-written manifests) names decide too.
        let a = svc("demo", "a", "10.96.0.10", &[("http", 80, "TCP")]);
        let b = svc("demo", "b", "10.96.0.10", &[("http", 80, "TCP")]);
        let t = run(vec![b, a], vec![]);
        assert_eq!(vs(&t, WEB).name.name, "a");
    }

    #[test]
    fn a_service_with_a_creation_timestamp_beats_one_without() {
        let dated = created(
            svc("demo", "z", "10.96.0.10", &[("http", 80, "TCP")]),
            "2024-01-01T00:00:00Z",
        );
        let undated = svc("demo", "a", "10.96.0.10", &[("http", 80, "TCP")]);
        let t = run(vec![undated, dated], vec![]);
        assert_eq!(vs(&t, WEB).name.name, "z");
    }

    #[test]
    fn services_sharing_a_vip_on_different_ports_or_protocols_do_not_conflict() {
        let a = svc("demo", "a", "10.96.0.10", &[("http", 80, "TCP")]);
        let b = svc(
            "demo",
            "b",
            "10.96.0.10",
            &[("dns", 80, "UDP"), ("x", 81, "TCP")],
        );
        let t = run(vec![a, b], vec![]);
        assert_eq!(t.desired.services.len(), 3);
        assert!(t.skipped.is_empty());
    }

    #[test]
    fn a_service_displaced_by_a_conflict_does_not_displace_others() {
        // a beats b on :80; b would beat c on :81, but b is not served, so c is.
        let a = svc("demo", "a", "10.96.0.10", &[("http", 80, "TCP")]);
        let b = svc(
            "demo",
            "b",
            "10.96.0.10",
            &[("http", 80, "TCP"), ("x", 81, "TCP")],
        );
        let c = svc("demo", "c", "10.96.0.10", &[("x", 81, "TCP")]);
        let t = run(vec![a, b, c], vec![]);
        assert_eq!(vs(&t, WEB).name.name, "a");
        assert_eq!(vs(&t, "10.96.0.10:81/TCP").name.name, "c");
        assert_eq!(t.skipped.len(), 1);
        assert_eq!(t.skipped[0].object, "Service demo/b");
    }

    // ---- robustness -------------------------------------------------------------------

    #[test]
    fn the_translation_is_deterministic() {
        let services = vec![
            web(),
            local_web_named("local"),
            svc("demo", "dns", "10.96.0.53", &[("dns", 53, "UDP")]),
        ];
        let slices = vec![
            web_slice(
                "web-1",
                vec![ep("10.244.0.12"), for_zones(ep("10.244.0.11"), &["zone-a"])],
            ),
            web_slice("web-2", vec![terminating(ep("10.244.0.12"))]),
        ];
        let first = run(services.clone(), slices.clone());
        for _ in 0..5 {
            assert_eq!(run(services.clone(), slices.clone()), first);
        }
    }

    fn local_web_named(name: &str) -> Service {
        let mut s = local_web();
        s.metadata.name = Some(name.into());
        spec(&mut s).cluster_ip = Some("10.96.0.11".into());
        spec(&mut s).cluster_ips = Some(vec!["10.96.0.11".into()]);
        s
    }

    #[test]
    fn hostile_input_never_panics() {
        // Every combination of odd field values: the translation reports or serves,
        // and never panics or emits an out-of-range frontend.
        let ips = [
            "10.96.0.10",
            "fd00::10",
            "None",
            "",
            "garbage",
            "::ffff:10.0.0.1",
        ];
        let ports = [i32::MIN, -1, 0, 1, 80, 65535, 65536, i32::MAX];
        let protocols = ["TCP", "UDP", "SCTP", "", "tcp"];
        let addresses = ["10.244.0.11", "fd00::11", "", "x", "10.244.0.11.5"];
        let slice_ports = [None, Some(-5), Some(0), Some(8080), Some(70000)];
        let mut count = 0;
        for ip in ips {
            for port in ports {
                for protocol in protocols {
                    let s = with(svc("demo", "web", ip, &[("http", port, protocol)]), |s| {
                        spec(s).session_affinity_config = Some(SessionAffinityConfig {
                            client_ip: Some(ClientIPConfig {
                                timeout_seconds: Some(port),
                            }),
                        });
                        spec(s).session_affinity = Some("ClientIP".into());
                    });
                    for address in addresses {
                        for slice_port in slice_ports {
                            let mut sl = web_slice("web-1", vec![ep(address)]);
                            sl.ports.as_mut().unwrap()[0].port = slice_port;
                            sl.address_type = if address.contains(':') {
                                "IPv6"
                            } else {
                                "IPv4"
                            }
                            .into();
                            let t = run(vec![s.clone()], vec![sl]);
                            for v in t.desired.services.values() {
                                assert!(v.frontend.port >= 1);
                                assert!(v.backends.iter().all(|b| b.port() >= 1));
                            }
                            count += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(
            count,
            ips.len() * ports.len() * protocols.len() * addresses.len() * slice_ports.len()
        );
        // Objects with nothing set at all.
        let t = run(vec![Service::default()], vec![EndpointSlice::default()]);
        assert!(t.desired.services.is_empty());
        assert_eq!(t.skipped.len(), 2);
    }

    /// The incremental translator agrees with the full translation after every step
    /// of a long pseudo-random sequence of changes, conflicts included.
    #[test]
    fn incremental_translation_matches_full_translation_after_every_change() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let node = node();
        let mut world = World::default();
        let mut translator = Translator::default();
        let mut applied = BTreeMap::new();
        let vips = ["10.96.0.10", "10.96.0.11", "10.96.0.12"];
        for step in 0..2_000 {
            let n = rand(6);
            let name = format!("s{n}");
            let key = ("demo".to_string(), name.clone());
            let (services, slices) = match rand(4) {
                0 => {
                    let vip = vips[rand(3) as usize];
                    let port = 80 + rand(2) as i32;
                    let mut svc = svc("demo", &name, vip, &[("http", port, "TCP")]);
                    if rand(2) == 0 {
                        svc.metadata.creation_timestamp =
                            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                                jiff::Timestamp::from_second(1_700_000_000 + rand(3) as i64)
                                    .unwrap(),
                            ));
                    }
                    (vec![(key, Some(Arc::new(svc)))], vec![])
                }
                1 => (vec![(key, None)], vec![]),
                2 => {
                    let owner = format!("s{}", rand(6));
                    let slice_name = format!("sl{}", rand(8));
                    let eps = (0..rand(4))
                        .map(|i| ep(&format!("10.244.0.{}", 10 + i + rand(3))))
                        .collect();
                    let sl = slice(
                        "demo",
                        &slice_name,
                        &owner,
                        "IPv4",
                        &[("http", 8080, "TCP")],
                        eps,
                    );
                    (
                        vec![],
                        vec![(("demo".to_string(), slice_name), Some(Arc::new(sl)))],
                    )
                }
                _ => (
                    vec![],
                    vec![(("demo".to_string(), format!("sl{}", rand(8))), None)],
                ),
            };
            let dirty = world.apply(services, slices);
            let changed = if rand(50) == 0 {
                translator.rebuild(&world, &node)
            } else {
                translator.update(&world, dirty, &node)
            };
            let full = translate(world.snapshot(), &node);
            assert_eq!(translator.desired(), &full.desired, "step {step}");
            // Applying only the reported frontends keeps a copy in step.
            for f in changed {
                match translator.desired().services.get(&f) {
                    Some(vs) => applied.insert(f, vs.clone()),
                    None => applied.remove(&f),
                };
            }
            assert_eq!(
                applied, full.desired.services,
                "step {step}: a change was not reported"
            );
        }
    }
}
