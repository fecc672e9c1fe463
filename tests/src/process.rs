//! Starting processes inside a namespace and cgroup, and waiting for them with timeouts.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::{Cgroup, Netns};

/// How long to wait for a killed process to be reaped before giving up (and logging).
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll interval of the bounded waits.
const POLL: Duration = Duration::from_millis(10);

/// Full path of a system tool: looked up in `PATH`, then in the sbin directories that a
/// non-login root shell may lack. Falls back to the bare name.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Starts `cmd` inside `netns` and, if given, inside `cgroup`.
///
/// The child first joins the cgroup (writes `0` to its `cgroup.procs`) and then the network
/// namespace (`setns(CLONE_NEWNET)`), between `fork` and `exec`. Unlike `ip netns exec`
/// this keeps the mount namespace, so `/sys/fs/cgroup` stays visible.
///
/// Do not reuse `cmd` for another spawn: its pre-exec hook refers to descriptors that are
/// closed when this function returns.
///
/// # Panics
/// If the namespace or cgroup cannot be opened or the command cannot be started.
pub fn spawn(netns: &Netns, cgroup: Option<&Cgroup>, cmd: &mut Command) -> Child {
    try_spawn(&netns.path(), cgroup, cmd).unwrap_or_else(|e| {
        panic!(
            "spawning {cmd:?} in netns {} (cgroup {:?}): {e}",
            netns.name(),
            cgroup.map(Cgroup::path)
        )
    })
}

/// [`spawn`] with the namespace given by its path (`/var/run/netns/NAME`), returning the
/// error instead of panicking.
pub(crate) fn try_spawn(
    netns: &Path,
    cgroup: Option<&Cgroup>,
    cmd: &mut Command,
) -> io::Result<Child> {
    let ns_file = File::open(netns)?;
    let procs_file = cgroup
        .map(|c| {
            OpenOptions::new()
                .write(true)
                .open(c.path().join("cgroup.procs"))
        })
        .transpose()?;
    let ns_fd = ns_file.as_raw_fd();
    let procs_fd = procs_file.as_ref().map(AsRawFd::as_raw_fd);
    // SAFETY: the hook only makes async-signal-safe syscalls (write, setns) on descriptors
    // that stay open until `spawn` returns, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = procs_fd
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(io::Error::last_os_error());
            }
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(procs_file);
    drop(ns_file);
    child
}

/// [`spawn`] with stdout and stderr piped, wrapped in a [`ChildGuard`].
///
/// Stdout is read line by line through [`ChildGuard::next_line`] and friends; stderr is
/// collected (see [`ChildGuard::stderr`]) and echoed to the test's stderr with the
/// program name as prefix, which libtest shows when the test fails.
pub fn spawn_guarded(netns: &Netns, cgroup: Option<&Cgroup>, cmd: &mut Command) -> ChildGuard {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let label = label_of(cmd);
    ChildGuard::with_label(spawn(netns, cgroup, cmd), label)
}

/// A process that did not finish in time; it has been killed. `output` holds what it
/// printed before.
#[derive(Debug)]
pub struct RunTimedOut {
    /// The command, for messages.
    pub command: String,
    /// The timeout that expired.
    pub timeout: Duration,
    /// What the process wrote before it was killed.
    pub output: Output,
}

impl std::fmt::Display for RunTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} did not finish within {:?} and was killed; stdout: {:?}; stderr: {:?}",
            self.command,
            self.timeout,
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }
}

impl std::error::Error for RunTimedOut {}

/// Runs `cmd` to completion inside `netns` (and `cgroup`), capturing its output.
///
/// # Panics
/// If it cannot be started or does not finish within `timeout` (it is killed first).
/// A non-zero exit is *not* a panic: check `Output::status`.
pub fn run(netns: &Netns, cgroup: Option<&Cgroup>, cmd: &mut Command, timeout: Duration) -> Output {
    try_run(netns, cgroup, cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`run`] but returns a timeout as an error.
///
/// # Panics
/// If the command cannot be started.
pub fn try_run(
    netns: &Netns,
    cgroup: Option<&Cgroup>,
    cmd: &mut Command,
    timeout: Duration,
) -> Result<Output, RunTimedOut> {
    // Own process group, so a timeout kills the command's children too.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let command = format!("{cmd:?}");
    let child = spawn(netns, cgroup, cmd);
    collect_output(child, timeout, command)
}

/// Runs a command in the current namespaces with a timeout; used for `ip`, `sysctl`, ...
pub(crate) fn run_host(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let command = format!("{cmd:?}");
    let child = cmd.spawn()?;
    collect_output(child, timeout, command).map_err(|e| io::Error::new(io::ErrorKind::TimedOut, e))
}

/// Like [`run_host`], failing on a non-zero exit with the command's stderr.
pub(crate) fn run_host_ok(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    let command = format!("{cmd:?}");
    let out = run_host(cmd, timeout)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{command} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn collect_output(
    mut child: Child,
    timeout: Duration,
    command: String,
) -> Result<Output, RunTimedOut> {
    let stdout = child.stdout.take().map(PipeReader::start);
    let stderr = child.stderr.take().map(PipeReader::start);
    let deadline = Instant::now() + timeout;
    let status = wait_until(&mut child, deadline);
    let timed_out = status.is_none();
    let status = status.unwrap_or_else(|| {
        // The child leads its own process group (see callers): kill the whole group.
        if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: plain syscall; the group leader is not reaped yet.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = child.kill();
        wait_until(&mut child, Instant::now() + REAP_TIMEOUT)
            .unwrap_or_else(|| ExitStatus::from_raw(libc::SIGKILL))
    });
    // A grandchild may keep the pipes open; do not wait for it forever, and keep what
    // was read so far.
    let grace = Instant::now() + Duration::from_secs(1);
    let take = |pipe: Option<PipeReader>| pipe.map(|p| p.finish(grace)).unwrap_or_default();
    let output = Output {
        status,
        stdout: take(stdout),
        stderr: take(stderr),
    };
    if timed_out {
        Err(RunTimedOut {
            command,
            timeout,
            output,
        })
    } else {
        Ok(output)
    }
}

/// A pipe read to its end on a thread, into a shared buffer.
struct PipeReader {
    done: Receiver<()>,
    buf: Arc<Mutex<Vec<u8>>>,
}

impl PipeReader {
    fn start(mut pipe: impl Read + Send + 'static) -> Self {
        let (tx, done) = mpsc::channel();
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Ok(mut b) = sink.lock() {
                            b.extend_from_slice(chunk.get(..n).unwrap_or_default());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(());
        });
        Self { done, buf }
    }

    /// Waits for end of file until `deadline`, then returns what was read.
    fn finish(self, deadline: Instant) -> Vec<u8> {
        let _ = self
            .done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
        self.buf.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

/// Polls `child` until it exits or `deadline` passes.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => {
                eprintln!("harness: waiting for pid {}: {e}", child.id());
                return None;
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// The lines of a captured stdout.
pub fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn label_of(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let mut label = program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy()
        .into_owned();
    if let Some(sub) = cmd.get_args().next() {
        label.push(' ');
        label.push_str(&sub.to_string_lossy());
    }
    label
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
///
/// If its stdout is piped, a thread reads it line by line; [`next_line`](Self::next_line),
/// [`expect_line`](Self::expect_line) and [`wait_for_line`](Self::wait_for_line) take the
/// lines with a timeout. If its stderr is piped, it is collected and echoed to the test's
/// stderr.
pub struct ChildGuard {
    child: Child,
    label: String,
    lines: Option<Receiver<String>>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl ChildGuard {
    /// Guards `child`; takes over its piped stdout/stderr, if any.
    pub fn new(child: Child) -> Self {
        Self::with_label(child, String::from("child"))
    }

    /// Like [`new`](Self::new); `label` prefixes the echoed stderr and messages.
    pub fn with_label(mut child: Child, label: String) -> Self {
        let lines = child.stdout.take().map(|out| {
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            let prefix = format!("[{label} {}]", child.id());
            // Spawned from the test thread, so libtest's output capture applies.
            thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("{prefix} {line}");
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        Self {
            child,
            label,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The guarded child, e.g. to write to its stdin.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Everything the child wrote to stderr so far (if stderr was piped).
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Every stdout line taken so far.
    pub fn seen_lines(&self) -> &[String] {
        &self.seen
    }

    /// The next stdout line, or `None` on timeout or end of output.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let rx = self.lines.as_ref()?;
        match rx.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// The next stdout line.
    ///
    /// # Panics
    /// On timeout or end of output, with the child's stderr.
    pub fn expect_line(&mut self, timeout: Duration) -> String {
        match self.next_line(timeout) {
            Some(line) => line,
            None => panic!("{}", self.describe_failure("no stdout line", timeout)),
        }
    }

    /// Skips stdout lines until one satisfies `pred`, and returns it.
    ///
    /// # Panics
    /// If none does within `timeout`.
    pub fn wait_for_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some(line) if pred(&line) => return line,
                Some(_) => {}
                None => panic!(
                    "{}",
                    self.describe_failure("no matching stdout line", timeout)
                ),
            }
        }
    }

    /// Remaining stdout lines until end of output or `timeout`.
    pub fn drain_lines(&mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while let Some(line) = self.next_line(deadline.saturating_duration_since(Instant::now())) {
            out.push(line);
        }
        out
    }

    /// The exit status, if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(&mut self.child, Instant::now() + timeout)
    }

    /// Waits for the child to exit.
    ///
    /// # Panics
    /// If it does not exit within `timeout` (it is killed by the drop that follows).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_timeout(timeout) {
            Some(status) => status,
            None => panic!("{}", self.describe_failure("did not exit", timeout)),
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the child.
    pub fn signal(&self, signal: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: plain syscall; the child is not reaped yet, so the pid is still ours.
        if unsafe { libc::kill(pid, signal) } != 0 {
            eprintln!(
                "harness: kill({pid}, {signal}) of {}: {}",
                self.label,
                io::Error::last_os_error()
            );
        }
    }

    /// Sends SIGTERM, waits up to `timeout`, then SIGKILL. Returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_timeout(timeout) {
            return status;
        }
        self.kill()
    }

    /// Kills (SIGKILL) and reaps the child. Returns the exit status.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        let _ = self.child.kill();
        self.wait_timeout(REAP_TIMEOUT)
            .unwrap_or_else(|| ExitStatus::from_raw(libc::SIGKILL))
    }

    fn describe_failure(&self, what: &str, timeout: Duration) -> String {
        format!(
            "{} (pid {}): {what} within {timeout:?}; stdout so far: {:?}; stderr: {}",
            self.label,
            self.child.id(),
            self.seen,
            self.stderr()
        )
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        let _ = self.child.kill();
        if self.wait_timeout(REAP_TIMEOUT).is_none() {
            eprintln!(
                "harness: {} (pid {}) not reaped {REAP_TIMEOUT:?} after SIGKILL",
                self.label,
                self.child.id()
            );
        }
    }
}
