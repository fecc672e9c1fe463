//! What each path of the tc programs costs in instructions and helpers alone, hot in
//! the cache: BPF_PROG_TEST_RUN with many repeats and the kernel's time per run,
//! against `tc_floor` measured the same way. Not a test of behaviour (the other
//! datapath tests are); a measuring aid for `cargo xtask bench pkt`, which measures
//! real traffic. Ignored by default:
//! `cargo test -p proxy-agent --release --test datapath_cost -- --ignored --nocapture`;
//! `KPT_COST_OBJECTS=a.o,b.o` adds other builds of the object to compare with.
//!
//! A repeated run sees the packet as the previous run left it, so the established
//! paths are measured on two legs that translate into each other: each run rewrites the
//! packet to the other leg's tuple (address and port, both checksums, MACs) and
//! redirects it, as a DNATed packet of a flow is.

mod datapath;

use std::net::SocketAddr;

use datapath::nodeport::*;
use datapath::packet::{self, ACK, SYN};
use datapath::*;
use proxy_agent::dataplane::ebpf::PROGRAMS;
use proxy_common::{CT_F_REPLY, CtEntry, CtKey, ct_state, programs};

const REPEAT: u32 = 100_000;
const ROUNDS: usize = 15;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// A leg translating `key` to `to`, not expired.
fn leg(to: CtKey, flags: u8) -> CtEntry {
    CtEntry {
        nat_saddr: to.saddr,
        nat_daddr: to.daddr,
        nat_sport_be: to.sport_be,
        nat_dport_be: to.dport_be,
        flags,
        state: ct_state::ESTABLISHED,
        _pad: [0; 2],
        backend_id: BACKEND_ID,
        service_id: SERVICE_ID,
        created_ns: u64::MAX / 2,
        last_seen_ns: u64::MAX / 2,
        packets: 0,
        bytes: 0,
    }
}

/// ns per run of `name` on `frame`, over [`REPEAT`] runs.
fn timed(dp: &Datapath, name: &str, ifindex: u32, frame: &[u8], verdict: u32) -> f64 {
    let (v, ns) = dp.time(name, ifindex, frame, REPEAT);
    assert_eq!(v, verdict, "{name}: verdict");
    ns
}

/// The paths measured, in the order printed.
const PATHS: [&str; 6] = [
    "tc_floor",
    "tc_ingress established forward",
    "tc_egress established reply",
    "tc_ingress untracked (miss)",
    "tc_egress untracked (miss)",
    "tc_ingress new flow (1 run each)",
];

/// One object loaded and seeded for every path.
struct Bench {
    dp: Datapath,
    ack: Vec<u8>,
    reply: Vec<u8>,
    stray: Vec<u8>,
    next_port: u16,
}

impl Bench {
    fn new(object: &[u8]) -> Bench {
        let mut dp = Datapath::with_object(CONNTRACK_MAX * 64, object);
        dp.load_floor();
        dp.add_service(&nodeport(packet::TCP, BACKEND4.into()));
        let client = sa(CLIENT4, CLIENT_PORT);
        let local: SocketAddr = sa(BACKEND4, BACKEND_PORT);
        let remote: SocketAddr = sa(REMOTE_BACKEND4, NODE_PORT);
        // Established, forward direction: two legs translating into each other, both
        // forwarded (the local backend on pod0, the remote one via the gateway on ext0).
        let k1 = tuple(client, local, packet::TCP);
        let k2 = tuple(client, remote, packet::TCP);
        dp.ct_insert(k1, leg(k2, 0));
        dp.ct_insert(k2, leg(k1, 0));
        // The reply rewrite of tc_egress (no FIB lookup): legs flagged as replies.
        let r1 = tuple(local, client, packet::TCP);
        let r2 = tuple(remote, client, packet::TCP);
        dp.ct_insert(r1, leg(r2, CT_F_REPLY));
        dp.ct_insert(r2, leg(r1, CT_F_REPLY));
        Bench {
            dp,
            ack: tcp(FROM_CLIENT, client, local, ACK),
            reply: tcp(TO_CLIENT, local, client, ACK),
            // Untracked, not opening: parse and one miss.
            stray: tcp(FROM_CLIENT, client, sa(NODE4, 9), ACK),
            next_port: 20_000,
        }
    }

    /// ns per run of each of [`PATHS`].
    fn measure(&mut self) -> [f64; 6] {
        let dp = &self.dp;
        let ext = dp.ext;
        let mut r = [
            timed(dp, programs::TC_FLOOR, ext, &self.ack, u32::MAX),
            timed(dp, programs::TC_INGRESS, ext, &self.ack, TC_ACT_REDIRECT),
            timed(dp, programs::TC_EGRESS, ext, &self.reply, TC_ACT_OK),
            timed(dp, programs::TC_INGRESS, ext, &self.stray, TC_ACT_OK),
            timed(dp, programs::TC_EGRESS, ext, &self.stray, TC_ACT_OK),
            0.0,
        ];
        // New flows: one run each (a repeat would find its own flow), each from a port
        // never used before.
        let frontend = sa(NODE4, NODE_PORT);
        let mut new = Vec::new();
        for _ in 0..NEW_FLOWS {
            let syn = tcp(FROM_CLIENT, sa(CLIENT4, self.next_port), frontend, SYN);
            self.next_port += 1;
            let (v, ns) = dp.time(programs::TC_INGRESS, ext, &syn, 1);
            assert_eq!(v, TC_ACT_REDIRECT, "new flow: verdict");
            let (_, floor) = dp.time(programs::TC_FLOOR, ext, &syn, 1);
            new.push(ns - floor);
        }
        // Reported over the repeated floor, as the others are.
        r[5] = median(new) + r[0];
        r
    }
}

/// New flows per round.
const NEW_FLOWS: u16 = 200;

/// Compares the embedded object with the builds named in `KPT_COST_OBJECTS`
/// (comma-separated paths), in turns, so that machine noise hits all alike. (Each
/// object's node is a namespace of its own, entered in turn by this thread: all runs
/// happen in the last one, whose devices and routes are the same.)
#[test]
#[ignore = "a measurement, not a test: run with --ignored --nocapture"]
fn cost_per_path() {
    let mut names = vec!["embedded".to_owned()];
    let mut objects = vec![PROGRAMS.to_vec()];
    if let Ok(list) = std::env::var("KPT_COST_OBJECTS") {
        for path in list.split(',').filter(|p| !p.is_empty()) {
            objects.push(std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}")));
            names.push(path.to_owned());
        }
    }
    let mut benches: Vec<Bench> = objects.iter().map(|o| Bench::new(o)).collect();
    let mut samples = vec![vec![Vec::new(); PATHS.len()]; benches.len()];
    for _ in 0..ROUNDS {
        for (b, s) in benches.iter_mut().zip(&mut samples) {
            for (i, ns) in b.measure().into_iter().enumerate() {
                s[i].push(ns);
            }
        }
    }
    println!(
        "ns per run, BPF_PROG_TEST_RUN (median of {ROUNDS} rounds of {REPEAT} runs; new flows: \
         {NEW_FLOWS} single runs, less a single run of tc_floor, plus the floor):"
    );
    for (name, s) in names.iter().zip(samples) {
        println!("  {name}:");
        let m: Vec<f64> = s.into_iter().map(median).collect();
        for (path, ns) in PATHS.iter().zip(&m) {
            println!("    {path:<34} {ns:6.0}  floor+{:.0}", ns - m[0]);
        }
    }
}
