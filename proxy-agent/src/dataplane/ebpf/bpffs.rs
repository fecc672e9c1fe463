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

/// What [`cleanup`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Map pins (`maps/*`).
    pub maps: usize,
    /// Pinned links of the cgroup socket programs (`links/*` but `tc-*`).
    pub cgroup_links: usize,
    /// Pinned tc links (`links/tc-*`).
    pub tc_links: usize,
    /// Directories the agent made (`maps/`, `links/`, the pin root unless it is a
    /// mount point).
    pub dirs: usize,
}

impl Removed {
    /// Whether there was nothing to remove.
    pub fn is_empty(&self) -> bool {
        *self == Removed::default()
    }
}

/// Removes every pin this agent made under `bpffs` (detaching its programs: a link
/// lives as long as its pin), the `maps/` and `links/` directories, and `bpffs` itself
/// when it is an empty directory the agent could have made: never a mount point (a
/// bpffs mounted there for the agent is the operator's), nor a directory holding
/// something else. Nothing pinned is no error.
pub fn cleanup(bpffs: &Path) -> io::Result<Removed> {
    let mut removed = Removed::default();
    for sub in ["links", super::pins::MAPS_DIR] {
        let dir = bpffs.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(with_path(e, "reading", &dir)),
        };
        for e in entries {
            let e = e.map_err(|e| with_path(e, "reading", &dir))?;
            let path = e.path();
            std::fs::remove_file(&path).map_err(|e| with_path(e, "removing", &path))?;
            let tc = e
                .file_name()
                .to_string_lossy()
                .starts_with(super::devices::TC_PIN_PREFIX);
            *match (sub, tc) {
                (super::pins::MAPS_DIR, _) => &mut removed.maps,
                (_, true) => &mut removed.tc_links,
                (_, false) => &mut removed.cgroup_links,
            } += 1;
        }
        if remove_dir_unless_mounted(&dir)? {
            removed.dirs += 1;
        }
    }
    if remove_dir_unless_mounted(bpffs)? {
        removed.dirs += 1;
    }
    Ok(removed)
}

/// Removes the directory `dir` unless it is a mount point, missing or not empty;
/// whether it did.
fn remove_dir_unless_mounted(dir: &Path) -> io::Result<bool> {
    match is_mount_point(dir) {
        Ok(true) => return Ok(false),
        Ok(false) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(with_path(e, "checking for a mount point at", dir)),
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.kind() == io::ErrorKind::DirectoryNotEmpty =>
        {
            Ok(false)
        }
        Err(e) => Err(with_path(e, "removing", dir)),
    }
}

/// Whether `dir` is a mount point: on another device than its parent, or (a bind
/// mount of the same file system) listed as a mount point in `/proc/self/mountinfo`.
pub fn is_mount_point(dir: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let dev = std::fs::metadata(dir)?.dev();
    if std::fs::metadata(dir.join(".."))?.dev() != dev {
        return Ok(true);
    }
    let canonical = std::fs::canonicalize(dir)?;
    if canonical == Path::new("/") {
        return Ok(true);
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mount_points(&mountinfo).any(|mp| Path::new(&mp) == canonical))
}

/// The mount points (field 5) of a `/proc/<pid>/mountinfo` text, unescaped.
fn mount_points(mountinfo: &str) -> impl Iterator<Item = String> + '_ {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash).
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = d.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                u8::try_from(v).ok()
            });
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `e` with what was being done to which path, for the `--cleanup` error.
fn with_path(e: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
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
        std::fs::write(dir.join("links").join("tc-in-2-eth0"), b"").unwrap();
        let removed = cleanup(&dir).unwrap();
        assert_eq!(
            removed,
            Removed {
                maps: 1,
                cgroup_links: 1,
                tc_links: 1,
                dirs: 3,
            }
        );
        assert!(!dir.exists());
        assert!(cleanup(&dir).unwrap().is_empty());
    }

    #[test]
    fn cleanup_keeps_a_pin_root_that_holds_something_else() {
        let dir = std::env::temp_dir().join(format!("cleanup-other-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("maps")).unwrap();
        std::fs::write(dir.join("maps").join("SERVICES"), b"").unwrap();
        std::fs::write(dir.join("someone-elses"), b"").unwrap();
        let removed = cleanup(&dir).unwrap();
        assert_eq!((removed.maps, removed.dirs), (1, 1), "{removed:?}");
        assert!(dir.join("someone-elses").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_mount_point_is_recognised_and_a_plain_directory_is_not() {
        assert!(is_mount_point(Path::new("/")).unwrap());
        assert!(is_mount_point(Path::new("/proc")).unwrap());
        let dir = std::env::temp_dir().join(format!("mountpoint-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!is_mount_point(&dir).unwrap());
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn mountinfo_mount_points_are_unescaped() {
        let info = "36 35 98:0 /mnt1 /a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:31 / /sys/fs/bpf rw - bpf bpf rw\n";
        let points: Vec<String> = mount_points(info).collect();
        assert_eq!(points, ["/a b", "/sys/fs/bpf"]);
        assert_eq!(unescape_mountinfo("/x\\0"), "/x\\0");
    }
}
