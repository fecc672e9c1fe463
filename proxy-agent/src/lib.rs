//! The node agent of the eBPF kube-proxy replacement.
//!
//! Data flows one way through the modules, each with one job:
//!
//! ```text
//! source (manifest files | Kubernetes watch) -> Snapshot
//!   -> translate (pure: kube-proxy's semantics)   -> DesiredState
//!   -> reconcile (diff, ordered apply)            -> Dataplane (eBPF maps)
//!   -> observers (inspect/proxyctl, metrics)
//! ```
#![deny(missing_docs)]

pub mod agent;
pub mod conntrack;
pub mod ctl;
pub mod dataplane;
pub mod healthcheck;
pub mod http;
pub mod inspect;
pub mod metrics;
pub mod model;
pub mod reconcile;
pub mod source;
pub mod translate;
