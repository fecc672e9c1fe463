//! netfilter's connection table over ctnetlink, on this host's kernel, in a network
//! namespace the test makes: a TCP connection DNATed by an nft rule (as iptables
//! kube-proxy and IPVS leave them) and a plain IPv6 one are found by one dump with
//! their tuples, state and status; the per-CPU statistics move when a segment
//! conntrack cannot track is sent (checked against `conntrack -S`); and a delete by
//! the original tuple removes exactly that entry.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use proxy_agent::dataplane::netfilter::conntrack::{Proto, Status, TcpState};
use proxy_agent::dataplane::netfilter::{Ctnetlink, Entry, NetfilterError};
use tests::Netns;
use tests::packet::{Segment, conntrack_invalid, inject};

const VIP: &str = "10.96.0.10:80";
const BACKEND: &str = "10.244.1.5:8080";
const V6_SERVER: &str = "[fd00::5]:9090";

/// The node: every address on `lo`, a DNAT of the VIP to the backend in `output`
/// (`ip` family), and an `inet` filter rule using `ct state`, which makes netfilter
/// track IPv6 as well.
fn node() -> Netns {
    let ns = Netns::new("nfct");
    ns.ip(&["addr", "add", "10.96.0.10/32", "dev", "lo"]);
    ns.ip(&["addr", "add", "10.244.1.5/32", "dev", "lo"]);
    ns.ip(&["addr", "add", "10.0.0.1/32", "dev", "lo"]);
    ns.ip(&["-6", "addr", "add", "fd00::5/128", "dev", "lo", "nodad"]);
    let nft = tests::tool("nft").to_string_lossy().into_owned();
    for rule in [
        "add table ip kpt",
        "add chain ip kpt out { type nat hook output priority -100 ; }",
        "add rule ip kpt out ip daddr 10.96.0.10 tcp dport 80 dnat to 10.244.1.5:8080",
        "add table inet kptf",
        "add chain inet kptf out { type filter hook output priority 0 ; }",
        "add rule inet kptf out ct state invalid counter",
    ] {
        ns.exec(&[&nft, rule]);
    }
    ns
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A connected pair through `to`, one byte each way (so both directions were seen).
fn connect(listener: &TcpListener, to: SocketAddr) -> (TcpStream, TcpStream) {
    let mut client = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
    let (mut server, _) = listener
        .accept()
        .unwrap_or_else(|e| panic!("accepting {to}: {e}"));
    let mut byte = [0u8; 1];
    client.write_all(b"x").expect("client write");
    server.read_exact(&mut byte).expect("server read");
    server.write_all(b"y").expect("server write");
    client.read_exact(&mut byte).expect("client read");
    (client, server)
}

fn dump(ct: &mut Ctnetlink) -> Vec<Entry> {
    ct.dump().unwrap_or_else(|e| panic!("dump: {e}"))
}

#[test]
fn a_dump_finds_a_dnat_connection_and_an_ipv6_one_with_their_tuples_and_state() {
    let ns = node();
    ns.run(|| {
        let backend = TcpListener::bind(sa(BACKEND)).expect("binding the backend");
        let v6 = TcpListener::bind(sa(V6_SERVER)).expect("binding the IPv6 server");
        let (client, _server) = connect(&backend, sa(VIP));
        let (v6_client, _v6_server) = connect(&v6, sa(V6_SERVER));
        let local = client.local_addr().expect("local address");
        let v6_local = v6_client.local_addr().expect("local address");

        let mut ct = Ctnetlink::open().unwrap_or_else(|e| panic!("{e}"));
        let entries = dump(&mut ct);
        let Some(dnat) = entries
            .iter()
            .find(|e| e.original.source() == local && e.protocol() == Proto::TCP)
        else {
            panic!("no entry from {local} in {entries:#?}");
        };
        assert_eq!(dnat.original.destination(), sa(VIP), "{dnat:?}");
        assert_eq!(dnat.reply.source(), sa(BACKEND), "{dnat:?}");
        assert_eq!(dnat.reply.destination(), local, "{dnat:?}");
        assert_eq!(dnat.tcp_state, Some(TcpState::ESTABLISHED), "{dnat:?}");
        assert!(
            dnat.status
                .has(Status::DST_NAT | Status::SEEN_REPLY | Status::ASSURED),
            "{:?}",
            dnat.status.names()
        );
        // An established TCP entry lives for nf_conntrack_tcp_timeout_established (5 days).
        assert!(dnat.timeout_s > 400_000, "{dnat:?}");
        assert_eq!((dnat.mark, dnat.zone), (0, 0));

        let Some(plain) = entries.iter().find(|e| e.original.source() == v6_local) else {
            panic!("no IPv6 entry from {v6_local} in {entries:#?}");
        };
        assert_eq!(
            plain.family,
            proxy_agent::dataplane::netfilter::Family::Ipv6
        );
        assert_eq!(plain.reply.source(), sa(V6_SERVER));
        assert!(!plain.status.has(Status::DST_NAT), "{plain:?}");
    });
}

#[test]
fn the_statistics_count_entries_and_an_untrackable_segment_as_invalid() {
    let ns = node();
    let (before, after) = ns.run(|| {
        let backend = TcpListener::bind(sa(BACKEND)).expect("binding the backend");
        let _pair = connect(&backend, sa(VIP));
        let mut ct = Ctnetlink::open().unwrap_or_else(|e| panic!("{e}"));
        let before = ct.stats().unwrap_or_else(|e| panic!("{e}"));
        // SYN|FIN is no valid flag combination: conntrack's TCP tracker refuses it
        // (tcp_error), and nf_conntrack_in counts the packet as invalid.
        for sport in [1000, 1001, 1002] {
            inject(
                &Segment {
                    src: Ipv4Addr::new(10, 0, 0, 1),
                    dst: Ipv4Addr::new(10, 244, 1, 5),
                    sport,
                    dport: 8080,
                    seq: 1,
                    ack: 0,
                    flags: 0x03,
                    window: 1024,
                    payload_len: 0,
                },
                &[],
            );
        }
        let after = ct.stats().unwrap_or_else(|e| panic!("{e}"));
        (before, after)
    });
    assert!(before.entries >= 1, "{before:?}");
    assert!(before.max > 0 && before.cpus >= 1, "{before:?}");
    assert!(
        after.sums.invalid >= before.sums.invalid + 3,
        "invalid did not move by 3: {before:?} -> {after:?}"
    );
    // The same numbers as the reference tool's, read in the same namespace.
    assert_eq!(conntrack_invalid(&ns), after.sums.invalid);
}

#[test]
fn a_delete_by_the_original_tuple_removes_that_entry_only() {
    let ns = node();
    ns.run(|| {
        let backend = TcpListener::bind(sa(BACKEND)).expect("binding the backend");
        let (a, _a) = connect(&backend, sa(VIP));
        let (b, _b) = connect(&backend, sa(VIP));
        let (a, b) = (
            a.local_addr().expect("local address"),
            b.local_addr().expect("local address"),
        );
        let mut ct = Ctnetlink::open().unwrap_or_else(|e| panic!("{e}"));
        let find = |entries: &[Entry], from: SocketAddr| {
            entries
                .iter()
                .find(|e| e.original.source() == from)
                .cloned()
        };
        let entries = dump(&mut ct);
        let Some(victim) = find(&entries, a) else {
            panic!("no entry from {a}: {entries:#?}");
        };
        ct.delete(&victim.original, victim.zone)
            .unwrap_or_else(|e| panic!("delete: {e}"));
        let entries = dump(&mut ct);
        assert_eq!(find(&entries, a), None, "still there after the delete");
        assert!(find(&entries, b).is_some(), "the other entry went too");
        let again = ct.delete(&victim.original, 0);
        assert!(
            matches!(again, Err(NetfilterError::NotFound { .. })),
            "{again:?}"
        );
        let shown = again.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            shown.contains(&format!("tcp {a} -> {VIP}")),
            "the error names the tuple: {shown}"
        );
    });
}
