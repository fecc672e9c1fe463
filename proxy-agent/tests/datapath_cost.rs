//! What each path of the tc programs costs in instructions and helpers alone, hot in
//! the cache: BPF_PROG_TEST_RUN with many repeats and the kernel's time per run,
//! against `tc_floor` measured the same way. Not a test of behaviour (the other
//! datapath tests are); a measuring aid for `cargo xtask bench pkt`, which measures
//! real traffic. Ignored by default:
//! `cargo test -p proxy-agent --release --test datapath_cost -- --ignored --nocapture`.
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
use proxy_common::{CT_F_REPLY, CtEntry, CtKey, ct_state, programs};

const REPEAT: u32 = 200_000;
const ROUNDS: usize = 9;

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

/// Median ns per run of `name` on `frame` over [`ROUNDS`] rounds.
fn timed(dp: &Datapath, name: &str, ifindex: u32, frame: &[u8], verdict: u32) -> f64 {
    median(
        (0..ROUNDS)
            .map(|_| {
                let (v, ns) = dp.time(name, ifindex, frame, REPEAT);
                assert_eq!(v, verdict, "{name}: verdict");
                ns
            })
            .collect(),
    )
}

#[test]
#[ignore = "a measurement, not a test: run with --ignored --nocapture"]
fn cost_per_path() {
    let mut dp = Datapath::new();
    dp.load_floor();
    dp.add_service(&nodeport(packet::TCP, BACKEND4.into()));
    let client = sa(CLIENT4, CLIENT_PORT);
    let local: SocketAddr = sa(BACKEND4, BACKEND_PORT);
    let remote: SocketAddr = sa(REMOTE_BACKEND4, NODE_PORT);
    let ack = tcp(FROM_CLIENT, client, local, ACK);
    let floor = timed(&dp, programs::TC_FLOOR, dp.ext, &ack, u32::MAX);

    // Established, forward direction: two legs translating into each other, both
    // forwarded (the local backend on pod0, the remote one via the gateway on ext0).
    let k1 = tuple(client, local, packet::TCP);
    let k2 = tuple(client, remote, packet::TCP);
    dp.ct_insert(k1, leg(k2, 0));
    dp.ct_insert(k2, leg(k1, 0));
    let established = timed(&dp, programs::TC_INGRESS, dp.ext, &ack, TC_ACT_REDIRECT);

    // The reply rewrite of tc_egress (no FIB lookup): legs flagged as replies.
    let r1 = tuple(local, client, packet::TCP);
    let r2 = tuple(remote, client, packet::TCP);
    dp.ct_insert(r1, leg(r2, CT_F_REPLY));
    dp.ct_insert(r2, leg(r1, CT_F_REPLY));
    let reply = tcp(TO_CLIENT, local, client, ACK);
    let egress_reply = timed(&dp, programs::TC_EGRESS, dp.ext, &reply, TC_ACT_OK);

    // Untracked, not opening: parse and one miss.
    let stray = tcp(FROM_CLIENT, client, sa(NODE4, 9), ACK);
    let egress_miss = timed(&dp, programs::TC_EGRESS, dp.ext, &stray, TC_ACT_OK);
    let ingress_miss = timed(&dp, programs::TC_INGRESS, dp.ext, &stray, TC_ACT_OK);

    // New flows: one run each (a repeat would find its own flow), each from a new port.
    let frontend = sa(NODE4, NODE_PORT);
    let mut new = Vec::new();
    let mut floor1 = Vec::new();
    for i in 0..100u16 {
        let syn = tcp(FROM_CLIENT, sa(CLIENT4, 20_000 + i), frontend, SYN);
        let (v, ns) = dp.time(programs::TC_INGRESS, dp.ext, &syn, 1);
        assert_eq!(v, TC_ACT_REDIRECT, "new flow: verdict");
        new.push(ns);
        floor1.push(dp.time(programs::TC_FLOOR, dp.ext, &syn, 1).1);
    }
    let (new, floor1) = (median(new), median(floor1));

    println!("ns per run, BPF_PROG_TEST_RUN, median of {ROUNDS} x {REPEAT} runs:");
    println!("  tc_floor                         {floor:7.0}");
    for (what, ns) in [
        ("tc_ingress established forward", established),
        ("tc_egress established reply", egress_reply),
        ("tc_ingress untracked (miss)", ingress_miss),
        ("tc_egress untracked (miss)", egress_miss),
    ] {
        println!("  {what:<32} {ns:7.0}  floor+{:.0}", ns - floor);
    }
    println!(
        "  tc_ingress new flow (1 run each) {new:7.0}  floor+{:.0} (tc_floor 1 run: {floor1:.0})",
        new - floor1
    );
}
