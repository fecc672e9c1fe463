//! `proxy-agent --cleanup` on the real kernel, pointed at the root of a bpffs mount
//! (as a new user does with `--bpffs /sys/fs/bpf`): it removes every pin the agent
//! made, keeps the mount point, exits 0, and says what it removed; with nothing to
//! remove it says so and exits 0 too.
//!
//! The agent runs in node-a of a [`NodesTopology`] so that it pins tc links as well as
//! the cgroup programs' links and its maps. Its pin root is a bpffs mounted on
//! `<test bpffs>/agent`, so that `--bpffs` names a mount root.

use std::ffi::CString;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tests::{Agent, BpfFs, Cgroup, ManifestDir, NodesTopology, ServiceSpec, run_cleanup};

/// A bpffs mounted on `dir` for the test; unmounted (lazily: whatever still holds it
/// lets go later) on drop, also when the test fails. The directory is left to the
/// enclosing [`BpfFs`], which removes it.
struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    fn new(dir: PathBuf) -> Mounted {
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let target = CString::new(dir.as_os_str().as_bytes()).expect("a path without NUL");
        // SAFETY: every pointer is a NUL-terminated string valid for the call.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount -t bpf bpf {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        Mounted { dir }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.dir.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path valid for the call.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Whether `dir` is a mount point in this mount namespace.
fn mounted_at(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    let dir = dir.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.as_ref()))
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// `--cleanup --bpffs PINS`: asserts exit 0 and returns the summary it printed.
fn cleanup(pins: &Path) -> String {
    let out = run_cleanup(pins);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "--cleanup --bpffs {} failed: {}\nstdout: {stdout}",
        pins.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn cleanup_at_a_bpffs_mount_root_removes_every_pin_keeps_the_mount_and_says_what_went() {
    let bpffs = BpfFs::new("cleanup");
    let root = Mounted::new(bpffs.path().join("agent"));
    // What a fresh bpffs holds already: the kernel's `maps.debug` and `progs.debug`
    // iterators (CONFIG_BPF_PRELOAD), which are not the agent's.
    let fresh = names(&root.dir);
    let dir = ManifestDir::new("cleanup");
    let cgroup = Cgroup::new("cleanup-pods");
    let topo = NodesTopology::new("cleanup", 1);
    let ip = |s: &str| -> IpAddr { s.parse().expect("test address") };
    dir.write(
        "svc.yaml",
        &ServiceSpec::new("web", "NodePort")
            .cluster_ip(ip("10.96.0.40"))
            .port("http", 80, "TCP", 8080, Some(30091))
            .endpoint(ip("10.244.1.11"), "node-a")
            .yaml(),
    );
    let agent = Agent::start_in(
        &topo.node_a().netns,
        bpffs.path(),
        cgroup.path(),
        dir.path(),
        NodesTopology::AGENT_FLAGS,
    );
    assert_eq!(agent.bpffs, root.dir, "the agent pins at the mount root");
    let log = agent.log();
    agent.stop();

    let maps = names(&root.dir.join("maps")).len();
    let links = names(&root.dir.join("links"));
    let tc = links.iter().filter(|n| n.starts_with("tc-")).count();
    assert!(
        maps > 0 && tc > 0 && links.len() > tc,
        "pinned: {links:?}\n{log}"
    );

    let summary = cleanup(&root.dir);
    let want = format!(
        "cleanup: removed {maps} map pins, {} program links ({} cgroup, {tc} tc) and 2 \
         directories from {}",
        links.len(),
        links.len() - tc,
        root.dir.display()
    );
    assert!(
        summary.starts_with(&want),
        "summary {summary:?}, expected {want:?}"
    );
    assert_eq!(
        names(&root.dir),
        fresh,
        "only what a fresh bpffs holds is left"
    );
    assert!(mounted_at(&root.dir), "the mount point itself must stay");

    // Again: nothing left, and that is no failure.
    let again = cleanup(&root.dir);
    assert!(again.contains("nothing to remove"), "{again:?}");
    assert!(mounted_at(&root.dir));
}

#[test]
fn cleanup_of_an_empty_bpffs_mount_says_nothing_to_remove_and_exits_0() {
    let bpffs = BpfFs::new("cleanup-empty");
    let fresh = names(bpffs.path());
    let summary = cleanup(bpffs.path());
    assert_eq!(
        names(bpffs.path()),
        fresh,
        "nothing of the kernel's is removed"
    );
    assert!(
        summary.starts_with("cleanup: nothing to remove"),
        "{summary:?}"
    );
    assert!(mounted_at(bpffs.path()), "the mount point itself must stay");
}
