//! Loading the eBPF object and attaching the socket programs to the cgroup.
//!
//! Maps are pinned under `<bpffs>/maps/` and reused by the next agent, so services keep
//! their state across restarts. Each cgroup program's link is pinned under
//! `<bpffs>/links/<program>`: a new agent attaches its program first and only then
//! unpins the previous agent's link, so connections are balanced without a gap.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, MapError};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier};
use aya::{Ebpf, EbpfLoader};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use proxy_common as pc;
use proxy_common::maps;
use tracing::{info, warn};

use super::metrics::MapName;
use super::{EbpfConfig, PROGRAMS};
use crate::dataplane::DataplaneError;

/// Why the data plane could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The pin directory is not on a bpffs and none could be mounted.
    #[error("preparing the pin directory: {0}")]
    Bpffs(#[source] io::Error),
    /// The object could not be loaded (verifier, map creation, pinning).
    #[error("loading the eBPF object: {0}")]
    Ebpf(#[from] aya::EbpfError),
    /// A program could not be loaded or attached.
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// The error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A link could not be pinned or adopted.
    #[error("link {name}: {message}")]
    Link {
        /// Program name.
        name: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A map was missing or of the wrong type.
    #[error("map {name}: {message}")]
    Map {
        /// Map name.
        name: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The node's devices cannot be followed (no rtnetlink notifications).
    #[error("following the network interfaces: {0}")]
    DeviceWatch(#[source] crate::dataplane::netdev::RtnlError),
    /// What a previous agent programmed could not be read back.
    #[error("reading the programmed services: {0}")]
    Adopt(#[source] DataplaneError),
    /// The embedded object is empty (built with AYA_BUILD_SKIP=1).
    #[error("this binary was built without its eBPF programs (AYA_BUILD_SKIP)")]
    NoPrograms,
    /// [`super::EbpfDataplane::load`] was called outside a Tokio runtime, which its side
    /// tasks (connection-table collection, device checks) need.
    #[error("the eBPF data plane must be loaded within a Tokio runtime")]
    NoRuntime,
}

/// A `COUNTERS` map pinned by an older agent may have fewer entries than this one
/// counts; reused as it is, the newer counters would silently never count. It holds
/// statistics only, so it is replaced (counts restart from zero; the previous agent's
/// programs keep their map until the new ones are attached).
fn replace_outgrown_counters(bpffs: &Path) {
    let pin = super::pins::map_path(bpffs, maps::COUNTERS);
    if let Ok(n) = super::pins::max_entries(bpffs, maps::COUNTERS)
        && n != pc::counter::COUNT
    {
        match std::fs::remove_file(&pin) {
            Ok(()) => info!(
                old = n,
                new = pc::counter::COUNT,
                "the pinned COUNTERS map has another size: replaced, counts restart"
            ),
            Err(e) => warn!(pin = %pin.display(), error = %e, "replacing the COUNTERS pin"),
        }
    }
}

/// A `STATS` map pinned with another size than this build's: statistics only, so it is
/// replaced (counts restart; memberships are renumbered when the agent adopts them).
fn replace_resized_stats(bpffs: &Path, entries: u32) {
    let pin = super::pins::map_path(bpffs, maps::STATS);
    if let Ok(n) = super::pins::max_entries(bpffs, maps::STATS)
        && n != entries
    {
        match std::fs::remove_file(&pin) {
            Ok(()) => info!(
                old = n,
                new = entries,
                "the pinned STATS map has another size: replaced, statistics restart"
            ),
            Err(e) => warn!(pin = %pin.display(), error = %e, "replacing the STATS pin"),
        }
    }
}

/// `STATS` entries for `cpus` CPUs: what [`pc::sizes::STATS_BUDGET_BYTES`] holds (per
/// CPU a `Stats` each), within `sizes::STATS..=sizes::STATS_MAX`: memory stays bounded
/// on big nodes, small ones count every membership of a large cluster.
pub(super) fn stats_entries(cpus: usize) -> u32 {
    let per_entry = std::mem::size_of::<pc::Stats>() as u64 * cpus.max(1) as u64;
    let fit = pc::sizes::STATS_BUDGET_BYTES / per_entry;
    u32::try_from(fit)
        .unwrap_or(u32::MAX)
        .clamp(pc::sizes::STATS, pc::sizes::STATS_MAX)
}

/// The kernel memory each pinned map takes, logged once with the total: the
/// connection tables are preallocated, so this is paid whether flows come or not.
pub(super) fn map_memory(bpffs: &Path) -> Family<MapName, Gauge> {
    let family = Family::<MapName, Gauge>::default();
    let mut total = 0u64;
    for map in maps::ALL {
        match super::pins::memory_bytes(bpffs, map) {
            Ok(bytes) => {
                total += bytes;
                family
                    .get_or_create(&MapName { map })
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
            Err(e) => warn!(map, error = %e, "reading the map's memory use"),
        }
    }
    info!(
        mib = total / (1 << 20),
        "the data plane's maps take {:.1} MiB of kernel memory",
        total as f64 / f64::from(1 << 20)
    );
    family
}

/// Warns when a pinned connection table adopted from an earlier agent has another
/// size than configured: pinned maps keep their size (and their flows).
fn check_adopted_size(bpffs: &Path, name: &'static str, configured: u32) {
    if let Ok(n) = super::pins::max_entries(bpffs, name)
        && n != configured
    {
        warn!(
            map = name,
            pinned = n,
            configured,
            "keeping the pinned table and its flows at its old size; run --cleanup and restart to resize"
        );
    }
}

/// Loads the object with the configured map sizes (reusing maps pinned under
/// `<bpffs>/maps`), loads the tc programs for later attachment, writes `TC_CONFIG`, and
/// attaches every socket program to the cgroup (see the module documentation).
pub(super) fn load_and_attach(cfg: &EbpfConfig) -> Result<Ebpf, LoadError> {
    if PROGRAMS.is_empty() {
        return Err(LoadError::NoPrograms);
    }
    let maps_dir = cfg.bpffs.join(super::pins::MAPS_DIR);
    let links_dir = links_dir(&cfg.bpffs);
    for dir in [&maps_dir, &links_dir] {
        std::fs::create_dir_all(dir).map_err(|source| LoadError::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
    }
    replace_outgrown_counters(&cfg.bpffs);
    let stats_entries = stats_entries(aya::util::nr_cpus().unwrap_or(1));
    replace_resized_stats(&cfg.bpffs, stats_entries);
    check_adopted_size(&cfg.bpffs, maps::CONNTRACK, cfg.conntrack.assured_entries());
    check_adopted_size(&cfg.bpffs, maps::CT_OPEN, cfg.conntrack.unassured_entries());
    let s = cfg.sizes;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&maps_dir)
        .map_max_entries(maps::FRONTENDS, s.frontends)
        .map_max_entries(maps::SLOTS, s.slots)
        .map_max_entries(maps::AFFINITY_MATCH, s.slots)
        .map_max_entries(maps::BACKENDS, s.backends)
        .map_max_entries(maps::AFFINITY, s.affinity)
        .map_max_entries(maps::REV_SOCK, s.rev_sock)
        .map_max_entries(maps::SVC_NAMES, s.frontends)
        .map_max_entries(maps::CONNTRACK, cfg.conntrack.assured_entries())
        .map_max_entries(maps::CT_OPEN, cfg.conntrack.unassured_entries())
        .map_max_entries(maps::STATS, stats_entries)
        // Always set: aya-log's own default logs everything.
        .override_global(aya_log::LEVEL, &cfg.bpf_log.global(), true)
        .load(PROGRAMS)?;
    for name in [pc::programs::TC_INGRESS, pc::programs::TC_EGRESS] {
        program::<SchedClassifier>(&mut ebpf, name)?
            .load()
            .map_err(|source| LoadError::Program { name, source })?;
    }
    let mut tc_config: Array<MapData, pc::TcConfig> =
        take_map(&mut ebpf, maps::TC_CONFIG, Array::try_from)?;
    tc_config.set(0, cfg.tc, 0).map_err(|e| LoadError::Map {
        name: maps::TC_CONFIG,
        message: e.to_string(),
    })?;

    let cgroup = File::open(&cfg.cgroup).map_err(|source| LoadError::Io {
        what: "opening cgroup",
        path: cfg.cgroup.clone(),
        source,
    })?;
    for name in pc::programs::ALL {
        attach_cgroup(&mut ebpf, name, &cgroup, &links_dir)?;
    }
    Ok(ebpf)
}

/// Where links are pinned under the pin root.
pub(super) fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

/// Loads socket program `name`, attaches it to `cgroup` and pins its link as
/// `<links_dir>/<name>`, replacing a previous agent's link without a gap.
fn attach_cgroup(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
    links_dir: &Path,
) -> Result<(), LoadError> {
    let program = program::<CgroupSockAddr>(ebpf, name)?;
    program
        .load()
        .map_err(|source| LoadError::Program { name, source })?;
    let pin = links_dir.join(name);
    // A previous agent's link keeps its program attached until ours is in place.
    let old = if pin.exists() {
        match PinnedLink::from_pin(&pin) {
            Ok(l) => Some(l),
            Err(e) => {
                return Err(LoadError::Link {
                    name,
                    message: format!("adopting {}: {e}", pin.display()),
                });
            }
        }
    } else {
        None
    };
    let id = program
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(|source| LoadError::Program { name, source })?;
    let link = program
        .take_link(id)
        .map_err(|source| LoadError::Program { name, source })?;
    let link: FdLink = link.try_into().map_err(|e: LinkError| LoadError::Link {
        name,
        message: e.to_string(),
    })?;
    // Both programs run for a moment; that is harmless (the second sees a backend
    // address, not a VIP). The old one detaches when its last reference is dropped.
    let old = match old {
        Some(l) => Some(l.unpin().map_err(|e| LoadError::Link {
            name,
            message: format!("unpinning the previous link: {e}"),
        })?),
        None => None,
    };
    link.pin(&pin).map_err(|e| LoadError::Link {
        name,
        message: format!("pinning {}: {e}", pin.display()),
    })?;
    drop(old);
    Ok(())
}

/// Program `name` of the object, as its type.
pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| LoadError::Link {
            name,
            message: "program missing from the object".into(),
        })?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

/// Takes map `name` out of the object as the typed map `convert` makes of it.
pub(super) fn take_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(Map) -> Result<T, MapError>,
) -> Result<T, LoadError> {
    let map: Map = ebpf.take_map(name).ok_or_else(|| LoadError::Map {
        name,
        message: "missing from the object".into(),
    })?;
    convert(map).map_err(|e| LoadError::Map {
        name,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statistics_table_fits_its_budget_within_its_bounds() {
        assert_eq!(stats_entries(2), pc::sizes::STATS_MAX);
        assert_eq!(stats_entries(64), 9_362);
        assert_eq!(stats_entries(1024), pc::sizes::STATS);
        let bytes = u64::from(stats_entries(64)) * 56 * 64;
        assert!(bytes <= pc::sizes::STATS_BUDGET_BYTES);
    }
}
