//! Where Services and EndpointSlices come from. A source hands the agent [`Update`]s:
//! either the whole world ([`Update::Reset`], swapped in at once, so that a relist or a
//! directory re-read never shows a half-empty world) or the objects that changed since
//! the last update. The agent keeps the current world in a [`World`].

pub mod debounce;
pub mod kubernetes;
pub mod manifests;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use validate::{LABEL_SERVICE_NAME, namespace_of};

/// Services with this label belong to another service proxy.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";

/// The EndpointSlice controller marks the slices of headless Services with this label
/// (and some tools put it on the Services too).
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";

/// kube-proxy's label selector for the Services and EndpointSlices it lists and
/// watches (`cmd/kube-proxy/app/server.go`); what it filters out, a proxy never sees.
pub const SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Whether an object with these label keys passes [`SELECTOR`].
pub fn selected<'a>(mut label_keys: impl Iterator<Item = &'a str>) -> bool {
    !label_keys.any(|k| k == LABEL_SERVICE_PROXY_NAME || k == LABEL_HEADLESS)
}

/// `namespace/name` of an object.
pub type ObjectKey = (String, String);

/// Everything a source currently knows. Objects are shared, not copied.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Services by namespace and name.
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    /// EndpointSlices by namespace and name.
    pub slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
}

/// What a source has to say since it was last asked.
#[derive(Debug)]
pub enum Update {
    /// The whole world.
    Reset(Snapshot),
    /// Objects that changed: the new version, or `None` if deleted.
    Changes {
        /// Changed Services.
        services: Vec<(ObjectKey, Option<Arc<Service>>)>,
        /// Changed EndpointSlices.
        slices: Vec<(ObjectKey, Option<Arc<EndpointSlice>>)>,
    },
}

/// Object changes seen since the last snapshot.
#[derive(Clone, Copy, Debug, Default)]
pub struct Changes {
    /// Service add/update/delete events.
    pub services: u64,
    /// EndpointSlice add/update/delete events.
    pub endpoint_slices: u64,
    /// Node events (this node only).
    pub nodes: u64,
    /// When the oldest of them arrived.
    pub since: Option<Instant>,
}

/// What the watchers currently know about this node.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    /// `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
    /// Whether the node object is being deleted (health turns unhealthy).
    pub deleting: bool,
    /// The IP families of the node's InternalIP/ExternalIP addresses: (IPv4, IPv6).
    /// `None` while the node object or its addresses are unknown.
    pub families: Option<(bool, bool)>,
    /// The node's InternalIP addresses (its "primary" NodePort addresses).
    pub internal_ips: Vec<std::net::IpAddr>,
}

/// What a source hands over at a sync.
#[derive(Debug, Default)]
pub struct Taken {
    /// What changed; `None` until the source has a complete world (a Kubernetes
    /// source before its initial lists).
    pub update: Option<Update>,
    /// Input problems seen since the last take (each object skipped, its last good
    /// version kept).
    pub errors: Vec<String>,
    /// Change counts since the last take.
    pub changes: Changes,
}

/// Where Services and EndpointSlices come from: the manifest directory or the API
/// server. The daemon's loop races [`Source::changed`] against its timers, so it must
/// be cancel-safe: a change it saw must be reported by a later call if the future is
/// dropped before it completes.
pub trait Source: Send {
    /// For the log: where the world comes from.
    fn describe(&self) -> String;
    /// Resolves when something changed since the last [`Source::take`]. Cancel-safe.
    fn changed(&mut self) -> impl Future<Output = ()> + Send;
    /// What changed since the last call.
    fn take(&mut self) -> Taken;
    /// This node as the source knows it (default: nothing known).
    fn node(&self) -> NodeInfo {
        NodeInfo::default()
    }
}

impl Source for kubernetes::KubeSource {
    fn describe(&self) -> String {
        "Kubernetes API".into()
    }
    fn changed(&mut self) -> impl Future<Output = ()> + Send {
        kubernetes::KubeSource::changed(self)
    }
    fn take(&mut self) -> Taken {
        kubernetes::KubeSource::take(self)
    }
    fn node(&self) -> NodeInfo {
        kubernetes::KubeSource::node(self)
    }
}

impl Source for manifests::ManifestSource {
    fn describe(&self) -> String {
        format!("manifests in {}", self.dir().display())
    }
    fn changed(&mut self) -> impl Future<Output = ()> + Send {
        manifests::ManifestSource::changed(self)
    }
    fn take(&mut self) -> Taken {
        let (snapshot, errors) = self.load();
        Taken {
            update: Some(Update::Reset(snapshot)),
            errors: errors.iter().map(ToString::to_string).collect(),
            changes: Changes::default(),
        }
    }
}

/// When the change behind an EndpointSlice was triggered (the EndpointSlice
/// controller's `endpoints.kubernetes.io/last-change-trigger-time` annotation).
pub fn trigger_time(slice: &EndpointSlice) -> Option<std::time::SystemTime> {
    let value = slice
        .metadata
        .annotations
        .as_ref()?
        .get("endpoints.kubernetes.io/last-change-trigger-time")?;
    let ts: jiff::Timestamp = value.parse().ok()?;
    Some(std::time::SystemTime::from(ts))
}

/// The current world, with EndpointSlices indexed by the Service they belong to, so
/// that a change can be traced to the Services it affects.
#[derive(Debug, Default)]
pub struct World {
    snapshot: Snapshot,
    /// (namespace, service name) -> the slices labelled with it.
    slices_by_service: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
}

/// The Service an EndpointSlice belongs to (by its `kubernetes.io/service-name` label).
fn owner(key: &ObjectKey, slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
    let ns = if key.0.is_empty() {
        namespace_of(&slice.metadata).to_owned()
    } else {
        key.0.clone()
    };
    Some((ns, name.clone()))
}

impl World {
    /// The world as a snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Replaces everything.
    pub fn reset(&mut self, snapshot: Snapshot) {
        self.slices_by_service.clear();
        for (key, slice) in &snapshot.slices {
            if let Some(svc) = owner(key, slice) {
                self.slices_by_service
                    .entry(svc)
                    .or_default()
                    .insert(key.clone());
            }
        }
        self.snapshot = snapshot;
    }

    /// Applies changed objects; returns the Services whose translation may change.
    pub fn apply(
        &mut self,
        services: Vec<(ObjectKey, Option<Arc<Service>>)>,
        slices: Vec<(ObjectKey, Option<Arc<EndpointSlice>>)>,
    ) -> BTreeSet<ObjectKey> {
        let mut dirty = BTreeSet::new();
        for (key, svc) in services {
            match svc {
                Some(s) => self.snapshot.services.insert(key.clone(), s),
                None => self.snapshot.services.remove(&key),
            };
            dirty.insert(key);
        }
        for (key, slice) in slices {
            if let Some(old) = self.snapshot.slices.get(&key)
                && let Some(svc) = owner(&key, old)
            {
                if let Some(set) = self.slices_by_service.get_mut(&svc) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.slices_by_service.remove(&svc);
                    }
                }
                dirty.insert(svc);
            }
            match slice {
                Some(s) => {
                    if let Some(svc) = owner(&key, &s) {
                        self.slices_by_service
                            .entry(svc.clone())
                            .or_default()
                            .insert(key.clone());
                        dirty.insert(svc);
                    }
                    self.snapshot.slices.insert(key, s);
                }
                None => {
                    self.snapshot.slices.remove(&key);
                }
            }
        }
        dirty
    }

    /// The slices labelled with Service `key`, in slice-name order.
    pub fn slices_of(&self, key: &ObjectKey) -> Vec<&EndpointSlice> {
        self.slices_by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.snapshot.slices.get(k).map(|s| &**s))
            .collect()
    }
}
