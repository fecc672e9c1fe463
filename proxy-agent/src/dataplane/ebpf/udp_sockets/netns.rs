//! The network namespaces a sweep searches, and entering one.
//!
//! sock_diag answers for the namespace of the socket that asks, and pods live in
//! namespaces of their own, so the sweeping thread enters each in turn (`setns`, which
//! affects only the calling thread and needs CAP_SYS_ADMIN). The namespaces are the
//! agent's own and those bind-mounted in the pod namespace directory (`--pod-netns-dir`,
//! `/var/run/netns`: where CNI plugins and container runtimes pin pod namespaces, and
//! where `ip netns add` puts its own), each once however many names it has.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The agent's own namespace (`/proc/thread-self/ns/net`, opened before the thread
/// enters any other).
pub(super) const OWN: &str = "/proc/thread-self/ns/net";

/// One namespace to search.
#[derive(Debug)]
pub(super) struct Namespace {
    /// Where it was found, for the log.
    pub path: PathBuf,
    /// An open handle (keeps it alive while it is searched).
    pub file: File,
}

/// A namespace's identity: the nsfs device and inode.
fn identity(file: &File) -> io::Result<(u64, u64)> {
    let m = file.metadata()?;
    Ok((m.dev(), m.ino()))
}

/// Whether `file` is a namespace handle (nsfs), not a leftover plain file of a
/// namespace that was deleted (its mount gone, the name still there).
fn is_nsfs(file: &File) -> bool {
    // SAFETY: an all-zero statfs is a valid value for the kernel to fill in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs on a descriptor we own, into a buffer of the right type.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &raw mut st) };
    rc == 0 && st.f_type == libc::NSFS_MAGIC
}

/// The namespaces bind-mounted under `dir`, without `own` (the agent's, searched
/// first by the caller) and without duplicates. A missing directory is none; an
/// entry that vanished or is not a namespace is skipped (pods come and go).
pub(super) fn pinned(dir: &Path, own: &File) -> Vec<Namespace> {
    let mut seen: HashSet<(u64, u64)> = identity(own).into_iter().collect();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    // A stable order, for the log and the tests.
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if !is_nsfs(&file) {
            continue;
        }
        match identity(&file) {
            Ok(id) if seen.insert(id) => out.push(Namespace { path, file }),
            _ => {}
        }
    }
    out
}

/// Moves the calling thread into the namespace `file` refers to.
pub(super) fn enter(file: &File) -> io::Result<()> {
    // SAFETY: plain syscall on an open descriptor; only this thread changes namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_namespace_is_a_namespace_and_is_not_listed_again() {
        let own = File::open(OWN).expect("opening our own netns handle");
        assert!(is_nsfs(&own));
        let dir = std::env::temp_dir().join(format!("udp-netns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // A plain file (a namespace deleted while its name stayed) is skipped; a
        // symlink to our own namespace is the same namespace and is not listed.
        std::fs::write(dir.join("stale"), b"").expect("plain file");
        std::os::unix::fs::symlink(OWN, dir.join("self")).expect("symlink");
        assert!(pinned(&dir, &own).is_empty());
        assert!(pinned(Path::new("/nonexistent/netns"), &own).is_empty());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
