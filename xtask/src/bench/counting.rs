//! The data plane's traffic statistics switched on and off in a running agent's pinned
//! `STATS` map (its index 0, which the programs read when a flow opens), so that a
//! benchmark measures their cost within one run: the same agent, services and traffic,
//! counted and not.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use proxy_common::{Stats, maps, stats};

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
