//! The programs' per-CPU event counters (`COUNTERS`), summed over CPUs and named by
//! [`proxy_common::counter::NAMES`]: read by `proxyctl stats` and at each scrape.

use std::path::Path;

use aya::maps::{MapData, MapError, PerCpuArray};
use proxy_common::maps;

use super::pins::{self, PinError};

/// The counters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    /// The map is not pinned or not a per-CPU array.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// Reading it failed.
    #[error("reading {}", maps::COUNTERS)]
    Read(#[source] MapError),
}

/// The counters pinned under `bpffs`, by name, in [`proxy_common::counter`] order.
pub fn read(bpffs: &Path) -> Result<Vec<(&'static str, u64)>, CountersError> {
    let array: PerCpuArray<MapData, u64> = pins::open(bpffs, maps::COUNTERS)?;
    let mut out = Vec::new();
    for (i, name) in (0u32..).zip(proxy_common::counter::NAMES) {
        match array.get(&i, 0) {
            Ok(per_cpu) => out.push((name, per_cpu.iter().sum())),
            // A map pinned by an older data plane has fewer counters: show what it has.
            Err(MapError::OutOfBounds { .. }) => break,
            Err(e) => return Err(CountersError::Read(e)),
        }
    }
    Ok(out)
}
