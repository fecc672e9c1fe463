//! BPF_PROG_TEST_RUN tests of what `tc_ingress` does not translate: packets that are
//! not a service's pass untouched (byte for byte); packets it cannot parse pass
//! untouched and are counted by reason; new flows it refuses are dropped and counted
//! by reason. The harness is described in `datapath/mod.rs`.

mod datapath;

use std::net::Ipv4Addr;

use datapath::nodeport::*;
use datapath::packet::{self, ACK, L4, SYN};
use datapath::*;
use proxy_common::{
    FRONTEND_F_SOURCE_RANGES, FRONTEND_KIND_SHIFT, FrontendValue, IFACE_F_EXTERNAL, kind, scope,
};

// --- packets that are not ours: untouched ------------------------------------------

#[test]
fn packets_of_foreign_flows_pass_untouched_and_uncounted() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, BACKEND4.into()));
    let client = sa(CLIENT4, CLIENT_PORT);
    let echo = packet::icmp(CLIENT4.into(), NODE4.into(), 8, 0, 0x0001_0001, b"ping");
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&CLIENT4.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&NODE4.octets());
    let cases: [(&str, Vec<u8>); 8] = [
        (
            "a port without a frontend",
            tcp(FROM_CLIENT, client, sa(NODE4, 22), SYN),
        ),
        (
            "mid-flow ACK of an untracked flow",
            tcp(FROM_CLIENT, client, sa(NODE4, NODE_PORT), ACK),
        ),
        (
            "UDP to a TCP NodePort",
            udp(FROM_CLIENT, client, sa(NODE4, NODE_PORT), b"x"),
        ),
        (
            "the NodePort on an address that is not the node's",
            tcp(
                FROM_CLIENT,
                client,
                sa(Ipv4Addr::new(192, 0, 2, 77), NODE_PORT),
                SYN,
            ),
        ),
        (
            "IPv6 without a frontend",
            tcp(
                FROM_CLIENT,
                sa(CLIENT6, CLIENT_PORT),
                sa(NODE6, NODE_PORT),
                SYN,
            ),
        ),
        ("ICMP echo", packet::eth(FROM_CLIENT, &echo)),
        ("ARP", arp),
        (
            "an ICMP error about an untracked flow",
            packet::eth(
                FROM_CLIENT,
                &packet::icmp(
                    CLIENT4.into(),
                    NODE4.into(),
                    3,
                    3,
                    0,
                    &packet::ip(NODE4.into(), CLIENT4.into(), &L4::tcp(NODE_PORT, 1, ACK))[..28],
                ),
            ),
        ),
    ];
    for (what, frame) in &cases {
        assert_passes_untouched(&dp, dp.ext, frame, what);
        let r = dp.egress(dp.ext, frame);
        assert_eq!(
            (r.verdict, &r.frame),
            (TC_ACT_OK, frame),
            "{what} at egress"
        );
    }
    assert_eq!(dp.counters().nonzero(), []);
}

#[test]
fn truncated_headers_pass_untouched_and_are_counted() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, BACKEND4.into()));
    let mut udp_svc = nodeport(packet::UDP, BACKEND4.into());
    udp_svc.id += 1;
    dp.add_service(&udp_svc);
    let (client, frontend) = (sa(CLIENT4, CLIENT_PORT), sa(NODE4, NODE_PORT));
    let syn = tcp(FROM_CLIENT, client, frontend, SYN);
    let dgram = udp(FROM_CLIENT, client, frontend, b"");
    let syn6 = tcp(
        FROM_CLIENT,
        sa(CLIENT6, CLIENT_PORT),
        sa(NODE6, NODE_PORT),
        SYN,
    );
    let ip4 = packet::ETH_HLEN + 20;
    let ip6 = packet::ETH_HLEN + 40;
    // Only the transport header is cut: BPF_PROG_TEST_RUN itself refuses (EINVAL) a
    // frame whose IP header is incomplete, so that case cannot be run here.
    let cases = [
        // Ports and flags are there, the checksum is not: it could not be rewritten.
        ("a 16-byte TCP header", &syn[..ip4 + 16]),
        ("a TCP header cut before the flags", &syn[..ip4 + 12]),
        ("a 4-byte UDP header", &dgram[..ip4 + 4]),
        ("a 10-byte TCP header after IPv6", &syn6[..ip6 + 10]),
    ];
    for (what, frame) in cases {
        let before = dp.counters();
        assert_passes_untouched(&dp, dp.ext, frame, what);
        assert_eq!(dp.counters().since(&before), [("truncated", 1)], "{what}");
    }
}

#[test]
fn ipv4_fragments_pass_untouched_and_are_counted() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, BACKEND4.into()));
    let seg = L4::tcp(CLIENT_PORT, NODE_PORT, SYN).bytes(CLIENT4.into(), NODE4.into());
    let cases = [
        // A later fragment whose first bytes happen to look like the NodePort's.
        ("a non-first fragment", 185u16),
        // Translating the first fragment alone would break reassembly.
        ("a first fragment with more to come", 0x2000),
    ];
    for (what, frag) in cases {
        let before = dp.counters();
        let frame = packet::eth(
            FROM_CLIENT,
            &packet::ipv4(CLIENT4, NODE4, packet::TCP, &[], frag, &seg),
        );
        assert_passes_untouched(&dp, dp.ext, &frame, what);
        assert_eq!(
            dp.counters().since(&before),
            [("fragment_passed", 1)],
            "{what}"
        );
    }
}

#[test]
fn ipv6_extension_headers_pass_untouched_and_are_counted() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, BACKEND6.into()));
    let seg = L4::tcp(CLIENT_PORT, NODE_PORT, SYN).bytes(CLIENT6.into(), NODE6.into());
    let cases = [
        // Next header TCP, length 0 (8 bytes), PadN.
        ("destination options", 60u8, [6u8, 0, 1, 4, 0, 0, 0, 0]),
        // An atomic fragment: offset 0, no more fragments.
        ("a fragment header", 44, [6, 0, 0, 0, 0, 0, 0, 1]),
    ];
    for (what, next, ext) in cases {
        let before = dp.counters();
        let frame = packet::eth(
            FROM_CLIENT,
            &packet::ipv6(CLIENT6, NODE6, next, &[&ext[..], &seg].concat()),
        );
        assert_passes_untouched(&dp, dp.ext, &frame, what);
        assert_eq!(
            dp.counters().since(&before),
            [("ipv6_ext_passed", 1)],
            "{what}"
        );
    }
}

// --- drops, each with its reason ----------------------------------------------------

#[test]
fn a_nodeport_without_backends_drops_new_flows_and_counts_them() {
    let mut dp = Datapath::new();
    let v = FrontendValue {
        service_id: SERVICE_ID,
        backend_count: 0,
        flags: kind::NODE_PORT << FRONTEND_KIND_SHIFT,
        affinity_timeout_s: 0,
    };
    dp.set_frontend(
        Ipv4Addr::UNSPECIFIED.into(),
        NODE_PORT,
        packet::TCP,
        scope::EXTERNAL,
        v,
    );
    let syn = tcp(
        FROM_CLIENT,
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        SYN,
    );

    assert_eq!(dp.ingress(dp.ext, &syn).verdict, TC_ACT_SHOT);
    assert_eq!(dp.ct_len(), 0);
    assert_eq!(dp.counters().nonzero(), [("nat_no_backend", 1)]);
}

#[test]
fn source_ranges_drop_clients_outside_them_and_admit_those_inside() {
    let mut dp = Datapath::new();
    let mut svc = nodeport(packet::TCP, BACKEND4.into());
    svc.flags |= FRONTEND_F_SOURCE_RANGES;
    dp.add_service(&svc);
    dp.add_source_range(SERVICE_ID, Ipv4Addr::new(192, 0, 2, 8).into(), 29);
    let frontend = sa(NODE4, NODE_PORT);

    let outside = tcp(
        FROM_CLIENT,
        sa(Ipv4Addr::new(192, 0, 2, 20), 1),
        frontend,
        SYN,
    );
    assert_eq!(dp.ingress(dp.ext, &outside).verdict, TC_ACT_SHOT);
    let inside = tcp(FROM_CLIENT, sa(CLIENT4, CLIENT_PORT), frontend, SYN);
    assert_eq!(dp.ingress(dp.ext, &inside).verdict, TC_ACT_REDIRECT);

    assert_eq!(
        dp.counters().nonzero(),
        [("ct_new", 1), ("nat_source_denied", 1)]
    );
}

#[test]
fn a_remote_backend_without_a_node_address_to_snat_to_is_dropped() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, REMOTE_BACKEND4.into()));
    dp.set_iface(dp.ext, IFACE_F_EXTERNAL, None, Some(NODE6));
    let syn = tcp(
        FROM_CLIENT,
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        SYN,
    );

    assert_eq!(dp.ingress(dp.ext, &syn).verdict, TC_ACT_SHOT);
    assert_eq!(dp.ct_len(), 0);
    assert_eq!(dp.counters().nonzero(), [("nat_no_snat_addr", 1)]);
}
