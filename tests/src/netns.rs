//! Named network namespaces.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::{run_host, run_host_ok, tool};
use crate::{CMD_TIMEOUT, unique_name};

/// Directory where `ip netns` keeps its bind mounts.
pub(crate) const NETNS_DIR: &str = "/var/run/netns";

/// A network namespace made with `ip netns add`, deleted on drop (after killing every
/// process still inside).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `kpt-<tag>-<pid>-<n>` and brings its `lo` up.
    ///
    /// # Panics
    /// If `ip netns add` fails (not root, no `ip`, ...).
    pub fn new(tag: &str) -> Self {
        crate::stale::cleanup_stale_once();
        let name = unique_name(tag);
        run_host_ok(
            Command::new(tool("ip")).args(["netns", "add", &name]),
            CMD_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("creating netns {name} (needs root): {e}"));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`: open it for `setns` or pass it to `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Runs `args` inside the namespace through `ip netns exec` (which also remounts
    /// `/sys` for the namespace: right for `ip`/`sysctl`, wrong for anything needing the
    /// cgroup tree; use [`spawn`](crate::spawn) for those).
    ///
    /// # Panics
    /// If the command fails, exits non-zero (with its stderr) or takes longer than 30 s.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", &self.name]).args(args);
        run_host_ok(&mut cmd, CMD_TIMEOUT).unwrap_or_else(|e| panic!("in netns {}: {e}", self.name))
    }

    /// Like [`exec`](Self::exec) but returns the output whatever the exit status.
    ///
    /// # Panics
    /// If the command cannot be started or takes longer than 30 s.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", &self.name]).args(args);
        run_host(&mut cmd, CMD_TIMEOUT).unwrap_or_else(|e| panic!("in netns {}: {e}", self.name))
    }

    /// Runs `ip -n <name> <args>`.
    ///
    /// # Panics
    /// If it fails, with its stderr.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["-n", &self.name]).args(args);
        run_host_ok(&mut cmd, CMD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sets a sysctl inside the namespace (`sysctl -qw key=value`).
    ///
    /// # Panics
    /// If it fails.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.sysctls(&[(key, value)]);
    }

    /// Sets several sysctls inside the namespace with one `sysctl -qw` call.
    ///
    /// # Panics
    /// If it fails.
    pub fn sysctls(&self, settings: &[(&str, &str)]) {
        let sysctl = tool("sysctl").to_string_lossy().into_owned();
        let settings: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec![sysctl.as_str(), "-qw"];
        args.extend(settings.iter().map(String::as_str));
        self.exec(&args);
    }

    /// Runs `f` on a new thread that has entered the namespace, and returns its result.
    /// Sockets made inside `f` belong to the namespace for their whole life, also after
    /// `f` returns; use this to bind or connect from test code directly, or to attach
    /// programs to an interface of the namespace.
    ///
    /// # Panics
    /// If the namespace cannot be entered; a panic in `f` is passed on.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        run_in(&self.path(), f)
    }

    /// Pids of the processes inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        pids_of(&self.name)
    }
}

/// [`Netns::run`] for the namespace bind-mounted at `path`.
///
/// # Panics
/// If the namespace cannot be entered; a panic in `f` is passed on.
pub(crate) fn run_in<F, R>(path: &Path, f: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    thread::scope(|s| {
        let handle = s.spawn(move || {
            enter(file, path);
            f()
        });
        match handle.join() {
            Ok(r) => r,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

/// Spawns a thread that enters the namespace bind-mounted at `path` and runs `f`.
pub(crate) fn spawn_in<F, R>(path: PathBuf, f: F) -> thread::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let file = File::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    thread::spawn(move || {
        enter(file, &path);
        f()
    })
}

/// Moves the calling thread into the namespace `file` (opened from `path`) refers to.
fn enter(file: File, path: &Path) {
    // SAFETY: plain syscall on an open descriptor; only this thread changes namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!(
            "setns into {}: {}",
            path.display(),
            io::Error::last_os_error()
        );
    }
}

pub(crate) fn pids_of(name: &str) -> io::Result<Vec<i32>> {
    let out = run_host_ok(
        Command::new(tool("ip")).args(["netns", "pids", name]),
        CMD_TIMEOUT,
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Kills every process in netns `name` and deletes it; errors go to stderr.
pub(crate) fn destroy(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match pids_of(name) {
            Ok(pids) if pids.is_empty() => break,
            Ok(pids) => {
                for pid in pids {
                    // SAFETY: plain syscall.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            Err(e) => {
                eprintln!("harness: listing pids of netns {name}: {e}");
                break;
            }
        }
        if Instant::now() >= deadline {
            eprintln!("harness: processes still in netns {name} after SIGKILL");
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = run_host_ok(
        Command::new(tool("ip")).args(["netns", "del", name]),
        CMD_TIMEOUT,
    ) {
        eprintln!("harness: deleting netns {name}: {e}");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        destroy(&self.name);
    }
}
