//! The pin root on a bpffs: making sure one is mounted, and removing everything the
//! agent pinned there (`--cleanup`).

use std::io;
use std::path::Path;

use tracing::info;

/// `BPF_FS_MAGIC` from `linux/magic.h`: the `f_type` statfs reports for a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where bpffs is mounted by convention; the only place [`ensure_bpffs`] mounts one.
const SYS_FS_BPF: &str = "/sys/fs/bpf";

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own and only reads the path,
    // which is NUL-terminated and outlives the call.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Makes sure the pin directory `dir` is on a bpffs (it or its parent), mounting
/// /sys/fs/bpf if `dir` is directly under it and nothing is mounted there yet: bpffs
/// is not mounted at boot on every distribution.
pub fn ensure_bpffs(dir: &Path) -> io::Result<()> {
    let parent = dir.parent().unwrap_or(dir);
    if is_bpffs(parent) || is_bpffs(dir) {
        return Ok(());
    }
    let sys = Path::new(SYS_FS_BPF);
    if parent == sys {
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf", SYS_FS_BPF])
            .status()
            .map_err(|e| io::Error::new(e.kind(), format!("running mount -t bpf: {e}")))?;
        if status.success() && is_bpffs(sys) {
            info!("mounted bpffs at {SYS_FS_BPF}");
            return Ok(());
        }
    }
    Err(io::Error::other(format!(
        "{} is not on a bpffs (mount one with `mount -t bpf bpf {}`)",
        dir.display(),
        parent.display()
    )))
}

/// Removes every pin this agent made under `bpffs` (detaching its programs: a link
/// lives as long as its pin) and the directory itself. Nothing pinned is fine.
pub fn cleanup(bpffs: &Path) -> io::Result<()> {
    for sub in ["links", super::pins::MAPS_DIR] {
        let dir = bpffs.join(sub);
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries {
                    std::fs::remove_file(e?.path())?;
                }
                std::fs::remove_dir(&dir)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::remove_dir(bpffs) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn a_plain_directory_is_not_a_bpffs_and_is_not_mounted_over() {
        let dir = std::env::temp_dir().join(format!("bpffs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!is_bpffs(&dir));
        let e = ensure_bpffs(&dir.join("proxy-agent")).unwrap_err();
        assert!(e.to_string().contains("not on a bpffs"), "{e}");
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn cleanup_removes_the_pins_and_tolerates_nothing_pinned() {
        let dir = std::env::temp_dir().join(format!("cleanup-test-{}", std::process::id()));
        for sub in ["links", "maps"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::write(dir.join(sub).join("X"), b"").unwrap();
        }
        cleanup(&dir).unwrap();
        assert!(!dir.exists());
        cleanup(&dir).unwrap();
    }
}
