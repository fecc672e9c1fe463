//! The one way to open a map the data plane pinned: `proxyctl`, the metrics collector
//! and the connection-table collector all read the kernel's state through these pins,
//! independently of the agent process that loaded it.

use std::io;
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, MapError};

/// The directory under the pin root where maps are pinned (links go to `links/`).
pub const MAPS_DIR: &str = "maps";

/// A pinned map could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// Nothing is pinned there: the data plane has not been loaded with this pin root
    /// (or predates the map).
    #[error("{} is not pinned (is the agent running with this --bpffs?)", path.display())]
    Missing {
        /// The pin.
        path: PathBuf,
    },
    /// The pin exists but could not be opened.
    #[error("opening {}", path.display())]
    Open {
        /// The pin.
        path: PathBuf,
        /// aya's answer.
        #[source]
        source: MapError,
    },
    /// The pinned map is not of the type its readers expect (a data plane of another
    /// version pinned it).
    #[error("map {name} has an unexpected type or layout")]
    Type {
        /// The map's name.
        name: &'static str,
        /// aya's answer.
        #[source]
        source: MapError,
    },
    /// A map's fdinfo could not be read.
    #[error("reading {}", path.display())]
    Fdinfo {
        /// `/proc/self/fdinfo/<fd>`.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

impl PinError {
    /// Whether nothing is pinned (yet) under that name.
    pub fn is_missing(&self) -> bool {
        matches!(self, PinError::Missing { .. })
    }
}

/// Where map `name` is pinned under the pin root `bpffs`.
pub fn map_path(bpffs: &Path, name: &str) -> PathBuf {
    bpffs.join(MAPS_DIR).join(name)
}

/// Opens the map `name` pinned under `bpffs` as the typed map `T` (a
/// `HashMap<MapData, K, V>`, an `LpmTrie`, a `PerCpuArray`, ...).
pub fn open<T>(bpffs: &Path, name: &'static str) -> Result<T, PinError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let data = open_data(bpffs, name)?;
    // The map's own type (hash, LRU hash, trie, array) picks the variant, so an LRU
    // map opens as a HashMap like a plain one.
    let map = Map::from_map_data(data).map_err(|source| PinError::Type { name, source })?;
    T::try_from(map).map_err(|source| PinError::Type { name, source })
}

/// The map `name` pinned under `bpffs`, untyped: for what the kernel says about it.
pub fn open_data(bpffs: &Path, name: &'static str) -> Result<MapData, PinError> {
    let path = map_path(bpffs, name);
    // Checked on the filesystem first: without CAP_BPF the syscall answers EPERM even
    // for a pin that does not exist, and "not there yet" must not read as a failure.
    if matches!(std::fs::symlink_metadata(&path), Err(e) if e.kind() == io::ErrorKind::NotFound) {
        return Err(PinError::Missing { path });
    }
    match MapData::from_pin(&path) {
        Ok(d) => Ok(d),
        Err(MapError::SyscallError(s)) if s.io_error.kind() == io::ErrorKind::NotFound => {
            Err(PinError::Missing { path })
        }
        Err(source) => Err(PinError::Open { path, source }),
    }
}

/// The capacity (`max_entries`) the kernel gave the pinned map `name`.
pub fn max_entries(bpffs: &Path, name: &'static str) -> Result<u32, PinError> {
    let data = open_data(bpffs, name)?;
    data.info()
        .map(|i| i.max_entries())
        .map_err(|source| PinError::Type { name, source })
}

/// The kernel memory the pinned map `name` takes, in bytes: what the kernel reports
/// as its `memlock` in the map's fdinfo.
pub fn memory_bytes(bpffs: &Path, name: &'static str) -> Result<u64, PinError> {
    use std::os::fd::{AsFd, AsRawFd};
    let data = open_data(bpffs, name)?;
    let fd = data.fd().as_fd().as_raw_fd();
    let path = PathBuf::from(format!("/proc/self/fdinfo/{fd}"));
    let text =
        std::fs::read_to_string(&path).map_err(|source| PinError::Fdinfo { path, source })?;
    Ok(memlock(&text).unwrap_or(0))
}

/// The `memlock:` value of a map's fdinfo.
fn memlock(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Like [`open`], but a map that is not pinned is `None`: for maps a data plane of an
/// older version may not have.
pub fn open_optional<T>(bpffs: &Path, name: &'static str) -> Result<Option<T>, PinError>
where
    T: TryFrom<Map, Error = MapError>,
{
    match open(bpffs, name) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use aya::maps::HashMap;

    use super::*;

    #[test]
    fn memlock_is_read_from_fdinfo() {
        let info = "pos:\t0\nflags:\t02000002\nmap_type:\t1\nmemlock:\t45350912\nmap_id:\t7\n";
        assert_eq!(memlock(info), Some(45_350_912));
        assert_eq!(memlock("pos:\t0\n"), None);
    }

    #[test]
    fn a_map_that_is_not_pinned_is_missing_not_an_error() {
        let dir = Path::new("/nonexistent/proxy-agent");
        let e = open::<HashMap<MapData, u32, u32>>(dir, "BACKENDS").err();
        assert!(e.as_ref().is_some_and(PinError::is_missing), "{e:?}");
        let none = open_optional::<HashMap<MapData, u32, u32>>(dir, "BACKENDS");
        assert!(matches!(none, Ok(None)));
        assert_eq!(
            map_path(Path::new("/sys/fs/bpf/x"), "SLOTS"),
            Path::new("/sys/fs/bpf/x/maps/SLOTS")
        );
    }
}
