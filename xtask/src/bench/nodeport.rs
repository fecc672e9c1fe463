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
//! 5 minutes in all). Everything runs release builds.
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
//! Ours runs CRR twice per round, with the data plane's traffic statistics (`proxyctl
//! list --stats`) counting and not (switched in its pinned `STATS`, see `counting`),
//! in alternating order: the table's last line per scale is their cost in new
//! connections/s.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ::tests::{
    Agent, BpfFs, Cgroup, ChildGuard, ManifestDir, Netns, NodesTopology, Pod, ProbeReply,
    ServiceSpec, install_iptables, probe_bin, spawn_guarded, tool, try_run,
};
use anyhow::{Context, Result, bail};

use super::{field, median, spread};

/// Rounds per scale: each of the six orders of the three sides, twice.
const ROUNDS: usize = 12;
/// iperf3 seconds per round.
const IPERF_SECS: &str = "2";
/// CRR milliseconds per round.
const CRR_MS: &str = "1500";
/// Services besides the measured one at the large scale.
pub(super) const OTHER_SERVICES: usize = 9_999;
/// Every `NODEPORT_EVERY`-th other service is a NodePort (the rest are ClusterIP): as
/// many as fit in the default NodePort range.
const NODEPORT_EVERY: usize = 4;
/// First NodePort of the other services.
const OTHER_NODEPORT_BASE: u16 = 30_202;
/// The measured service's ports (pod side) and NodePorts.
pub(super) const HTTP_PORT: u16 = 8080;
pub(super) const IPERF_PORT: u16 = 5201;
pub(super) const HTTP_NODEPORT: u16 = 30_080;
pub(super) const IPERF_NODEPORT: u16 = 30_201;
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLUSTER_CIDR: &str = "10.244.0.0/16";
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

/// Medians of one side: bits/s and connections/s.
#[derive(Clone, Copy)]
struct Figures {
    gbps: f64,
    crr: f64,
}

/// One service of the programmed set, for both the manifest and the iptables rules.
pub(super) struct Svc {
    /// Chain-name stem (`BENCH`, `S00042`).
    pub(super) id: String,
    name: String,
    cluster_ip: Ipv4Addr,
    /// (name, port, target port, node port).
    pub(super) ports: Vec<(&'static str, u16, u16, Option<u16>)>,
    endpoint: Ipv4Addr,
    node: &'static str,
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
        let mut stats_off = Vec::new();
        let sides = measure(&env, services, &rules, &mut stats_off)?;
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
        let off = median(&mut stats_off);
        let _ = writeln!(
            notes,
            "{services} services: new connections/s with the statistics {:.0}, without {off:.0}: \
             they cost {:+.1}%",
            o.crr,
            100.0 * (off - o.crr) / off
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
    stats_off: &mut Vec<f64>,
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
                    // Statistics on and off, in alternating order.
                    let maps_dir = agent.bpffs.join("maps");
                    let on_first = round % 2 == 0;
                    super::counting::set(&maps_dir, on_first)?;
                    let a = crr(env, &to, HTTP_NODEPORT)?;
                    super::counting::set(&maps_dir, !on_first)?;
                    let b = crr(env, &to, HTTP_NODEPORT)?;
                    let (on, off) = if on_first { (a, b) } else { (b, a) };
                    stats_off.push(off.rate);
                    let _ = write!(line, "  ours, stats off: {:.0} conn/s;", off.rate);
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

/// The measured service (two NodePorts: the probe server and iperf3) amid `others`
/// other services, placed in the middle (kube-proxy writes services in map order, so on
/// average a service's rules sit halfway down its chains).
pub(super) fn service_set(pod: Ipv4Addr, others: usize) -> Vec<Svc> {
    let mut svcs: Vec<Svc> = (0..others)
        .map(|i| {
            let (a, b) = (i / 250, i % 250 + 1);
            let node_port = (i % NODEPORT_EVERY == 0).then(|| {
                OTHER_NODEPORT_BASE + u16::try_from(i / NODEPORT_EVERY).expect("fits the range")
            });
            Svc {
                id: format!("S{i:05}"),
                name: format!("s{i}"),
                cluster_ip: Ipv4Addr::new(10, 97, a as u8, b as u8),
                ports: vec![("http", 80, 8080, node_port)],
                endpoint: Ipv4Addr::new(10, 245, a as u8, b as u8),
                node: "node-b",
            }
        })
        .collect();
    let bench = Svc {
        id: "BENCH".into(),
        name: "bench".into(),
        cluster_ip: CLUSTER_IP,
        ports: vec![
            ("http", 80, HTTP_PORT, Some(HTTP_NODEPORT)),
            ("iperf", IPERF_PORT, IPERF_PORT, Some(IPERF_NODEPORT)),
        ],
        endpoint: pod,
        node: "node-a",
    };
    svcs.insert(others / 2, bench);
    svcs
}

impl Svc {
    pub(super) fn yaml(&self) -> String {
        let np = self.ports.iter().any(|p| p.3.is_some());
        let mut spec = ServiceSpec::new(&self.name, if np { "NodePort" } else { "ClusterIP" })
            .cluster_ip(IpAddr::V4(self.cluster_ip))
            .endpoint(IpAddr::V4(self.endpoint), self.node);
        for &(name, port, target, node_port) in &self.ports {
            spec = spec.port(name, port, "TCP", target, node_port);
        }
        spec.yaml()
    }
}

/// kube-proxy's iptables-mode nat table for `svcs` (`externalTrafficPolicy: Cluster`,
/// `--cluster-cidr` set, one endpoint each), in `iptables-restore` format. The rule
/// shapes are kube-proxy's (as in `tests::kube_proxy_nodeport_rules`); chain names are
/// readable stems instead of hashes.
fn kube_proxy_rules(svcs: &[Svc]) -> String {
    let mut chains = String::new();
    let mut services = String::new();
    let mut nodeports = String::new();
    let mut rest = String::new();
    for s in svcs {
        for &(port_name, port, target, node_port) in &s.ports {
            let stem = format!("{}-{}", s.id, port_name.to_ascii_uppercase());
            let (svc, ext, sep) = (
                format!("KUBE-SVC-{stem}"),
                format!("KUBE-EXT-{stem}"),
                format!("KUBE-SEP-{stem}-E0"),
            );
            let name = format!("test/{}:{port_name}", s.name);
            let cip = s.cluster_ip;
            let be = SocketAddrV4::new(s.endpoint, target);
            let _ = writeln!(chains, ":{svc} - [0:0]\n:{sep} - [0:0]");
            let _ = writeln!(
                services,
                "-A KUBE-SERVICES -d {cip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {port} -j {svc}"
            );
            if let Some(np) = node_port {
                let _ = writeln!(chains, ":{ext} - [0:0]");
                let _ = writeln!(
                    nodeports,
                    "-A KUBE-NODEPORTS -p tcp -m comment --comment \"{name}\" -m tcp --dport {np} -j {ext}"
                );
                let _ = writeln!(
                    rest,
                    "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ\n\
                     -A {ext} -j {svc}"
                );
            }
            let _ = writeln!(
                rest,
                "-A {svc} ! -s {CLUSTER_CIDR} -d {cip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {port} -j KUBE-MARK-MASQ\n\
                 -A {svc} -m comment --comment \"{name} -> {be}\" -j {sep}\n\
                 -A {sep} -s {}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ\n\
                 -A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {be}",
                s.endpoint
            );
        }
    }
    let mut r = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    r.push_str(&chains);
    r.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    );
    r.push_str(&nodeports);
    r.push_str(&rest);
    r.push_str(&services);
    r.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         COMMIT\n",
    );
    r
}

#[cfg(test)]
mod rules {
    use super::*;

    #[test]
    fn a_nodeport_connection_walks_every_service_rule_first() {
        let svcs = service_set(Ipv4Addr::new(10, 244, 1, 11), 9);
        let r = kube_proxy_rules(&svcs);
        let services: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES "))
            .collect();
        // 9 one-port services, the bench service's two ports, then the NodePort jump.
        assert_eq!(services.len(), 12, "{r}");
        assert!(services[11].ends_with("--dst-type LOCAL -j KUBE-NODEPORTS"));
        assert!(r.contains(
            "-A KUBE-NODEPORTS -p tcp -m comment --comment \"test/bench:http\" -m tcp --dport 30080 -j KUBE-EXT-BENCH-HTTP"
        ));
        assert!(r.contains("-j DNAT --to-destination 10.244.1.11:5201"));
        // s0, s4, s8 are NodePorts, in order around the bench service.
        let nodeports: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with("-A KUBE-NODEPORTS "))
            .collect();
        assert_eq!(nodeports.len(), 5);
        assert!(nodeports[0].contains("--dport 30202"));
        assert!(nodeports[4].contains("--dport 30204"));
        assert!(r.lines().all(|l| l.len() < 400));
    }

    #[test]
    fn other_nodeports_stay_in_the_default_range() {
        let svcs = service_set(Ipv4Addr::new(10, 244, 1, 11), OTHER_SERVICES);
        let mut ports: Vec<u16> = svcs
            .iter()
            .flat_map(|s| &s.ports)
            .filter_map(|p| p.3)
            .collect();
        let n = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), n, "NodePorts collide");
        assert!(ports.iter().all(|p| (30_000..=32_767).contains(p)));
        assert_eq!(svcs.len(), OTHER_SERVICES + 1);
    }
}
