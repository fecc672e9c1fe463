//! Removal of harness objects left behind by test processes that died without running
//! their destructors (SIGKILL, abort).
//!
//! Each harness process takes a run id and holds an exclusive `flock` on
//! `/run/kpt-harness/<run id>.lock` for as long as it lives; every object it creates
//! carries that run id in its name. An object is stale only when its run's lock file
//! exists and can be locked, which proves its owner gone (the kernel drops a dead
//! process's locks). Whatever cannot be proven dead is left alone: a pid that is not
//! visible here (another PID namespace, another job on a shared host) proves nothing.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Once, OnceLock};

use crate::netns::NETNS_DIR;
use crate::{PREFIX, cgroup, owner_run};

/// Where the runs' lock files live.
const LOCK_DIR: &str = "/run/kpt-harness";

/// This process's run id, taken (with its lock) on first use.
pub(crate) fn run_id() -> u64 {
    static RUN: OnceLock<(u64, File)> = OnceLock::new();
    RUN.get_or_init(take_run).0
}

/// A run id whose lock file did not exist, locked by us. Panics (the test fails with
/// the reason) if no lock can be taken: without one, a later cleaner could not tell
/// our objects from a dead run's.
fn take_run() -> (u64, File) {
    if let Err(e) = fs::create_dir_all(LOCK_DIR) {
        panic!("harness: creating {LOCK_DIR}: {e}");
    }
    for attempt in 0..100u64 {
        // Distinct across processes and PID namespaces: the pid, the time, a counter.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let id = (u64::from(std::process::id()) << 32 | u64::from(nanos)) ^ attempt;
        let path = lock_path(id);
        let file = match File::options().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("harness: creating {}: {e}", path.display()),
        };
        if try_lock(&file) {
            return (id, file);
        }
    }
    panic!("harness: no free run id under {LOCK_DIR}");
}

fn lock_path(run: u64) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("{run}.lock"))
}

/// Takes an exclusive lock on `file` without waiting; false if someone holds one.
fn try_lock(file: &File) -> bool {
    // SAFETY: flock on an fd we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Whether the run `run` is over: its lock file exists and nobody holds its lock.
fn run_is_dead(run: u64) -> bool {
    if run == run_id() {
        return false;
    }
    match File::open(lock_path(run)) {
        // The lock is dropped with `f`, right after.
        Ok(f) => try_lock(&f),
        Err(_) => false,
    }
}

/// Calls [`cleanup_stale`] once per process.
pub(crate) fn cleanup_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(cleanup_stale);
}

/// Deletes `kpt-*` network namespaces, cgroups and bpffs directories of runs that are
/// over, then their lock files. Objects of live runs, and objects whose run cannot be
/// proven over, are left alone. Errors go to stderr.
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
    // Then the lock files of every run that is over, with objects or without.
    for entry in fs::read_dir(LOCK_DIR).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let run = name
            .to_str()
            .and_then(|n| n.strip_suffix(".lock"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(run) = run
            && run_is_dead(run)
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The `kpt-*` names in `dir` whose run is over.
fn stale_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| owner_run(name).is_some_and(run_is_dead))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_dead_only_when_its_lock_file_exists_unheld() {
        // Our own run is alive.
        assert!(!run_is_dead(run_id()));
        // No lock file: unknown owner, never treated as dead.
        assert!(!run_is_dead(u64::MAX - 1));
        // A lock file someone holds: alive.
        let held = u64::MAX - 2;
        let f = File::create(lock_path(held)).expect("lock file");
        assert!(try_lock(&f));
        let other = File::open(lock_path(held)).expect("lock file");
        // flock locks belong to the open file description: a second open conflicts.
        assert!(!try_lock(&other));
        assert!(!run_is_dead(held));
        // Released (its owner died): dead.
        drop(f);
        assert!(run_is_dead(held));
        let _ = fs::remove_file(lock_path(held));
    }
}
