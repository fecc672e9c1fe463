//! The connection-tracking flood scenario (issue 9), shared by `tests/flood.rs` and
//! `cargo xtask bench flood`.
//!
//! A [`NodesTopology`] with one pod per node; node-a serves a NodePort, TCP
//! [`TCP_NODEPORT`] and UDP [`UDP_NODEPORT`], with one backend on each node (a-pod-0
//! local, b-pod-0 remote, so both the un-SNATed and the SNATed path are flooded), either
//! with the agent ([`Side::Ours`]) or with kube-proxy-style iptables rules
//! ([`Side::Iptables`]). The external client sends the flood with the `flood` binary
//! from [`SPOOFED_SOURCES`], a range that exists nowhere but as a blackhole route in
//! node-a: the backends answer every SYN (with SYN cookies once their queue is full)
//! and every datagram, and the answers die at the node, as in the wild. rp_filter is
//! off in every namespace of the topology and checked on node-a, so neither data plane
//! is shielded by a reverse-path check that real nodes often do not have.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::probe::own_bin;
use crate::{
    Agent, BpfFs, Cgroup, ChildGuard, ManifestDir, Netns, NodesTopology, ProbeReply, ServiceSpec,
    install_iptables, kube_proxy_nodeports_rules, metric_value, probe_bin, spawn_guarded, tool,
};

/// Where the spoofed sources come from (RFC 2544's benchmarking range).
pub const SPOOFED_SOURCES: &str = "198.18.0.0/15";
/// The flooded TCP NodePort on node-a (192.0.2.1).
pub const TCP_NODEPORT: u16 = 30080;
/// The flooded UDP NodePort.
pub const UDP_NODEPORT: u16 = 30053;
/// The pods' TCP port.
pub const POD_TCP: u16 = 8080;
/// The pods' UDP port.
pub const POD_UDP: u16 = 5353;
/// How long a side may take to serve its NodePorts.
const SERVED: Duration = Duration::from_secs(10);

/// Path of the `flood` binary (`$KPT_FLOOD_BIN`, else next to the running executable;
/// see [`probe_bin`]).
pub fn flood_bin() -> PathBuf {
    own_bin("flood")
}

/// The flooded protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Spoofed SYNs at [`TCP_NODEPORT`].
    Tcp,
    /// Spoofed datagrams at [`UDP_NODEPORT`].
    Udp,
}

impl Proto {
    /// `tcp` or `udp`, as `probe` and `flood` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// Who serves the NodePort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The agent's tc data plane.
    Ours,
    /// kube-proxy-style iptables nat rules (netfilter conntrack).
    Iptables,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ours => "ours",
            Self::Iptables => "iptables",
        })
    }
}

/// What `flood` reported.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FloodSent {
    /// Packets sent (one distinct flow each).
    pub sent: u64,
    /// How long sending took.
    pub secs: f64,
    /// Packets per second achieved.
    pub pps: f64,
}

impl FloodSent {
    /// Parses `sent N secs S pps P`.
    pub fn parse(line: &str) -> Option<Self> {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["sent", n, "secs", s, "pps", p] => Some(Self {
                sent: n.parse().ok()?,
                secs: s.parse().ok()?,
                pps: p.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// Results of a batch of legitimate connections (or datagrams).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Answered by a backend.
    pub ok: u32,
    /// Failures by reason (`ETIMEDOUT`, `timeout`, ...).
    pub failed: BTreeMap<String, u32>,
}

impl Outcome {
    /// Counts one `probe` result line (other lines are ignored).
    pub fn add_line(&mut self, line: &str) {
        match ProbeReply::parse(line) {
            Some(ProbeReply::Ok { .. }) => self.ok += 1,
            Some(ProbeReply::Err { reason, .. }) => *self.failed.entry(reason).or_default() += 1,
            None => {}
        }
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &Outcome) {
        self.ok += other.ok;
        for (k, v) in &other.failed {
            *self.failed.entry(k.clone()).or_default() += v;
        }
    }

    /// Attempts counted.
    pub fn total(&self) -> u32 {
        self.ok + self.failed.values().sum::<u32>()
    }

    /// Succeeded attempts in percent (0 with none).
    pub fn percent(&self) -> f64 {
        match self.total() {
            0 => 0.0,
            n => f64::from(self.ok) * 100.0 / f64::from(n),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ok", self.ok, self.total())?;
        if !self.failed.is_empty() {
            let why: Vec<String> = self
                .failed
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect();
            write!(f, " ({})", why.join(", "))?;
        }
        Ok(())
    }
}

/// An established connection through the TCP NodePort that pings every interval.
pub struct Hold {
    guard: ChildGuard,
    rounds: u32,
}

impl Hold {
    /// Reads what the connection printed so far and waits (up to 3 s) for one more
    /// round: the rounds completed if every one succeeded and it still exchanges data,
    /// else what it printed.
    ///
    /// # Errors
    /// A failed round, an exit or a stall, with the lines seen.
    pub fn check(&mut self) -> Result<u32, String> {
        while let Some(line) = self.guard.next_line(Duration::ZERO) {
            self.take(&line)?;
        }
        let Some(line) = self.guard.next_line(Duration::from_secs(3)) else {
            return Err(format!(
                "no round for 3 s (exited: {:?}); printed: {:?}",
                self.guard.try_wait(),
                self.guard.seen_lines()
            ));
        };
        self.take(&line)?;
        Ok(self.rounds)
    }

    fn take(&mut self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["round", k, "ok"] => {
                self.rounds = k.parse().unwrap_or(self.rounds);
                Ok(())
            }
            _ => Err(format!(
                "the held connection printed {line:?}; before: {:?}",
                self.guard.seen_lines()
            )),
        }
    }
}

/// The scenario's namespaces, servers and side; everything is removed on drop (the
/// agent first, the bpffs last).
pub struct FloodEnv {
    agent: Option<Agent>,
    _servers: Vec<ChildGuard>,
    /// The two nodes, their pods and the external client.
    pub topo: NodesTopology,
    _cgroup: Option<Cgroup>,
    _dir: Option<ManifestDir>,
    _bpffs: Option<BpfFs>,
    /// Who serves the NodePorts.
    pub side: Side,
}

impl FloodEnv {
    /// Builds the topology, starts the servers and `side` (the agent with
    /// [`NodesTopology::AGENT_FLAGS`] and `agent_flags`), and waits until both
    /// NodePorts answer.
    ///
    /// # Panics
    /// If a step fails, or rp_filter stays on in node-a.
    pub fn new(tag: &str, side: Side, agent_flags: &[&str]) -> Self {
        let topo = NodesTopology::new(tag, 1);
        let servers = topo.serve_pods(&[POD_TCP], &[POD_UDP]);
        no_rp_filter(&topo);
        let node_a = topo.node_a();
        node_a
            .netns
            .ip(&["route", "add", "blackhole", SPOOFED_SOURCES]);
        let (local, remote) = (node_a.pods[0].ipv4, topo.node_b().pods[0].ipv4);
        let mut env = Self {
            agent: None,
            _servers: servers,
            _cgroup: None,
            _dir: None,
            _bpffs: None,
            side,
            topo,
        };
        match side {
            Side::Ours => {
                let bpffs = BpfFs::new(tag);
                let dir = ManifestDir::new(tag);
                let cgroup = Cgroup::new(&format!("{tag}-pods"));
                let svc = ServiceSpec::new("flood", "NodePort")
                    .cluster_ip(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)))
                    .port("http", 80, "TCP", POD_TCP, Some(TCP_NODEPORT))
                    .port("dns", 53, "UDP", POD_UDP, Some(UDP_NODEPORT))
                    .endpoint(IpAddr::V4(local), "node-a")
                    .endpoint(IpAddr::V4(remote), "node-b")
                    .yaml();
                dir.write("flood.yaml", &svc);
                let mut flags = NodesTopology::AGENT_FLAGS.to_vec();
                flags.extend_from_slice(agent_flags);
                env.agent = Some(Agent::start_in(
                    &env.topo.node_a().netns,
                    bpffs.path(),
                    cgroup.path(),
                    dir.path(),
                    &flags,
                ));
                env._bpffs = Some(bpffs);
                env._dir = Some(dir);
                env._cgroup = Some(cgroup);
            }
            Side::Iptables => {
                let tcp = [
                    SocketAddrV4::new(local, POD_TCP),
                    SocketAddrV4::new(remote, POD_TCP),
                ];
                let udp = [
                    SocketAddrV4::new(local, POD_UDP),
                    SocketAddrV4::new(remote, POD_UDP),
                ];
                let node_a = env.topo.node_a();
                install_iptables(
                    &node_a.netns,
                    &kube_proxy_nodeports_rules(
                        node_a.ipv4,
                        &[("tcp", TCP_NODEPORT, &tcp), ("udp", UDP_NODEPORT, &udp)],
                    ),
                );
            }
        }
        env.wait_served(Proto::Tcp);
        env.wait_served(Proto::Udp);
        env
    }

    /// The agent ([`Side::Ours`] only).
    pub fn agent(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }

    /// Waits until the agent's connection-table collector has completed `n` more
    /// passes (`proxy_agent_conntrack_gc_runs_total`), so the table metrics it samples
    /// (entries, capacity, evictions) describe the present. Returns whether it did
    /// within `timeout`; false also without an agent or that metric.
    pub fn wait_collections(&self, n: u32, timeout: Duration) -> bool {
        let Some(agent) = &self.agent else {
            return false;
        };
        let runs = || metric_value(&agent.metrics(), "proxy_agent_conntrack_gc_runs_total", "");
        let Some(start) = runs() else {
            return false;
        };
        let deadline = Instant::now() + timeout;
        loop {
            if runs().is_some_and(|r| r >= start + f64::from(n)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// node-a's NodePort for `proto`.
    pub fn nodeport(&self, proto: Proto) -> SocketAddrV4 {
        let port = match proto {
            Proto::Tcp => TCP_NODEPORT,
            Proto::Udp => UDP_NODEPORT,
        };
        SocketAddrV4::new(self.topo.node_a().ipv4, port)
    }

    fn wait_served(&self, proto: Proto) {
        let to = self.nodeport(proto).to_string();
        let deadline = Instant::now() + SERVED;
        loop {
            let out = self
                .topo
                .client_probe(&[proto.name(), "--to", &to, "--timeout-ms", "500"]);
            let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if ProbeReply::parse(&line)
                .and_then(|r| r.name().map(str::to_owned))
                .is_some()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} {to} ({}) not served within {SERVED:?}: {line}\n{}",
                proto.name(),
                self.side,
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts `flood` in the client: `count` spoofed flows at `proto`'s NodePort at
    /// `pps` packets/s (0: as fast as it can).
    pub fn spawn_flood(&self, proto: Proto, count: u64, pps: u64, seed: u64) -> ChildGuard {
        spawn_guarded(
            &self.topo.client,
            None,
            Command::new(flood_bin()).args([
                "--to",
                &self.nodeport(proto).to_string(),
                "--proto",
                proto.name(),
                "--sources",
                SPOOFED_SOURCES,
                "--count",
                &count.to_string(),
                "--pps",
                &pps.to_string(),
                "--seed",
                &seed.to_string(),
            ]),
        )
    }

    /// Runs [`spawn_flood`](Self::spawn_flood) to its end.
    ///
    /// # Panics
    /// If it fails or takes far longer than its rate implies.
    pub fn flood(&self, proto: Proto, count: u64, pps: u64, seed: u64) -> FloodSent {
        let mut child = self.spawn_flood(proto, count, pps, seed);
        wait_flood(&mut child, count, pps)
    }

    /// `total` new connections (TCP) or new sockets with one datagram each (UDP) from
    /// the client to `proto`'s NodePort, by `workers` concurrent probes, each attempt
    /// with a `timeout_ms` connect/answer timeout.
    pub fn legit(&self, proto: Proto, total: u32, workers: u32, timeout_ms: u32) -> Outcome {
        let to = self.nodeport(proto).to_string();
        let workers = workers.clamp(1, total.max(1));
        let mut children: Vec<ChildGuard> = (0..workers)
            .map(|w| {
                let n = total / workers + u32::from(w < total % workers);
                spawn_guarded(
                    &self.topo.client,
                    None,
                    Command::new(probe_bin()).args([
                        proto.name(),
                        "--to",
                        &to,
                        "--count",
                        &n.to_string(),
                        "--timeout-ms",
                        &timeout_ms.to_string(),
                    ]),
                )
            })
            .collect();
        let limit = Duration::from_millis(u64::from(total) * u64::from(timeout_ms) * 2) + SERVED;
        let mut outcome = Outcome::default();
        for c in &mut children {
            c.wait(limit);
            for line in c.drain_lines(Duration::from_secs(2)) {
                outcome.add_line(&line);
            }
        }
        outcome
    }

    /// Opens a connection through the TCP NodePort that pings every `interval_ms`, and
    /// waits for its first round.
    ///
    /// # Panics
    /// If it cannot connect or its first round fails.
    pub fn hold(&self, interval_ms: u32) -> Hold {
        let to = self.nodeport(Proto::Tcp).to_string();
        let mut guard = spawn_guarded(
            &self.topo.client,
            None,
            Command::new(probe_bin()).args([
                "hold",
                "--to",
                &to,
                "--rounds",
                "1000000",
                "--interval-ms",
                &interval_ms.to_string(),
            ]),
        );
        for want in ["ok ", "round 1 ok"] {
            let line = guard.expect_line(Duration::from_secs(5));
            assert!(line.starts_with(want), "hold {to}: {line}");
        }
        Hold { guard, rounds: 1 }
    }

    /// Packets of `proto` that reached the backends' transport layer (TCP: segments;
    /// UDP: datagrams, also those a full socket buffer dropped), summed over both pods
    /// from their `/proc/net/snmp`.
    pub fn backends_received(&self, proto: Proto) -> u64 {
        let keys: &[&str] = match proto {
            Proto::Tcp => &["InSegs"],
            Proto::Udp => &["InDatagrams", "InErrors"],
        };
        self.backends_snmp(proto, keys)
    }

    /// Packets the backends sent for `proto` (TCP: segments, so SYN-ACKs; UDP:
    /// datagrams), summed over both pods.
    pub fn backends_sent(&self, proto: Proto) -> u64 {
        let keys: &[&str] = match proto {
            Proto::Tcp => &["OutSegs"],
            Proto::Udp => &["OutDatagrams"],
        };
        self.backends_snmp(proto, keys)
    }

    fn backends_snmp(&self, proto: Proto, keys: &[&str]) -> u64 {
        let group = match proto {
            Proto::Tcp => "Tcp",
            Proto::Udp => "Udp",
        };
        self.topo
            .pods()
            .flat_map(|p| keys.iter().map(|k| snmp(&p.netns, group, k)))
            .sum()
    }

    /// Packets the client's `eth0` received (the backends' answers to spoofed sources
    /// must not get there).
    pub fn client_rx_packets(&self) -> u64 {
        let dev = self
            .topo
            .client
            .run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))
            .unwrap_or_else(|e| panic!("reading the client's /proc/net/dev: {e}"));
        dev.lines()
            .find_map(|l| l.trim_start().strip_prefix("eth0:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no eth0 rx packets in {dev}"))
    }

    /// Entries in node-a's netfilter connection table (`conntrack -C`).
    pub fn netfilter_entries(&self) -> u64 {
        let out = self
            .topo
            .node_a()
            .netns
            .exec(&[&tool("conntrack").to_string_lossy(), "-C"]);
        let s = String::from_utf8_lossy(&out.stdout);
        s.trim()
            .parse()
            .unwrap_or_else(|e| panic!("conntrack -C printed {s:?}: {e}"))
    }

    /// node-a's `conntrack -S` counters summed over CPUs (`drop`, `early_drop`,
    /// `insert_failed`, ...).
    pub fn netfilter_stats(&self) -> BTreeMap<String, u64> {
        let out = self
            .topo
            .node_a()
            .netns
            .exec(&[&tool("conntrack").to_string_lossy(), "-S"]);
        let mut sums = BTreeMap::new();
        for w in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Some((k, v)) = w.split_once('=')
                && k != "cpu"
                && let Ok(v) = v.parse::<u64>()
            {
                *sums.entry(k.to_owned()).or_default() += v;
            }
        }
        sums
    }

    /// What to print when a check fails: the agent's counters and log, or node-a's
    /// netfilter counters and nat table.
    pub fn diagnostics(&self) -> String {
        match &self.agent {
            Some(agent) => {
                let stats = Command::new(crate::agent_binary("proxyctl"))
                    .arg("--bpffs")
                    .arg(&agent.bpffs)
                    .arg("stats")
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_else(|e| format!("proxyctl: {e}"));
                let log: Vec<String> = agent
                    .log()
                    .lines()
                    .rev()
                    .take(40)
                    .map(str::to_owned)
                    .collect();
                let log: Vec<String> = log.into_iter().rev().collect();
                format!(
                    "proxyctl stats:\n{stats}\nagent log (last 40 lines):\n{}",
                    log.join("\n")
                )
            }
            None => {
                let node = &self.topo.node_a().netns;
                let nat =
                    node.try_exec(&[&tool("iptables-save").to_string_lossy(), "-t", "nat", "-c"]);
                format!(
                    "conntrack -S: {:?}\niptables-save -t nat -c:\n{}",
                    self.netfilter_stats(),
                    String::from_utf8_lossy(&nat.stdout)
                )
            }
        }
    }
}

/// Waits for a `flood` started by [`FloodEnv::spawn_flood`] and returns its summary.
///
/// # Panics
/// If it fails or takes far longer than `count` at `pps` (or 10,000/s) implies.
pub fn wait_flood(child: &mut ChildGuard, count: u64, pps: u64) -> FloodSent {
    let secs = count / pps.clamp(10_000, u64::MAX) * 3 + 30;
    let status = child.wait(Duration::from_secs(secs));
    let lines = child.drain_lines(Duration::from_secs(2));
    let summary = lines.iter().find_map(|l| FloodSent::parse(l));
    match summary {
        Some(s) if status.success() => s,
        _ => panic!("flood exited with {status}: {lines:?} {}", child.stderr()),
    }
}

/// Field `key` of group `group` (`Tcp`, `Udp`) of `netns`'s `/proc/net/snmp`.
///
/// # Panics
/// If it is not there.
pub fn snmp(netns: &Netns, group: &str, key: &str) -> u64 {
    let text = netns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .unwrap_or_else(|e| panic!("reading /proc/net/snmp of {}: {e}", netns.name()));
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    if let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if n == key
                && let Ok(v) = v.parse()
            {
                return v;
            }
        }
    }
    panic!("no {group} {key} in /proc/net/snmp of {}", netns.name())
}

/// rp_filter off (all, default and every interface) in every namespace of `topo` that
/// routes, then checked on node-a: with it on, node-a would drop the spoofed packets
/// (no route back but a blackhole) before netfilter confirms their entries, and the
/// reference would look immune.
fn no_rp_filter(topo: &NodesTopology) {
    let mut all: Vec<(&Netns, Vec<&str>)> = vec![(&topo.client, vec!["eth0"])];
    for node in &topo.nodes {
        all.push((&node.netns, vec!["eth0", NodesTopology::POD_BRIDGE]));
        for pod in &node.pods {
            all.push((&pod.netns, vec!["eth0"]));
        }
    }
    for (ns, ifaces) in &all {
        let keys: Vec<String> = ["all", "default"]
            .iter()
            .chain(ifaces)
            .map(|i| format!("net.ipv4.conf.{i}.rp_filter"))
            .collect();
        let settings: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "0")).collect();
        ns.sysctls(&settings);
    }
    let node_a = &topo.node_a().netns;
    for i in ["all", "eth0", NodesTopology::POD_BRIDGE] {
        let key = format!("net.ipv4.conf.{i}.rp_filter");
        let out = node_a.exec(&[&tool("sysctl").to_string_lossy(), "-n", &key]);
        let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(v, "0", "{key} in node-a is {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_summaries_parse() {
        assert_eq!(
            FloodSent::parse("sent 65536 secs 1.311 pps 49990"),
            Some(FloodSent {
                sent: 65536,
                secs: 1.311,
                pps: 49990.0
            })
        );
        assert_eq!(FloodSent::parse("sent 1 secs x pps 1"), None);
    }

    #[test]
    fn outcomes_count_results_by_reason() {
        let mut o = Outcome::default();
        for l in [
            "ok a-pod-0 192.0.2.1:30080",
            "err ETIMEDOUT 1001",
            "err ETIMEDOUT 1000",
            "err timeout 1000",
            "noise",
        ] {
            o.add_line(l);
        }
        assert_eq!(o.total(), 4);
        assert_eq!(o.to_string(), "1/4 ok (ETIMEDOUT x2, timeout x1)");
        let mut sum = Outcome::default();
        sum.merge(&o);
        sum.merge(&o);
        assert_eq!(sum.ok, 2);
        assert!((sum.percent() - 25.0).abs() < 1e-9);
    }
}
