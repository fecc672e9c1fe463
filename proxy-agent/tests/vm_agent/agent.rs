//! The real `proxy-agent` binary in `--proxy-mode=ipvs`, run in the node's namespace
//! from a manifest directory, and what it reports: its log's sync lines, `/metrics`,
//! `/healthz`.
//!
//! The binary is `/tests/proxy-agent`, where `cargo xtask vm-test` ships it next to the
//! test binaries (or `$KPT_AGENT_BIN`). Its stderr goes to a file; a test that fails
//! prints its tail. An [`Agent`] is killed when dropped unless it was stopped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::lab::Lab;
use super::manifests::{Manifests, NODE};
use super::netns::Netns;

/// Where the agent's metrics and health servers listen, on the node's address
/// towards client 0 (which only the node's namespace has).
const METRICS_PORT: u16 = 10249;
const HEALTHZ_PORT: u16 = 10256;

/// How long a wait for the agent may take before the test fails (a bound against
/// hanging, never a measured figure: emulation is slow and its speed varies).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The agent's executable in the VM.
pub fn binary(name: &str) -> PathBuf {
    let var = format!(
        "KPT_{}_BIN",
        name.replace("proxy-", "").to_ascii_uppercase()
    );
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tests").join(name));
    assert!(
        path.is_file(),
        "{} is missing: run this through `cargo xtask vm-test`, which ships it",
        path.display()
    );
    path
}

/// One sync as the agent logged it (`synced services=.. upserted=.. ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncLine {
    /// A full resync (`sync{full=true}`: the periodic one, which also deletes
    /// drained destinations).
    pub full: bool,
    pub services: u64,
    pub upserted: u64,
    pub removed: u64,
    pub unchanged: u64,
    pub failed: u64,
    /// The line as logged, timestamp first.
    pub line: String,
}

impl SyncLine {
    fn parse(line: &str) -> Option<SyncLine> {
        if !line.contains(" synced") {
            return None;
        }
        let field = |key: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        };
        Some(SyncLine {
            full: line.contains("sync{full=true}"),
            services: field("services")?,
            upserted: field("upserted")?,
            removed: field("removed")?,
            unchanged: field("unchanged")?,
            failed: field("failed")?,
            line: line.to_owned(),
        })
    }

    /// Another numeric field of the line (`latency_us`, `apply_us`, ...).
    pub fn field(&self, key: &str) -> Option<u64> {
        self.line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    }

    /// When it was logged (the line's RFC 3339 timestamp).
    pub fn at(&self) -> jiff::Timestamp {
        let first = self.line.split_whitespace().next().unwrap_or("");
        first
            .parse()
            .unwrap_or_else(|e| panic!("no timestamp in {:?}: {e}", self.line))
    }
}

/// A running agent (see the module docs).
pub struct Agent {
    /// `None` once stopped.
    child: Mutex<Option<Child>>,
    log: PathBuf,
    /// `/metrics` and `/proxyMode`.
    pub metrics: SocketAddr,
    /// `/healthz` and `/livez`.
    pub healthz: SocketAddr,
    /// The wall clock just before it was started (its log's clock).
    pub started_at: jiff::Timestamp,
}

impl Agent {
    /// Starts the agent in `lab`'s node namespace: `--proxy-mode ipvs --manifests DIR
    /// --hostname-override node-a`, metrics and health on the node's address, then
    /// `extra`.
    pub fn start(lab: &Lab, manifests: &Manifests, extra: &[&str]) -> Agent {
        Agent::start_in(&lab.node, lab.node_ip.into(), manifests, extra)
    }

    /// [`start`](Self::start) in namespace `node`, serving on `ip`.
    pub fn start_in(
        node: &Netns,
        ip: std::net::IpAddr,
        manifests: &Manifests,
        extra: &[&str],
    ) -> Agent {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("kpt-vm-agent-{}-{n}.log", node.name()));
        let metrics = SocketAddr::new(ip, METRICS_PORT);
        let healthz = SocketAddr::new(ip, HEALTHZ_PORT);
        let mut args: Vec<String> = [
            "--proxy-mode",
            "ipvs",
            "--manifests",
            &manifests.path().to_string_lossy(),
            "--hostname-override",
            NODE,
            "--metrics-bind-address",
            &metrics.to_string(),
            "--healthz-bind-address",
            &healthz.to_string(),
            // A bpffs directory of its own: the IPVS mode removes the eBPF mode's pins.
            "--bpffs",
            &format!("/tmp/kpt-vm-bpffs-{}-{n}", node.name()),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let started_at = jiff::Timestamp::now();
        let child = spawn(node, "proxy-agent", args, Some(log.clone()));
        Agent {
            child: Mutex::new(Some(child)),
            log,
            metrics,
            healthz,
            started_at,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child().as_ref().map_or(0, Child::id)
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How it exited, if it did.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child()
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its sync lines so far, oldest first.
    pub fn syncs(&self) -> Vec<SyncLine> {
        self.log().lines().filter_map(SyncLine::parse).collect()
    }

    /// Waits until it has logged `n` syncs and returns them.
    pub fn wait_syncs(&self, n: usize) -> Vec<SyncLine> {
        self.wait("its syncs", || {
            let syncs = self.syncs();
            (syncs.len() >= n).then_some(syncs)
        })
    }

    /// Waits until `ready` gives something, failing if the agent exits or
    /// [`PATIENCE`] passes first.
    pub fn wait<T>(&self, what: &str, ready: impl FnMut() -> Option<T>) -> T {
        self.wait_up_to(PATIENCE, what, ready)
    }

    /// [`wait`](Self::wait), failing after `patience`.
    pub fn wait_up_to<T>(
        &self,
        patience: Duration,
        what: &str,
        mut ready: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(t) = ready() {
                return t;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "the agent exited ({status}) waiting for {what}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "waited {patience:?} for {what}; agent log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its peak resident memory (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading the agent's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in {status}"))
    }

    /// SIGTERM, then waits for it to exit; returns how it exited.
    pub fn stop(self) -> ExitStatus {
        let Some(mut child) = self.child().take() else {
            panic!("the agent was already stopped");
        };
        terminate(&child);
        let deadline = Instant::now() + PATIENCE;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the agent did not stop on SIGTERM:\n{}", self.log());
                }
            }
        }
    }

    /// `GET path` from its metrics server (from the node's namespace).
    pub fn get_metrics(&self, node: &Netns, path: &str) -> (u16, String) {
        http_get(node, self.metrics, path)
    }

    /// The value of the unlabelled metric `name` in `/metrics`.
    pub fn metric(&self, node: &Netns, name: &str) -> Option<f64> {
        let (code, body) = self.get_metrics(node, "/metrics");
        assert_eq!(code, 200, "/metrics: {body}");
        body.lines().find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- agent log {} ---\n{}",
                self.log.display(),
                tail(&self.log(), 60)
            );
        }
    }
}

/// SIGTERM to `child`.
fn terminate(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: plain syscall on our own child's pid (not yet reaped, so not reused).
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

/// Starts the shipped binary `name` with `args` in `ns`, stderr (and stdout) to `log`
/// if given, else captured.
pub fn spawn(ns: &Netns, name: &str, args: Vec<String>, log: Option<PathBuf>) -> Child {
    let bin = binary(name);
    ns.run(move || {
        let mut cmd = Command::new(&bin);
        cmd.args(&args).stdin(Stdio::null());
        if let Some(log) = &log {
            let file = std::fs::File::create(log).expect("creating the agent's log");
            let err = file.try_clone().expect("cloning the log file");
            cmd.stdout(file).stderr(err);
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
    })
}

/// Runs the shipped binary `name` with `args` in `ns` to completion.
pub fn run(ns: &Netns, name: &str, args: &[&str]) -> std::process::Output {
    let args = args.iter().map(|a| (*a).to_owned()).collect();
    spawn(ns, name, args, None)
        .wait_with_output()
        .expect("waiting for a shipped binary")
}

/// `GET path` over HTTP/1.1 from `ns`: the status code and the body.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_owned();
    ns.run(move || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a read timeout");
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("sending a request");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).expect("reading an answer");
        let code = answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
        let body = answer
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        (code, body)
    })
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
