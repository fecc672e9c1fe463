//! The kernel resources a data-path test borrows, each an RAII guard that gives it back
//! on drop (a failing assertion unwinds through them): a private bpffs for the maps the
//! object pins by name, and a network namespace for the test thread.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A bpffs mounted on a fresh directory under the system temp dir. The object's maps
/// are pinned by name, so aya pins them somewhere; here, never in /sys/fs/bpf, and
/// unmounting drops the pins.
pub struct PrivateBpffs {
    dir: PathBuf,
}

impl PrivateBpffs {
    pub fn mount() -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "proxy-datapath-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        // From here on, Drop removes the directory whatever happens.
        let guard = PrivateBpffs { dir };
        let target = c_path(&guard.dir);
        // SAFETY: NUL-terminated strings that outlive the call; no data argument.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            panic!(
                "mounting a bpffs on {} (the tests need root): {}",
                guard.dir.display(),
                std::io::Error::last_os_error()
            );
        }
        guard
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        let target = c_path(&self.dir);
        // SAFETY: a NUL-terminated path that outlives the call. MNT_DETACH: a map fd
        // still open elsewhere must not keep the mount (and the directory) around.
        // Failure means it was never mounted (mount() panicked); nothing to undo.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }
}

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("a temp path without NUL")
}

/// A new network namespace for the calling thread (libtest runs each test on its own
/// thread), left again on drop. Devices, routes and sysctls made while it is current
/// vanish with it.
pub struct Netns {
    /// The namespace to return to.
    orig: File,
}

impl Netns {
    pub fn enter() -> Self {
        let orig = File::open("/proc/thread-self/ns/net").expect("opening this thread's netns");
        // SAFETY: plain syscall; it only changes the calling thread's namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "unshare(CLONE_NEWNET) (the tests need root): {}",
                std::io::Error::last_os_error()
            );
        }
        Netns { orig }
    }

    /// Runs `ip -batch -` with `script` in this namespace (children inherit the
    /// thread's namespace): one process for the whole topology.
    pub fn ip_batch(&self, script: &str) {
        let mut child = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running ip (iproute2)");
        child
            .stdin
            .take()
            .expect("ip's stdin")
            .write_all(script.as_bytes())
            .expect("writing to ip");
        let out = child.wait_with_output().expect("waiting for ip");
        assert!(
            out.status.success(),
            "ip -batch failed: {}\nscript:\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes a sysctl of this namespace (/proc/sys/net is per namespace of the opener).
    pub fn sysctl(&self, path: &str, value: &str) {
        let full = Path::new("/proc/sys").join(path);
        std::fs::write(&full, value).unwrap_or_else(|e| panic!("writing {}: {e}", full.display()));
    }

    /// The index of device `name` in this namespace.
    pub fn ifindex(&self, name: &str) -> u32 {
        let c = CString::new(name).expect("a device name without NUL");
        // SAFETY: a NUL-terminated string that outlives the call.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(
            i,
            0,
            "no device {name}: {}",
            std::io::Error::last_os_error()
        );
        i
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // SAFETY: `orig` is an open namespace fd; only this thread changes namespace.
        if unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "returning to the original netns: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
