//! BPF_PROG_TEST_RUN tests of the tc programs' traffic statistics (`STATS`, for
//! `proxyctl list --stats`): a flow counts once, its packets and bytes both ways, into
//! the slot its membership's stats id names, and only while that slot is still its
//! membership's; counting off, a new flow counts nothing. (The socket programs cannot
//! be test-run, see `datapath_sock.rs`: their counting is tested with real sockets by
//! `tests/tests/stats.rs`.)

mod datapath;

use datapath::nodeport::*;
use datapath::packet::{self, ACK, SYN};
use datapath::*;
use proxy_common::Stats;

/// The stats id the tests give the NodePort's backend.
const ID: u16 = 5;

fn counted(connections: u64, packets: (u64, u64), bytes: (u64, u64)) -> Stats {
    Stats {
        service_id: SERVICE_ID,
        backend_id: BACKEND_ID,
        sock_connections: 0,
        connections,
        packets_in: packets.0,
        packets_out: packets.1,
        bytes_in: bytes.0,
        bytes_out: bytes.1,
    }
}

#[test]
fn a_flow_counts_once_with_its_packets_and_bytes_both_ways() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, BACKEND4.into()));
    dp.count_member(SERVICE_ID, BACKEND_ID, ID);
    let (client, frontend, backend) = (
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        sa(BACKEND4, BACKEND_PORT),
    );

    let syn = tcp(FROM_CLIENT, client, frontend, SYN);
    assert_eq!(dp.ingress(dp.ext, &syn).verdict, TC_ACT_REDIRECT);
    let fwd = dp
        .ct_get(&tuple(client, frontend, packet::TCP))
        .expect("forward leg");
    let rev = dp
        .ct_get(&tuple(backend, client, packet::TCP))
        .expect("reply leg");
    assert_eq!(
        (fwd.stats_id(), rev.stats_id()),
        (ID, ID),
        "both legs carry the id"
    );
    let n = |f: &[u8]| u64::try_from(f.len()).expect("a small frame");
    assert_eq!(dp.stats(ID), counted(1, (1, 0), (n(&syn), 0)));

    let synack = tcp(FROM_BACKEND, backend, client, SYN | ACK);
    assert_eq!(dp.ingress(dp.pod, &synack).verdict, TC_ACT_REDIRECT);
    let ack = tcp(FROM_CLIENT, client, frontend, ACK);
    assert_eq!(dp.ingress(dp.ext, &ack).verdict, TC_ACT_REDIRECT);
    // Now assured (moved to the other table, the id with it): one more each way.
    assert!(
        dp.ct_assured(&tuple(client, frontend, packet::TCP))
            .is_some()
    );
    let data = tcp(FROM_BACKEND, backend, client, ACK);
    assert_eq!(dp.ingress(dp.pod, &data).verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.ingress(dp.ext, &ack).verdict, TC_ACT_REDIRECT);
    assert_eq!(
        dp.stats(ID),
        counted(1, (3, 2), (n(&syn) + 2 * n(&ack), n(&synack) + n(&data)))
    );
}

#[test]
fn a_slot_handed_to_another_membership_no_longer_counts_the_old_flows() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, BACKEND4.into()));
    dp.count_member(SERVICE_ID, BACKEND_ID, ID);
    let (client, frontend) = (sa(CLIENT4, CLIENT_PORT), sa(NODE4, NODE_PORT));
    assert_eq!(
        dp.ingress(dp.ext, &tcp(FROM_CLIENT, client, frontend, SYN))
            .verdict,
        TC_ACT_REDIRECT
    );
    // The agent reuses the id for service 8's backend 1: zeroed and retagged.
    dp.reset_stats(ID, 8, BACKEND_ID);
    let ack = tcp(FROM_CLIENT, client, frontend, ACK);
    assert_eq!(dp.ingress(dp.ext, &ack).verdict, TC_ACT_REDIRECT);
    let s = dp.stats(ID);
    assert_eq!(
        (s.service_id, s.connections, s.packets_in, s.bytes_in),
        (8, 0, 0, 0),
        "the old flow's packet leaked into the new owner's slot"
    );
}

#[test]
fn without_an_id_or_with_counting_off_a_flow_counts_nothing() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::UDP, BACKEND4.into()));
    let frontend = sa(NODE4, NODE_PORT);
    // A membership an older agent wrote (value 1): no id, nothing counted.
    let first = sa(CLIENT4, CLIENT_PORT);
    assert_eq!(
        dp.ingress(dp.ext, &udp(FROM_CLIENT, first, frontend, b"a"))
            .verdict,
        TC_ACT_REDIRECT
    );
    let e = dp
        .ct_get(&tuple(first, frontend, packet::UDP))
        .expect("tracked");
    assert_eq!(e.stats_id(), 0);

    dp.count_member(SERVICE_ID, BACKEND_ID, ID);
    dp.set_stats_on(false);
    let second = sa(CLIENT4, CLIENT_PORT + 1);
    assert_eq!(
        dp.ingress(dp.ext, &udp(FROM_CLIENT, second, frontend, b"b"))
            .verdict,
        TC_ACT_REDIRECT
    );
    let e = dp
        .ct_get(&tuple(second, frontend, packet::UDP))
        .expect("tracked");
    assert_eq!(e.stats_id(), 0, "off when the flow opened: never counted");
    assert_eq!(dp.stats(ID), counted(0, (0, 0), (0, 0)));

    // On again: the next flow counts; the flows opened before still do not.
    dp.set_stats_on(true);
    let third = sa(CLIENT4, CLIENT_PORT + 2);
    let d = udp(FROM_CLIENT, third, frontend, b"c");
    assert_eq!(dp.ingress(dp.ext, &d).verdict, TC_ACT_REDIRECT);
    assert_eq!(
        dp.ingress(dp.ext, &udp(FROM_CLIENT, second, frontend, b"b"))
            .verdict,
        TC_ACT_REDIRECT
    );
    let len = u64::try_from(d.len()).expect("small");
    assert_eq!(dp.stats(ID), counted(1, (1, 0), (len, 0)));
}
