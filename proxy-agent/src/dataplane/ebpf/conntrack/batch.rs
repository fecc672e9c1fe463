//! Reading a whole hash map with `BPF_MAP_LOOKUP_BATCH`, which aya does not offer.
//!
//! The collector needs a snapshot of tables of hundreds of thousands of entries, some
//! of them changing fast under a flood. A key-by-key walk (`get_next_key`, then a
//! lookup) costs two syscalls per entry and restarts from the first key whenever the
//! key it stood on was deleted meanwhile. The batch walk goes bucket by bucket, a few
//! thousand entries per syscall, and never restarts.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

use aya::Pod;

/// `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries fetched per syscall.
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of the hash map `fd` (keys `K`, values `V`), at most `limit` of them.
pub fn lookup_all<K: Pod, V: Pod>(fd: BorrowedFd<'_>, limit: usize) -> io::Result<Vec<(K, V)>> {
    let mut keys: Vec<K> = Vec::with_capacity(CHUNK);
    let mut values: Vec<V> = Vec::with_capacity(CHUNK);
    let mut out = Vec::new();
    // The hash map's batch token is a bucket index (a u32).
    let mut token_in = 0u32;
    let mut token_out = 0u32;
    let mut first = true;
    let map_fd = u32::try_from(fd.as_raw_fd())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative map fd"))?;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const token_in as u64 },
            out_batch: &raw mut token_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is a valid bpf_attr prefix of its own size; the kernel writes
        // at most `count` keys and values into buffers with room for CHUNK of each, and
        // one u32 token, and reads the input token.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let done = match &err {
            None => false,
            // The end of the map; this call may still have returned entries.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("BPF_MAP_LOOKUP_BATCH: {e}"),
                ));
            }
        };
        let n = (attr.count as usize).min(CHUNK);
        // SAFETY: the kernel filled the first `n` elements of both buffers with values
        // of the map's key and value types (Pod: any bytes are valid).
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.drain(..).zip(values.drain(..)));
        if done || out.len() >= limit {
            out.truncate(limit);
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    use super::*;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

    fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> i64 {
        // SAFETY: `attr` is the bpf_attr prefix `cmd` reads, of its own size.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut T,
                size_of::<T>() as libc::c_uint,
            )
        }
    }

    /// A map of `u32` -> `u64` of `map_type`, made with the raw syscall (no object).
    fn map(map_type: u32, max: u32) -> OwnedFd {
        let mut attr = [map_type, 4, 8, max, 0];
        let fd = bpf(BPF_MAP_CREATE, &mut attr);
        assert!(
            fd >= 0,
            "BPF_MAP_CREATE (the tests run as root): {}",
            io::Error::last_os_error()
        );
        // SAFETY: a new fd we own.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    fn insert(fd: &OwnedFd, k: u32, v: u64) {
        #[repr(C)]
        struct Update {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let mut attr = Update {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: &raw const k as u64,
            value: &raw const v as u64,
            flags: 0,
        };
        assert_eq!(
            bpf(BPF_MAP_UPDATE_ELEM, &mut attr),
            0,
            "{}",
            io::Error::last_os_error()
        );
    }

    #[test]
    fn a_batch_walk_returns_every_entry_once_over_many_chunks() {
        for map_type in [BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH] {
            let fd = map(map_type, 20_000);
            let n = 3 * CHUNK as u32 + 17;
            for k in 0..n {
                insert(&fd, k, u64::from(k) * 3);
            }
            let all =
                lookup_all::<u32, u64>(fd.as_fd(), usize::MAX).unwrap_or_else(|e| panic!("{e}"));
            let by_key: HashMap<u32, u64> = all.iter().copied().collect();
            assert_eq!(
                (all.len(), by_key.len()),
                (n as usize, n as usize),
                "type {map_type}"
            );
            assert!(by_key.iter().all(|(k, v)| u64::from(*k) * 3 == *v));
            // Bounded, and an empty map is no error.
            assert_eq!(
                lookup_all::<u32, u64>(fd.as_fd(), 100)
                    .map(|v| v.len())
                    .ok(),
                Some(100)
            );
            let empty = map(map_type, 16);
            assert_eq!(
                lookup_all::<u32, u64>(empty.as_fd(), 10)
                    .map(|v| v.len())
                    .ok(),
                Some(0)
            );
        }
    }
}
