//! `cargo xtask bench flood`: legitimate clients during and after spoofed-source floods
//! of 1x, 2x and 4x the connection table at a NodePort, for ours and for kube-proxy-style
//! iptables rules (issue 9).
//!
//! The scenario is `tests::flood` (the one `tests/tests/flood.rs` asserts on): node-a
//! serves a NodePort with a local and a remote backend; the external client's `flood`
//! sends distinct spoofed flows from 198.18.0.0/15, whose answers die at node-a. The
//! table is [`CAPACITY`] flows (the agent's `--conntrack-max`; before the `CT_OPEN`
//! change that flag counted entries, two per flow). Netfilter's own table
//! (`nf_conntrack_max`, host-global) is left as it is and is flooded with the same
//! number of flows.
//!
//! Every case (side x protocol x size) gets a fresh topology and data plane, so no
//! flood inherits the last one's entries. In each:
//! - an established connection pings every 100 ms throughout (survival: it never
//!   failed a round);
//! - **during**: the flood is spread over [`FLOOD_SECS`] (its rate is its size over
//!   that), while [`WORKERS`] legitimate clients each open a new connection (UDP: a new
//!   socket, one datagram) with a 1 s timeout, then pause 100 ms, until it ends;
//! - **after**: straight after, 50 new connections (5 at a time, 1 s timeout each);
//! - the agent collects its tables every second (`--conntrack-gc-interval 1s`), as the
//!   table metrics in the last column are sampled by the collector;
//! - **CPU** over the flood: the agent's (utime+stime from `/proc/<pid>/stat`) and the
//!   machine's kernel time (system+softirq from `/proc/stat`, every CPU, so it includes
//!   the generator's own sends: compare the sides, not the absolute figure).
//!
//! All binaries are release builds. About 3 minutes.

use std::fmt::Write as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tests::flood::{FloodEnv, Outcome, Proto, Side, wait_flood};
use tests::{probe_bin, try_run};

/// Flows in the table under test (`--conntrack-max`).
const CAPACITY: u64 = 16_384;
/// Flood sizes, in tables.
const MULTIPLES: [u64; 3] = [1, 2, 4];
/// How long each flood lasts (its rate follows from its size).
const FLOOD_SECS: u64 = 3;
/// Legitimate clients during the flood, and their pause between attempts.
const WORKERS: usize = 5;
const PAUSE: Duration = Duration::from_millis(100);
/// Legitimate attempts straight after the flood, and their timeout.
const AFTER: u32 = 50;
const TIMEOUT_MS: u32 = 1000;

/// One case's figures.
struct Row {
    side: Side,
    proto: Proto,
    multiple: u64,
    flows: u64,
    pps: f64,
    during: Outcome,
    after: Outcome,
    /// `None`: it survived; else how it broke.
    hold_broke: Option<String>,
    agent_cpu_ms: Option<f64>,
    kernel_cpu_s: f64,
    /// What the table did (ours: ct_new / ct_full; netfilter: entries and drops).
    table: String,
}

/// Runs the benchmark.
pub fn run() -> Result<()> {
    super::release_binaries()?;
    let started = Instant::now();
    println!("{}", header());
    let mut rows = Vec::new();
    for side in [Side::Ours, Side::Iptables] {
        for proto in [Proto::Tcp, Proto::Udp] {
            for multiple in MULTIPLES {
                let row = case(side, proto, multiple)?;
                println!("{}", format_row(&row));
                rows.push(row);
            }
        }
    }
    println!();
    println!(
        "bench flood: table {CAPACITY} flows (--conntrack-max), floods over {FLOOD_SECS} s, \
         spoofed from {}; {:.0} s in all",
        tests::flood::SPOOFED_SOURCES,
        started.elapsed().as_secs_f64()
    );
    println!("{}", header());
    for row in &rows {
        println!("{}", format_row(row));
    }
    Ok(())
}

fn header() -> String {
    format!(
        "{:<8} {:<5} {:>5} {:>6} {:>6}  {:>16}  {:>16}  {:<7} {:>9} {:>8}  {}",
        "side",
        "proto",
        "flood",
        "flows",
        "pps",
        "during: ok",
        "after: ok",
        "held",
        "agent ms",
        "kernel s",
        "table"
    )
}

fn format_row(r: &Row) -> String {
    let pct = |o: &Outcome| format!("{:.0}% {:>4}/{:<4}", o.percent(), o.ok, o.total());
    let mut s = format!(
        "{:<8} {:<5} {:>4}x {:>6} {:>6.0}  {:>16}  {:>16}  {:<7} {:>9} {:>8.2}  {}",
        r.side.to_string(),
        r.proto.name(),
        r.multiple,
        r.flows,
        r.pps,
        pct(&r.during),
        pct(&r.after),
        if r.hold_broke.is_none() {
            "yes"
        } else {
            "BROKEN"
        },
        r.agent_cpu_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0}")),
        r.kernel_cpu_s,
        r.table
    );
    if let Some(why) = &r.hold_broke {
        let _ = write!(s, "\n    held connection: {why}");
    }
    s
}

fn case(side: Side, proto: Proto, multiple: u64) -> Result<Row> {
    let flows = multiple * CAPACITY;
    let capacity = CAPACITY.to_string();
    let flags: &[&str] = match side {
        Side::Ours => &[
            "--conntrack-max",
            &capacity,
            "--conntrack-gc-interval",
            "1s",
        ],
        Side::Iptables => &[],
    };
    let env = FloodEnv::new(
        &format!("bfl-{side}-{}{multiple}", proto.name()),
        side,
        flags,
    );
    let mut hold = env.hold(100);
    let table_before = table_state(&env)?;
    let agent_before = env.agent().map(|a| process_ticks(a.pid())).transpose()?;
    let kernel_before = kernel_ticks()?;
    let started = Instant::now();
    let mut flood = env.spawn_flood(proto, flows, flows / FLOOD_SECS, multiple);
    let done = Arc::new(AtomicBool::new(false));
    let during = Arc::new(Mutex::new(Outcome::default()));
    let to = env.nodeport(proto).to_string();
    let sent = std::thread::scope(|s| {
        for _ in 0..WORKERS {
            let (done, during, to, client) = (&done, &during, &to, &env.topo.client);
            s.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let line = attempt(client, proto, to);
                    if let Ok(mut o) = during.lock() {
                        o.add_line(&line);
                    }
                    std::thread::sleep(PAUSE);
                }
            });
        }
        let sent = wait_flood(&mut flood, flows, flows / FLOOD_SECS);
        done.store(true, Ordering::Relaxed);
        sent
    });
    let flood_secs = started.elapsed().as_secs_f64();
    let kernel_cpu_s = (kernel_ticks()? - kernel_before) / clock_ticks();
    let agent_cpu_ms = match (env.agent(), agent_before) {
        (Some(a), Some(before)) => Some((process_ticks(a.pid())? - before) / clock_ticks() * 1e3),
        _ => None,
    };
    let held_flood = hold.check();
    let after = env.legit(proto, AFTER, 5, TIMEOUT_MS);
    let held_after = hold.check();
    // The table metrics are sampled by the agent's collector, every second here.
    env.wait_collections(2, Duration::from_secs(10));
    let table = table_change(&env, &table_before)?;
    let during = during
        .lock()
        .map(|o| o.clone())
        .map_err(|_| anyhow::anyhow!("a legitimate client thread panicked"))?;
    if during.total() == 0 {
        bail!("no legitimate attempt completed during a flood of {flood_secs:.1} s");
    }
    Ok(Row {
        side,
        proto,
        multiple,
        flows: sent.sent,
        pps: sent.pps,
        during,
        after,
        hold_broke: held_flood.and(held_after).err(),
        agent_cpu_ms,
        kernel_cpu_s,
        table,
    })
}

/// One legitimate attempt from the client: its `probe` result line.
fn attempt(client: &tests::Netns, proto: Proto, to: &str) -> String {
    let out = try_run(
        client,
        None,
        Command::new(probe_bin()).args([
            proto.name(),
            "--to",
            to,
            "--timeout-ms",
            &TIMEOUT_MS.to_string(),
        ]),
        Duration::from_secs(10),
    );
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Err(e) => format!("err probe-{} 0", e.timeout.as_millis()),
    }
}

/// The counters [`table_change`] reports, before the flood.
struct TableState {
    counters: Vec<(&'static str, u64)>,
}

const OUR_COUNTERS: [&str; 4] = ["ct_new", "ct_promoted", "ct_full", "nat_snat_exhausted"];
const NETFILTER_COUNTERS: [&str; 3] = ["drop", "early_drop", "insert_failed"];

fn table_state(env: &FloodEnv) -> Result<TableState> {
    let counters = match env.agent() {
        Some(agent) => OUR_COUNTERS
            .iter()
            .map(|&n| {
                Ok((
                    n,
                    agent
                        .counter(n)
                        .with_context(|| format!("no {n} counter"))?,
                ))
            })
            .collect::<Result<_>>()?,
        None => {
            let stats = env.netfilter_stats();
            NETFILTER_COUNTERS
                .iter()
                .map(|&n| (n, stats.get(n).copied().unwrap_or(0)))
                .collect()
        }
    };
    Ok(TableState { counters })
}

/// What the table did since `before`: ours, the counters' rises and the table metrics
/// (in entries, two per flow; the evictions since the agent started, so this flood's);
/// netfilter, its entries and drop counters.
fn table_change(env: &FloodEnv, before: &TableState) -> Result<String> {
    let now = table_state(env)?;
    let mut s = String::new();
    if env.agent().is_none() {
        let _ = write!(s, "entries {} ", env.netfilter_entries());
    }
    for ((name, a), (_, b)) in before.counters.iter().zip(&now.counters) {
        let _ = write!(s, "{name} +{} ", b.saturating_sub(*a));
    }
    if let Some(agent) = env.agent() {
        let m = agent.metrics();
        for (metric, table) in [
            ("proxy_agent_conntrack_entries", "unassured"),
            ("proxy_agent_conntrack_entries", "assured"),
            ("proxy_agent_conntrack_evictions_total", "unassured"),
        ] {
            if let Some(v) = tests::metric_value(&m, metric, &format!("{{table=\"{table}\"}}")) {
                let short = metric.trim_start_matches("proxy_agent_conntrack_");
                let _ = write!(s, "{short}{{{table}}} {v} ");
            }
        }
    }
    Ok(s.trim_end().to_owned())
}

/// `sysconf(_SC_CLK_TCK)`: the unit of `/proc` CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: plain libc call without pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// utime + stime of process `pid`, in clock ticks.
fn process_ticks(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its closing paren.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("bad /proc/{pid}/stat: {stat}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let tick = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i - 3)
            .with_context(|| format!("short /proc/{pid}/stat: {stat}"))?
            .parse()?)
    };
    Ok(tick(14)? + tick(15)?)
}

/// system + softirq time of every CPU (`cpu` line of `/proc/stat`), in clock ticks.
fn kernel_ticks() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq ...
    match (f.get(2), f.get(6)) {
        (Some(system), Some(softirq)) => Ok(system + softirq),
        _ => bail!("short cpu line in /proc/stat: {line}"),
    }
}

#[cfg(test)]
mod tests_ {
    use super::*;

    #[test]
    fn process_ticks_reads_this_process() {
        assert!(process_ticks(std::process::id()).unwrap() >= 0.0);
        assert!(kernel_ticks().unwrap() > 0.0);
    }

    #[test]
    fn rows_line_up_with_the_header() {
        let mut o = Outcome::default();
        o.add_line("ok a-pod-0 192.0.2.1:30080");
        let row = Row {
            side: Side::Iptables,
            proto: Proto::Tcp,
            multiple: 4,
            flows: 65_536,
            pps: 21_845.0,
            during: o.clone(),
            after: o,
            hold_broke: None,
            agent_cpu_ms: None,
            kernel_cpu_s: 1.5,
            table: "entries 65539".into(),
        };
        let line = format_row(&row);
        assert_eq!(
            line.find("entries"),
            header().find("table"),
            "\n{}\n{line}",
            header()
        );
    }
}
