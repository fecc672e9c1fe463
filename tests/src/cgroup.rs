//! Throwaway cgroup v2 directories.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::unique_name;

/// Where cgroup v2 is mounted, read from `/proc/self/mountinfo` (the first `cgroup2`
/// mount: `/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            left.split_whitespace().nth(4).map(unescape_mountinfo)
        })
        .map(PathBuf::from)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup2 mount in /proc/self/mountinfo",
            )
        })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(b) = u8::try_from(value) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A fresh cgroup v2 directory `<cgroup2 mount>/kpt-<tag>-<pid>-<n>`. Attach cgroup
/// programs here, never to the root cgroup.
///
/// On drop every process inside is killed (`cgroup.kill`, else SIGKILL to each pid in
/// `cgroup.procs`) and the directory removed, both with bounded waits.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates the directory.
    ///
    /// # Panics
    /// If there is no cgroup2 mount or the directory cannot be made (not root).
    pub fn new(tag: &str) -> Self {
        crate::stale::cleanup_stale_once();
        let mount = cgroup2_mount().unwrap_or_else(|e| panic!("finding cgroup2: {e}"));
        let path = mount.join(unique_name(tag));
        fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {} (needs root): {e}", path.display()));
        Self { path }
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the directory, e.g. for aya's `CgroupSockAddr::attach`.
    ///
    /// # Panics
    /// If it cannot be opened.
    pub fn open(&self) -> File {
        File::open(&self.path)
            .unwrap_or_else(|e| panic!("opening cgroup {}: {e}", self.path.display()))
    }

    /// Pids in `cgroup.procs`.
    pub fn procs(&self) -> io::Result<Vec<i32>> {
        procs_of(&self.path)
    }

    /// Moves process `pid` into the cgroup.
    ///
    /// # Panics
    /// If the kernel refuses.
    pub fn add_pid(&self, pid: u32) {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving pid {pid} into {}: {e}", self.path.display()));
    }
}

fn procs_of(path: &Path) -> io::Result<Vec<i32>> {
    Ok(fs::read_to_string(path.join("cgroup.procs"))?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Kills everything in the cgroup at `path` and removes it; errors go to stderr.
pub(crate) fn destroy(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    // cgroup.kill (Linux >= 5.14) also catches processes forking while we kill.
    let _ = fs::write(path.join("cgroup.kill"), "1");
    loop {
        match procs_of(path) {
            Ok(pids) if pids.is_empty() => break,
            Ok(pids) => {
                for pid in pids {
                    // SAFETY: plain syscall.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            Err(e) => {
                eprintln!("harness: reading {}/cgroup.procs: {e}", path.display());
                break;
            }
        }
        if Instant::now() >= deadline {
            eprintln!(
                "harness: processes still in cgroup {} after SIGKILL",
                path.display()
            );
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    // rmdir fails with EBUSY until exiting tasks are fully gone.
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() >= deadline => {
                eprintln!("harness: removing cgroup {}: {e}", path.display());
                return;
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        destroy(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape_mountinfo(r"/x\0"), r"/x\0");
    }
}
