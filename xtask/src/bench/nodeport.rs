//! `cargo xtask bench nodeport`: throughput (iperf3) and new connections per second from
//! an external client through a NodePort to a backend pod behind the node, with 1 and
//! with 10,000 services programmed, against two references measured in the same run:
//!
//! - **direct**: the same client going straight to the pod's IP through the same node,
//!   with nothing programmed in the node (no agent, no nat table, so not even
//!   netfilter conntrack runs there): the limit;
//! - **iptables**: the same NodePort served by kube-proxy-style iptables nat rules with
//!   the same services (`KUBE-SERVICES` with one rule per service port, which every new
//!   connection to a NodePort walks in full before `KUBE-NODEPORTS`, then `KUBE-EXT`,
//!   `KUBE-SVC`, `KUBE-SEP` DNAT and MASQUERADE, as `externalTrafficPolicy: Cluster`
//!   does).
//!
//! **ours** is the release agent running inside node-a's network namespace, with its tc
//! programs on the node's LAN interface and on the pod bridge.
//!
//! Only one side is ever active: the agent is stopped and its pins removed
//! (`proxy-agent --cleanup`, which detaches its programs), or the node's nftables
//! ruleset (where `iptables-nft` keeps the nat table) is deleted and conntrack flushed,
//! before the next side starts; before every side the NodePort is checked to be
//! unserved. The three sides take turns in every round, in each of the six orders in
//! turn, so that machine noise hits all alike; each figure is the median over the
//! rounds (12 rounds per scale: 2 s of iperf3 and 1.5 s of `probe crr` per side; about
//! 7 minutes in all, with ours' four CRR runs). Everything runs release builds.
//!
//! The 10,000 services are the measured one (two NodePorts: the probe server and
//! iperf3) in the middle of 9,999 others with one TCP port each, every fourth of them a
//! NodePort (2,500, what the default NodePort range holds), the rest ClusterIP. The
//! same set is the agent's manifest and the iptables ruleset.
//!
//! The client reuses TIME_WAIT ports (`tcp_tw_reuse`), as a CRR round opens more
//! connections to one address than the ephemeral range holds. A side is torn down only
//! once the pod's connections have finished closing (else a pod socket left in
//! LAST-ACK with the client's address and port makes the next side's reuse of that
//! port cost a SYN retransmit). A failed connection is reported and its wait counted
//! in the figure; more than 1% failures abort. Each round line also shows the client's
//! SYN retransmits and, for ours, the CPU the agent used while traffic ran.
//!
//! Ours runs CRR four times per round, rotating the order: as deployed, with the data
//! plane's traffic statistics (`proxyctl list --stats`) counting; with them switched
//! off in its pinned `STATS` (see `counting`); with the monitor's leases held in its
//! pinned `MONITOR` and nobody reading, so that every new flow checks the lease, finds
//! it held and tries the ring, which is full after its first events (each attempt then
//! counted as `monitor_lost`); and with `proxyctl monitor --type trace` printing every
//! new flow. The notes per scale give what each costs in new connections/s. With no
//! listener a flow pays only the lease check, a part of the held-lease run's work:
//! that run bounds the idle monitor's cost.

use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ::tests::{
    Agent, BpfFs, Cgroup, ChildGuard, ManifestDir, Netns, NodesTopology, Pod, ProbeReply,
    install_iptables, probe_bin, spawn_guarded, tool, try_run,
};
use anyhow::{Context, Result, bail};

use super::{field, median, spread};

mod services;
use services::kube_proxy_rules;
pub(super) use services::service_set;

/// Rounds per scale: each of the six orders of the three sides, twice.
const ROUNDS: usize = 12;
/// iperf3 seconds per round.
const IPERF_SECS: &str = "2";
/// CRR milliseconds per round.
const CRR_MS: &str = "1500";
/// Services besides the measured one at the large scale.
pub(super) const OTHER_SERVICES: usize = 9_999;
/// The measured service's ports (pod side) and NodePorts.
pub(super) const HTTP_PORT: u16 = 8080;
pub(super) const IPERF_PORT: u16 = 5201;
pub(super) const HTTP_NODEPORT: u16 = 30_080;
pub(super) const IPERF_NODEPORT: u16 = 30_201;
const AGENT_FLAGS: &[&str] = &[
    "--nodeport-addresses",
    "192.0.2.0/24",
    "--pod-interfaces",
    "cbr0",
];
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Direct,
    Ours,
    Iptables,
}

const SIDES: [Side; 3] = [Side::Direct, Side::Ours, Side::Iptables];
/// The six orders of the three sides (indices into [`SIDES`]).
const ORDERS: [[usize; 3]; 6] = [
    [0, 1, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
    [0, 2, 1],
    [1, 0, 2],
];

/// How ours runs CRR (see the module's doc), in the order of [`OURS`].
#[derive(Clone, Copy)]
enum Ours {
    /// As deployed: the statistics count.
    Counting,
    NotCounting,
    /// Counting, with the monitor's leases held and no reader.
    LeaseHeld,
    /// Counting, and `proxyctl monitor --type trace` listening.
    Traced,
}

const OURS: [Ours; 4] = [
    Ours::Counting,
    Ours::NotCounting,
    Ours::LeaseHeld,
    Ours::Traced,
];

/// New connections/s of ours' other runs, per round.
#[derive(Default)]
struct Variants {
    stats_off: Vec<f64>,
    lease_held: Vec<f64>,
    traced: Vec<f64>,
}

/// Medians of one side: bits/s and connections/s.
#[derive(Clone, Copy)]
struct Figures {
    gbps: f64,
    crr: f64,
}

pub(super) struct Env<'a> {
    pub(super) topo: &'a NodesTopology,
    pub(super) pod: &'a Pod,
    pub(super) dir: ManifestDir,
    pub(super) bpffs: BpfFs,
    pub(super) cgroup: Cgroup,
    /// The pod's probe server; it logs every connection that ends in an error.
    pub(super) server: ChildGuard,
}

/// Runs the benchmark and prints its table.
pub fn run() -> Result<()> {
    super::release_binaries()?;
    for t in ["iperf3", "iptables-restore", "nft", "conntrack"] {
        if !tool(t).is_absolute() {
            bail!("{t} not found (run `cargo xtask setup`)");
        }
    }

    let started = Instant::now();
    let topo = NodesTopology::new("bnp", 1);
    let node = topo.node_a();
    let pod = &node.pods[0];
    // The direct path: the client routes the pod range via node-a (harmless for the
    // other sides, which address node-a itself).
    topo.route_client_via("10.244.0.0/16", node);
    // Lets connect() reuse TIME_WAIT ports: a CRR round opens thousands of connections
    // to one address and port, more than the ephemeral range holds over several rounds.
    topo.client.sysctl("net.ipv4.tcp_tw_reuse", "1");
    let _iperf_server = spawn_guarded(
        &pod.netns,
        None,
        Command::new(tool("iperf3")).args(["-s", "-p", &IPERF_PORT.to_string()]),
    );
    let env = Env {
        topo: &topo,
        pod,
        dir: ManifestDir::new("bnp"),
        bpffs: BpfFs::new("bnp"),
        cgroup: Cgroup::new("bnp"),
        server: pod.serve(&[HTTP_PORT], &[]),
    };
    clear_node(&node.netns)?;
    // iperf3 needs a moment to listen; this also warms the path up.
    wait_iperf(&env, &pod.ipv4.to_string(), IPERF_PORT)?;

    let mut table = String::new();
    let mut notes = String::new();
    let _ = writeln!(
        table,
        "{:>8}  {:<20} {:>9} {:>9} {:>9} {:>7} {:>9}",
        "services", "metric", "direct", "ours", "iptables", "ours/d", "ipt/d"
    );
    for services in [1, OTHER_SERVICES + 1] {
        let svcs = service_set(pod.ipv4, services - 1);
        let yaml: String = svcs.iter().map(|s| format!("---\n{}", s.yaml())).collect();
        env.dir.write("services.yaml", &yaml);
        let rules = kube_proxy_rules(&svcs);
        println!(
            "nodeport: {services} services ({} NodePorts; {} iptables rules)",
            svcs.iter()
                .flat_map(|s| &s.ports)
                .filter(|p| p.3.is_some())
                .count(),
            rules.lines().filter(|l| l.starts_with("-A ")).count()
        );
        let mut variants = Variants::default();
        let sides = measure(&env, services, &rules, &mut variants)?;
        let failed: Vec<String> = sides
            .iter()
            .zip(["direct", "ours", "iptables"])
            .filter(|((_, errs, _), _)| *errs > 0)
            .map(|((_, errs, conns), name)| format!("{name} {errs} of {conns}"))
            .collect();
        if !failed.is_empty() {
            let _ = writeln!(
                notes,
                "{services} services: failed connections (counted in the time): {}",
                failed.join(", ")
            );
        }
        let [d, o, i] = sides.map(|(f, _, _)| f);
        let rows = [
            ("throughput (Gbit/s)", d.gbps, o.gbps, i.gbps),
            ("new connections/s", d.crr, o.crr, i.crr),
        ];
        let off = median(&mut variants.stats_off);
        let held = median(&mut variants.lease_held);
        let traced = median(&mut variants.traced);
        let cost = |with: f64, without: f64| 100.0 * (without - with) / without;
        let _ = writeln!(
            notes,
            "{services} services, new connections/s: with the statistics {:.0}, without \
             {off:.0}: they cost {:+.1}%; with a monitor lease held and no reader {held:.0}: \
             {:+.1}%, which bounds the idle monitor; with proxyctl monitor --type trace \
             printing every flow {traced:.0}: {:+.1}%",
            o.crr,
            cost(o.crr, off),
            cost(held, o.crr),
            cost(traced, o.crr)
        );
        for (metric, d, o, i) in rows {
            let prec = usize::from(metric.starts_with("throughput")) * 2;
            let _ = writeln!(
                table,
                "{services:>8}  {metric:<20} {d:>9.prec$} {o:>9.prec$} {i:>9.prec$} {:>7.3} {:>9.3}",
                o / d,
                i / d
            );
        }
    }
    println!(
        "\nnodeport: external client -> node-a NodePort -> pod behind node-a, vs straight to \
         the pod's IP (d); medians of {ROUNDS} rounds, {:.0} s in all\n{table}{notes}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Rounds over the three sides at one scale: the medians of each side, and its failed
/// and total connections.
fn measure(
    env: &Env<'_>,
    services: usize,
    rules: &str,
    variants: &mut Variants,
) -> Result<[(Figures, u64, u64); 3]> {
    let node = env.topo.node_a();
    let mut samples: [(Vec<f64>, Vec<f64>, u64, u64); 3] = Default::default();
    for round in 0..ROUNDS {
        let t = Instant::now();
        let mut line = format!("  round {:>2}:", round + 1);
        for &s in &ORDERS[round % ORDERS.len()] {
            let side = SIDES[s];
            wait_unserved(env)?;
            let server_before = server_errors(env);
            let mut agent_cpu = None;
            let (gbps, crr) = match side {
                Side::Direct => {
                    let to = env.pod.ipv4.to_string();
                    let r = (iperf(env, &to, IPERF_PORT)?, crr(env, &to, HTTP_PORT)?);
                    // Nothing programmed means not even netfilter conntrack ran.
                    let tracked = conntrack_count(&node.netns)?;
                    if tracked > 0 {
                        bail!("direct round: node-a tracked {tracked} connections");
                    }
                    r
                }
                Side::Ours => {
                    let agent = start_agent(env, services)?;
                    let to = node.ipv4.to_string();
                    let cpu_before = netns_cpu_ms(&node.netns);
                    let gbps = iperf(env, &to, IPERF_NODEPORT)?;
                    let mut runs: [Option<Crr>; 4] = Default::default();
                    for i in 0..OURS.len() {
                        let v = (round + i) % OURS.len();
                        runs[v] = Some(ours_crr(env, &agent, &to, OURS[v], &mut line)?);
                    }
                    let [Some(on), Some(off), Some(held), Some(traced)] = runs else {
                        bail!("a CRR run of ours is missing");
                    };
                    variants.stats_off.push(off.rate);
                    variants.lease_held.push(held.rate);
                    variants.traced.push(traced.rate);
                    let r = (gbps, on);
                    agent_cpu = cpu_before
                        .zip(netns_cpu_ms(&node.netns))
                        .map(|(b, a)| a.saturating_sub(b));
                    wait_pod_quiet(env);
                    stop_agent(agent)?;
                    r
                }
                Side::Iptables => {
                    install_iptables(&node.netns, rules);
                    let to = node.ipv4.to_string();
                    wait_served(env, &to)?;
                    let r = (
                        iperf(env, &to, IPERF_NODEPORT)?,
                        crr(env, &to, HTTP_NODEPORT)?,
                    );
                    wait_pod_quiet(env);
                    clear_node(&node.netns)?;
                    r
                }
            };
            let acc = &mut samples[s];
            acc.0.push(gbps);
            acc.1.push(crr.rate);
            acc.2 += crr.errs;
            acc.3 += crr.conns;
            let name = ["direct", "ours", "iptables"][s];
            let _ = write!(line, "  {name} {gbps:.2} Gbit/s {:.0} conn/s", crr.rate);
            if crr.errs > 0 {
                let _ = write!(line, " ({} failed: {})", crr.errs, crr.first_err);
            }
            if let Some(ms) = agent_cpu {
                let _ = write!(line, " (agent {ms} ms CPU)");
            }
            if crr.syn_retrans > 0 {
                let _ = write!(line, " ({} SYN retransmits)", crr.syn_retrans);
            }
            let server = server_errors(env) - server_before;
            if server > 0 {
                let _ = write!(line, " (server: {server} connection errors)");
            }
            line.push(';');
        }
        println!("{line}  ({:.1} s)", t.elapsed().as_secs_f64());
    }
    for ((g, c, _, _), name) in samples.iter().zip(["direct", "ours", "iptables"]) {
        println!(
            "  spread over {ROUNDS} rounds, {name}: {} Gbit/s, {} conn/s",
            spread(g, 2),
            spread(c, 0)
        );
    }
    Ok(samples.map(|(mut g, mut c, errs, conns)| {
        let fig = Figures {
            gbps: median(&mut g),
            crr: median(&mut c),
        };
        (fig, errs, conns)
    }))
}

impl Ours {
    /// How a round line names the run; `None` for the deployed one, the table's.
    fn label(self) -> Option<&'static str> {
        match self {
            Ours::Counting => None,
            Ours::NotCounting => Some("stats off"),
            Ours::LeaseHeld => Some("lease held"),
            Ours::Traced => Some("traced"),
        }
    }
}

/// One CRR run of ours as `mode` says; the runs besides the deployed one are noted in
/// `line`.
fn ours_crr(env: &Env<'_>, agent: &Agent, to: &str, mode: Ours, line: &mut String) -> Result<Crr> {
    let maps_dir = agent.bpffs.join("maps");
    super::counting::set(&maps_dir, !matches!(mode, Ours::NotCounting))?;
    let (r, detail) = match mode {
        Ours::Counting | Ours::NotCounting => (crr(env, to, HTTP_NODEPORT)?, String::new()),
        Ours::LeaseHeld => {
            super::counting::hold_monitor_leases(&maps_dir)?;
            let lost_before = agent.counter("monitor_lost").unwrap_or(0);
            let r = crr(env, to, HTTP_NODEPORT);
            super::counting::end_monitor_leases(&maps_dir)?;
            let r = r?;
            let lost = agent.counter("monitor_lost").unwrap_or(0) - lost_before;
            if lost == 0 {
                bail!(
                    "with the monitor's leases held, none of {} connections tried the ring",
                    r.conns
                );
            }
            (r, format!(", {lost} events lost"))
        }
        Ours::Traced => {
            let mut monitor = agent.monitor(&["--type", "trace", "-o", "json"]);
            let r = crr(env, to, HTTP_NODEPORT);
            let events = monitor.drain_lines(Duration::from_millis(300)).len();
            drop(monitor);
            super::counting::end_monitor_leases(&maps_dir)?;
            let r = r?;
            if events == 0 {
                bail!(
                    "proxyctl monitor --type trace saw none of {} connections",
                    r.conns
                );
            }
            (r, format!(", {events} events"))
        }
    };
    if let Some(label) = mode.label() {
        let _ = write!(line, "  ours, {label}: {:.0} conn/s{detail};", r.rate);
    }
    Ok(r)
}

/// Waits (at most 2 s) until the pod's last connections have finished closing, so that
/// a side is not torn down under a connection it still translates. (A pod socket left
/// in LAST-ACK when the translation goes away keeps the client's address and port,
/// which the next side may reuse: its SYN is then answered with an ACK and retried a
/// second later.)
fn wait_pod_quiet(env: &Env<'_>) {
    let ss = tool("ss").to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let out =
            env.pod
                .netns
                .exec(&[&ss, "-Htan", "exclude", "listening", "exclude", "time-wait"]);
        if out.stdout.is_empty() || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU time (user + system, ms) used so far by the processes in `netns` (in node-a:
/// the agent alone); `None` if there is no process to read.
fn netns_cpu_ms(netns: &Netns) -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    let ticks: Vec<u64> = netns
        .pids()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces): utime is the 12th.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .collect();
    (!ticks.is_empty()).then(|| ticks.iter().sum::<u64>() * 1000 / hz)
}

/// Connections that ended in an error at the pod's probe server so far.
fn server_errors(env: &Env<'_>) -> usize {
    env.server
        .stderr()
        .lines()
        .filter(|l| l.contains("connection from"))
        .count()
}

/// The agent in node-a, serving the NodePort, with every service in its maps.
pub(super) fn start_agent(env: &Env<'_>, services: usize) -> Result<Agent> {
    let node = env.topo.node_a();
    let agent = Agent::start_in(
        &node.netns,
        env.bpffs.path(),
        env.cgroup.path(),
        env.dir.path(),
        AGENT_FLAGS,
    );
    let synced = agent.sync_lines().pop().unwrap_or_default();
    let programmed = sync_field(&synced, "services=");
    if programmed < services {
        bail!(
            "the agent's first sync held {programmed} services, not {services}:\n{}",
            agent.log()
        );
    }
    let listed = agent.programmed();
    if listed.len() != programmed {
        bail!(
            "proxyctl lists {} frontends, the agent synced {programmed}",
            listed.len()
        );
    }
    for (node_port, pod_port) in [(HTTP_NODEPORT, HTTP_PORT), (IPERF_NODEPORT, IPERF_PORT)] {
        let frontend = format!("*:{node_port}/TCP (external)");
        let backend = env.pod.addr_v4(pod_port);
        if !listed
            .iter()
            .any(|v| v.frontend == frontend && v.backends == [backend])
        {
            bail!("proxyctl does not list {frontend} -> {backend}");
        }
    }
    wait_served(env, &node.ipv4.to_string()).with_context(|| agent.log())?;
    Ok(agent)
}

/// SIGTERM, then `proxy-agent --cleanup` on its pins (which detaches its tc programs).
pub(super) fn stop_agent(agent: Agent) -> Result<()> {
    let pins = agent.bpffs.clone();
    agent.stop();
    let out = tests::run_cleanup(&pins);
    if !out.status.success() || pins.exists() {
        bail!(
            "proxy-agent --cleanup --bpffs {}: {}",
            pins.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Deletes node-a's whole nftables ruleset (the nat table of `iptables-nft`, so that
/// netfilter conntrack stops running there too) and its conntrack table.
pub(super) fn clear_node(netns: &Netns) -> Result<()> {
    netns.exec(&[&tool("nft").to_string_lossy(), "flush", "ruleset"]);
    netns.exec(&[&tool("conntrack").to_string_lossy(), "-F"]);
    let left = netns.exec(&[&tool("nft").to_string_lossy(), "list", "ruleset"]);
    if !left.stdout.is_empty() {
        bail!(
            "node-a still has nftables rules:\n{}",
            String::from_utf8_lossy(&left.stdout)
        );
    }
    Ok(())
}

fn conntrack_count(netns: &Netns) -> Result<u64> {
    let out = netns.exec(&[&tool("conntrack").to_string_lossy(), "-C"]);
    let s = String::from_utf8_lossy(&out.stdout);
    s.trim()
        .parse()
        .with_context(|| format!("conntrack -C printed {s:?}"))
}

/// Waits until nothing answers on the NodePort (only one side may be active); fails
/// after 5 s. (Removing a link's pin detaches the program only once the kernel has
/// dropped the link, a moment later.)
fn wait_unserved(env: &Env<'_>) -> Result<()> {
    let node = env.topo.node_a();
    let to = SocketAddrV4::new(node.ipv4, HTTP_NODEPORT).to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = client_probe(env, &["tcp", "--to", &to, "--timeout-ms", "300"])?;
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if ProbeReply::parse(&line).is_some_and(|r| r.error().is_some()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let bpftool = tool("bpftool").to_string_lossy().into_owned();
            let net = node.netns.try_exec(&[&bpftool, "net", "show"]);
            let nft = node
                .netns
                .try_exec(&[&tool("nft").to_string_lossy(), "list", "ruleset"]);
            bail!(
                "{to} is still served 5 s after the previous side was torn down: {line}\n\
                 bpftool net show:\n{}\nnft list ruleset:\n{}",
                String::from_utf8_lossy(&net.stdout),
                String::from_utf8_lossy(&nft.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `addr`'s HTTP NodePort answers with the pod's name (the agent may still
/// be attaching its tc programs after its first sync).
fn wait_served(env: &Env<'_>, addr: &str) -> Result<()> {
    let to = format!("{addr}:{HTTP_NODEPORT}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = client_probe(env, &["tcp", "--to", &to, "--timeout-ms", "500"])?;
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if ProbeReply::parse(&line).and_then(|r| r.name().map(str::to_owned))
            == Some(env.pod.name.clone())
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{to} is not served by {} after 10 s: {line}\n{}",
                env.pod.name,
                diagnostics(env)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What node-a, the pod and the client hold, for error messages (each part cut at
/// 4,000 characters).
fn diagnostics(env: &Env<'_>) -> String {
    let node = &env.topo.node_a().netns;
    let pod = &env.pod.netns;
    let client = &env.topo.client;
    let t = |name: &str| tool(name).to_string_lossy().into_owned();
    let (conntrack, iptables_save, ss, bpftool) =
        (t("conntrack"), t("iptables-save"), t("ss"), t("bpftool"));
    let parts: [(&Netns, &str, Vec<&str>); 5] = [
        (node, "node-a", vec![&conntrack, "-L"]),
        (node, "node-a", vec![&iptables_save, "-t", "nat", "-c"]),
        (node, "node-a", vec![&bpftool, "net", "show"]),
        (pod, "pod", vec![&ss, "-tan", "exclude", "time-wait"]),
        (client, "client", vec![&ss, "-tan", "exclude", "time-wait"]),
    ];
    let mut d = String::new();
    for (ns, name, args) in parts {
        let out = ns.try_exec(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cut: String = text.chars().take(4000).collect();
        let _ = writeln!(d, "--- {} ({name}):\n{cut}", args.join(" "));
    }
    d
}

pub(super) fn client_probe(env: &Env<'_>, args: &[&str]) -> Result<Output> {
    try_run(
        &env.topo.client,
        None,
        Command::new(probe_bin()).args(args),
        RUN_TIMEOUT,
    )
    .map_err(anyhow::Error::from)
}

/// One CRR round.
pub(super) struct Crr {
    /// Connections per second (a failed connection's wait counts in the time).
    pub(super) rate: f64,
    pub(super) conns: u64,
    pub(super) errs: u64,
    /// The first failure, as the probe reported it.
    first_err: String,
    /// SYNs the client had to send again (each costs a 1 s wait).
    syn_retrans: u64,
}

/// New connections per second (`probe crr`) to `addr:port`. A connection that fails
/// (the machine is noisy: a lost SYN can exceed the 2 s connect timeout) is reported,
/// and its wait is in the figure; more than 1% failures are an error.
pub(super) fn crr(env: &Env<'_>, addr: &str, port: u16) -> Result<Crr> {
    let to = format!("{addr}:{port}");
    let syn_before = syn_retransmits(&env.topo.client)?;
    let out = client_probe(env, &["crr", "--to", &to, "--duration-ms", CRR_MS])?;
    let syn_retrans = syn_retransmits(&env.topo.client)? - syn_before;
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(str::to_owned)
        .unwrap_or_default();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() {
        bail!("probe crr {to}: {line} {stderr}");
    }
    // Counts, printed as integers.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "counts, printed as integers"
    )]
    let (conns, errs) = (field(&line, "conns")? as u64, field(&line, "errs")? as u64);
    if errs * 100 > conns {
        bail!("{errs} failed connections to {to}: {line} {stderr}");
    }
    Ok(Crr {
        rate: field(&line, "conns")? / field(&line, "secs")?,
        conns,
        errs,
        first_err: stderr
            .strip_prefix("probe crr: first error: ")
            .unwrap_or(&stderr)
            .to_owned(),
        syn_retrans,
    })
}

/// `TcpExt: TCPSynRetrans` of the namespace `netns`.
fn syn_retransmits(netns: &Netns) -> Result<u64> {
    let text = netns.run(|| std::fs::read_to_string("/proc/thread-self/net/netstat"))?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    if let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if n == "TCPSynRetrans" {
                return Ok(v.parse()?);
            }
        }
    }
    bail!("no TcpExt TCPSynRetrans in /proc/net/netstat")
}

/// iperf3 throughput to `addr:port` in Gbit/s (what the server received).
pub(super) fn iperf(env: &Env<'_>, addr: &str, port: u16) -> Result<f64> {
    let out = try_run(
        &env.topo.client,
        None,
        Command::new(tool("iperf3")).args([
            "-c",
            addr,
            "-p",
            &port.to_string(),
            "-t",
            IPERF_SECS,
            "-J",
        ]),
        RUN_TIMEOUT,
    )?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 to {addr}:{port} printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = json.get("error") {
        bail!("iperf3 to {addr}:{port}: {e}");
    }
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 to {addr}:{port}: no end.sum_received in {json}"))?;
    Ok(bps / 1e9)
}

/// Retries iperf3 until the server answers (it needs a moment to listen).
pub(super) fn wait_iperf(env: &Env<'_>, addr: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match iperf(env, addr, port) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn sync_field(line: &str, key: &str) -> usize {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
