//! BPF_PROG_TEST_RUN tests of path MTU discovery through the NAT: a packet of a
//! translated flow that is too big for the route to its destination is answered by
//! `tc_ingress` itself with the ICMP error its sender needs, quoting the packet as the
//! sender sent it (`proxy-ebpf/src/too_big.rs`). The stack could not: for a SNATed
//! flow it would drop the translated packet as a martian, and its error would quote a
//! tuple the sender never used. An IPv4 packet that may be fragmented stays the
//! stack's to fragment.

mod datapath;

use std::net::{IpAddr, SocketAddr};

use datapath::nodeport::*;
use datapath::packet::{self, ACK, L4, Macs};
use datapath::*;

/// IPv4 "don't fragment".
const DF: u16 = 0x4000;

/// A frame from the client of `ip_len` IP bytes: a TCP segment (with ACK) or a UDP
/// datagram; `frag` is the IPv4 flags/fragment field.
fn big(proto: u8, src: SocketAddr, dst: SocketAddr, ip_len: usize, frag: u16) -> Vec<u8> {
    big_from(FROM_CLIENT, proto, src, dst, ip_len, frag)
}

/// [`big`] in a frame with `macs`.
fn big_from(
    macs: Macs,
    proto: u8,
    src: SocketAddr,
    dst: SocketAddr,
    ip_len: usize,
    frag: u16,
) -> Vec<u8> {
    let ip_hlen = if src.is_ipv4() { 20 } else { 40 };
    let l4_hlen = if proto == packet::TCP { 20 } else { 8 };
    let payload = vec![0xa5; ip_len - ip_hlen - l4_hlen];
    let l4 = if proto == packet::TCP {
        L4 {
            payload,
            ..L4::tcp(src.port(), dst.port(), ACK)
        }
    } else {
        L4::udp(src.port(), dst.port(), &payload)
    };
    let seg = l4.bytes(src.ip(), dst.ip());
    let ip = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => packet::ipv4(s, d, proto, &[], frag, &seg),
        (IpAddr::V6(s), IpAddr::V6(d)) => packet::ipv6(s, d, proto, &seg),
        _ => panic!("mixed families"),
    };
    packet::eth(macs, &ip)
}

/// Asserts that `frame` is the ICMP error about `sent` (a frame of protocol `proto`)
/// for `mtu`, from `from` (the node's address on the interface) back to the sender
/// (to the MAC it came from): every checksum right, also after a checksum offload
/// pending on the packet fills in the quoted transport checksum on the way out (as it
/// would for a GSO or GRO packet).
fn assert_answers(frame: &[u8], sent: &[u8], proto: u8, mtu: u32, from: IpAddr) {
    let v4 = from.is_ipv4();
    let seen = packet::check(frame);
    let came = Macs {
        src: sent[6..12].try_into().expect("6 bytes"),
        dst: sent[0..6].try_into().expect("6 bytes"),
    };
    assert_eq!(
        seen.macs,
        Macs {
            src: came.dst,
            dst: came.src
        },
        "back to the MAC it came from"
    );
    assert_eq!((seen.src, seen.proto), (from, if v4 { 1 } else { 58 }));
    let ip_hlen = if v4 { 20 } else { 40 };
    let outer = &frame[packet::ETH_HLEN..];
    if v4 {
        assert_eq!(outer[8], 64, "TTL");
        assert_eq!(
            u16::from_be_bytes([outer[6], outer[7]]),
            DF,
            "DF, no fragment"
        );
    } else {
        assert_eq!(outer[7], 64, "hop limit");
    }
    let icmp = &outer[ip_hlen..];
    let (ty, code) = if v4 { (3, 4) } else { (2, 0) };
    assert_eq!((icmp[0], icmp[1]), (ty, code), "ICMP type and code");
    let rest = u32::from_be_bytes(icmp[4..8].try_into().expect("4 bytes"));
    assert_eq!(rest, mtu, "the route's MTU");
    // The quote: the sender's IP header and its transport header's fixed part,
    // unchanged but for the transport checksum (which nobody checks in a quote).
    let field = ip_hlen + if proto == packet::TCP { 16 } else { 6 };
    let quoted = &icmp[8..];
    let mut want = sent[packet::ETH_HLEN..packet::ETH_HLEN + field + 2].to_vec();
    want[field..].copy_from_slice(&quoted[field..field + 2]);
    want.extend_from_slice(&sent[packet::ETH_HLEN + field + 2..][..quoted.len() - field - 2]);
    assert_eq!(quoted, want, "the quote");
    assert_eq!(
        quoted.len(),
        field + if proto == packet::TCP { 4 } else { 2 }
    );

    // What a pending offload would write there: the checksum of the transport bytes
    // to the end, the field included. It must be what is there already, or the
    // ICMP checksum would break on the way out.
    let mut done = frame.to_vec();
    let l4 = packet::ETH_HLEN + ip_hlen + 8 + ip_hlen;
    let at = packet::ETH_HLEN + ip_hlen + 8 + field;
    let c = !packet::fold(packet::sum(&done[l4..]));
    done[at..at + 2].copy_from_slice(&c.to_be_bytes());
    assert_eq!(
        done, frame,
        "a pending checksum offload would change the quote"
    );
}

#[test]
fn a_segment_too_big_for_the_route_to_a_remote_backend_is_answered_with_fragmentation_needed() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, REMOTE_BACKEND4.into()));
    // Locked: forwarding honours a route's MTU only then (or a learned path MTU).
    dp.ip_batch("route change 198.51.100.0/24 via 192.0.2.254 dev ext0 mtu lock 1280\n");
    let (client, frontend) = (sa(CLIENT4, CLIENT_PORT), sa(NODE4, NODE_PORT));
    let syn = tcp(FROM_CLIENT, client, frontend, packet::SYN);
    assert_eq!(dp.ingress(dp.ext, &syn).verdict, TC_ACT_REDIRECT);
    let before = dp.counters();

    let sent = big(packet::TCP, client, frontend, 1400, DF);
    let r = dp.ingress(dp.ext, &sent);

    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_answers(&r.frame, &sent, packet::TCP, 1280, NODE4.into());
    assert_eq!(
        dp.counters().since(&before),
        [("ct_translated", 1), ("icmp_too_big_sent", 1)]
    );
    // The control: a segment that fits goes on to the backend, SNATed.
    let r = dp.ingress(dp.ext, &big(packet::TCP, client, frontend, 1280, DF));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let seen = packet::check(&r.frame);
    assert_eq!(
        (seen.src, seen.dst, seen.dport),
        (NODE4.into(), REMOTE_BACKEND4.into(), BACKEND_PORT)
    );
}

#[test]
fn an_ipv6_datagram_too_big_for_a_local_backends_link_is_answered_with_packet_too_big() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::UDP, BACKEND6.into()));
    dp.ip_batch("link set pod0 mtu 1280\n");
    let (client, frontend) = (sa(CLIENT6, CLIENT_PORT), sa(NODE6, NODE_PORT));

    // The flow's first datagram: opened, then answered.
    let sent = big(packet::UDP, client, frontend, 1400, 0);
    let r = dp.ingress(dp.ext, &sent);

    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_answers(&r.frame, &sent, packet::UDP, 1280, NODE6.into());
    assert_eq!(
        dp.counters().nonzero(),
        [("ct_new", 1), ("icmp_too_big_sent", 1)]
    );
    // The control: one that fits reaches the backend.
    let r = dp.ingress(dp.ext, &big(packet::UDP, client, frontend, 1280, 0));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(packet::check(&r.frame).dst, IpAddr::from(BACKEND6));
}

#[test]
fn an_ipv4_packet_that_may_be_fragmented_is_translated_and_left_to_the_stack() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::UDP, BACKEND4.into()));
    dp.ip_batch("link set pod0 mtu 1280\n");
    let (client, frontend, backend) = (
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        sa(BACKEND4, BACKEND_PORT),
    );

    let r = dp.ingress(dp.ext, &big(packet::UDP, client, frontend, 1400, 0));

    // The stack fragments it on the way to the backend.
    assert_eq!(r.verdict, TC_ACT_OK);
    assert_eq!(r.frame, big(packet::UDP, client, backend, 1400, 0));
    assert_eq!(dp.counters().nonzero(), [("ct_new", 1), ("fib_pass", 1)]);
}

#[test]
fn a_local_backends_reply_too_big_for_the_route_to_the_client_is_answered_to_the_backend() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, BACKEND4.into()));
    dp.ip_batch("link set ext0 mtu 1280\n");
    let (client, frontend, backend) = (
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        sa(BACKEND4, BACKEND_PORT),
    );
    let syn = tcp(FROM_CLIENT, client, frontend, packet::SYN);
    assert_eq!(dp.ingress(dp.ext, &syn).verdict, TC_ACT_REDIRECT);
    let before = dp.counters();

    let sent = big_from(FROM_BACKEND, packet::TCP, backend, client, 1400, DF);
    let r = dp.ingress(dp.pod, &sent);

    // The backend learns the path MTU toward the client, about its own packet, from
    // the node's address on its side (as a router would answer).
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_answers(&r.frame, &sent, packet::TCP, 1280, POD_NODE4.into());
    assert_eq!(packet::check(&r.frame).dst, IpAddr::from(BACKEND4));
    assert_eq!(
        dp.counters().since(&before),
        [("ct_translated", 1), ("icmp_too_big_sent", 1)]
    );
}
