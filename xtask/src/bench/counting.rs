//! Switches in a running agent's pinned maps, so that a benchmark measures what a
//! feature costs within one run (the same agent, services and traffic, with and
//! without): the traffic statistics (index 0 of `STATS`, which the programs read when
//! a flow opens) and the monitor's leases (`MONITOR`).

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Array, Map, MapData, PerCpuArray, PerCpuValues};
use proxy_common::{Stats, maps, monitor, stats};

/// Turns the counting on or off; flows opened after this keep the setting.
pub(crate) fn set(maps_dir: &Path, on: bool) -> Result<()> {
    let pin = maps_dir.join(maps::STATS);
    let data = MapData::from_pin(&pin).with_context(|| {
        format!(
            "opening {} (an agent that predates the statistics cannot switch them)",
            pin.display()
        )
    })?;
    let mut array: PerCpuArray<MapData, Stats> = PerCpuArray::try_from(Map::PerCpuArray(data))?;
    let value = Stats {
        service_id: if on { 0 } else { stats::OFF },
        ..Stats::default()
    };
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    array.set(0, PerCpuValues::try_from(vec![value; cpus])?, 0)?;
    Ok(())
}

/// Holds every monitor lease for good, with nobody reading: the programs then emit on
/// every path that can, into a ring that soon fills.
pub(crate) fn hold_monitor_leases(maps_dir: &Path) -> Result<()> {
    set_monitor_leases(maps_dir, u64::MAX)
}

/// Ends every monitor lease at once (a listener that was killed leaves its lease
/// running for up to `LEASE_NS`, and the programs keep emitting until it lapses).
pub(crate) fn end_monitor_leases(maps_dir: &Path) -> Result<()> {
    set_monitor_leases(maps_dir, 0)
}

fn set_monitor_leases(maps_dir: &Path, deadline: u64) -> Result<()> {
    let pin = maps_dir.join(maps::MONITOR);
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let mut leases: Array<MapData, u64> = Array::try_from(Map::Array(data))?;
    for kind in 0..monitor::KINDS {
        leases.set(kind, deadline, 0)?;
    }
    Ok(())
}
