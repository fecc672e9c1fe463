//! The node agent of the eBPF kube-proxy replacement.
//!
//! The modules are the layers, and imports point one way (down this list):
//!
//! ```text
//! daemon     wires everything; the sync loop (a pure schedule + cancel-safe inputs)
//! observe    metrics, /healthz, health check node ports, proxyctl
//! reconcile  diff desired vs applied, ordered apply, whole services or nothing
//! dataplane  the Dataplane trait and its backends (eBPF); node devices
//! translate  pure: Kubernetes objects -> desired state, kube-proxy's semantics
//! source     manifest files | Kubernetes watch -> Snapshot / Update
//! model      the desired state: plain values, no Kubernetes types, no I/O
//! error_text how an error reads in a log line (used by every layer)
//! ```
//!
//! (`observe` reads `dataplane` and `reconcile`; `translate` reads `source`'s
//! snapshot; nothing reads `daemon`.) See ARCHITECTURE.md.
#![deny(missing_docs)]

pub mod daemon;
pub mod dataplane;
pub mod error_text;
pub mod model;
pub mod observe;
pub mod reconcile;
pub mod source;
pub mod translate;
