//! BPF_PROG_TEST_RUN tests of `tc_ingress` and `tc_egress` translating: new flows to
//! a NodePort (DNAT, SNAT, affinity, each forwarding outcome), the reply leg, the
//! stack's egress, ICMP errors. Each builds a packet, seeds the maps of a freshly
//! loaded object, runs the real program and asserts the verdict, the bytes (against a
//! packet built from scratch, so every checksum is recomputed independently), the
//! conntrack entries and the counters. The node they run on is described in
//! `datapath/mod.rs`.
//!
//! Under BPF_PROG_TEST_RUN a redirect is only a verdict: the kernel returns
//! TC_ACT_REDIRECT (7) without sending anything. `bpf_fib_lookup` sees the test
//! namespace's real routes and neighbours, so each forwarding outcome (redirect to a
//! resolved neighbour, `bpf_redirect_neigh` for an unresolved one, "no route: to the
//! stack") is reached on purpose.

mod datapath;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use datapath::nodeport::*;
use datapath::packet::{self, ACK, L4, Macs, SYN};
use datapath::*;
use proxy_common::{FRONTEND_F_AFFINITY, FRONTEND_KIND_SHIFT, ct_state, kind, scope};

// --- new flows to a NodePort ---------------------------------------------------------

#[test]
fn a_syn_to_a_nodeport_is_dnated_to_the_local_backend_and_redirected_to_it() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, BACKEND4.into()));
    let (client, frontend, backend) = (
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        sa(BACKEND4, BACKEND_PORT),
    );
    let syn = tcp(FROM_CLIENT, client, frontend, SYN);

    let r = dp.ingress(dp.ext, &syn);

    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    // Only the destination and the checksums changed; MACs are the FIB's (pod0 and
    // the backend's neighbour entry).
    assert_eq!(r.frame, tcp(TO_BACKEND, client, backend, SYN));
    let seen = packet::check(&r.frame);
    assert_eq!((seen.dst, seen.dport), (backend.ip(), BACKEND_PORT));
    assert_tracked(
        &dp,
        &legs(
            client,
            frontend,
            client,
            backend,
            packet::TCP,
            false,
            syn.len(),
        ),
    );
    assert_eq!(dp.counters().nonzero(), [("ct_new", 1)]);
}

#[test]
fn an_ipv6_syn_to_a_nodeport_is_dnated_to_the_local_backend() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, BACKEND6.into()));
    let (client, frontend, backend) = (
        sa(CLIENT6, CLIENT_PORT),
        sa(NODE6, NODE_PORT),
        sa(BACKEND6, BACKEND_PORT),
    );
    let syn = tcp(FROM_CLIENT, client, frontend, SYN);

    let r = dp.ingress(dp.ext, &syn);

    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.frame, tcp(TO_BACKEND, client, backend, SYN));
    packet::check(&r.frame);
    assert_tracked(
        &dp,
        &legs(
            client,
            frontend,
            client,
            backend,
            packet::TCP,
            false,
            syn.len(),
        ),
    );
    assert_eq!(dp.counters().nonzero(), [("ct_new", 1)]);
}

#[test]
fn udp_datagrams_to_a_nodeport_are_dnated_and_a_zero_checksum_stays_zero() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::UDP, BACKEND4.into()));
    let (frontend, backend) = (sa(NODE4, NODE_PORT), sa(BACKEND4, BACKEND_PORT));

    let client = sa(CLIENT4, CLIENT_PORT);
    let r = dp.ingress(dp.ext, &udp(FROM_CLIENT, client, frontend, b"hello"));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.frame, udp(TO_BACKEND, client, backend, b"hello"));
    packet::check(&r.frame);

    // IPv4 UDP checksum 0 means "none": it must not become a (wrong) checksum.
    let client = sa(CLIENT4, CLIENT_PORT + 1);
    let udp_csum = packet::ETH_HLEN + 20 + 6;
    let mut frame = udp(FROM_CLIENT, client, frontend, b"hello");
    frame[udp_csum..udp_csum + 2].fill(0);
    let r = dp.ingress(dp.ext, &frame);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let mut expected = udp(TO_BACKEND, client, backend, b"hello");
    expected[udp_csum..udp_csum + 2].fill(0);
    assert_eq!(r.frame, expected);

    assert_eq!(dp.ct_len(), 4);
    assert_eq!(dp.counters().nonzero(), [("ct_new", 2)]);
}

#[test]
fn ipv4_options_are_skipped_to_find_and_rewrite_the_ports() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, BACKEND4.into()));
    let (client, frontend, backend) = (
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        sa(BACKEND4, BACKEND_PORT),
    );
    // Router alert, then NOP NOP NOP EOL: an IHL of 7.
    let options = [0x94, 0x04, 0, 0, 1, 1, 1, 0];
    let with_options = |macs: Macs, dst: SocketAddr| {
        let seg = L4::tcp(client.port(), dst.port(), SYN).bytes(client.ip(), dst.ip());
        let (IpAddr::V4(s), IpAddr::V4(d)) = (client.ip(), dst.ip()) else {
            unreachable!("IPv4 addresses")
        };
        packet::eth(macs, &packet::ipv4(s, d, packet::TCP, &options, 0, &seg))
    };
    let syn = with_options(FROM_CLIENT, frontend);

    let r = dp.ingress(dp.ext, &syn);

    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.frame, with_options(TO_BACKEND, backend));
    packet::check(&r.frame);
    assert_eq!(dp.counters().nonzero(), [("ct_new", 1)]);
}

#[test]
fn a_syn_to_a_nodeport_with_a_remote_backend_is_snated_and_its_reply_returns() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, REMOTE_BACKEND4.into()));
    let (client, frontend, backend) = (
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        sa(REMOTE_BACKEND4, BACKEND_PORT),
    );
    // The backend is behind the interface the SYN came in on: without SNAT its
    // replies would go straight to the client. The client's port is free, so kept.
    let snat = sa(NODE4, CLIENT_PORT);
    let syn = tcp(FROM_CLIENT, client, frontend, SYN);

    let r = dp.ingress(dp.ext, &syn);

    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.frame, tcp(TO_GATEWAY, snat, backend, SYN));
    packet::check(&r.frame);
    assert_tracked(
        &dp,
        &legs(
            client,
            frontend,
            snat,
            backend,
            packet::TCP,
            true,
            syn.len(),
        ),
    );

    let from_gateway = Macs {
        src: GATEWAY_MAC,
        dst: EXT_MAC,
    };
    let r = dp.ingress(dp.ext, &tcp(from_gateway, backend, snat, SYN | ACK));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.frame, tcp(TO_CLIENT, frontend, client, SYN | ACK));
    assert_eq!(
        dp.counters().nonzero(),
        [("ct_new", 1), ("ct_translated", 1)]
    );
}

#[test]
fn a_backend_without_a_neighbour_entry_is_reached_through_redirect_neigh() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, UNRESOLVED_BACKEND4.into()));
    let (client, frontend, backend) = (
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        sa(UNRESOLVED_BACKEND4, BACKEND_PORT),
    );

    let r = dp.ingress(dp.ext, &tcp(FROM_CLIENT, client, frontend, SYN));

    // The kernel resolves the neighbour and fills in the MACs itself.
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.frame, tcp(FROM_CLIENT, client, backend, SYN));
    assert_eq!(dp.counters().nonzero(), [("ct_new", 1)]);
}

#[test]
fn a_translated_packet_without_a_route_goes_to_the_stack_and_is_counted() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, UNROUTED4.into()));
    let (client, frontend, backend) = (
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        sa(UNROUTED4, BACKEND_PORT),
    );

    let r = dp.ingress(dp.ext, &tcp(FROM_CLIENT, client, frontend, SYN));

    // Translated all the same: the stack routes it (here it would answer with ICMP).
    assert_eq!(r.verdict, TC_ACT_OK);
    assert_eq!(r.frame, tcp(FROM_CLIENT, client, backend, SYN));
    assert_eq!(dp.counters().nonzero(), [("ct_new", 1), ("fib_pass", 1)]);
}

#[test]
fn client_ip_affinity_keeps_a_client_on_its_first_backend() {
    let mut dp = Datapath::new();
    let mut svc = nodeport(packet::TCP, BACKEND4.into());
    svc.flags |= FRONTEND_F_AFFINITY;
    svc.backends.push(sa(UNRESOLVED_BACKEND4, BACKEND_PORT));
    dp.add_service(&svc);
    let frontend = sa(NODE4, NODE_PORT);

    let first = dp.ingress(
        dp.ext,
        &tcp(FROM_CLIENT, sa(CLIENT4, CLIENT_PORT), frontend, SYN),
    );
    assert_eq!(first.verdict, TC_ACT_REDIRECT);
    let chosen = packet::check(&first.frame).dst;
    let id = dp.client_affinity(CLIENT4.into(), SERVICE_ID);
    assert_eq!(id, Some(if chosen == IpAddr::V4(BACKEND4) { 1 } else { 2 }));
    for port in 1..=8 {
        let syn = tcp(FROM_CLIENT, sa(CLIENT4, CLIENT_PORT + port), frontend, SYN);
        let r = dp.ingress(dp.ext, &syn);
        assert_eq!(r.verdict, TC_ACT_REDIRECT);
        assert_eq!(packet::check(&r.frame).dst, chosen, "connection {port}");
    }
    assert_eq!(
        dp.counters().nonzero(),
        [("client_affinity_hit", 8), ("ct_new", 9)]
    );
}

// --- tracked flows: the reply leg, the stack's egress, ICMP errors -------------------

#[test]
fn the_backends_reply_is_translated_back_to_the_nodeport_and_sent_to_the_client() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, BACKEND4.into()));
    let (client, frontend, backend) = (
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        sa(BACKEND4, BACKEND_PORT),
    );
    let syn = tcp(FROM_CLIENT, client, frontend, SYN);
    assert_eq!(dp.ingress(dp.ext, &syn).verdict, TC_ACT_REDIRECT);

    let r = dp.ingress(dp.pod, &tcp(FROM_BACKEND, backend, client, SYN | ACK));

    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.frame, tcp(TO_CLIENT, frontend, client, SYN | ACK));
    packet::check(&r.frame);

    // The client's ACK of that SYN-ACK completes the handshake: the flow is assured
    // and moves, both legs, to the table that never evicts.
    let r = dp.ingress(dp.ext, &tcp(FROM_CLIENT, client, frontend, ACK));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.frame, tcp(TO_BACKEND, client, backend, ACK));
    let fwd = dp
        .ct_assured(&tuple(client, frontend, packet::TCP))
        .expect("forward leg");
    assert_eq!((fwd.state, fwd.packets), (ct_state::ESTABLISHED, 2));
    let rev = dp
        .ct_assured(&tuple(backend, client, packet::TCP))
        .expect("reply leg");
    assert_eq!((rev.state, rev.packets), (ct_state::ESTABLISHED, 1));
    assert_eq!(dp.ct_len_unassured(), 0);
    assert_eq!(
        dp.counters().nonzero(),
        [("ct_new", 1), ("ct_promoted", 1), ("ct_translated", 2)]
    );
}

#[test]
fn a_reply_the_stack_routed_out_is_rewritten_at_egress() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, BACKEND4.into()));
    let (client, frontend, backend) = (
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        sa(BACKEND4, BACKEND_PORT),
    );
    // SETUP: the flow as tc_ingress tracked it.
    let (fk, fe, rk, re) = legs(client, frontend, client, backend, packet::TCP, false, 60);
    dp.ct_insert(fk, fe);
    dp.ct_insert(rk, re);

    let r = dp.egress(dp.ext, &tcp(TO_CLIENT, backend, client, SYN | ACK));

    // The stack already chose the route and MACs: rewrite only, and let it go.
    assert_eq!(r.verdict, TC_ACT_OK);
    assert_eq!(r.frame, tcp(TO_CLIENT, frontend, client, SYN | ACK));
    packet::check(&r.frame);
    assert_eq!(dp.counters().nonzero(), [("ct_translated", 1)]);
}

#[test]
fn a_node_process_reaching_a_clusterip_is_balanced_at_egress() {
    let mut dp = Datapath::new();
    let vip = sa(Ipv4Addr::new(10, 96, 0, 10), 80);
    dp.add_service(&Service {
        id: SERVICE_ID,
        vip: vip.ip(),
        port: vip.port(),
        proto: packet::TCP,
        scope: scope::INTERNAL,
        flags: kind::CLUSTER_IP << FRONTEND_KIND_SHIFT,
        first_backend_id: BACKEND_ID,
        backends: vec![sa(BACKEND4, BACKEND_PORT)],
    });
    // A process outside the attached cgroup: its SYN leaves with the node's address.
    let node = sa(NODE4, 50000);
    let backend = sa(BACKEND4, BACKEND_PORT);

    let r = dp.egress(dp.ext, &tcp(TO_GATEWAY, node, vip, SYN));

    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.frame, tcp(TO_BACKEND, node, backend, SYN));
    assert_eq!(dp.counters().nonzero(), [("ct_new", 1)]);
}

#[test]
fn an_icmp_port_unreachable_from_the_backend_reaches_the_client_as_from_the_nodeport() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, BACKEND4.into()));
    let (client, frontend, backend) = (
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        sa(BACKEND4, BACKEND_PORT),
    );
    let syn = tcp(FROM_CLIENT, client, frontend, SYN);
    assert_eq!(dp.ingress(dp.ext, &syn).verdict, TC_ACT_REDIRECT);
    let before = dp.counters();
    // An ICMP error quotes the IP header and the first 8 bytes of the segment.
    let quote = |src: SocketAddr, dst: SocketAddr| {
        let p = packet::ip(src.ip(), dst.ip(), &L4::tcp(src.port(), dst.port(), SYN));
        p[..28].to_vec()
    };
    let unreachable = |from: Ipv4Addr, quoted: Vec<u8>| {
        packet::icmp(from.into(), CLIENT4.into(), 3, 3, 0, &quoted)
    };

    let r = dp.ingress(
        dp.pod,
        &packet::eth(FROM_BACKEND, &unreachable(BACKEND4, quote(client, backend))),
    );

    // Outer source and quoted destination both become the NodePort the client used.
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let expected = packet::eth(TO_CLIENT, &unreachable(NODE4, quote(client, frontend)));
    assert_eq!(r.frame, expected);
    let seen = packet::check(&r.frame);
    assert_eq!(seen.inner, Some((client.ip(), frontend.ip())));
    assert_eq!((seen.sport, seen.dport), (CLIENT_PORT, NODE_PORT));
    assert_eq!(dp.counters().since(&before), [("icmp_translated", 1)]);
}

#[test]
fn an_icmpv6_packet_too_big_from_a_router_is_translated_for_the_client() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, BACKEND6.into()));
    let (client, frontend, backend) = (
        sa(CLIENT6, CLIENT_PORT),
        sa(NODE6, NODE_PORT),
        sa(BACKEND6, BACKEND_PORT),
    );
    let syn = tcp(FROM_CLIENT, client, frontend, SYN);
    assert_eq!(dp.ingress(dp.ext, &syn).verdict, TC_ACT_REDIRECT);
    let before = dp.counters();
    // Quoted up to the ports and sequence number: the quoted TCP checksum is not
    // rewritten (nobody checks it), so a longer quote would not match a from-scratch
    // packet there.
    let quote = |src: SocketAddr, dst: SocketAddr| {
        let p = packet::ip(src.ip(), dst.ip(), &L4::tcp(src.port(), dst.port(), SYN));
        p[..48].to_vec()
    };
    let too_big =
        |quoted: Vec<u8>| packet::icmp(POD_ROUTER6.into(), CLIENT6.into(), 2, 0, 1280, &quoted);
    let from_router = Macs {
        src: [2, 0, 0, 0, 2, 0xfe],
        dst: POD_MAC,
    };

    let r = dp.ingress(
        dp.pod,
        &packet::eth(from_router, &too_big(quote(client, backend))),
    );

    // The router keeps its own address; the quoted packet becomes the client's.
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(
        r.frame,
        packet::eth(TO_CLIENT, &too_big(quote(client, frontend)))
    );
    packet::check(&r.frame);
    assert_eq!(dp.counters().since(&before), [("icmp_translated", 1)]);
}
