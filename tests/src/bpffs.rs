//! Private bpffs mounts.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::unique_name;

/// A bpffs mounted on a fresh directory under the temp dir
/// (`$TMPDIR/kpt-bpffs-<tag>-<pid>-<n>`), so the pins of each test are isolated. On drop
/// it is unmounted (lazily if busy), which releases every pin under it, and the directory
/// removed.
#[derive(Debug)]
pub struct BpfFs {
    path: PathBuf,
}

impl BpfFs {
    /// Makes the directory and mounts bpffs on it.
    ///
    /// # Panics
    /// If the directory cannot be made or the mount fails (not root, no bpffs).
    pub fn new(tag: &str) -> Self {
        crate::stale::cleanup_stale_once();
        let path = std::env::temp_dir().join(unique_name(&format!("bpffs-{tag}")));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        if let Err(e) = mount_bpffs(&path) {
            let _ = fs::remove_dir(&path);
            panic!("mount -t bpf bpf {} (needs root): {e}", path.display());
        }
        Self { path }
    }

    /// The mount point; pin maps and links under it.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = c_path(path)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unmounts `path` (lazily if busy) and removes it; errors go to stderr.
pub(crate) fn destroy(path: &Path) {
    match c_path(path) {
        Ok(target) => {
            // SAFETY: valid NUL-terminated path.
            let mut rc = unsafe { libc::umount2(target.as_ptr(), 0) };
            if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
                // SAFETY: as above.
                rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            }
            if rc != 0 {
                let e = io::Error::last_os_error();
                // EINVAL: not a mount point (already unmounted).
                if e.raw_os_error() != Some(libc::EINVAL) {
                    eprintln!("harness: unmounting {}: {e}", path.display());
                }
            }
        }
        Err(e) => eprintln!("harness: {}: {e}", path.display()),
    }
    if let Err(e) = fs::remove_dir(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        eprintln!("harness: removing {}: {e}", path.display());
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        destroy(&self.path);
    }
}
