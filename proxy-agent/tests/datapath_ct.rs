//! BPF_PROG_TEST_RUN tests of the tc path's two connection tables: flows start in
//! `CT_OPEN` (an LRU), move to `CONNTRACK` (never evicts) once assured as netfilter's
//! `IPS_ASSURED` means it, and a flood of flows that are never assured evicts only its
//! own kind. The node they run on is described in `datapath/mod.rs`.

mod datapath;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use datapath::nodeport::*;
use datapath::packet::{self, ACK, L4, SEQ, SYN};
use datapath::*;
use proxy_common::{CT_F_SYNACK, ct_state};

const FIN: u8 = 0x01;

/// A TCP segment with its own sequence and acknowledgment numbers.
fn tcp_seq(
    macs: packet::Macs,
    src: SocketAddr,
    dst: SocketAddr,
    flags: u8,
    seq: u32,
    ack: u32,
) -> Vec<u8> {
    let l4 = L4 {
        seq,
        ack,
        ..L4::tcp(src.port(), dst.port(), flags)
    };
    packet::eth(macs, &packet::ip(src.ip(), dst.ip(), &l4))
}

struct Flow {
    client: SocketAddr,
    frontend: SocketAddr,
    backend: SocketAddr,
}

impl Flow {
    fn new(client_port: u16) -> Self {
        Flow {
            client: sa(CLIENT4, client_port),
            frontend: sa(NODE4, NODE_PORT),
            backend: sa(BACKEND4, BACKEND_PORT),
        }
    }

    fn fwd(&self) -> proxy_common::CtKey {
        tuple(self.client, self.frontend, packet::TCP)
    }

    fn rev(&self) -> proxy_common::CtKey {
        tuple(self.backend, self.client, packet::TCP)
    }

    fn syn(&self, dp: &Datapath) -> u32 {
        dp.ingress(dp.ext, &tcp(FROM_CLIENT, self.client, self.frontend, SYN))
            .verdict
    }

    /// The backend's SYN-ACK with sequence number `seq`.
    fn syn_ack(&self, dp: &Datapath, seq: u32) -> u32 {
        let f = tcp_seq(
            FROM_BACKEND,
            self.backend,
            self.client,
            SYN | ACK,
            seq,
            SEQ + 1,
        );
        dp.ingress(dp.pod, &f).verdict
    }

    /// A client segment acknowledging `ack`.
    fn ack(&self, dp: &Datapath, flags: u8, ack: u32) -> u32 {
        let f = tcp_seq(FROM_CLIENT, self.client, self.frontend, flags, SEQ + 1, ack);
        dp.ingress(dp.ext, &f).verdict
    }

    /// The whole handshake, with the backend's sequence number `isn`.
    fn handshake(&self, dp: &Datapath, isn: u32) {
        assert_eq!(self.syn(dp), TC_ACT_REDIRECT, "SYN");
        assert_eq!(self.syn_ack(dp, isn), TC_ACT_REDIRECT, "SYN-ACK");
        assert_eq!(
            self.ack(dp, ACK, isn.wrapping_add(1)),
            TC_ACT_REDIRECT,
            "ACK"
        );
    }
}

fn service(dp: &mut Datapath) {
    dp.add_service(&nodeport(packet::TCP, BACKEND4.into()));
}

#[test]
fn a_handshake_is_assured_only_by_an_ack_of_the_backends_syn_ack() {
    let mut dp = Datapath::new();
    service(&mut dp);
    let f = Flow::new(CLIENT_PORT);
    let isn = 0xfffe_0000;

    assert_eq!(f.syn(&dp), TC_ACT_REDIRECT);
    // A blind ACK before any SYN-ACK proves nothing; it is still translated (the
    // backend judges it).
    assert_eq!(f.ack(&dp, ACK, isn + 1), TC_ACT_REDIRECT);
    assert_eq!(dp.ct_len_assured(), 0);

    assert_eq!(f.syn_ack(&dp, isn), TC_ACT_REDIRECT);
    let rev = dp.ct_unassured(&f.rev()).expect("reply leg");
    assert_eq!(
        (rev.ack_next, rev.ct.flags & CT_F_SYNACK),
        (isn + 1, CT_F_SYNACK)
    );

    // An ACK of another number (a spoofed client guessing) leaves it unassured.
    assert_eq!(f.ack(&dp, ACK, isn + 2), TC_ACT_REDIRECT);
    assert_eq!(dp.ct_len_assured(), 0);
    assert_eq!(
        dp.ct_unassured(&f.fwd()).map(|o| o.ct.state),
        Some(ct_state::OPENING)
    );

    // The right one assures it: both legs move, established, nothing left behind.
    assert_eq!(f.ack(&dp, ACK, isn + 1), TC_ACT_REDIRECT);
    let fwd = dp.ct_assured(&f.fwd()).expect("forward leg assured");
    let rev = dp.ct_assured(&f.rev()).expect("reply leg assured");
    assert_eq!(
        (fwd.state, rev.state),
        (ct_state::ESTABLISHED, ct_state::ESTABLISHED)
    );
    assert_eq!(rev.flags & CT_F_SYNACK, 0, "the proof stays behind");
    assert_eq!(
        fwd.packets, 4,
        "every client packet counted, the promoting one too"
    );
    assert_eq!(dp.ct_len_unassured(), 0);
    assert_eq!(
        dp.counters().nonzero(),
        [
            ("ct_ack_mismatch", 1),
            ("ct_new", 1),
            ("ct_promoted", 1),
            ("ct_translated", 4)
        ]
    );

    // And its packets are translated from there.
    let r = dp.ingress(dp.ext, &tcp(FROM_CLIENT, f.client, f.frontend, ACK));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.frame, tcp(TO_BACKEND, f.client, f.backend, ACK));
}

#[test]
fn the_sequence_number_check_wraps_around() {
    let mut dp = Datapath::new();
    service(&mut dp);
    let f = Flow::new(CLIENT_PORT);
    f.handshake(&dp, u32::MAX);
    assert!(dp.ct_assured(&f.fwd()).is_some());
}

#[test]
fn udp_is_assured_once_the_client_speaks_again_after_a_reply() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::UDP, BACKEND4.into()));
    let (client, frontend, backend) = (
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        sa(BACKEND4, BACKEND_PORT),
    );
    let to_backend = || udp(FROM_CLIENT, client, frontend, b"q");
    let fwd = tuple(client, frontend, packet::UDP);

    // Two datagrams one way: a client that was never answered.
    for _ in 0..2 {
        assert_eq!(dp.ingress(dp.ext, &to_backend()).verdict, TC_ACT_REDIRECT);
    }
    assert_eq!(dp.ct_len_assured(), 0);
    // The backend answers: two-way, but the client has not spoken since.
    let reply = udp(FROM_BACKEND, backend, client, b"a");
    assert_eq!(dp.ingress(dp.pod, &reply).verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.ct_len_assured(), 0);
    // Now it has.
    assert_eq!(dp.ingress(dp.ext, &to_backend()).verdict, TC_ACT_REDIRECT);
    let e = dp.ct_assured(&fwd).expect("assured");
    assert_eq!((e.state, e.packets), (ct_state::ESTABLISHED, 3));
    assert_eq!(dp.ct_len_assured(), 2);
    assert_eq!(dp.ct_len_unassured(), 0);
    assert_eq!(
        dp.counters().nonzero(),
        [("ct_new", 1), ("ct_promoted", 1), ("ct_translated", 3)]
    );
}

#[test]
fn a_flood_of_spoofed_syns_evicts_only_unassured_flows() {
    // Room for 32 unassured flows; the flood opens 1,000.
    let mut dp = Datapath::with_tables(CONNTRACK_MAX, 64);
    service(&mut dp);
    let held = Flow::new(CLIENT_PORT);
    held.handshake(&dp, 1000);
    // A handshake in progress when the flood starts.
    let slow = Flow::new(CLIENT_PORT + 1);
    assert_eq!(slow.syn(&dp), TC_ACT_REDIRECT);

    for i in 0..1000u32 {
        let [_, _, a, b] = i.to_be_bytes();
        let spoofed = sa(Ipv4Addr::new(198, 18, a, b), 1024 + (i % 60_000) as u16);
        let syn = tcp(FROM_CLIENT, spoofed, held.frontend, SYN);
        assert_eq!(dp.ingress(dp.ext, &syn).verdict, TC_ACT_REDIRECT, "SYN {i}");
    }

    assert!(
        dp.ct_len_unassured() <= 64,
        "{} unassured entries",
        dp.ct_len_unassured()
    );
    // The flood pushed the old handshake out, as netfilter's early_drop would.
    assert!(dp.ct_unassured(&slow.fwd()).is_none());
    // The assured flow is untouched and still translated.
    assert_eq!(dp.ct_len_assured(), 2);
    let r = dp.ingress(dp.ext, &tcp(FROM_CLIENT, held.client, held.frontend, ACK));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.frame, tcp(TO_BACKEND, held.client, held.backend, ACK));
    // A new client right after the flood gets in and is assured.
    let new = Flow::new(CLIENT_PORT + 2);
    new.handshake(&dp, 7);
    assert!(dp.ct_assured(&new.fwd()).is_some());
    let c = dp.counters();
    assert_eq!(c.get("ct_new"), 1003);
    assert_eq!(c.get("ct_promoted"), 2);
    assert_eq!((c.get("ct_full"), c.get("ct_insert_failed")), (0, 0));
}

#[test]
fn an_assured_flow_that_finds_the_assured_table_full_is_still_served() {
    // Room for one assured flow and one more leg: the second flow's reply leg fits,
    // its forward leg does not, so the reply leg is taken back out.
    let mut dp = Datapath::with_tables(3, CT_OPEN_MAX);
    service(&mut dp);
    let first = Flow::new(CLIENT_PORT);
    first.handshake(&dp, 1);
    let second = Flow::new(CLIENT_PORT + 1);
    second.handshake(&dp, 2);

    assert_eq!(dp.ct_len_assured(), 2);
    assert!(
        dp.ct_assured(&second.rev()).is_none(),
        "no orphan reply leg"
    );
    // Proven, kept in the unassured table, and retried at its next packet.
    assert_eq!(
        dp.ct_unassured(&second.fwd()).map(|o| o.ct.state),
        Some(ct_state::ESTABLISHED)
    );
    let r = dp.ingress(
        dp.ext,
        &tcp(FROM_CLIENT, second.client, second.frontend, ACK),
    );
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.frame, tcp(TO_BACKEND, second.client, second.backend, ACK));
    let c = dp.counters();
    assert_eq!((c.get("ct_full"), c.get("ct_promoted")), (2, 1));
    assert_eq!(c.get("ct_rollback_failed"), 0);
}

#[test]
fn a_syn_on_the_tuple_of_a_closed_flow_starts_over_unassured() {
    let mut dp = Datapath::new();
    service(&mut dp);
    let f = Flow::new(CLIENT_PORT);
    f.handshake(&dp, 5);
    assert_eq!(f.ack(&dp, FIN | ACK, 6), TC_ACT_REDIRECT);
    assert_eq!(
        dp.ct_assured(&f.fwd()).map(|e| e.state),
        Some(ct_state::CLOSING)
    );

    // The client reuses its port: the closed flow's legs go, the new one starts over.
    assert_eq!(f.syn(&dp), TC_ACT_REDIRECT);
    assert_eq!(dp.ct_len_assured(), 0);
    assert_eq!(dp.ct_len_unassured(), 2);
    // The same again before it was assured.
    assert_eq!(f.ack(&dp, FIN | ACK, 0), TC_ACT_REDIRECT);
    assert_eq!(f.syn(&dp), TC_ACT_REDIRECT);
    assert_eq!(dp.ct_len_unassured(), 2);
    let c = dp.counters();
    assert_eq!((c.get("ct_new"), c.get("ct_reopened")), (3, 1));
}

#[test]
fn icmp_errors_about_unassured_flows_are_translated() {
    // A closed UDP port on the backend answers the first datagram with an ICMP error:
    // the flow is unassured then, and the client must still learn of it.
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::UDP, BACKEND4.into()));
    let (client, frontend, backend) = (
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        sa(BACKEND4, BACKEND_PORT),
    );
    let q = udp(FROM_CLIENT, client, frontend, b"q");
    assert_eq!(dp.ingress(dp.ext, &q).verdict, TC_ACT_REDIRECT);
    let translated = udp(TO_BACKEND, client, backend, b"q");
    let quoted = &translated[packet::ETH_HLEN..];
    let err = packet::eth(
        FROM_BACKEND,
        &packet::icmp(backend.ip(), client.ip(), 3, 3, 0, quoted),
    );
    let r = dp.ingress(dp.pod, &err);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let seen = packet::check(&r.frame);
    assert_eq!(seen.src, IpAddr::V4(NODE4), "sent as from the NodePort");
    assert_eq!(dp.counters().get("icmp_translated"), 1);
}

#[test]
fn a_udp_flow_whose_backend_left_starts_over_on_a_remaining_one() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::UDP, BACKEND4.into()));
    let (client, frontend, backend) = (
        sa(CLIENT4, CLIENT_PORT),
        sa(NODE4, NODE_PORT),
        sa(BACKEND4, BACKEND_PORT),
    );
    let q = || udp(FROM_CLIENT, client, frontend, b"q");
    // An assured flow: out, back, out again.
    assert_eq!(dp.ingress(dp.ext, &q()).verdict, TC_ACT_REDIRECT);
    let reply = udp(FROM_BACKEND, backend, client, b"a");
    assert_eq!(dp.ingress(dp.pod, &reply).verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.ingress(dp.ext, &q()).verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.ct_len_assured(), 2);

    // The backend leaves; another takes its slot (as the agent writes it: the slot
    // first, then the old membership goes).
    let other = sa(UNRESOLVED_BACKEND4, BACKEND_PORT);
    dp.set_backend(BACKEND_ID + 1, other, packet::UDP);
    dp.set_slots(SERVICE_ID, &[BACKEND_ID + 1]);
    dp.remove_member(SERVICE_ID, BACKEND_ID);

    // The next datagram of the same flow goes to the remaining backend, as
    // kube-proxy's conntrack flush for a removed UDP endpoint makes it.
    let r = dp.ingress(dp.ext, &q());
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(packet::check(&r.frame).dst, other.ip());
    assert_eq!(dp.ct_len_assured(), 0, "the old flow's legs are gone");
    let fwd = dp
        .ct_unassured(&tuple(client, frontend, packet::UDP))
        .expect("the new flow");
    assert_eq!(fwd.ct.backend_id, BACKEND_ID + 1);
}

#[test]
fn an_unassured_flow_yields_its_snat_port_and_an_assured_one_keeps_it() {
    let mut dp = Datapath::new();
    dp.add_service(&nodeport(packet::TCP, REMOTE_BACKEND4.into()));
    let frontend = sa(NODE4, NODE_PORT);
    let backend = sa(REMOTE_BACKEND4, BACKEND_PORT);
    let snat = sa(NODE4, CLIENT_PORT);
    let from_gateway = packet::Macs {
        src: GATEWAY_MAC,
        dst: EXT_MAC,
    };
    // A spoofed client holds node:CLIENT_PORT toward the backend, never assured.
    let spoofed = sa(Ipv4Addr::new(198, 18, 0, 1), CLIENT_PORT);
    let syn = |c| tcp(FROM_CLIENT, c, frontend, SYN);
    assert_eq!(dp.ingress(dp.ext, &syn(spoofed)).verdict, TC_ACT_REDIRECT);
    assert!(
        dp.ct_unassured(&tuple(backend, snat, packet::TCP))
            .is_some()
    );

    // A new client with the same port gets that port: the unassured flow is evicted,
    // both legs.
    let client = sa(CLIENT4, CLIENT_PORT);
    let r = dp.ingress(dp.ext, &syn(client));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.frame, tcp(TO_GATEWAY, snat, backend, SYN));
    assert!(
        dp.ct_unassured(&tuple(spoofed, frontend, packet::TCP))
            .is_none()
    );
    assert_eq!(dp.ct_len_unassured(), 2);
    assert_eq!(dp.counters().get("ct_tuple_reclaimed"), 1);

    // Once that client's flow is assured, the port is its own: the next client with
    // the same port is SNATed to another one.
    let syn_ack = tcp(from_gateway, backend, snat, SYN | ACK);
    assert_eq!(dp.ingress(dp.ext, &syn_ack).verdict, TC_ACT_REDIRECT);
    let ack = tcp(FROM_CLIENT, client, frontend, ACK);
    assert_eq!(dp.ingress(dp.ext, &ack).verdict, TC_ACT_REDIRECT);
    assert!(dp.ct_assured(&tuple(backend, snat, packet::TCP)).is_some());
    let third = sa(Ipv4Addr::new(192, 0, 2, 12), CLIENT_PORT);
    let r = dp.ingress(dp.ext, &syn(third));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let seen = packet::check(&r.frame);
    assert_eq!(seen.src, IpAddr::V4(NODE4));
    assert_ne!(seen.sport, CLIENT_PORT, "the assured flow's port was taken");
    assert!((61_000..=65_535).contains(&seen.sport), "{}", seen.sport);
    assert!(
        dp.ct_assured(&tuple(client, frontend, packet::TCP))
            .is_some()
    );
    assert_eq!(dp.counters().get("ct_tuple_reclaimed"), 1);
}
