//! The tc data plane's connection tables, seen from user space: `proxyctl conntrack`
//! lists their flows, and the data plane's garbage collector deletes the flows that
//! went idle.
//!
//! Flows start in `CT_OPEN`, an LRU, and move to `CONNTRACK` once assured (see
//! [`proxy_common::CtOpenEntry`]). Each table holds two entries per flow (see
//! [`proxy_common::CtEntry`]):
//! - the forward leg, keyed by the client's tuple (client -> frontend), whose `nat_*`
//!   tuple is the packet after translation (client or SNAT address -> backend);
//! - the reply leg ([`proxy_common::CT_F_REPLY`]), keyed by the backend's reply tuple,
//!   whose `nat_*` tuple is what replies are rewritten to (frontend -> client).
//!
//! Each leg names the other: `CtKey { its nat tuple }.reversed()`. Legs that name each
//! other form a flow; a leg whose partner is missing (or belongs to another flow) is an
//! orphan, shown and collected on its own.
//!
//! `CONNTRACK` is a plain hash map, not an LRU (an evicted live flow would leak replies
//! with the backend's address), so nothing but this collector removes idle flows from
//! it. `CT_OPEN` also loses its oldest entries to new flows when full.
//! The decisions are pure functions of the entries, the clock and [`TcConfig`]
//! ([`flows::flows`], [`flows::plan_gc`]), tested without a kernel; [`gc::gc`] applies
//! them through [`gc::CtTable`].

mod batch;
#[cfg(test)]
mod fixtures;
pub mod flows;
pub mod gc;
pub mod sizes;

use std::path::Path;

use aya::maps::{Array, HashMap, MapData, MapError};
use proxy_common::{CtEntry, CtOpenEntry, TcConfig, maps};

pub use flows::{Flow, FlowState, GcGroup, Legs, flows, leg_expired, other_leg, plan_gc};
pub use gc::{CtTable, GcReport, GcStats, OpenSample, Pinned, evicted, gc, gc_pinned, spawn_gc};
pub use sizes::{ConntrackSizes, cores};

use super::pins::{self, PinError};

/// Reading or collecting the connection table failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// A pinned map could not be opened.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// A map operation failed.
    #[error("{op} on map {name}")]
    Map {
        /// What was done.
        op: &'static str,
        /// The map's name.
        name: &'static str,
        /// The failure.
        #[source]
        source: MapError,
    },
}

impl ConntrackError {
    /// The map is not pinned (yet): the data plane has not created it.
    pub fn is_missing(&self) -> bool {
        matches!(self, ConntrackError::Pin(e) if e.is_missing())
    }
}

/// The pinned table of assured flows.
pub(super) fn open_table(bpffs: &Path) -> Result<Pinned<CtEntry>, ConntrackError> {
    open_pinned(bpffs, maps::CONNTRACK)
}

/// The pinned table of unassured flows.
pub(super) fn open_unassured(bpffs: &Path) -> Result<Pinned<CtOpenEntry>, ConntrackError> {
    open_pinned(bpffs, maps::CT_OPEN)
}

fn open_pinned<V: gc::Leg>(bpffs: &Path, name: &'static str) -> Result<Pinned<V>, ConntrackError> {
    let data = pins::open_data(bpffs, name)?;
    let capacity = data
        .info()
        .map(|i| i.max_entries())
        .map_err(|source| ConntrackError::Map {
            op: "reading the info of",
            name,
            source,
        })?;
    let map: HashMap<MapData, _, V> = pins::open(bpffs, name)?;
    Ok(Pinned::new(map, data, capacity))
}

/// The data plane's timeouts (`TC_CONFIG[0]`).
pub fn read_config(bpffs: &Path) -> Result<TcConfig, ConntrackError> {
    let array: Array<MapData, TcConfig> = pins::open(bpffs, maps::TC_CONFIG)?;
    array.get(&0, 0).map_err(|source| ConntrackError::Map {
        op: "reading",
        name: maps::TC_CONFIG,
        source,
    })
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns()` that the
/// programs stamp entries with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the timespec we own; CLOCK_MONOTONIC is
    // always available, so the call cannot fail and leave it unset.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}
