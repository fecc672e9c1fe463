//! Removal of harness objects left behind by test processes that died without running
//! their destructors (SIGKILL, abort).

use std::fs;
use std::path::Path;
use std::sync::Once;

use crate::netns::NETNS_DIR;
use crate::{PREFIX, cgroup, owner_pid};

/// Calls [`cleanup_stale`] once per process.
pub(crate) fn cleanup_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(cleanup_stale);
}

/// Deletes `kpt-*` network namespaces, cgroups and bpffs directories whose creating
/// process no longer exists. Objects of live processes are left alone, so tests running
/// in parallel in other processes are safe. Errors go to stderr.
pub fn cleanup_stale() {
    for name in stale_names(Path::new(NETNS_DIR)) {
        eprintln!("harness: removing stale netns {name}");
        crate::netns::destroy(&name);
    }
    if let Ok(mount) = cgroup::cgroup2_mount() {
        for name in stale_names(&mount) {
            eprintln!("harness: removing stale cgroup {name}");
            cgroup::destroy(&mount.join(name));
        }
    }
    let tmp = std::env::temp_dir();
    for name in stale_names(&tmp) {
        if name.starts_with(&format!("{PREFIX}bpffs-")) {
            eprintln!("harness: removing stale bpffs {name}");
            crate::bpffs::destroy(&tmp.join(name));
        }
    }
}

fn stale_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| {
            owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect()
}
