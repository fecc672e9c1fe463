//! The pure translation layer: Services and EndpointSlices in, [`DesiredState`] out.
//! No I/O; this is where kube-proxy's Service semantics live.
//!
//! For every Service, every port and every ClusterIP (one per family) becomes one
//! [`VirtualService`] per frontend. The rules, after kube-proxy (`pkg/proxy`:
//! `endpointslicecache.go`, `topology.go`, `servicechangetracker.go`, `serviceport.go`,
//! the iptables proxier and `healthcheck`):
//!
//! - Skipped silently: Services labelled `service.kubernetes.io/service-proxy-name`
//!   (another proxy owns them) or `service.kubernetes.io/headless` (both already
//!   filtered by the sources, kube-proxy's selector), `ExternalName` Services and headless Services
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
//!   [`validate`]). The `service.beta.kubernetes.io/load-balancer-source-ranges`
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
//!
//! Files, one concept each: `service` translates one Service, putting together its
//! `cluster_ip`s, `external_ip`s, `load_balancer` IPs and their `source_ranges`, its
//! `node_port`s, each port's `frontends` and its `health_check`; the backends are the
//! `endpoints` of the `slices` that count, narrowed by `topology` hints; `conflicts`
//! settles frontends claimed by several Services.
//!
//! [`VirtualService`]: crate::model::VirtualService
//! [`validate`]: crate::source::validate
//! [`validate::service`]: crate::source::validate::service
//! [`FrontendKind`]: crate::model::FrontendKind
//! [`Scope`]: crate::model::Scope

mod capabilities;
mod cluster_ip;
mod conflicts;
mod endpoints;
mod external_ip;
mod frontends;
mod health_check;
mod load_balancer;
mod node_port;
mod service;
mod slices;
mod source_ranges;
mod topology;

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Capabilities, DesiredState, FrontendKey, HealthCheck};
use crate::source::validate::namespace_of;
use crate::source::{ObjectKey, Snapshot, World};
use conflicts::settle;
use service::{Candidate, service};
use slices::{index_slices, usable_slice};

// The sources filter on these already (kube-proxy's selector); the translation checks
// again so that a world built by hand (tests, other sources) follows the same rule.
pub use crate::source::{LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME};

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

/// Translates a snapshot into the data plane's desired state for `node`, for a data
/// plane that supports everything.
pub fn translate(snapshot: &Snapshot, node: &NodeContext) -> Translation {
    translate_with(snapshot, node, &Capabilities::all())
}

/// Translates a snapshot for `node` and a data plane with `capabilities`: Services
/// that need what it lacks are skipped whole.
pub fn translate_with(
    snapshot: &Snapshot,
    node: &NodeContext,
    capabilities: &Capabilities,
) -> Translation {
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
        let candidate = service(svc, own, node, &mut skipped);
        if let Some(candidate) = capabilities::supported(candidate, capabilities, &mut skipped) {
            candidates.push(candidate);
        }
    }

    let (desired, losers) = settle(candidates.iter());
    let mut health_checks: Vec<HealthCheck> = candidates
        .iter()
        .filter(|c| !losers.contains_key(&c.id))
        .filter_map(|c| c.health_check.clone())
        .collect();
    health_check::sort(&mut health_checks);
    skipped.extend(losers.into_values());
    Translation {
        desired,
        skipped,
        health_checks,
    }
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
    /// What the data plane cannot do.
    capabilities: Capabilities,
}

impl Translator {
    /// A translator for a data plane with `capabilities`.
    pub fn new(capabilities: Capabilities) -> Self {
        Translator {
            capabilities,
            ..Translator::default()
        }
    }

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
        health_check::sort(&mut out);
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
                let candidate = service(svc, &slices, node, &mut skipped);
                capabilities::supported(candidate, &self.capabilities, &mut skipped)
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

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
