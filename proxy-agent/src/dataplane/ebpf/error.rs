//! aya's errors in the backend-neutral terms of [`DataplaneError`]: nothing above this
//! backend sees an aya type.

use std::io;

use aya::maps::MapError;
use aya::programs::ProgramError;

use crate::dataplane::DataplaneError;

/// Whether a map operation failed only because the key is absent.
pub fn is_not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound | MapError::ElementNotFound)
        || matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

/// A failed map operation `op` on map `map` of `capacity` entries.
///
/// A full map is [`DataplaneError::Capacity`]: a hash map answers E2BIG, an LPM trie
/// ENOSPC. A failed syscall keeps its `io::Error` (and so its errno); any other aya
/// error becomes an `io::Error` carrying its text.
pub fn map_error(
    op: &'static str,
    map: &'static str,
    capacity: u32,
    e: MapError,
) -> DataplaneError {
    match e {
        MapError::SyscallError(s)
            if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC)) =>
        {
            DataplaneError::Capacity {
                table: map,
                capacity,
                what: String::new(),
            }
        }
        MapError::SyscallError(s) => kernel(op, map, s.io_error),
        MapError::IoError(e) => kernel(op, map, e),
        other => kernel(op, map, io::Error::other(other.to_string())),
    }
}

/// A failed program operation `op` (load, attach) on `object`.
pub fn program_error(op: &'static str, object: String, e: ProgramError) -> DataplaneError {
    let source = match e {
        ProgramError::SyscallError(s) => s.io_error,
        ProgramError::LoadError { io_error, .. } => io_error,
        ProgramError::MapError(MapError::SyscallError(s)) => s.io_error,
        other => io::Error::other(other.to_string()),
    };
    DataplaneError::Kernel { op, object, source }
}

/// A [`DataplaneError::Kernel`] on a named object.
pub fn kernel(op: &'static str, object: impl Into<String>, source: io::Error) -> DataplaneError {
    DataplaneError::Kernel {
        op,
        object: object.into(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syscall(errno: i32) -> MapError {
        MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn a_full_map_is_a_capacity_error_and_other_errnos_stay_kernel_errors() {
        for errno in [libc::E2BIG, libc::ENOSPC] {
            let e = map_error("insert", "SLOTS", 8, syscall(errno));
            assert!(
                matches!(
                    e,
                    DataplaneError::Capacity {
                        table: "SLOTS",
                        capacity: 8,
                        ..
                    }
                ),
                "{e:?}"
            );
        }
        let e = map_error("insert", "SLOTS", 8, syscall(libc::EPERM));
        assert_eq!(e.errno(), Some(libc::EPERM));
        assert_eq!(
            e.to_string(),
            format!(
                "insert on SLOTS failed: {}",
                io::Error::from_raw_os_error(libc::EPERM)
            )
        );
        let e = map_error("lookup", "SLOTS", 8, MapError::ProgramNotLoaded);
        assert!(matches!(e, DataplaneError::Kernel { .. }) && e.errno().is_none());
        assert!(e.to_string().contains("not loaded"), "{e}");
    }

    #[test]
    fn absent_keys_are_recognised_in_both_forms() {
        assert!(is_not_found(&MapError::KeyNotFound));
        assert!(is_not_found(&syscall(libc::ENOENT)));
        assert!(!is_not_found(&syscall(libc::EPERM)));
    }
}
