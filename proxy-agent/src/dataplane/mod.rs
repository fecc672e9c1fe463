//! Data plane backends behind one trait. The reconciler only speaks [`Dataplane`].

pub mod ebpf;
pub mod netdev;

use crate::model::{FrontendKey, VirtualService};

/// Why a data plane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A map was full: the service was not (or not fully) programmed and its previous
    /// state was kept.
    #[error("map {map} is full ({capacity} entries) while programming {what}")]
    MapFull {
        /// The map's name.
        map: &'static str,
        /// Its capacity.
        capacity: u32,
        /// What was being written.
        what: String,
    },
    /// A map operation failed for another reason.
    #[error("{op} on map {map} failed: {source}")]
    Map {
        /// insert, remove or get.
        op: &'static str,
        /// The map's name.
        map: &'static str,
        /// The underlying error.
        #[source]
        source: aya::maps::MapError,
    },
    /// The kernel state could not be read back.
    #[error("reading the data plane: {0}")]
    Read(String),
    /// The service cannot be expressed in this data plane.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl DataplaneError {
    /// Names the service being programmed in a map-full error.
    pub fn about(self, service: &impl std::fmt::Display) -> Self {
        match self {
            DataplaneError::MapFull {
                map,
                capacity,
                what,
            } if what.is_empty() => DataplaneError::MapFull {
                map,
                capacity,
                what: service.to_string(),
            },
            other => other,
        }
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            DataplaneError::MapFull { .. } => "map_full",
            DataplaneError::Map { .. } => "map_error",
            DataplaneError::Read(_) => "read_error",
            DataplaneError::Unsupported(_) => "unsupported",
        }
    }
}

/// A data plane the reconciler programs. Implementations must apply each call so that
/// the kernel never sees a half-written service: on error the service keeps its
/// previous state (or stays absent if it was new).
pub trait Dataplane {
    /// Programs (creates or replaces) one virtual service.
    fn upsert(&mut self, svc: &VirtualService) -> Result<(), DataplaneError>;
    /// Removes one frontend and everything only it referenced.
    fn remove(&mut self, frontend: &FrontendKey) -> Result<(), DataplaneError>;
    /// The frontends currently programmed, as the kernel holds them, with their
    /// backends; used to repair drift and by observers.
    fn programmed(&self) -> Result<Vec<VirtualService>, DataplaneError>;
    /// Re-reads the kernel state, so that [`Dataplane::programmed`] shows entries
    /// changed or deleted behind the agent's back (drift) and the next sync repairs them.
    fn refresh(&mut self) -> Result<(), DataplaneError> {
        Ok(())
    }
}
