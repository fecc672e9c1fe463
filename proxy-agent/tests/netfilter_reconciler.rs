//! The IPVS mode's netfilter parts that need no IPVS, on this host's kernel, in a
//! network namespace each test makes: the UDP conntrack reconciler deletes exactly
//! the entries of a UDP virtual server whose reply does not come from one of its
//! backends (over a real ctnetlink dump and delete, with entries made by an nft DNAT
//! as IPVS makes them), and kube-proxy's nfacct object counts what an INVALID drop
//! rule drops, read back as `kubeproxy_iptables_ct_state_invalid_dropped_packets_total`.
//! The IPVS-mode agent does both in the VM (`vm_ipvs_conntrack`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use proxy_agent::dataplane::ipvs::invalid_drops::{INVALID_DROPPED_COUNTER, InvalidDropped};
use proxy_agent::dataplane::netfilter::conntrack::Proto;
use proxy_agent::dataplane::netfilter::nfacct::{Nfacct, NfacctError};
use proxy_agent::dataplane::netfilter::reconciler::{ConntrackReconciler, UdpServers};
use proxy_agent::dataplane::netfilter::{Ctnetlink, Entry, Family};
use tests::Netns;
use tests::packet::{Segment, inject};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Every address on `lo`; UDP to the VIP 10.96.0.10:53 DNATed to the endpoint that
/// will leave (10.244.1.5:5353), UDP to 10.96.0.11:53 (no virtual server) left alone.
fn node() -> Netns {
    let ns = Netns::new("nfrec");
    for addr in [
        "10.96.0.10/32",
        "10.96.0.11/32",
        "10.244.1.5/32",
        "10.0.0.1/32",
    ] {
        ns.ip(&["addr", "add", addr, "dev", "lo"]);
    }
    let nft = tests::tool("nft").to_string_lossy().into_owned();
    for rule in [
        "add table ip kpt",
        "add chain ip kpt out { type nat hook output priority -100 ; }",
        "add rule ip kpt out ip daddr 10.96.0.10 udp dport 53 dnat to 10.244.1.5:5353",
    ] {
        ns.exec(&[&nft, rule]);
    }
    ns
}

/// A datagram from `from` to `to`, answered by `server` (so both directions were seen).
fn exchange(from: SocketAddr, to: SocketAddr, server: &UdpSocket) {
    let client = UdpSocket::bind(from).unwrap_or_else(|e| panic!("binding {from}: {e}"));
    client.send_to(b"q", to).expect("sending");
    let mut buf = [0u8; 16];
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a timeout");
    let (_, peer) = server.recv_from(&mut buf).expect("the server receives");
    server.send_to(b"a", peer).expect("answering");
}

fn udp_from(entries: &[Entry], port: u16) -> Option<&Entry> {
    entries
        .iter()
        .find(|e| e.protocol() == Proto::UDP && e.original.src_port == port)
}

#[test]
fn the_reconciler_deletes_udp_entries_of_an_endpoint_that_left_and_nothing_else() {
    let ns = node();
    ns.run(|| {
        let endpoint = UdpSocket::bind(sa("10.244.1.5:5353")).expect("binding the endpoint");
        let other = UdpSocket::bind(sa("10.96.0.11:53")).expect("binding a plain server");
        exchange(sa("10.0.0.1:40000"), sa("10.96.0.10:53"), &endpoint);
        exchange(sa("10.0.0.1:40001"), sa("10.96.0.11:53"), &other);

        let mut ct = Ctnetlink::open().unwrap_or_else(|e| panic!("{e}"));
        let before = ct
            .dump_family(Family::Ipv4)
            .unwrap_or_else(|e| panic!("dump: {e}"));
        let dnat = udp_from(&before, 40000).unwrap_or_else(|| panic!("no entry: {before:#?}"));
        assert_eq!(dnat.reply.source(), sa("10.244.1.5:5353"), "{dnat:?}");
        assert!(udp_from(&before, 40001).is_some(), "{before:#?}");

        // While the endpoint serves, nothing is stale.
        let serving = |backends: &[&str]| {
            let servers: UdpServers = [(
                sa("10.96.0.10:53"),
                backends.iter().map(|b| sa(b)).collect(),
            )]
            .into();
            BTreeMap::from([(Family::Ipv4, servers)])
        };
        let mut reconciler = ConntrackReconciler::default();
        assert!(reconciler.run(&serving(&["10.244.1.5:5353"])));
        let kept = ct.dump_family(Family::Ipv4).expect("dump");
        assert!(udp_from(&kept, 40000).is_some(), "deleted a live flow");

        // The endpoint left; another serves.
        assert!(reconciler.run(&serving(&["10.244.2.5:5353"])));
        let after = ct.dump_family(Family::Ipv4).expect("dump");
        assert!(udp_from(&after, 40000).is_none(), "still there: {after:#?}");
        assert!(
            udp_from(&after, 40001).is_some(),
            "an entry of no virtual server went too"
        );

        let mut registry = prometheus_client::registry::Registry::default();
        reconciler.metrics().register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for line in [
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"} 1",
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv4\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    });
}

/// `iptables -w 5 ARGS` in `ns`.
fn iptables(ns: &Netns, args: &[&str]) {
    let bin = tests::tool("iptables").to_string_lossy().into_owned();
    let mut all = vec![bin.as_str(), "-w", "5"];
    all.extend_from_slice(args);
    ns.exec(&all);
}

/// On INPUT: the segment leaves (a drop on OUTPUT would fail the `sendto`), loops
/// back over `lo` and is dropped there.
const COUNTED_DROP: [&str; 10] = [
    "INPUT",
    "-m",
    "conntrack",
    "--ctstate",
    "INVALID",
    "-m",
    "nfacct",
    "--nfacct-name",
    INVALID_DROPPED_COUNTER,
    "-j",
];

#[test]
fn kube_proxys_nfacct_object_counts_what_the_invalid_drop_rule_drops() {
    let ns = Netns::new("nfacct");
    ns.ip(&["addr", "add", "10.0.0.1/32", "dev", "lo"]);
    ns.ip(&["addr", "add", "10.244.1.5/32", "dev", "lo"]);
    let created = ns.run(|| {
        let mut acct = Nfacct::open().unwrap_or_else(|e| panic!("{e}"));
        let created = acct
            .ensure(INVALID_DROPPED_COUNTER)
            .unwrap_or_else(|e| panic!("{e}"));
        // A second agent start keeps it (and its counts).
        assert!(!acct.ensure(INVALID_DROPPED_COUNTER).expect("ensure again"));
        created
    });
    assert!(created, "a fresh namespace has no counter");
    let mut append = vec!["-A"];
    append.extend(COUNTED_DROP);
    append.push("DROP");
    iptables(&ns, &append);

    let (packets, text, busy) = ns.run(|| {
        // SYN|FIN: conntrack's TCP tracker refuses it, so the packet is INVALID.
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
        let mut acct = Nfacct::open().unwrap_or_else(|e| panic!("{e}"));
        let counter = acct
            .get(INVALID_DROPPED_COUNTER)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(InvalidDropped::kernel(Arc::new(AtomicBool::new(
            true,
        )))));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        (counter.packets, text, acct.delete(INVALID_DROPPED_COUNTER))
    });
    assert_eq!(packets, 3, "the three INVALID segments");
    assert!(
        text.lines()
            .any(|l| l == "kubeproxy_iptables_ct_state_invalid_dropped_packets_total 3"),
        "{text}"
    );
    assert!(matches!(busy, Err(NfacctError::Busy { .. })), "{busy:?}");

    let mut delete = vec!["-D"];
    delete.extend(COUNTED_DROP);
    delete.push("DROP");
    iptables(&ns, &delete);
    let gone = ns.run(|| {
        let mut acct = Nfacct::open().unwrap_or_else(|e| panic!("{e}"));
        (
            acct.delete(INVALID_DROPPED_COUNTER).expect("delete"),
            acct.delete(INVALID_DROPPED_COUNTER).expect("delete again"),
        )
    });
    assert_eq!(gone, (true, false), "deleted once the rule is gone");
}
