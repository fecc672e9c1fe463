//! An agent starting over pins an older agent left: a `COUNTERS` map with fewer entries
//! than this version counts is replaced, so the newer counters count.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use tests::{Agent, BpfFs, Cgroup, ManifestDir};

/// The 16 counters of the agent before the drop counters were added.
const OLD_COUNTERS: u32 = 16;

/// `bpf(2)` with a zeroed 128-byte attribute union whose first words are `words`.
fn bpf(cmd: libc::c_long, words: &[u64]) -> libc::c_long {
    let mut attr = [0u64; 16];
    attr[..words.len()].copy_from_slice(words);
    // SAFETY: `attr` is a valid, zero-padded `union bpf_attr` of the size passed.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    }
}

/// Pins a per-CPU array of `entries` u64 values at `pin`, as an older agent would have.
fn pin_percpu_array(pin: &Path, entries: u32) {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_PERCPU_ARRAY: u64 = 6;
    // map_type, key_size | value_size, max_entries (u32 fields, little-endian pairs).
    let fd = bpf(
        BPF_MAP_CREATE,
        &[
            BPF_MAP_TYPE_PERCPU_ARRAY | (4 << 32),
            8 | (u64::from(entries) << 32),
        ],
    );
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let fd = i32::try_from(fd).expect("an fd");
    // SAFETY: the kernel just returned this descriptor to us.
    let _owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = CString::new(pin.as_os_str().as_encoded_bytes()).expect("a path");
    let rc = bpf(BPF_OBJ_PIN, &[path.as_ptr() as u64, u64::from(fd as u32)]);
    assert_eq!(
        rc,
        0,
        "BPF_OBJ_PIN {}: {}",
        pin.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
fn a_counters_map_left_by_an_older_agent_is_replaced_so_new_counters_count() {
    let bpffs = BpfFs::new("upgrade");
    let cgroup = Cgroup::new("upgrade");
    let dir = ManifestDir::new("upgrade");
    let maps = bpffs.path().join("agent").join("maps");
    std::fs::create_dir_all(&maps).expect("the maps directory");
    pin_percpu_array(&maps.join("COUNTERS"), OLD_COUNTERS);

    let agent = Agent::start(bpffs.path(), cgroup.path(), dir.path(), &[]);
    let stats = agent.proxyctl(&["stats"]);
    let rows = stats.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(
        rows > OLD_COUNTERS as usize,
        "only {rows} counters after the upgrade:\n{stats}\nagent log:\n{}",
        agent.log()
    );
    assert_eq!(
        agent.counter("ipv6_ext_passed"),
        Some(0),
        "a counter past the old size is there"
    );
    assert!(
        agent
            .log()
            .contains("the pinned COUNTERS map has another size"),
        "{}",
        agent.log()
    );
}
