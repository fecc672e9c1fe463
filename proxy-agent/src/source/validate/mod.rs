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
//!
//! One file per part: names, port numbers and protocols (`metadata`), addresses and
//! ranges (`ip`), Services (`service`, with `cluster_ips` and `load_balancer`) and
//! EndpointSlices (`endpoint_slice`).

mod cluster_ips;
mod endpoint_slice;
mod ip;
mod load_balancer;
mod metadata;
mod service;

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use endpoint_slice::endpoint_slice;
pub use ip::{family_name, parse_cidr, parse_ip};
pub use service::service;

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

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
