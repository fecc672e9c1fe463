//! Data plane backends behind one trait. The reconciler and the daemon only speak
//! [`Dataplane`]; nothing above this layer knows which backend runs.

pub mod ebpf;
#[cfg(test)]
pub mod fake;
pub mod ipvs;
pub mod listing;
pub mod netdev;
pub mod netfilter;
pub mod nlsocket;

use std::borrow::Cow;
use std::future::Future;

use crate::model::{Capabilities, FrontendKey, NodeAddresses, VirtualService};

/// Why a data plane operation failed, in terms any backend can use.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A kernel table was full: the service was not programmed and its previous state
    /// was kept.
    #[error("{table} is full ({capacity} entries) while programming {what}")]
    Capacity {
        /// The table's name (a map, a set).
        table: &'static str,
        /// Its capacity.
        capacity: u32,
        /// What was being written (a service name once known).
        what: String,
    },
    /// A kernel call failed.
    #[error("{op} on {object} failed: {source}")]
    Kernel {
        /// What was attempted: insert, remove, lookup, attach, ...
        op: &'static str,
        /// On what: a map, a link, an interface.
        object: String,
        /// The kernel's answer (its errno is `raw_os_error()`).
        #[source]
        source: std::io::Error,
    },
    /// This backend cannot express the request.
    #[error("unsupported by this data plane: {0}")]
    Unsupported(String),
    /// The kernel lacks a part this backend needs (a module not loaded); the message
    /// names the part and how to get it.
    #[error("{0}")]
    Unavailable(String),
}

impl DataplaneError {
    /// Names the service being programmed in a capacity error.
    pub fn about(self, service: &impl std::fmt::Display) -> Self {
        match self {
            DataplaneError::Capacity {
                table,
                capacity,
                what,
            } if what.is_empty() => DataplaneError::Capacity {
                table,
                capacity,
                what: service.to_string(),
            },
            other => other,
        }
    }

    /// Every [`metric_label`](Self::metric_label), so that each series can be
    /// exported at 0 before the first failure (a query or alert on it then has data).
    pub const METRIC_LABELS: [&'static str; 4] =
        ["capacity", "kernel", "unsupported", "unavailable"];

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            DataplaneError::Capacity { .. } => "capacity",
            DataplaneError::Kernel { .. } => "kernel",
            DataplaneError::Unsupported(_) => "unsupported",
            DataplaneError::Unavailable(_) => "unavailable",
        }
    }

    /// The errno of a failed kernel call.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DataplaneError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A data plane the reconciler programs.
///
/// Each call must be applied so that traffic never sees a half-written service: on
/// error the service keeps its previous state (or stays absent if it was new). Side
/// tasks (collectors, device watching, counters) belong to the backend: it starts them
/// when it is created and stops them when it is dropped.
pub trait Dataplane: Send {
    /// The backend's name (`ebpf`, `ipvs`), as `/proxyMode` reports it.
    fn mode(&self) -> &'static str;

    /// What this backend cannot do; translation refuses services that need it.
    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    /// Where NodePorts are served. Called before the services at each sync whose
    /// node addresses changed, and again when [`Dataplane::node_changed`] fires.
    fn set_node(&mut self, node: &NodeAddresses) -> Result<(), DataplaneError>;

    /// Programs (creates or replaces) one virtual service.
    fn upsert(&mut self, svc: &VirtualService) -> Result<(), DataplaneError>;

    /// Removes one frontend and everything only it referenced.
    fn remove(&mut self, frontend: &FrontendKey) -> Result<(), DataplaneError>;

    /// The frontends the kernel holds, with only what the kernel holds: the reconciler
    /// compares these with the desired services through [`Dataplane::held`], so a
    /// field the backend does not store never reads as drift.
    fn programmed(&self) -> Result<Vec<VirtualService>, DataplaneError>;

    /// What of `svc` this backend stores in the kernel, in the form
    /// [`Dataplane::programmed`] reports it (borrowed when that is `svc` itself, so
    /// comparing costs no copy). The default: everything.
    fn held<'a>(&self, svc: &'a VirtualService) -> Cow<'a, VirtualService> {
        Cow::Borrowed(svc)
    }

    /// The `healthCheckNodePort`s the agent serves, for a backend whose rules must let
    /// them in (the IPVS mode's `KUBE-HEALTH-CHECK-NODE-PORT`). Nothing by default.
    fn set_health_check_ports(&mut self, ports: &[u16]) -> Result<(), DataplaneError> {
        let _ = ports;
        Ok(())
    }

    /// Re-reads the kernel state, so that [`Dataplane::programmed`] shows entries
    /// changed or deleted behind the agent's back and the next sync repairs them.
    fn refresh(&mut self) -> Result<(), DataplaneError> {
        Ok(())
    }

    /// Called once at the end of every sync, after its upserts and removals: for work
    /// over the whole result (the IPVS mode's UDP conntrack reconciler). It cannot
    /// fail the sync: the backend logs and counts its own failures.
    fn after_sync(&mut self) {}

    /// Resolves when the node's devices changed (an interface or address came or
    /// went) and [`Dataplane::set_node`] should be applied again. Must be cancel-safe:
    /// the daemon races it against its other inputs. Never resolves by default.
    fn node_changed(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Registers the backend's own metrics (its counters, its side tasks' statistics)
    /// in the agent's `/metrics`.
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let _ = registry;
    }
}

#[cfg(test)]
mod metric_label_tests {
    use super::DataplaneError;

    #[test]
    fn every_error_kind_has_its_label_listed_for_export_at_zero() {
        let all = [
            DataplaneError::Capacity {
                table: "t",
                capacity: 1,
                what: String::new(),
            },
            DataplaneError::Kernel {
                op: "insert",
                object: String::new(),
                source: std::io::Error::other("x"),
            },
            DataplaneError::Unsupported(String::new()),
            DataplaneError::Unavailable(String::new()),
        ];
        let labels: Vec<&str> = all.iter().map(DataplaneError::metric_label).collect();
        assert_eq!(labels, DataplaneError::METRIC_LABELS);
    }
}
