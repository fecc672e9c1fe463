//! Where Services and EndpointSlices come from. Every source produces a [`Snapshot`]:
//! the whole current world, swapped in at once, so that a relist or a directory
//! re-read never shows the translation layer a half-empty world.

pub mod kubernetes;
pub mod manifests;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// `namespace/name` of an object.
pub type ObjectKey = (String, String);

/// Everything a source currently knows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Services by namespace and name.
    pub services: BTreeMap<ObjectKey, Service>,
    /// EndpointSlices by namespace and name.
    pub slices: BTreeMap<ObjectKey, EndpointSlice>,
}
