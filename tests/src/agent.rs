//! Runs the real `proxy-agent` against a test's cgroup, bpffs and manifest directory,
//! and reads what it programmed with the real `proxyctl`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::netns::{run_in, spawn_in};
use crate::process::try_spawn;
use crate::{ChildGuard, FakeApiServer, Netns, http_get, metric_value};

/// One programmed frontend, as `proxyctl list --json` prints it. (A copy of
/// `proxy_agent::dataplane::ebpf::inspect::ServiceView`'s shape: this crate does not depend on
/// `proxy-agent`, so that `cargo xtask setup` builds before bpf-linker exists.)
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
pub struct ServiceView {
    /// `namespace/name:port` as the agent recorded it.
    pub service: String,
    /// VIP:port/protocol.
    pub frontend: String,
    /// The service id in the maps.
    pub service_id: u32,
    /// ClientIP affinity timeout, if on.
    pub affinity_timeout_s: Option<u32>,
    /// Backends in slot order.
    pub backends: Vec<SocketAddr>,
}

/// Path of a binary of the `proxy-agent` package (`proxy-agent`, `proxyctl`) in this
/// build's target directory. `cargo test --workspace` builds them (the package has
/// integration tests of its own); a binary older than the sources it is built from is
/// refused rather than silently tested.
pub fn agent_binary(name: &str) -> PathBuf {
    // The benchmarks run a release build: KPT_AGENT_BIN / KPT_PROXYCTL_BIN.
    let var = format!(
        "KPT_{}_BIN",
        name.replace("proxy-", "").to_ascii_uppercase()
    );
    if let Some(p) = std::env::var_os(var) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let Some(path) = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
    else {
        panic!(
            "{name} not found near {}: build it with `cargo build -p proxy-agent --bins` \
             (or run `cargo xtask test`)",
            exe.display()
        )
    };
    let built = mtime(&path);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["proxy-agent/src", "proxy-ebpf/src", "proxy-common/src"] {
        if let Some(newest) = newest_mtime(&root.join(dir))
            && newest > built
        {
            panic!(
                "{} is older than {dir}; rebuild with `cargo build -p proxy-agent --bins` \
                 (or run `cargo xtask test`)",
                path.display()
            );
        }
    }
    path
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            Some(mtime(&p))
        };
        newest = newest.max(t);
    }
    newest
}

/// Runs `proxy-agent --cleanup --bpffs PINS` in a network namespace of its own: it
/// also removes the IPVS mode's state (virtual servers, ipsets, `kube-ipvs0`) in its
/// namespace, which must never be the machine's. Returns its output; the caller
/// checks it.
pub fn run_cleanup(pins: &Path) -> std::process::Output {
    let ns = Netns::new("cleanup");
    crate::run(
        &ns,
        None,
        Command::new(agent_binary("proxy-agent"))
            .arg("--cleanup")
            .arg("--bpffs")
            .arg(pins),
        Duration::from_secs(30),
    )
}

/// One line of the agent's log with its timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// When the agent logged it, in microseconds since the Unix epoch (the clock of
    /// [`unix_us`](crate::unix_us) and of `probe --timestamps`).
    pub at_us: u64,
    /// The whole line.
    pub text: String,
}

impl LogLine {
    /// Parses a line of the agent's log (`2026-12-01T23:19:10.179074Z  INFO ...`);
    /// `None` if it does not start with an RFC 3339 timestamp.
    pub fn parse(line: &str) -> Option<Self> {
        let stamp: jiff::Timestamp = line.split_whitespace().next()?.parse().ok()?;
        Some(Self {
            at_us: u64::try_from(stamp.as_microsecond()).ok()?,
            text: line.to_owned(),
        })
    }

    /// The value of `key=value` on the line, if any.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.text
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }

    /// The number `key=N` on the line.
    ///
    /// # Panics
    /// If the line has no such number.
    pub fn count(&self, key: &str) -> u64 {
        self.field(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number {key}= in the log line {:?}", self.text))
    }
}

/// A running agent; SIGKILLed on drop (its pins die with the test's bpffs).
pub struct Agent {
    guard: ChildGuard,
    /// The agent's pin directory.
    pub bpffs: PathBuf,
    /// The network namespace it runs in: a node's, the fake API server's, or its own.
    netns: PathBuf,
    /// The private namespace made for an agent that serves no node traffic.
    _own_netns: Option<Netns>,
    /// When the process was spawned (unix µs).
    spawned_us: u64,
}

impl Agent {
    /// Starts `agent --manifests DIR --bpffs BPFFS/agent --cgroup-path CGROUP` plus
    /// `extra` arguments, outside the test cgroup and in a network namespace of its own
    /// (it serves only the socket path, which is per cgroup, and its HTTP servers must
    /// not listen on the machine), and waits for its first sync.
    pub fn start(bpffs: &Path, cgroup: &Path, manifests: &Path, extra: &[&str]) -> Agent {
        Agent::start_with(None, bpffs, cgroup, "--manifests", manifests, extra, &[])
    }

    /// Like [`Agent::start`], with environment variables `env` set for the agent (e.g.
    /// a test-only switch of a debug build).
    pub fn start_env(
        bpffs: &Path,
        cgroup: &Path,
        manifests: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        Agent::start_with(None, bpffs, cgroup, "--manifests", manifests, extra, env)
    }

    /// Like [`Agent::start`], with the Kubernetes source on `kubeconfig`, inside the
    /// namespace where `api` listens.
    pub fn start_kube(
        api: &FakeApiServer,
        bpffs: &Path,
        cgroup: &Path,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> Agent {
        Agent::start_with(
            Some(api.netns()),
            bpffs,
            cgroup,
            "--kubeconfig",
            kubeconfig,
            extra,
            &[],
        )
    }

    /// Like [`Agent::start`], but inside `netns` (a node of a
    /// [`NodesTopology`](crate::NodesTopology)), where its tc programs attach to the
    /// node's interfaces and its HTTP servers (metrics, health, `healthCheckNodePort`s)
    /// listen. The process enters the namespace with `setns` between fork and exec, so it
    /// keeps the test's mount namespace: `bpffs` and `cgroup` stay valid paths (unlike
    /// under `ip netns exec`, which remounts `/sys`). Pins are netns-independent, so
    /// [`proxyctl`](Self::proxyctl) runs from the root namespace.
    ///
    /// `--hostname-override node-a` is added unless `extra` has its own.
    pub fn start_in(
        netns: &Netns,
        bpffs: &Path,
        cgroup: &Path,
        manifests: &Path,
        extra: &[&str],
    ) -> Agent {
        Agent::start_with(
            Some(netns),
            bpffs,
            cgroup,
            "--manifests",
            manifests,
            extra,
            &[],
        )
    }

    /// Like [`Agent::start_in`], with the agent run by `capwrap --caps CAPS` (see
    /// `src/bin/capwrap.rs`): with exactly the capabilities `caps` names
    /// (`CAP_BPF,CAP_NET_ADMIN`, or `none`), as a container's root with
    /// `capabilities: {drop: [ALL], add: [...]}`.
    pub fn start_in_with_caps(
        caps: &str,
        netns: &Netns,
        bpffs: &Path,
        cgroup: &Path,
        manifests: &Path,
        extra: &[&str],
    ) -> Agent {
        let mut agent = Agent::launch(
            Some(netns),
            bpffs,
            cgroup,
            Some(("--manifests", manifests)),
            extra,
            &[],
            Wrap::Caps(caps),
        );
        agent.wait_syncs(1, Duration::from_secs(30));
        agent
    }

    /// Starts the agent as a DaemonSet's pod starts it, in the namespace where `api`
    /// listens: no `--kubeconfig` or `--manifests`, `KUBERNETES_SERVICE_HOST`/`PORT`
    /// naming `api`, and `service_account` (holding `token`, `ca.crt`, `namespace`)
    /// bind-mounted over `/var/run/secrets/kubernetes.io/serviceaccount` in a private
    /// mount namespace of the agent's own (the machine's `/var/run` is never changed).
    /// Waits for its first sync.
    pub fn start_in_cluster(
        api: &FakeApiServer,
        bpffs: &Path,
        cgroup: &Path,
        service_account: &Path,
        extra: &[&str],
    ) -> Agent {
        let mut agent = Agent::spawn_in_cluster(api, bpffs, cgroup, service_account, extra);
        agent.wait_syncs(1, Duration::from_secs(30));
        agent
    }

    /// [`Agent::start_in_cluster`] without waiting for a sync (for an agent that cannot
    /// reach its API server).
    pub fn spawn_in_cluster(
        api: &FakeApiServer,
        bpffs: &Path,
        cgroup: &Path,
        service_account: &Path,
        extra: &[&str],
    ) -> Agent {
        let port = api.addr().port().to_string();
        // HOME without a .kube/config: kube's inference tries a kubeconfig first.
        let home = service_account.parent().unwrap_or(service_account);
        let home = home.to_string_lossy();
        let env = [
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", port.as_str()),
            ("HOME", home.as_ref()),
        ];
        Agent::launch(
            Some(api.netns()),
            bpffs,
            cgroup,
            None,
            extra,
            &env,
            Wrap::InCluster(service_account),
        )
    }

    fn start_with(
        netns: Option<&Netns>,
        bpffs: &Path,
        cgroup: &Path,
        flag: &str,
        source: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let mut agent = Agent::launch(
            netns,
            bpffs,
            cgroup,
            Some((flag, source)),
            extra,
            env,
            Wrap::Plain,
        );
        agent.wait_syncs(1, Duration::from_secs(30));
        agent
    }

    /// Spawns the agent with `source` (`--manifests DIR`, `--kubeconfig FILE`), or with
    /// none and `service_account` mounted at the in-cluster path.
    fn launch(
        netns: Option<&Netns>,
        bpffs: &Path,
        cgroup: &Path,
        source: Option<(&str, &Path)>,
        extra: &[&str],
        env: &[(&str, &str)],
        wrap: Wrap<'_>,
    ) -> Agent {
        let pins = bpffs.join("agent");
        let mut cmd = match wrap {
            Wrap::Plain => Command::new(agent_binary("proxy-agent")),
            Wrap::Caps(caps) => {
                let mut c = Command::new(crate::capwrap_bin());
                c.args(["--caps", caps, "--"])
                    .arg(agent_binary("proxy-agent"));
                c
            }
            Wrap::InCluster(sa) => {
                // unshare execs sh, which execs the agent: one process, so the guard's
                // kill and the namespace assertion below hold for the agent itself. The
                // mount namespace dies with it: nothing to undo on the machine.
                // /var/run/secrets usually does not exist (and must not be made on the
                // machine): a tmpfs over /var/run of the private namespace holds the
                // mount point; the agent needs nothing else under /run.
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(
                        "set -e; sa=$1; shift; \
                         if [ -d /var/run/secrets ]; then mount -t tmpfs kpt-sa /var/run/secrets; \
                         else mount -t tmpfs kpt-sa /var/run; fi; \
                         mkdir -p /var/run/secrets/kubernetes.io/serviceaccount; \
                         mount --bind \"$sa\" /var/run/secrets/kubernetes.io/serviceaccount; \
                         exec \"$@\"",
                    )
                    .arg("sh")
                    .arg(sa)
                    .arg(agent_binary("proxy-agent"))
                    .env_remove("KUBECONFIG");
                c
            }
        };
        if let Some((flag, source)) = source {
            cmd.arg(flag).arg(source);
        }
        cmd.arg("--bpffs")
            .arg(&pins)
            .arg("--cgroup-path")
            .arg(cgroup);
        if !extra.contains(&"--hostname-override") {
            cmd.args(["--hostname-override", "node-a"]);
        }
        let own_netns = netns.is_none().then(|| {
            // An agent of the socket path only: no tc programs. Tests of the tc path run
            // the agent in a node namespace (Agent::start_in).
            assert!(
                !extra.contains(&"--nodeport-addresses") && !extra.contains(&"--pod-interfaces"),
                "tc programs attach only to a node namespace: use Agent::start_in"
            );
            cmd.args(["--nodeport-addresses", "none"]);
            Netns::new("agent")
        });
        let ns = netns.or(own_netns.as_ref()).expect("a namespace");
        cmd.args(["--metrics-bind-address", "127.0.0.1:0"])
            .args(["--healthz-bind-address", "127.0.0.1:0"])
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned_us = crate::unix_us();
        let child = try_spawn(&ns.path(), None, &mut cmd)
            .unwrap_or_else(|e| panic!("spawning the agent in netns {}: {e}", ns.name()));
        let ns_of = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        assert_ne!(
            ns_of(&child.id().to_string()),
            ns_of("self"),
            "the agent must not run in the test's own (root) network namespace"
        );
        Agent {
            guard: ChildGuard::with_label(child, format!("agent@{}", ns.name())),
            bpffs: pins,
            netns: ns.path(),
            _own_netns: own_netns,
            spawned_us,
        }
    }

    /// Waits until the agent has logged a line containing `needle`, and returns it.
    ///
    /// # Panics
    /// After `timeout`, or if the agent exits first, with the log.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log().lines().find(|l| l.contains(needle)) {
                return l.to_owned();
            }
            if let Some(status) = self.guard.try_wait() {
                panic!(
                    "agent exited with {status} before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not log {needle:?} within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `f` in the agent's network namespace (on a thread that entered it); e.g. to
    /// reach its HTTP servers.
    pub fn run_in_netns<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        run_in(&self.netns, f)
    }

    /// Spawns a thread that runs `f` in the agent's network namespace.
    pub fn spawn_in_netns<F, R>(&self, f: F) -> std::thread::JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        spawn_in(self.netns.clone(), f)
    }

    /// `GET path` from the agent's metrics server (`/metrics`, `/proxyMode`), from
    /// inside its namespace: (status, body).
    pub fn get_metrics(&self, path: &str) -> (u16, String) {
        let (metrics, _) = self.http_addrs();
        self.run_in_netns(|| http_get(metrics, path))
    }

    /// `GET path` from the agent's health server (`/healthz`, `/livez`), from inside
    /// its namespace: (status, body).
    pub fn get_health(&self, path: &str) -> (u16, String) {
        let (_, health) = self.http_addrs();
        self.run_in_netns(|| http_get(health, path))
    }

    /// `GET /metrics` from the agent's metrics address (in its namespace).
    pub fn metrics(&self) -> String {
        let (code, body) = self.get_metrics("/metrics");
        assert_eq!(code, 200, "/metrics answered {code}: {body}");
        body
    }

    /// A data plane event counter (`ct_full`, `lb_translated`, ...): the value
    /// `proxyctl stats` prints for it, else `proxy_agent_datapath_events_total{event=..}`
    /// from `/metrics`; `None` if neither has it.
    pub fn counter(&self, event: &str) -> Option<u64> {
        let stats = self.proxyctl(&["stats"]);
        let from_stats = stats.lines().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == event)
                .then(|| words.next_back()?.parse().ok())
                .flatten()
        });
        from_stats.or_else(|| {
            let labels = format!("{{event=\"{event}\"}}");
            metric_value(
                &self.metrics(),
                "proxy_agent_datapath_events_total",
                &labels,
            )
            .map(|v| {
                // Counters are whole numbers.
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "counters are whole, non-negative numbers"
                )]
                let n = v as u64;
                n
            })
        })
    }

    /// `proxyctl ARGS` parsed as JSON (pass `--json` yourself).
    pub fn proxyctl_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.proxyctl(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("proxyctl {args:?} printed bad JSON ({e}):\n{out}"))
    }

    /// The data plane's connection tracking entries (`proxyctl conntrack --json`), read
    /// loosely: a top-level array, or the first array-valued field of an object.
    pub fn conntrack(&self) -> Vec<serde_json::Value> {
        match self.proxyctl_json(&["conntrack", "--json"]) {
            serde_json::Value::Array(a) => a,
            serde_json::Value::Object(o) => o
                .into_iter()
                .find_map(|(_, v)| match v {
                    serde_json::Value::Array(a) => Some(a),
                    _ => None,
                })
                .unwrap_or_default(),
            other => panic!("proxyctl conntrack --json printed {other}"),
        }
    }

    /// Waits until some entry of `proxyctl list --json` (read loosely as JSON) satisfies
    /// `pred`, and returns it.
    ///
    /// # Panics
    /// After `timeout`, with what is programmed and the agent's log.
    pub fn wait_programmed(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let list = self.proxyctl_json(&["list", "--json"]);
            if let Some(found) = list.as_array().and_then(|a| a.iter().find(|v| pred(v))) {
                return found.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what} not programmed within {timeout:?}; proxyctl list --json:\n{list:#}\nagent log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's process id (e.g. to read its CPU time in `/proc/<pid>/stat`).
    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    /// Everything the agent logged.
    pub fn log(&self) -> String {
        self.guard.stderr()
    }

    /// When the agent's process was spawned (unix µs, taken just before the spawn).
    pub fn spawned_us(&self) -> u64 {
        self.spawned_us
    }

    /// The log lines containing `needle`, with their timestamps, oldest first.
    pub fn logged(&self, needle: &str) -> Vec<LogLine> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(LogLine::parse)
            .collect()
    }

    /// The first log line containing `needle`.
    ///
    /// # Panics
    /// If there is none, with the log.
    pub fn first_logged(&self, needle: &str) -> LogLine {
        self.logged(needle)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("the agent never logged {needle:?}:\n{}", self.log()))
    }

    /// The "synced" lines so far with their timestamps (`upserted=`, `removed=`,
    /// `unchanged=`, `failed=` ... read with [`LogLine::count`]). A sync is logged after
    /// its map writes.
    pub fn syncs_logged(&self) -> Vec<LogLine> {
        self.logged(" synced ")
    }

    /// Waits until the agent has logged `n` completed syncs in total.
    pub fn wait_syncs(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.log().lines().filter(|l| l.contains(" synced")).count();
            if seen >= n {
                return;
            }
            if let Some(status) = self.guard.try_wait() {
                panic!(
                    "agent exited with {status} before sync {n}:\n{}",
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "agent did not complete sync {n} within {timeout:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The (metrics, health) addresses the agent logged when it bound them.
    pub fn http_addrs(&self) -> (SocketAddr, SocketAddr) {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("serving metrics and health"))
            .unwrap_or_else(|| panic!("the agent logged no HTTP addresses:\n{log}"));
        let pick = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        };
        (pick("metrics="), pick("health="))
    }

    /// The "synced" log lines so far.
    pub fn sync_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(" synced"))
            .map(str::to_owned)
            .collect()
    }

    /// The agent's peak resident set size (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.guard.id()))
            .expect("reading the agent's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in {status}"))
    }

    /// Number of syncs logged so far.
    pub fn syncs(&self) -> usize {
        self.log().lines().filter(|l| l.contains(" synced")).count()
    }

    /// What the kernel maps hold, read by `proxyctl list --json`.
    pub fn programmed(&self) -> Vec<ServiceView> {
        let out = self.proxyctl(&["list", "--json"]);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("proxyctl printed bad JSON ({e}):\n{out}"))
    }

    /// `proxyctl monitor ARGS` (pass `-o json` to parse its lines), running once it
    /// said it listens (its lease is in place).
    pub fn monitor(&self, args: &[&str]) -> ChildGuard {
        let child = Command::new(agent_binary("proxyctl"))
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("monitor")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running proxyctl monitor");
        let mut m = ChildGuard::with_label(child, String::from("proxyctl monitor"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !m.stderr().contains("listening for") {
            assert!(
                Instant::now() < deadline && m.try_wait().is_none(),
                "proxyctl monitor {args:?} did not start: {}",
                m.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    /// Runs `proxyctl --bpffs <ours> ARGS` and returns its stdout; panics on failure.
    pub fn proxyctl(&self, args: &[&str]) -> String {
        let out = Command::new(agent_binary("proxyctl"))
            .arg("--bpffs")
            .arg(&self.bpffs)
            .args(args)
            .output()
            .expect("running proxyctl");
        assert!(
            out.status.success(),
            "proxyctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the kernel holds `frontend` ("10.96.0.10:80/TCP") with exactly
    /// `backends` (any order), and returns the view.
    pub fn wait_for(
        &self,
        frontend: &str,
        backends: &[SocketAddr],
        timeout: Duration,
    ) -> ServiceView {
        let mut want: Vec<SocketAddr> = backends.to_vec();
        want.sort();
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .programmed()
                .into_iter()
                .find(|v| v.frontend == frontend);
            if let Some(v) = found {
                let mut have = v.backends.clone();
                have.sort();
                if have == want {
                    return v;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "{frontend} never held {want:?}; programmed: {:#?}\nagent log:\n{}",
                    self.programmed(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `frontend` is gone from the maps.
    pub fn wait_gone(&self, frontend: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.programmed().iter().any(|v| v.frontend == frontend) {
            if Instant::now() >= deadline {
                panic!(
                    "{frontend} still programmed after {timeout:?}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and waits for a clean exit (pins stay behind, as in production).
    pub fn stop(mut self) {
        let status = self.guard.terminate(Duration::from_secs(10));
        assert!(
            status.success(),
            "agent exited with {status}:\n{}",
            self.log()
        );
    }
}

/// How the agent binary is run.
enum Wrap<'a> {
    /// As it is.
    Plain,
    /// Through `capwrap`, with exactly these capabilities.
    Caps(&'a str),
    /// With this service-account directory at the in-cluster path, in a private mount
    /// namespace.
    InCluster(&'a Path),
}
