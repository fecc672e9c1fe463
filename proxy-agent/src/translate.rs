//! The pure translation layer: Services and EndpointSlices in, [`DesiredState`] out.
//! No I/O; this is where kube-proxy's Service semantics live.
//!
//! For every Service, every port and every ClusterIP (one per family) becomes one
//! [`VirtualService`] per frontend. The rules, after kube-proxy (`pkg/proxy`:
//! `endpointslicecache.go`, `topology.go`, `servicechangetracker.go`, `serviceport.go`,
//! the iptables proxier and `healthcheck`):
//!
//! - Skipped silently: Services labelled `service.kubernetes.io/service-proxy-name`
//!   (another proxy owns them), `ExternalName` Services and headless Services
//!   (`clusterIP: None`). Skipped with a [`Skipped`] entry: Services that fail
//!   [`validate::service`](crate::source::validate::service) (whole, never half), Services with no ClusterIP at all, SCTP
//!   ports (the other ports are still served), ClusterIPs of a family this node lacks,
//!   and the loser of two Services claiming the same frontend.
//! - EndpointSlices belong to the Service named by their `kubernetes.io/service-name`
//!   label in their namespace; a slice port matches a service port by name and protocol
//!   and gives the target port number (this is how a named `targetPort` resolves). Only
//!   an endpoint's first address is used; an address seen in several slices counts once,
//!   the non-terminating copy winning. Invalid slices are reported and ignored; FQDN
//!   slices are ignored.
//! - Usable endpoints are the ready ones (`ready` unset counts as ready); when none is,
//!   the ones that are serving and terminating. The *cluster* set is that, topology
//!   filtered; the *local* set is this node's ready endpoints, else this node's serving
//!   and terminating ones, never topology-filtered. No local endpoint means no backends
//!   (connections refused or dropped).
//! - Topology, as kube-proxy 1.33+ decides it (`topologyModeFromHints`): when every
//!   ready endpoint has a node hint and one is for this node, only endpoints hinted for
//!   this node are used; else when every ready endpoint has a zone hint and one is for
//!   this node's zone, only those. The Service's `trafficDistribution` and
//!   `service.kubernetes.io/topology-mode` are not read here: the EndpointSlice
//!   controller writes hints only for Services that ask for them, and kube-proxy trusts
//!   the hints. Topology never applies to the terminating fallback or to a `Local`
//!   policy.
//!
//! Frontends ([`FrontendKind`], [`Scope`]):
//!
//! - ClusterIP: internal scope only, backends per `internalTrafficPolicy` (`Local`: the
//!   local set; `Cluster`, the default: the cluster set).
//! - NodePort: for each port with a `nodePort` (types NodePort and LoadBalancer; 0 or
//!   absent is none) and each ClusterIP family served here, a frontend on the
//!   unspecified address of the family (`0.0.0.0`, `::`: the data plane matches it on
//!   every NodePort address of the node) at the node port.
//! - ExternalIP: each `spec.externalIPs` entry of a family the Service has a ClusterIP
//!   of (others are reported, and not served, as kube-proxy ignores them), at the
//!   service port.
//! - LoadBalancer (type LoadBalancer only): each `status.loadBalancer.ingress[].ip` of
//!   such a family, at the service port. Hostname-only entries and `ipMode: Proxy`
//!   entries (the load balancer delivers to node addresses) are not served; an
//!   unspecified address is reported.
//! - NodePorts, externalIPs and load balancer IPs have a frontend in both scopes. The
//!   external one (clients outside the node) gets backends per
//!   `externalTrafficPolicy`: `Local`, the local set (no local endpoint: outside
//!   clients are dropped); `Cluster`, the default, the cluster set. The internal one
//!   (clients on this node) always gets the cluster set: kube-proxy short-circuits
//!   in-cluster traffic to external addresses to every endpoint.
//! - `loadBalancerSourceRanges`: the external frontend of a load balancer IP carries the
//!   ranges of its family (an address without prefix is one host; ranges normalized,
//!   sorted, deduplicated). Internal frontends carry none: clients on this node (pods,
//!   host processes) are not range-filtered at the socket layer. NodePorts and
//!   externalIPs are never filtered, as in kube-proxy. When the Service lists ranges but
//!   none of the IP's family, nobody outside may connect: that external frontend is
//!   left out (reported as [`Skipped`]) rather than programmed without ranges, which
//!   would admit everybody. An entry that does not parse rejects the Service whole (see
//!   [`validate`](crate::source::validate)). The `service.beta.kubernetes.io/load-balancer-source-ranges`
//!   annotation is not read, as in kube-proxy.
//! - A frontend a Service produces twice (an externalIP equal to its own ClusterIP or
//!   load balancer IP) is served once, by the first of ClusterIP, LoadBalancer,
//!   ExternalIP: an externalIP never lifts a load balancer IP's source ranges.
//! - ClientIP session affinity applies to every frontend of the Service.
//! - Frontend conflicts between Services (the same NodePort, an externalIP on another
//!   Service's ClusterIP and port, ...) are settled as for ClusterIPs: the older Service
//!   wins, the loser is left out whole.
//!
//! Health checks: a LoadBalancer Service with `externalTrafficPolicy: Local` and a
//! `healthCheckNodePort`, served on this node (some ClusterIP family here, not a
//! conflict loser), gets a [`HealthCheck`] whose count is the number of distinct
//! addresses of this node's ready endpoints over its TCP and UDP ports and served
//! families (kube-proxy's `LocalReadyEndpoints`). Ports are not deduplicated across
//! Services (the API server allocates each once).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::jiff::Timestamp;

use crate::model::{
    DesiredState, FrontendKey, FrontendKind, HealthCheck, Protocol, Scope, ServicePortName,
    VirtualService,
};
use crate::source::validate::{
    self, LABEL_SERVICE_NAME, family_name, namespace_of, parse_cidr, parse_ip,
};
use crate::source::{ObjectKey, Snapshot, World};

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
    /// The `healthCheckNodePort`s to answer, sorted by port (then namespace and name).
    pub health_checks: Vec<HealthCheck>,
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
    let mut health_checks: Vec<HealthCheck> = candidates
        .iter()
        .filter(|c| !losers.contains_key(&c.id))
        .filter_map(|c| c.health_check.clone())
        .collect();
    sort_health_checks(&mut health_checks);
    skipped.extend(losers.into_values());
    Translation {
        desired,
        skipped,
        health_checks,
    }
}

/// Orders health checks by port, then namespace and name.
fn sort_health_checks(checks: &mut [HealthCheck]) {
    checks.sort_by(|a, b| (a.port, &a.namespace, &a.name).cmp(&(b.port, &b.namespace, &b.name)));
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
    owner: BTreeMap<FrontendKey, ObjectKey>,
    /// Services left out by a frontend conflict.
    losers: BTreeMap<String, Skipped>,
    /// What the last update skipped (of the Services it translated, and conflicts).
    last_skipped: Vec<Skipped>,
    /// Skipped entries over all Services.
    skipped_count: usize,
    /// The Services whose candidate has a health check or frontends without a local
    /// endpoint (few), so that those queries need not visit every Service.
    noted: BTreeSet<ObjectKey>,
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

    /// Frontends with `internalTrafficPolicy: Local` that have usable endpoints, none of
    /// them on this node (their connections are refused); kube-proxy's
    /// `sync_proxy_rules_no_local_endpoints_total{traffic_policy="internal"}`. Services
    /// not served (frontend conflict losers) do not count.
    pub fn no_local_endpoints(&self) -> usize {
        self.noted_served().map(|c| c.no_local_endpoints).sum()
    }

    /// Services with `externalTrafficPolicy: Local` whose external frontends (NodePorts,
    /// externalIPs, load balancer IPs) have no endpoint on this node while the Service
    /// has usable endpoints elsewhere (outside clients are dropped here), each counted
    /// once; kube-proxy's
    /// `sync_proxy_rules_no_local_endpoints_total{traffic_policy="external"}`.
    pub fn no_local_endpoints_external(&self) -> usize {
        self.noted_served()
            .filter(|c| c.no_local_endpoints_external)
            .count()
    }

    /// The `healthCheckNodePort`s to answer, as [`Translation::health_checks`]: sorted by
    /// port, none for a Service that is not served.
    pub fn health_checks(&self) -> Vec<HealthCheck> {
        let mut out: Vec<HealthCheck> = self
            .noted_served()
            .filter_map(|c| c.health_check.clone())
            .collect();
        sort_health_checks(&mut out);
        out
    }

    /// The candidates of [`Translator::noted`] Services that are served.
    fn noted_served(&self) -> impl Iterator<Item = &Candidate> {
        self.noted
            .iter()
            .filter_map(|k| self.services.get(k)?.0.as_ref())
            .filter(|c| !self.losers.contains_key(&c.id))
    }

    /// How many entries [`Translator::skipped`] would return.
    pub fn skipped_count(&self) -> usize {
        self.skipped_count
    }

    /// Translates every Service again (a new world, or a new node context). Returns
    /// the frontends whose desired state changed.
    pub fn rebuild(&mut self, world: &World, node: &NodeContext) -> BTreeSet<FrontendKey> {
        let before = std::mem::take(&mut self.desired);
        self.services.clear();
        self.owner.clear();
        self.losers.clear();
        self.skipped_count = 0;
        self.noted.clear();
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
    ) -> BTreeSet<FrontendKey> {
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
            if candidate.as_ref().is_some_and(Candidate::noteworthy) {
                self.noted.insert(key.clone());
            } else {
                self.noted.remove(&key);
            }
            // The frontends this Service held before are released (and maybe retaken).
            let old = if world.snapshot().services.contains_key(&key) {
                self.services.insert(key.clone(), (candidate, skipped))
            } else {
                self.services.remove(&key)
            };
            if let Some((_, old_skipped)) = &old {
                self.skipped_count -= old_skipped.len().min(self.skipped_count);
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
    fn settle_all(&mut self, mut changed: BTreeSet<FrontendKey>) -> BTreeSet<FrontendKey> {
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
    let mut owner: BTreeMap<FrontendKey, &str> = BTreeMap::new();
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
    /// Frontends with `internalTrafficPolicy: Local` that have usable endpoints, but
    /// none on this node (kube-proxy's `sync_proxy_rules_no_local_endpoints_total`).
    no_local_endpoints: usize,
    /// `externalTrafficPolicy: Local`, and some external frontend has no local endpoint
    /// while the Service has usable endpoints.
    no_local_endpoints_external: bool,
    /// The Service's `healthCheckNodePort`, if it has one to answer.
    health_check: Option<HealthCheck>,
}

impl Candidate {
    /// Whether [`Translator::noted`] tracks it.
    fn noteworthy(&self) -> bool {
        self.no_local_endpoints > 0
            || self.no_local_endpoints_external
            || self.health_check.is_some()
    }
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
        ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec,
        ServiceStatus, SessionAffinityConfig,
    };
    use k8s_openapi::api::discovery::v1::{
        EndpointConditions, EndpointHints, EndpointPort, ForNode, ForZone,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;
    use crate::source::manifests::test_support::{TempDir, examples, source};

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

    /// Parses a frontend as [`show`] writes it: `10.96.0.10:80/TCP`, `*:30080/TCP` (the
    /// IPv4 NodePort), `[::]:30080/UDP` (the IPv6 one), with ` (external)` for the
    /// external scope.
    fn frontend(s: &str) -> FrontendKey {
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
    fn show(f: &FrontendKey) -> String {
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
        t.desired.services.keys().map(show).collect()
    }

    /// Every virtual service as `frontend kind -> backends`, with ` from ranges` when it
    /// has source ranges, in frontend order.
    fn table(t: &Translation) -> Vec<String> {
        t.desired
            .services
            .values()
            .map(|v| {
                let backends: Vec<String> = v.backends.iter().map(ToString::to_string).collect();
                let mut line = format!(
                    "{} {} -> {}",
                    show(&v.frontend),
                    v.kind,
                    if backends.is_empty() {
                        "(none)".to_string()
                    } else {
                        backends.join(" ")
                    }
                );
                if !v.source_ranges.is_empty() {
                    let ranges: Vec<String> =
                        v.source_ranges.iter().map(ToString::to_string).collect();
                    line += &format!(" from {}", ranges.join(" "));
                }
                line
            })
            .collect()
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

    // ---- NodePorts ------------------------------------------------------------------

    /// `s` as a NodePort service with `node_ports[i]` on its i-th port.
    fn node_ports(mut s: Service, node_ports: &[i32]) -> Service {
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
    fn load_balancer(mut s: Service, ips: &[&str]) -> Service {
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

    fn external_local(s: Service) -> Service {
        with(s, |s| {
            spec(s).external_traffic_policy = Some("Local".into())
        })
    }

    /// `demo/web` as a NodePort service on 30080.
    fn web_node_port() -> Service {
        node_ports(web(), &[30080])
    }

    /// One endpoint on this node and one on node-b.
    fn spread() -> Vec<EndpointSlice> {
        vec![web_slice(
            "web-1",
            vec![
                on(ep("10.244.0.11"), "node-a"),
                on(ep("10.244.1.12"), "node-b"),
            ],
        )]
    }

    const NP: &str = "*:30080/TCP";
    const NP_EXT: &str = "*:30080/TCP (external)";

    #[test]
    fn a_node_port_is_served_on_the_unspecified_address_in_both_scopes() {
        let t = run(vec![web_node_port()], spread());
        assert_eq!(
            table(&t),
            [
                "*:30080/TCP NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
                "*:30080/TCP (external) NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
                "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080 10.244.1.12:8080",
            ]
        );
        assert_eq!(vs(&t, NP_EXT).name.to_string(), "demo/web:http");
        assert!(t.skipped.is_empty(), "{:?}", skipped(&t));
    }

    #[test]
    fn node_ports_are_served_for_node_port_and_load_balancer_services_when_set() {
        let lb = load_balancer(node_ports(web(), &[30080]), &[]);
        assert_eq!(frontends(&run(vec![lb], vec![])), [NP, NP_EXT, WEB]);
        // allocateLoadBalancerNodePorts: false leaves nodePort 0 (or absent): none.
        for n in [Some(0), None] {
            let lb = load_balancer(
                with(web(), |s| spec(s).ports.as_mut().unwrap()[0].node_port = n),
                &[],
            );
            assert_eq!(frontends(&run(vec![lb], vec![])), [WEB]);
        }
        // A multi-port NodePort service: one node port per service port.
        let s = node_ports(
            svc(
                "demo",
                "dns",
                "10.96.0.53",
                &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
            ),
            &[30053, 30054],
        );
        assert_eq!(
            frontends(&run(vec![s], vec![])),
            [
                "*:30053/UDP",
                "*:30053/UDP (external)",
                "*:30054/TCP",
                "*:30054/TCP (external)",
                "10.96.0.53:53/TCP",
                "10.96.0.53:53/UDP",
            ]
        );
    }

    #[test]
    fn a_dual_stack_node_port_has_frontends_for_each_family_the_node_serves() {
        let s = with(web_node_port(), |s| {
            spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
        });
        let v6 = slice(
            "demo",
            "web-v6",
            "web",
            "IPv6",
            &[("http", 8080, "TCP")],
            vec![ep("fd00:244::11")],
        );
        let slices = vec![web_slice("web-v4", vec![ep("10.244.0.11")]), v6];
        let t = run(vec![s.clone()], slices.clone());
        assert_eq!(
            table(&t),
            [
                "*:30080/TCP NodePort -> 10.244.0.11:8080",
                "*:30080/TCP (external) NodePort -> 10.244.0.11:8080",
                "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080",
                "[::]:30080/TCP NodePort -> [fd00:244::11]:8080",
                "[::]:30080/TCP (external) NodePort -> [fd00:244::11]:8080",
                "[fd00::10]:80/TCP ClusterIP -> [fd00:244::11]:8080",
            ]
        );
        let mut n = node();
        n.ipv6 = false;
        let t = translate(&snapshot(vec![s], slices), &n);
        assert_eq!(frontends(&t), [NP, NP_EXT, WEB]);
    }

    // ---- externalTrafficPolicy ----------------------------------------------------------

    #[test]
    fn external_policy_local_narrows_only_external_frontends_to_this_node() {
        let t = run(vec![external_local(web_node_port())], spread());
        assert_eq!(
            table(&t),
            [
                // In-cluster clients short-circuit to every endpoint, as in kube-proxy.
                "*:30080/TCP NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
                "*:30080/TCP (external) NodePort -> 10.244.0.11:8080",
                "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080 10.244.1.12:8080",
            ]
        );
    }

    #[test]
    fn external_policy_local_falls_back_to_local_terminating_endpoints() {
        let t = run(
            vec![external_local(web_node_port())],
            vec![web_slice(
                "web-1",
                vec![
                    terminating(on(ep("10.244.0.11"), "node-a")),
                    on(ep("10.244.1.12"), "node-b"),
                ],
            )],
        );
        assert_eq!(backends(&t, NP_EXT), ["10.244.0.11:8080"]);
        assert_eq!(backends(&t, NP), ["10.244.1.12:8080"]);
    }

    #[test]
    fn external_policy_local_without_a_local_endpoint_drops_outside_clients() {
        let t = run(
            vec![external_local(web_node_port())],
            vec![web_slice("web-1", vec![on(ep("10.244.1.12"), "node-b")])],
        );
        assert_eq!(backends(&t, NP_EXT), Vec::<String>::new());
        assert_eq!(backends(&t, NP), ["10.244.1.12:8080"]);
        assert!(t.skipped.is_empty());
    }

    #[test]
    fn external_policy_cluster_is_the_default_and_topology_applies_to_it() {
        let slices = vec![web_slice(
            "web-1",
            vec![
                for_zones(on(ep("10.244.0.11"), "node-a"), &["zone-a"]),
                for_zones(on(ep("10.244.1.12"), "node-b"), &["zone-b"]),
            ],
        )];
        for policy in [None, Some("Cluster")] {
            let s = with(web_node_port(), |s| {
                spec(s).external_traffic_policy = policy.map(Into::into)
            });
            let t = run(vec![s], slices.clone());
            assert_eq!(backends(&t, NP_EXT), ["10.244.0.11:8080"], "{policy:?}");
            assert_eq!(backends(&t, NP), ["10.244.0.11:8080"], "{policy:?}");
        }
    }

    #[test]
    fn internal_policy_local_applies_to_the_cluster_ip_only() {
        let s = with(web_node_port(), |s| {
            spec(s).internal_traffic_policy = Some("Local".into());
        });
        let t = run(vec![s], spread());
        assert_eq!(
            table(&t),
            [
                "*:30080/TCP NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
                "*:30080/TCP (external) NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
                "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080",
            ]
        );
    }

    fn translator(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Translator {
        let mut world = World::default();
        world.reset(snapshot(services, slices));
        let mut t = Translator::default();
        t.rebuild(&world, &node());
        t
    }

    #[test]
    fn external_policy_local_services_without_a_local_endpoint_are_counted_once() {
        // Two ports, two families, no local endpoint anywhere: one Service.
        let s = external_local(node_ports(
            with(
                svc(
                    "demo",
                    "web",
                    "10.96.0.10",
                    &[("http", 80, "TCP"), ("https", 443, "TCP")],
                ),
                |s| spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]),
            ),
            &[30080, 30443],
        ));
        let remote = slice(
            "demo",
            "web-1",
            "web",
            "IPv4",
            &[("http", 8080, "TCP"), ("https", 8443, "TCP")],
            vec![on(ep("10.244.1.12"), "node-b")],
        );
        let t = translator(vec![s.clone()], vec![remote.clone()]);
        assert_eq!(t.no_local_endpoints_external(), 1);
        assert_eq!(t.no_local_endpoints(), 0);
        // No usable endpoint at all is not "no local endpoint".
        let t = translator(vec![s.clone()], vec![]);
        assert_eq!(t.no_local_endpoints_external(), 0);
        let t = translator(
            vec![s.clone()],
            vec![web_slice(
                "web-1",
                vec![not_ready(on(ep("10.244.1.12"), "node-b"))],
            )],
        );
        assert_eq!(t.no_local_endpoints_external(), 0);
        // A local endpoint for one port but not the other still counts.
        let partial = slice(
            "demo",
            "web-2",
            "web",
            "IPv4",
            &[("http", 8080, "TCP")],
            vec![on(ep("10.244.0.11"), "node-a")],
        );
        let t = translator(vec![s.clone()], vec![remote.clone(), partial]);
        assert_eq!(t.no_local_endpoints_external(), 1);
        // Cluster policy, or no external frontend at all, never counts.
        let cluster = with(s.clone(), |s| spec(s).external_traffic_policy = None);
        assert_eq!(
            translator(vec![cluster], vec![remote.clone()]).no_local_endpoints_external(),
            0
        );
        let no_frontend = with(s, |s| {
            spec(s).type_ = Some("LoadBalancer".into());
            for p in spec(s).ports.as_mut().unwrap() {
                p.node_port = None;
            }
        });
        assert_eq!(
            translator(vec![no_frontend], vec![remote]).no_local_endpoints_external(),
            0
        );
    }

    #[test]
    fn the_external_no_local_endpoints_count_follows_updates() {
        let mut world = World::default();
        world.reset(snapshot(
            vec![external_local(web_node_port())],
            vec![web_slice("web-1", vec![on(ep("10.244.1.5"), "node-b")])],
        ));
        let mut t = Translator::default();
        t.rebuild(&world, &node());
        assert_eq!(t.no_local_endpoints_external(), 1);
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
        assert_eq!(t.no_local_endpoints_external(), 0);
        let dirty = world.apply(vec![(("demo".into(), "web".into()), None)], vec![]);
        t.update(&world, dirty, &node());
        assert_eq!(t.no_local_endpoints_external(), 0);
    }

    // ---- externalIPs --------------------------------------------------------------------

    #[test]
    fn external_ips_are_served_in_both_scopes_with_the_service_port() {
        let s = external_local(with(web(), |s| {
            spec(s).external_ips = Some(vec!["192.0.2.10".into(), "192.0.2.11".into()]);
        }));
        let t = run(vec![s], spread());
        assert_eq!(
            table(&t),
            [
                "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080 10.244.1.12:8080",
                "192.0.2.10:80/TCP ExternalIP -> 10.244.0.11:8080 10.244.1.12:8080",
                "192.0.2.10:80/TCP (external) ExternalIP -> 10.244.0.11:8080",
                "192.0.2.11:80/TCP ExternalIP -> 10.244.0.11:8080 10.244.1.12:8080",
                "192.0.2.11:80/TCP (external) ExternalIP -> 10.244.0.11:8080",
            ]
        );
    }

    #[test]
    fn external_ips_of_a_family_without_a_cluster_ip_are_reported_and_not_served() {
        let s = with(web(), |s| {
            spec(s).external_ips = Some(vec!["2001:db8::10".into(), "192.0.2.10".into()]);
        });
        let t = run(vec![s], vec![]);
        assert_eq!(
            frontends(&t),
            [WEB, "192.0.2.10:80/TCP", "192.0.2.10:80/TCP (external)"]
        );
        assert_eq!(
            skipped(&t),
            [
                "Service demo/web: externalIP 2001:db8::10 is IPv6, but the Service has no IPv6 ClusterIP: it is not served (kube-proxy ignores it too)"
            ]
        );
        // A family the Service has but this node lacks: the ClusterIP's entry says it.
        let dual = with(web(), |s| {
            spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
            spec(s).external_ips = Some(vec!["2001:db8::10".into()]);
        });
        let mut n = node();
        n.ipv6 = false;
        let t = translate(&snapshot(vec![dual], vec![]), &n);
        assert_eq!(frontends(&t), [WEB]);
        assert_eq!(t.skipped.len(), 1);
        assert!(
            t.skipped[0]
                .reason
                .starts_with("ClusterIP fd00::10 is IPv6")
        );
    }

    #[test]
    fn an_external_ip_equal_to_the_services_own_cluster_ip_is_served_once() {
        let s = with(web(), |s| {
            spec(s).internal_traffic_policy = Some("Local".into());
            spec(s).external_ips = Some(vec!["10.96.0.10".into(), "10.96.0.10".into()]);
        });
        let t = run(vec![s], spread());
        assert_eq!(
            table(&t),
            [
                "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080",
                "10.96.0.10:80/TCP (external) ExternalIP -> 10.244.0.11:8080 10.244.1.12:8080",
            ]
        );
        assert!(t.skipped.is_empty(), "{:?}", skipped(&t));
    }

    #[test]
    fn an_invalid_external_ip_rejects_the_service_whole() {
        let s = with(web_node_port(), |s| {
            spec(s).external_ips = Some(vec!["192.0.2.10".into(), "1.2.3".into()]);
        });
        let t = run(vec![s], spread());
        assert!(t.desired.services.is_empty(), "{:?}", frontends(&t));
        assert_eq!(
            skipped(&t),
            ["Service demo/web: spec.externalIPs[1]: \"1.2.3\" is not an IP address"]
        );
    }

    // ---- LoadBalancer -------------------------------------------------------------------

    const LB: &str = "192.0.2.100:80/TCP";
    const LB_EXT: &str = "192.0.2.100:80/TCP (external)";

    #[test]
    fn load_balancer_ips_are_served_in_both_scopes() {
        let s = external_local(load_balancer(web_node_port(), &["192.0.2.100"]));
        let t = run(vec![s], spread());
        assert_eq!(
            table(&t),
            [
                "*:30080/TCP NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
                "*:30080/TCP (external) NodePort -> 10.244.0.11:8080",
                "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080 10.244.1.12:8080",
                "192.0.2.100:80/TCP LoadBalancer -> 10.244.0.11:8080 10.244.1.12:8080",
                "192.0.2.100:80/TCP (external) LoadBalancer -> 10.244.0.11:8080",
            ]
        );
    }

    #[test]
    fn load_balancer_ingress_without_an_ip_or_in_proxy_mode_is_not_served() {
        let mut s = load_balancer(web(), &[]);
        s.status.as_mut().unwrap().load_balancer = Some(LoadBalancerStatus {
            ingress: Some(vec![
                LoadBalancerIngress {
                    hostname: Some("lb.example.com".into()),
                    ..Default::default()
                },
                LoadBalancerIngress {
                    ip: Some("192.0.2.101".into()),
                    ip_mode: Some("Proxy".into()),
                    ..Default::default()
                },
                LoadBalancerIngress {
                    ip: Some("192.0.2.100".into()),
                    ip_mode: Some("VIP".into()),
                    ..Default::default()
                },
            ]),
        });
        let t = run(vec![s], vec![]);
        assert_eq!(frontends(&t), [WEB, LB, LB_EXT]);
        assert!(t.skipped.is_empty(), "{:?}", skipped(&t));
    }

    #[test]
    fn a_load_balancer_status_is_ignored_unless_the_type_is_load_balancer() {
        let s = with(load_balancer(web(), &["192.0.2.100"]), |s| {
            spec(s).type_ = Some("ClusterIP".into());
        });
        assert_eq!(frontends(&run(vec![s], vec![])), [WEB]);
    }

    #[test]
    fn load_balancer_ips_of_another_family_or_unspecified_are_reported() {
        let s = load_balancer(web(), &["2001:db8::100", "0.0.0.0", "192.0.2.100"]);
        let t = run(vec![s], vec![]);
        assert_eq!(frontends(&t), [WEB, LB, LB_EXT]);
        assert_eq!(
            skipped(&t),
            [
                "Service demo/web: load balancer IP 2001:db8::100 is IPv6, but the Service has no IPv6 ClusterIP: it is not served (kube-proxy ignores it too)",
                "Service demo/web: load balancer IP 0.0.0.0 is the unspecified address: it is not served",
            ]
        );
    }

    fn source_ranges(s: Service, ranges: &[&str]) -> Service {
        with(s, |s| {
            spec(s).load_balancer_source_ranges =
                Some(ranges.iter().map(|r| r.to_string()).collect());
        })
    }

    #[test]
    fn source_ranges_restrict_only_external_load_balancer_frontends_of_their_family() {
        let s = source_ranges(
            with(
                load_balancer(web_node_port(), &["192.0.2.100", "2001:db8::100"]),
                |s| {
                    spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
                    spec(s).external_ips = Some(vec!["192.0.2.10".into()]);
                },
            ),
            &[
                "203.0.113.0/24",
                " 198.51.100.7 ",
                "2001:db8:1::/48",
                "203.0.113.9/24",
            ],
        );
        let t = run(vec![s], vec![]);
        let with_ranges: Vec<String> = table(&t)
            .into_iter()
            .filter(|line| line.contains(" from "))
            .collect();
        assert_eq!(
            with_ranges,
            [
                "192.0.2.100:80/TCP (external) LoadBalancer -> (none) from 198.51.100.7/32 203.0.113.0/24",
                "[2001:db8::100]:80/TCP (external) LoadBalancer -> (none) from 2001:db8:1::/48",
            ]
        );
        // The internal LB frontends, NodePorts and externalIPs are not filtered.
        assert_eq!(frontends(&t).len(), 12);
        assert!(t.skipped.is_empty(), "{:?}", skipped(&t));
    }

    #[test]
    fn a_load_balancer_ip_without_a_source_range_of_its_family_admits_no_outside_client() {
        // Ranges of IPv6 only: the IPv4 load balancer IP's external frontend is left out
        // (nobody outside may connect), never programmed without ranges (everybody).
        let s = source_ranges(
            with(load_balancer(web_node_port(), &["192.0.2.100"]), |s| {
                // The same address as an externalIP must not open it either.
                spec(s).external_ips = Some(vec!["192.0.2.100".into()]);
            }),
            &["2001:db8:1::/48"],
        );
        let t = run(vec![s], spread());
        assert_eq!(
            table(&t),
            [
                "*:30080/TCP NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
                "*:30080/TCP (external) NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
                "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080 10.244.1.12:8080",
                "192.0.2.100:80/TCP LoadBalancer -> 10.244.0.11:8080 10.244.1.12:8080",
            ]
        );
        assert_eq!(
            skipped(&t),
            [
                "Service demo/web: load balancer IP 192.0.2.100: spec.loadBalancerSourceRanges lists no IPv4 range, so no client outside the node may connect: its external frontends are not programmed (clients on this node are still served)"
            ]
        );
    }

    #[test]
    fn a_load_balancer_ip_listed_as_an_external_ip_keeps_its_source_ranges() {
        let s = source_ranges(
            with(load_balancer(web(), &["192.0.2.100"]), |s| {
                spec(s).external_ips = Some(vec!["192.0.2.100".into()]);
            }),
            &["203.0.113.0/24"],
        );
        let t = run(vec![s], vec![]);
        assert_eq!(
            table(&t),
            [
                "10.96.0.10:80/TCP ClusterIP -> (none)",
                "192.0.2.100:80/TCP LoadBalancer -> (none)",
                "192.0.2.100:80/TCP (external) LoadBalancer -> (none) from 203.0.113.0/24",
            ]
        );
    }

    #[test]
    fn an_invalid_source_range_rejects_the_service_whole_never_widening_access() {
        let s = source_ranges(
            load_balancer(web(), &["192.0.2.100"]),
            &["203.0.113.0/24", "203.0.113.0/33"],
        );
        let t = run(vec![s], spread());
        assert!(t.desired.services.is_empty(), "{:?}", frontends(&t));
        assert_eq!(
            skipped(&t),
            [
                "Service demo/web: spec.loadBalancerSourceRanges[1]: \"203.0.113.0/33\" is not a CIDR (address/prefix) or an IP address; the service is not served rather than served to more sources than it allows"
            ]
        );
        let s = with(load_balancer(web(), &["192.0.2.1000"]), |_| {});
        let t = run(vec![s], vec![]);
        assert_eq!(
            skipped(&t),
            [
                "Service demo/web: status.loadBalancer.ingress[0].ip: \"192.0.2.1000\" is not an IP address"
            ]
        );
    }

    #[test]
    fn affinity_applies_to_every_frontend_of_the_service() {
        let s = with(load_balancer(web_node_port(), &["192.0.2.100"]), |s| {
            spec(s).external_ips = Some(vec!["192.0.2.10".into()]);
            spec(s).session_affinity = Some("ClientIP".into());
            spec(s).session_affinity_config = Some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(60),
                }),
            });
        });
        let t = run(vec![s], vec![]);
        assert_eq!(t.desired.services.len(), 7);
        assert!(
            t.desired
                .services
                .values()
                .all(|v| v.affinity_timeout_s == Some(60))
        );
    }

    // ---- health checks ------------------------------------------------------------------

    /// A LoadBalancer `demo/<name>` with `externalTrafficPolicy: Local` and a health
    /// check node port.
    fn local_lb(name: &str, ip: &str, health_port: i32) -> Service {
        with(
            external_local(load_balancer(
                svc("demo", name, ip, &[("http", 80, "TCP")]),
                &[],
            )),
            |s| spec(s).health_check_node_port = Some(health_port),
        )
    }

    fn hc(name: &str, port: u16, local_endpoints: usize) -> HealthCheck {
        HealthCheck {
            namespace: "demo".into(),
            name: name.into(),
            port,
            local_endpoints,
        }
    }

    #[test]
    fn a_local_load_balancer_counts_its_distinct_local_ready_endpoint_addresses() {
        let s = with(local_lb("web", "10.96.0.10", 32000), |s| {
            spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
            spec(s).ports = Some(vec![
                ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    ..Default::default()
                },
                ServicePort {
                    name: Some("metrics".into()),
                    port: 9090,
                    ..Default::default()
                },
            ]);
        });
        let slices = vec![
            slice(
                "demo",
                "web-1",
                "web",
                "IPv4",
                &[("http", 8080, "TCP"), ("metrics", 9090, "TCP")],
                vec![
                    on(ep("10.244.0.11"), "node-a"), // both ports: counted once
                    terminating(on(ep("10.244.0.12"), "node-a")),
                    not_ready(on(ep("10.244.0.13"), "node-a")),
                    on(ep("10.244.1.14"), "node-b"),
                ],
            ),
            slice(
                "demo",
                "web-2",
                "web",
                "IPv4",
                &[("metrics", 9091, "TCP")],
                vec![on(ep("10.244.0.15"), "node-a")],
            ),
            slice(
                "demo",
                "web-v6",
                "web",
                "IPv6",
                &[("http", 8080, "TCP")],
                vec![on(ep("fd00:244::11"), "node-a")],
            ),
            // A port the Service does not have.
            slice(
                "demo",
                "web-3",
                "web",
                "IPv4",
                &[("other", 7000, "TCP")],
                vec![on(ep("10.244.0.16"), "node-a")],
            ),
        ];
        let t = run(vec![s.clone()], slices.clone());
        assert_eq!(t.health_checks, [hc("web", 32000, 3)]);
        assert_eq!(translator(vec![s], slices).health_checks(), t.health_checks);
    }

    #[test]
    fn a_health_check_needs_a_load_balancer_with_external_policy_local_and_a_port() {
        let base = local_lb("web", "10.96.0.10", 32000);
        let t = run(vec![base.clone()], vec![]);
        assert_eq!(t.health_checks, [hc("web", 32000, 0)]);
        let cluster = with(base.clone(), |s| spec(s).external_traffic_policy = None);
        let node_port = with(base.clone(), |s| spec(s).type_ = Some("NodePort".into()));
        let unset = with(base.clone(), |s| spec(s).health_check_node_port = None);
        let zero = with(base, |s| spec(s).health_check_node_port = Some(0));
        for s in [cluster, node_port, unset, zero] {
            let t = run(vec![s], vec![]);
            assert!(t.health_checks.is_empty(), "{:?}", t.health_checks);
        }
        // Not on a node that serves none of the Service's families.
        let mut n = node();
        n.ipv4 = false;
        let t = translate(
            &snapshot(vec![local_lb("web", "10.96.0.10", 32000)], vec![]),
            &n,
        );
        assert!(t.health_checks.is_empty());
    }

    #[test]
    fn health_checks_are_sorted_by_port() {
        let t = run(
            vec![
                local_lb("a", "10.96.0.1", 32002),
                local_lb("b", "10.96.0.2", 32000),
                local_lb("c", "10.96.0.3", 32001),
            ],
            vec![],
        );
        assert_eq!(
            t.health_checks,
            [hc("b", 32000, 0), hc("c", 32001, 0), hc("a", 32002, 0)]
        );
    }

    #[test]
    fn a_service_left_out_by_a_conflict_gets_no_health_check() {
        let old = created(local_lb("old", "10.96.0.10", 32000), "2024-01-01T00:00:00Z");
        let new = created(local_lb("new", "10.96.0.10", 32001), "2025-01-01T00:00:00Z");
        let t = run(vec![new.clone(), old.clone()], vec![]);
        assert_eq!(t.health_checks, [hc("old", 32000, 0)]);
        assert_eq!(
            translator(vec![new, old], vec![]).health_checks(),
            t.health_checks
        );
    }

    #[test]
    fn health_checks_follow_incremental_updates() {
        let mut world = World::default();
        world.reset(snapshot(vec![local_lb("web", "10.96.0.10", 32000)], vec![]));
        let mut t = Translator::default();
        t.rebuild(&world, &node());
        assert_eq!(t.health_checks(), [hc("web", 32000, 0)]);
        let dirty = world.apply(
            vec![],
            vec![(
                ("demo".into(), "web-1".into()),
                Some(Arc::new(web_slice(
                    "web-1",
                    vec![
                        on(ep("10.244.0.5"), "node-a"),
                        on(ep("10.244.0.6"), "node-a"),
                    ],
                ))),
            )],
        );
        t.update(&world, dirty, &node());
        assert_eq!(t.health_checks(), [hc("web", 32000, 2)]);
        let dirty = world.apply(vec![(("demo".into(), "web".into()), None)], vec![]);
        t.update(&world, dirty, &node());
        assert!(t.health_checks().is_empty());
    }

    // ---- conflicts between external frontends ---------------------------------------------

    #[test]
    fn of_two_services_on_one_node_port_the_older_wins() {
        let old = created(
            node_ports(
                svc("zzz", "old", "10.96.0.10", &[("http", 80, "TCP")]),
                &[30080],
            ),
            "2024-01-01T00:00:00Z",
        );
        let new = created(
            node_ports(
                svc("aaa", "new", "10.96.0.20", &[("http", 80, "TCP")]),
                &[30080],
            ),
            "2025-01-01T00:00:00Z",
        );
        let t = run(vec![new, old], vec![]);
        assert_eq!(frontends(&t), [NP, NP_EXT, WEB]);
        assert_eq!(vs(&t, NP_EXT).name.to_string(), "zzz/old:http");
        assert_eq!(
            skipped(&t),
            [
                "Service aaa/new: frontend *:30080/TCP is already served by Service zzz/old, which is older (or as old and sorts first); Service aaa/new is not served"
            ]
        );
    }

    #[test]
    fn an_external_ip_on_another_services_cluster_ip_and_port_is_a_conflict() {
        let cluster = created(web(), "2024-01-01T00:00:00Z");
        let external = created(
            with(
                svc("demo", "ext", "10.96.0.20", &[("http", 80, "TCP")]),
                |s| {
                    spec(s).external_ips = Some(vec!["10.96.0.10".into()]);
                },
            ),
            "2025-01-01T00:00:00Z",
        );
        let t = run(vec![external.clone(), cluster.clone()], vec![]);
        assert_eq!(frontends(&t), [WEB]);
        assert_eq!(t.skipped.len(), 1);
        assert_eq!(t.skipped[0].object, "Service demo/ext");
        // The other way round, the older externalIP holder wins and web is left out.
        let cluster = created(web(), "2025-01-01T00:00:00Z");
        let external = created(external, "2024-01-01T00:00:00Z");
        let t = run(vec![external, cluster], vec![]);
        assert_eq!(vs(&t, WEB).kind, FrontendKind::ExternalIp);
        assert_eq!(vs(&t, WEB).name.name, "ext");
        assert_eq!(t.skipped[0].object, "Service demo/web");
    }

    #[test]
    fn two_load_balancers_on_one_ip_and_port_conflict_but_not_on_different_ports() {
        let a = created(
            load_balancer(
                svc("demo", "a", "10.96.0.1", &[("http", 80, "TCP")]),
                &["192.0.2.100"],
            ),
            "2024-01-01T00:00:00Z",
        );
        let b = load_balancer(
            svc("demo", "b", "10.96.0.2", &[("http", 80, "TCP")]),
            &["192.0.2.100"],
        );
        let t = run(vec![a.clone(), b], vec![]);
        assert_eq!(vs(&t, LB_EXT).name.name, "a");
        assert_eq!(t.skipped.len(), 1);
        assert_eq!(t.skipped[0].object, "Service demo/b");
        // An IP shared by Services on different ports (as MetalLB allows) is fine.
        let c = load_balancer(
            svc("demo", "c", "10.96.0.3", &[("dns", 53, "UDP")]),
            &["192.0.2.100"],
        );
        let t = run(vec![a, c], vec![]);
        assert_eq!(t.desired.services.len(), 6);
        assert!(t.skipped.is_empty(), "{:?}", skipped(&t));
    }

    #[test]
    fn node_ports_of_other_protocols_or_families_do_not_conflict() {
        let tcp = node_ports(
            svc("demo", "tcp", "10.96.0.1", &[("p", 80, "TCP")]),
            &[30080],
        );
        let udp = node_ports(
            svc("demo", "udp", "10.96.0.2", &[("p", 80, "UDP")]),
            &[30080],
        );
        let v6 = node_ports(svc("demo", "v6", "fd00::3", &[("p", 80, "TCP")]), &[30080]);
        let t = run(vec![tcp, udp, v6], vec![]);
        assert_eq!(t.desired.services.len(), 9);
        assert!(t.skipped.is_empty(), "{:?}", skipped(&t));
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

    #[test]
    fn hostile_external_fields_never_panic_or_widen_source_ranges() {
        let types = [None, Some("NodePort"), Some("LoadBalancer"), Some("Weird")];
        let node_ports = [
            None,
            Some(i32::MIN),
            Some(-1),
            Some(0),
            Some(30080),
            Some(65536),
        ];
        let external_ips = [
            "",
            "x",
            "0.0.0.0",
            "192.0.2.1",
            "::ffff:192.0.2.1",
            "2001:db8::1",
        ];
        let ranges: [&[&str]; 6] = [
            &[],
            &[""],
            &["x"],
            &["203.0.113.0/24", "10.0.0.0/33"],
            &["2001:db8::/32"],
            &["0.0.0.0/0"],
        ];
        let ingress = [
            ("192.0.2.100", None),
            ("192.0.2.100", Some("Proxy")),
            ("192.0.2.100", Some("Bogus")),
            ("0.0.0.0", None),
            ("", None),
            ("nope", None),
        ];
        let health = [None, Some(-1), Some(0), Some(32000), Some(70000)];
        let mut count = 0;
        for type_ in types {
            for node_port in node_ports {
                for eip in external_ips {
                    for range in ranges {
                        for (ip, mode) in ingress {
                            for hc_port in health {
                                let s = with(web(), |s| {
                                    spec(s).type_ = type_.map(Into::into);
                                    spec(s).ports.as_mut().unwrap()[0].node_port = node_port;
                                    spec(s).external_ips = Some(vec![eip.into()]);
                                    spec(s).load_balancer_source_ranges =
                                        Some(range.iter().map(|r| r.to_string()).collect());
                                    spec(s).health_check_node_port = hc_port;
                                    spec(s).external_traffic_policy = Some("Local".into());
                                    s.status = Some(ServiceStatus {
                                        load_balancer: Some(LoadBalancerStatus {
                                            ingress: Some(vec![LoadBalancerIngress {
                                                ip: Some(ip.into()),
                                                ip_mode: mode.map(Into::into),
                                                ..Default::default()
                                            }]),
                                        }),
                                        ..Default::default()
                                    });
                                });
                                let t = run(vec![s], spread());
                                for v in t.desired.services.values() {
                                    assert!(v.frontend.port >= 1);
                                    // A Service that lists ranges never has an
                                    // unrestricted external load balancer frontend.
                                    if !range.is_empty()
                                        && v.kind == FrontendKind::LoadBalancer
                                        && v.frontend.scope == Scope::External
                                    {
                                        assert!(!v.source_ranges.is_empty(), "{range:?}");
                                    }
                                    if v.frontend.scope == Scope::Internal {
                                        assert!(v.source_ranges.is_empty());
                                    }
                                }
                                assert!(t.health_checks.iter().all(|h| h.port >= 1));
                                count += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(count, 4 * 6 * 6 * 6 * 6 * 5);
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
        // Which interesting situations the sequence went through.
        let mut seen = [false; 6];
        for step in 0..2_000 {
            let n = rand(6);
            let name = format!("s{n}");
            let key = ("demo".to_string(), name.clone());
            let (services, slices) = match rand(4) {
                0 => {
                    let vip = vips[rand(3) as usize];
                    let port = 80 + rand(2) as i32;
                    let mut svc = svc("demo", &name, vip, &[("http", port, "TCP")]);
                    // Every kind of frontend, on few enough addresses and ports that
                    // Services keep colliding.
                    let node_port = 30080 + rand(2) as i32;
                    svc = match rand(4) {
                        0 => svc,
                        1 => node_ports(svc, &[node_port]),
                        2 => {
                            let ip = ["192.0.2.100", "10.96.0.10"][rand(2) as usize];
                            let mut lb = load_balancer(node_ports(svc, &[node_port]), &[ip]);
                            if rand(2) == 0 {
                                spec(&mut lb).health_check_node_port = Some(32000 + rand(2) as i32);
                            }
                            let ranges = [None, Some("203.0.113.0/24"), Some("2001:db8::/32")];
                            if let Some(r) = ranges[rand(3) as usize] {
                                lb = source_ranges(lb, &[r]);
                            }
                            lb
                        }
                        _ => with(svc, |s| {
                            let ip = ["192.0.2.100", "10.96.0.11"][rand(2) as usize];
                            spec(s).external_ips = Some(vec![ip.into()]);
                        }),
                    };
                    if rand(2) == 0 {
                        svc = external_local(svc);
                    }
                    if rand(4) == 0 {
                        spec(&mut svc).internal_traffic_policy = Some("Local".into());
                    }
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
                        .map(|i| {
                            let e = ep(&format!("10.244.0.{}", 10 + i + rand(3)));
                            let e = on(e, ["node-a", "node-b"][rand(2) as usize]);
                            if rand(4) == 0 { terminating(e) } else { e }
                        })
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
            assert_eq!(
                translator.health_checks(),
                full.health_checks,
                "step {step}"
            );
            seen[0] |= !full.health_checks.is_empty();
            seen[1] |= translator.no_local_endpoints_external() > 0;
            seen[2] |= full
                .skipped
                .iter()
                .any(|s| s.reason.contains("already served"));
            seen[3] |= full
                .desired
                .services
                .values()
                .any(|v| !v.source_ranges.is_empty());
            seen[4] |= full
                .skipped
                .iter()
                .any(|s| s.reason.contains("no IPv4 range"));
            seen[5] |= full
                .desired
                .services
                .values()
                .any(|v| v.kind == FrontendKind::ExternalIp);
            // The counters agree with a translator built from scratch.
            let mut fresh = Translator::default();
            fresh.rebuild(&world, &node);
            assert_eq!(
                (
                    translator.no_local_endpoints(),
                    translator.no_local_endpoints_external(),
                    translator.skipped_count(),
                ),
                (
                    fresh.no_local_endpoints(),
                    fresh.no_local_endpoints_external(),
                    fresh.skipped_count(),
                ),
                "step {step}"
            );
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
        assert_eq!(seen, [true; 6], "the sequence missed a situation");
    }

    // ---- the examples, read through the manifest source --------------------------------

    #[test]
    fn the_clusterip_example_loads_and_translates_to_two_frontends() {
        let dir = TempDir::new();
        let text = std::fs::read_to_string(examples().join("clusterip.yaml")).unwrap();
        assert!(
            text.contains("\n  sessionAffinity: None\n"),
            "the demo rewrites this line"
        );
        dir.write("clusterip.yaml", &text);
        let (snapshot, errors) = source(&dir).load();
        assert_eq!(errors, []);
        let node = crate::translate::NodeContext {
            name: "node-a".into(),
            zone: None,
            ipv4: true,
            ipv6: true,
        };
        let t = crate::translate::translate(&snapshot, &node);
        assert_eq!(t.skipped, []);
        let shown: Vec<String> = t
            .desired
            .services
            .values()
            .map(|v| {
                let backends: Vec<String> = v.backends.iter().map(ToString::to_string).collect();
                format!("{} {} -> {}", v.name, v.frontend, backends.join(" "))
            })
            .collect();
        assert_eq!(
            shown,
            [
                "demo/echo:dns 10.96.0.10:53/UDP -> 10.244.0.11:5353 10.244.0.12:5353 10.244.0.13:5353",
                "demo/echo:http 10.96.0.10:80/TCP -> 10.244.0.11:8080 10.244.0.12:8080 10.244.0.13:8080",
            ]
        );
    }
}
