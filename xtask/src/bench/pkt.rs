//! `cargo xtask bench pkt`: what one packet costs in our tc programs, as the kernel's
//! BPF run-time statistics count it (`run_time_ns / run_cnt` of each program), against
//! the floor: `tc_floor`, a program that does nothing, attached first on every hook
//! where ours run (TCX, so each packet runs the floor, then ours) and measured the same
//! way in the same traffic. The floor is what any tc program costs on this machine
//! (the statistics' own clock reads, the call); `ours - floor` is our work.
//!
//! The setting is `bench nodeport`'s: an external client reaches a NodePort of node-a
//! whose backend is a pod behind node-a's bridge, with 10,000 services programmed.
//! node-a's hooks: `eth0` ingress (client to pod: `tc_ingress`), `cbr0` ingress (pod to
//! client: `tc_ingress`, the same program) and `eth0` egress (`tc_egress`, which sees
//! the replies `tc_ingress` redirected out). Three kinds of traffic, in turn in each
//! round:
//!
//! - **bulk**: one iperf3 stream (2 s): GRO/GSO packets of an established
//!   flow one way, ACKs the other;
//! - **crr**: `probe crr` (1.5 s): connect, greeting, close, as fast as it goes; every
//!   packet of a short connection, the first ones included;
//! - **syn**: `SYNS` TCP SYNs, each from a source port never used before, to a NodePort
//!   whose pod drops them: every packet opens a flow, so this is the first packet's
//!   cost alone (only `eth0` ingress runs).
//!
//! Each is measured at an empty connection table (the bench's own flows only) and at a
//! full one (filled with idle, unexpired flows up to `FILL_LEFT` free entries, room for
//! the flows the bench opens), and each twice per round: with the traffic statistics
//! (`proxyctl list --stats`) counting and not, switched in the agent's pinned `STATS`
//! (see `counting`), in alternating order; the last lines give their cost. Figures are
//! medians over `ROUNDS` rounds.
//!
//! Programs are picked by the hooks this bench made (a TCX query of node-a's
//! interfaces), not by name: other tests may have programs of the same names loaded.
//! The statistics are switched on with `BPF_ENABLE_STATS` only while the rounds run:
//! the kernel counts that as a reference to `kernel.bpf_stats_enabled` held by our file
//! descriptor, so the previous setting is back once it is closed, also if this process
//! fails or is killed.
//!
//! For profiling (e.g. under `perf record`), `KPT_PKT_TRAFFIC=syn` (or `bulk`, `crr`,
//! comma-separated) runs only those kinds of traffic and `KPT_PKT_ROUNDS=N` sets the
//! rounds.
//!
//! `KPT_PKT_AGENT=/path/to/proxy-agent` measures another build of the agent (e.g. of an
//! older commit, for a comparison in the same session; its maps must be laid out as
//! this build's are).
//!
//! The floor's object: `tc_floor` is loaded from the very object the release agent
//! embeds, the file the agent's build script left in its `OUT_DIR` (cargo names that
//! directory in its JSON messages). xtask itself stays a plain user-space crate that
//! builds before `cargo xtask setup` has installed bpf-linker.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ::tests::packet::{Segment, inject};
use ::tests::{BpfFs, Cgroup, ManifestDir, Netns, NodesTopology, spawn_guarded, tool};
use anyhow::{Context, Result, bail};
use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use proxy_common::{Addr, CT_F_REPLY, CtEntry, CtKey, ct_state, maps, programs, proto};

use super::nodeport::{
    self, Env, HTTP_NODEPORT, HTTP_PORT, IPERF_NODEPORT, IPERF_PORT, OTHER_SERVICES,
};
use super::{median, spread};
use crate::{cargo, display, workspace_root};

/// Rounds per table state.
const ROUNDS: usize = 7;
/// SYNs per measurement of the `syn` traffic (two per round: statistics on and off).
const SYNS: u16 = 1_000;
/// The NodePort (and pod port) the SYNs go to; the pod drops them.
const SINK_PORT: u16 = 9;
const SINK_NODEPORT: u16 = 30_009;
/// First source port of the SYNs; each is used once (below the client's ephemeral
/// range, so no socket of the client's ever has it).
const SYN_SPORT_BASE: u16 = 1_024;
/// Entries the full table leaves free: room for the flows the bench itself opens
/// (CRR reuses at most the client's ephemeral range of ports, two entries each, and
/// every SYN leaves two entries for the opening timeout).
const FILL_LEFT: u32 = 90_000;

/// One hook of node-a the programs run on.
#[derive(Clone, Copy)]
struct Hook {
    iface: &'static str,
    kind: TcAttachType,
    /// Ours there.
    ours: &'static str,
}

impl Hook {
    fn label(&self) -> String {
        let dir = match self.kind {
            TcAttachType::Ingress => "in",
            _ => "out",
        };
        format!("{} {dir}", self.iface)
    }
}

const HOOKS: [Hook; 3] = [
    Hook {
        iface: "eth0",
        kind: TcAttachType::Ingress,
        ours: programs::TC_INGRESS,
    },
    Hook {
        iface: NodesTopology::POD_BRIDGE,
        kind: TcAttachType::Ingress,
        ours: programs::TC_INGRESS,
    },
    Hook {
        iface: "eth0",
        kind: TcAttachType::Egress,
        ours: programs::TC_EGRESS,
    },
];

/// The traffic of a measurement.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Traffic {
    Bulk,
    Crr,
    Syn,
}

impl Traffic {
    const ALL: [Traffic; 3] = [Traffic::Bulk, Traffic::Crr, Traffic::Syn];

    /// Its name in `KPT_PKT_TRAFFIC`.
    fn key(self) -> &'static str {
        match self {
            Traffic::Bulk => "bulk",
            Traffic::Crr => "crr",
            Traffic::Syn => "syn",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Traffic::Bulk => "bulk TCP stream",
            Traffic::Crr => "CRR (new conns)",
            Traffic::Syn => "first packets",
        }
    }
}

/// Run time and run count of one program.
#[derive(Clone, Copy, Default, Debug)]
struct Stat {
    ns: u64,
    runs: u64,
}

/// The statistics of every program on the hooks: per hook, the ids in TCX order; per
/// id, its name and counters.
#[derive(Default)]
struct Snapshot {
    chains: Vec<Vec<u32>>,
    progs: BTreeMap<u32, (String, Stat)>,
}

/// The floor programs, one per hook (each loaded on its own, so each has its own
/// counters), attached first. Dropping this detaches and unloads them.
struct Floors {
    /// Program id per hook, in [`HOOKS`] order.
    ids: Vec<u32>,
    _objects: Vec<Ebpf>,
}

/// Runs the benchmark and prints its table.
pub fn run() -> Result<()> {
    super::release_binaries()?;
    let object = agent_object()?;
    if let Some(agent) = std::env::var_os("KPT_PKT_AGENT") {
        // SAFETY: single-threaded at this point; the harness reads it when spawning.
        unsafe { std::env::set_var("KPT_AGENT_BIN", &agent) };
        println!("pkt: measuring the agent {}", agent.to_string_lossy());
    }
    for t in ["iperf3", "nft"] {
        if !tool(t).is_absolute() {
            bail!("{t} not found (run `cargo xtask setup`)");
        }
    }
    let started = Instant::now();
    let topo = NodesTopology::new("bpk", 1);
    let node = topo.node_a();
    let pod = &node.pods[0];
    topo.client.sysctl("net.ipv4.tcp_tw_reuse", "1");
    let _iperf_server = spawn_guarded(
        &pod.netns,
        None,
        Command::new(tool("iperf3")).args(["-s", "-p", &IPERF_PORT.to_string()]),
    );
    // The pod drops the SYNs to the sink port without a word: no reply packet runs our
    // programs, so the `syn` traffic is first packets alone.
    let nft = tool("nft").to_string_lossy().into_owned();
    pod.netns.exec(&[&nft, "add table inet bench"]);
    pod.netns.exec(&[
        &nft,
        "add chain inet bench input { type filter hook input priority 0; }",
    ]);
    pod.netns.exec(&[
        &nft,
        &format!("add rule inet bench input tcp dport {SINK_PORT} drop"),
    ]);
    let env = Env {
        topo: &topo,
        pod,
        dir: ManifestDir::new("bpk"),
        bpffs: BpfFs::new("bpk"),
        cgroup: Cgroup::new("bpk"),
        server: pod.serve(&[HTTP_PORT], &[]),
    };
    nodeport::clear_node(&node.netns)?;
    let to = node.ipv4.to_string();

    let mut svcs = nodeport::service_set(pod.ipv4, OTHER_SERVICES);
    let bench = svcs
        .iter_mut()
        .find(|s| s.id == "BENCH")
        .context("no bench service in the set")?;
    bench
        .ports
        .push(("sink", SINK_PORT, SINK_PORT, Some(SINK_NODEPORT)));
    let yaml: String = svcs.iter().map(|s| format!("---\n{}", s.yaml())).collect();
    env.dir.write("services.yaml", &yaml);
    let services = svcs.len();
    println!("pkt: {services} services; starting the agent");
    let agent = nodeport::start_agent(&env, services)?;
    let maps_dir = agent.bpffs.join("maps");
    // iperf3 needs a moment to listen; this also warms the path up.
    nodeport::wait_iperf(&env, &to, IPERF_NODEPORT)?;
    let floors = attach_floors(&node.netns, &object, &maps_dir)?;
    let before = snapshot(&node.netns)?;
    check_chains(&before, &floors)?;
    println!(
        "pkt: tc_floor attached first on {}",
        HOOKS.map(|h| h.label()).join(", ")
    );

    let rounds = std::env::var("KPT_PKT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS);
    let traffics: Vec<Traffic> = match std::env::var("KPT_PKT_TRAFFIC") {
        Ok(list) => Traffic::ALL
            .into_iter()
            .filter(|t| list.split(',').any(|w| w == t.key()))
            .collect(),
        Err(_) => Traffic::ALL.to_vec(),
    };
    // Every SYN has a port of its own, below the client's ephemeral range.
    if traffics.contains(&Traffic::Syn)
        && usize::from(SYN_SPORT_BASE) + 4 * rounds * usize::from(SYNS) > 32_768
    {
        bail!("{rounds} rounds of SYNs need more distinct source ports than there are");
    }
    let mut sport = SYN_SPORT_BASE;
    let mut results = Vec::new();
    let mut notes = String::new();
    for full in [false, true] {
        let table = if full { "full" } else { "empty" };
        if full {
            let (n, max) = fill_conntrack(&maps_dir)?;
            let _ = writeln!(
                notes,
                "full table: {n} idle flow entries added, {max} entries in all"
            );
        }
        // Only for the rounds: closed again (and the previous setting back) on return.
        let stats = enable_stats()?;
        let mut samples = Samples::new();
        for round in 0..rounds {
            let mut line = format!("  {table} round {}:", round + 1);
            for (&traffic, on) in traffics.iter().flat_map(|t| {
                // Alternating which goes first, so neither always runs on a warmer path.
                let first = round % 2 == 0;
                [(t, first), (t, !first)]
            }) {
                super::counting::set(&maps_dir, on)?;
                let a = snapshot(&node.netns)?;
                let what = match traffic {
                    Traffic::Bulk => {
                        format!("{:.2} Gbit/s", nodeport::iperf(&env, &to, IPERF_NODEPORT)?)
                    }
                    Traffic::Crr => {
                        format!(
                            "{:.0} conn/s",
                            nodeport::crr(&env, &to, HTTP_NODEPORT)?.rate
                        )
                    }
                    Traffic::Syn => {
                        send_syns(&topo.client, node.ipv4, sport, SYNS);
                        sport += SYNS;
                        format!("{SYNS} SYNs")
                    }
                };
                let _ = write!(line, " {what} (stats {}):", if on { "on" } else { "off" });
                let b = snapshot(&node.netns)?;
                for (id, floor, ours) in per_program(&a, &b, &floors)? {
                    let (floor, ours) = (floor.per_run(), ours.per_run_and_count());
                    let _ = write!(line, " {} {:.0}/{floor:.0} ns", b.progs[&id].0, ours.0);
                    samples.entry((traffic, id, on)).or_default().push(Sample {
                        floor,
                        ours: ours.0,
                        runs: ours.1,
                    });
                }
                line.push(';');
            }
            println!("{line}");
        }
        drop(stats);
        super::counting::set(&maps_dir, true)?;
        for ((traffic, id, on), s) in samples {
            let name = before.progs.get(&id).map_or("?", |p| p.0.as_str());
            results.push(Row::of(table, traffic, name, on, &s));
        }
    }
    drop(floors);
    nodeport::stop_agent(agent)?;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<16} {:<11} {:<5} {:>9} {:>9} {:>9} {:>11}  min..max",
        "table", "traffic", "program", "stats", "runs", "floor ns", "ours ns", "ours-floor"
    );
    for r in results.iter().filter(|r| r.runs >= 1.0) {
        let _ = writeln!(
            out,
            "{:<6} {:<16} {:<11} {:<5} {:>9.0} {:>9.0} {:>9.0} {:>11.0}  {}",
            r.table,
            r.traffic.label(),
            r.program,
            if r.stats { "on" } else { "off" },
            r.runs,
            r.floor,
            r.ours,
            r.diff,
            r.diff_spread
        );
    }
    let _ = writeln!(
        out,
        "\nthe statistics' cost: (ours-floor with them) - (without), per program run"
    );
    for on in results.iter().filter(|r| r.stats && r.runs >= 1.0) {
        let Some(off) = results.iter().find(|r| {
            !r.stats && r.table == on.table && r.traffic == on.traffic && r.program == on.program
        }) else {
            continue;
        };
        let cost = on.diff - off.diff;
        let share = if off.diff > 0.0 {
            100.0 * cost / off.diff
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "{:<6} {:<16} {:<11} {cost:>+6.1} ns ({share:+.1}% of our work)",
            on.table,
            on.traffic.label(),
            on.program,
        );
    }
    println!(
        "\npkt: ns per program run (kernel BPF statistics), {services} services, NodePort to \
         a local pod; floor = tc_floor on the same hooks in the same traffic; medians (and \
         min..max of ours-floor) of {rounds} rounds ({} s in all)\n{out}{notes}",
        started.elapsed().as_secs_f64().round()
    );
    Ok(())
}

impl Stat {
    // Counts far below 2^52.
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    fn per_run(self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.ns as f64 / self.runs as f64
        }
    }

    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    fn per_run_and_count(self) -> (f64, f64) {
        (self.per_run(), self.runs as f64)
    }
}

/// One program's figures in one measurement.
struct Sample {
    floor: f64,
    ours: f64,
    runs: f64,
}

/// Per traffic, program id and statistics on, one sample per round.
type Samples = BTreeMap<(Traffic, u32, bool), Vec<Sample>>;

/// A line of the table: medians over the rounds, and the spread of ours-floor.
struct Row {
    table: &'static str,
    traffic: Traffic,
    program: String,
    /// Whether the statistics counted.
    stats: bool,
    runs: f64,
    floor: f64,
    ours: f64,
    diff: f64,
    diff_spread: String,
}

impl Row {
    fn of(table: &'static str, traffic: Traffic, program: &str, stats: bool, s: &[Sample]) -> Row {
        let m = |f: &dyn Fn(&Sample) -> f64| median(&mut s.iter().map(f).collect::<Vec<_>>());
        Row {
            table,
            traffic,
            program: program.to_owned(),
            stats,
            runs: m(&|x| x.runs),
            floor: m(&|x| x.floor),
            ours: m(&|x| x.ours),
            diff: m(&|x| x.ours - x.floor),
            diff_spread: spread(&s.iter().map(|x| x.ours - x.floor).collect::<Vec<_>>(), 0),
        }
    }
}

/// The object the release agent embeds: `proxy-ebpf` in the `OUT_DIR` of the agent's
/// build script, as cargo reports it for the build `release_binaries` made (the same
/// packages: another selection may unify features differently and rebuild).
fn agent_object() -> Result<Vec<u8>> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "-p",
        "proxy-agent",
        "-p",
        "tests",
        "--bins",
        "--message-format=json",
    ]);
    let out = cmd
        .output()
        .with_context(|| format!("running {}", display(&cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            display(&cmd),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let package = format!(
        "path+file://{}#",
        workspace_root().join("proxy-agent").display()
    );
    let out_dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "build-script-executed")
        .filter(|m| {
            m["package_id"]
                .as_str()
                .is_some_and(|p| p.starts_with(&package))
        })
        .find_map(|m| m["out_dir"].as_str().map(PathBuf::from))
        .context("cargo named no OUT_DIR for proxy-agent's build script")?;
    let path = out_dir.join("proxy-ebpf");
    let object = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if object.is_empty() {
        bail!(
            "{} is empty: the agent was built with AYA_BUILD_SKIP",
            path.display()
        );
    }
    Ok(object)
}

/// Loads `tc_floor` once per hook and attaches it first there, in node-a's namespace.
/// The object's maps are the agent's (its pins in `maps_dir`), so loading creates none.
fn attach_floors(netns: &Netns, object: &[u8], maps_dir: &Path) -> Result<Floors> {
    netns.run(|| {
        let mut floors = Floors {
            ids: Vec::new(),
            _objects: Vec::new(),
        };
        for hook in HOOKS {
            let mut ebpf = EbpfLoader::new()
                .default_map_pin_directory(maps_dir)
                .load(object)
                .context("loading the agent's object")?;
            let prog: &mut SchedClassifier = ebpf
                .program_mut(programs::TC_FLOOR)
                .with_context(|| format!("no {} in the agent's object", programs::TC_FLOOR))?
                .try_into()?;
            prog.load().context("loading tc_floor")?;
            floors.ids.push(prog.info()?.id());
            prog.attach_with_options(
                hook.iface,
                hook.kind,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .with_context(|| format!("attaching tc_floor to {}", hook.label()))?;
            floors._objects.push(ebpf);
        }
        Ok(floors)
    })
}

/// The programs on every hook and their counters, read in node-a's namespace.
fn snapshot(netns: &Netns) -> Result<Snapshot> {
    netns.run(|| {
        let mut s = Snapshot::default();
        for hook in HOOKS {
            let (_, infos) = SchedClassifier::query_tcx(hook.iface, hook.kind)
                .with_context(|| format!("querying the programs on {}", hook.label()))?;
            let mut chain = Vec::new();
            for info in infos {
                chain.push(info.id());
                let name = info.name_as_str().unwrap_or("?").to_owned();
                let stat = Stat {
                    ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                    runs: info.run_count(),
                };
                s.progs.insert(info.id(), (name, stat));
            }
            s.chains.push(chain);
        }
        Ok(s)
    })
}

/// Each hook runs its floor, then ours, and nothing else.
fn check_chains(s: &Snapshot, floors: &Floors) -> Result<()> {
    for ((hook, chain), floor) in HOOKS.iter().zip(&s.chains).zip(&floors.ids) {
        let names: Vec<&str> = chain.iter().map(|id| s.progs[id].0.as_str()).collect();
        // Kernel program names are cut at 15 characters.
        if chain.len() != 2 || chain[0] != *floor || !hook.ours.starts_with(names[1]) {
            bail!(
                "{} runs {names:?} (ids {chain:?}); expected tc_floor (id {floor}) then {}",
                hook.label(),
                hook.ours
            );
        }
    }
    Ok(())
}

/// For each of our programs: its id, the floor's counters summed over the hooks it runs
/// on, and its own, between snapshots `a` and `b`.
fn per_program(a: &Snapshot, b: &Snapshot, floors: &Floors) -> Result<Vec<(u32, Stat, Stat)>> {
    let delta = |id: u32| -> Result<Stat> {
        let (Some((_, x)), Some((_, y))) = (a.progs.get(&id), b.progs.get(&id)) else {
            bail!("program {id} left its hook during the measurement");
        };
        Ok(Stat {
            ns: y.ns.saturating_sub(x.ns),
            runs: y.runs.saturating_sub(x.runs),
        })
    };
    let mut ours: BTreeMap<u32, Stat> = BTreeMap::new();
    for (chain, floor) in b.chains.iter().zip(&floors.ids) {
        let Some(&id) = chain.last() else {
            bail!("a hook lost its programs");
        };
        let f = delta(*floor)?;
        let e = ours.entry(id).or_default();
        e.ns += f.ns;
        e.runs += f.runs;
    }
    ours.into_iter()
        .map(|(id, floor)| Ok((id, floor, delta(id)?)))
        .collect()
}

/// `BPF_ENABLE_STATS`: run-time statistics on while the descriptor lives.
fn enable_stats() -> Result<OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| anyhow::anyhow!("BPF_ENABLE_STATS: {e}"))
}

/// `count` SYNs from the client to node-a's sink NodePort, source ports `first..`.
fn send_syns(client: &Netns, node: Ipv4Addr, first: u16, count: u16) {
    client.run(|| {
        for i in 0..count {
            inject(
                &Segment {
                    src: NodesTopology::CLIENT_V4,
                    dst: node,
                    sport: first + i,
                    dport: SINK_NODEPORT,
                    seq: 1,
                    ack: 0,
                    flags: 0x02,
                    window: 64_240,
                    payload_len: 0,
                },
                &[],
            );
        }
    });
    // Let the last ones through node-a before the counters are read.
    std::thread::sleep(Duration::from_millis(50));
}

/// Fills the pinned `CONNTRACK` with idle established flows (both legs, as the programs
/// write them, fresh so that the collector keeps them) until `FILL_LEFT` entries are
/// free. Returns the entries added and the table's size.
fn fill_conntrack(maps_dir: &Path) -> Result<(u32, u32)> {
    let pin = maps_dir.join(maps::CONNTRACK);
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let max = data.info()?.max_entries();
    let mut table: BpfHashMap<MapData, CtKey, CtEntry> =
        BpfHashMap::try_from(aya::maps::Map::HashMap(data))?;
    let used = u32::try_from(table.keys().count()).unwrap_or(u32::MAX);
    let pairs = max.saturating_sub(used).saturating_sub(FILL_LEFT) / 2;
    let now = monotonic_ns();
    let node = Addr::from_v4_be(u32::from(Ipv4Addr::new(192, 0, 2, 1)).to_be());
    for i in 0..pairs {
        // Clients in 198.18.0.0/15, to other services' NodePorts and backends.
        let client = Addr::from_v4_be((u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (i >> 8)).to_be());
        let sport = ((i & 0xff) as u16 + 10_000).to_be();
        let svc = i % 2_500;
        let nodeport = (30_202 + svc as u16).to_be();
        let backend = Addr::from_v4_be(
            u32::from(Ipv4Addr::new(
                10,
                245,
                (svc * 4 / 250) as u8,
                (svc * 4 % 250 + 1) as u8,
            ))
            .to_be(),
        );
        let port = 8080u16.to_be();
        let fwd_key = CtKey {
            saddr: client,
            daddr: node,
            sport_be: sport,
            dport_be: nodeport,
            proto: proto::TCP,
            _pad: [0; 3],
        };
        let entry = |nat_saddr, nat_daddr, nat_sport_be, nat_dport_be, flags| CtEntry {
            nat_saddr,
            nat_daddr,
            nat_sport_be,
            nat_dport_be,
            flags,
            state: ct_state::ESTABLISHED,
            _pad: [0; 2],
            backend_id: 0,
            service_id: 0,
            created_ns: now,
            last_seen_ns: now,
            packets: 1,
            bytes: 60,
        };
        let fwd = entry(client, backend, sport, port, 0);
        let rev_key = CtKey {
            saddr: backend,
            daddr: client,
            sport_be: port,
            dport_be: sport,
            proto: proto::TCP,
            _pad: [0; 3],
        };
        let rev = entry(node, client, nodeport, sport, CT_F_REPLY);
        table.insert(rev_key, rev, 0)?;
        table.insert(fwd_key, fwd, 0)?;
    }
    Ok((pairs * 2, max))
}

/// `CLOCK_MONOTONIC` in nanoseconds: `bpf_ktime_get_ns()`'s clock.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}
