//! Where Services and EndpointSlices come from. A source hands the agent [`Update`]s:
//! either the whole world ([`Update::Reset`], swapped in at once, so that a relist or a
//! directory re-read never shows a half-empty world) or the objects that changed since
//! the last update. The agent keeps the current world in a [`World`].

pub mod kubernetes;
pub mod manifests;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use validate::{LABEL_SERVICE_NAME, namespace_of};

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
