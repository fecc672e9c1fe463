use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST};

use super::*;
use crate::dataplane::ipvs::netlink::socket::tests::{done, error, message};
use crate::dataplane::netfilter::conntrack::{Status, Tuple, delete_request};
use crate::dataplane::netfilter::test_support::{Recorder, nest, nfgenmsg, nla};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn entry(protocol: Proto, orig: (&str, &str), reply: (&str, &str)) -> Entry {
    Entry {
        family: if sa(orig.0).is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        },
        original: Tuple::ports(protocol, sa(orig.0), sa(orig.1)),
        reply: Tuple::ports(protocol, sa(reply.0), sa(reply.1)),
        tcp_state: None,
        status: Status(Status::SEEN_REPLY),
        mark: 0,
        timeout_s: 30,
        zone: 0,
    }
}

fn servers(list: &[(&str, &[&str])]) -> UdpServers {
    list.iter()
        .map(|(vip, backends)| (sa(vip), backends.iter().map(|b| sa(b)).collect()))
        .collect()
}

#[test]
fn entries_of_udp_virtual_servers_not_answered_by_a_backend_are_stale() {
    let servers = servers(&[
        ("10.96.0.10:53", &["10.244.1.5:5353", "10.244.2.5:5353"]),
        // A NodePort on one node address; no backend at all on the other service.
        ("192.0.2.1:30053", &["10.244.1.5:5353"]),
        ("10.96.0.20:53", &[]),
    ]);
    let entries = [
        // Answered by a backend: kept.
        entry(
            Proto::UDP,
            ("10.0.1.2:40000", "10.96.0.10:53"),
            ("10.244.1.5:5353", "10.0.1.2:40000"),
        ),
        // Answered by an endpoint that left: stale.
        entry(
            Proto::UDP,
            ("10.0.1.2:40001", "10.96.0.10:53"),
            ("10.244.3.5:5353", "10.0.1.2:40001"),
        ),
        // The right address on another port (the endpoint's port changed): stale.
        entry(
            Proto::UDP,
            ("10.0.1.2:40002", "10.96.0.10:53"),
            ("10.244.2.5:53", "10.0.1.2:40002"),
        ),
        // Sent while the service had no endpoint: the reply would come from the VIP.
        entry(
            Proto::UDP,
            ("10.0.1.2:40003", "10.96.0.20:53"),
            ("10.96.0.20:53", "10.0.1.2:40003"),
        ),
        // The NodePort, masqueraded, from a removed endpoint: stale.
        entry(
            Proto::UDP,
            ("198.51.100.7:40004", "192.0.2.1:30053"),
            ("10.244.9.9:5353", "10.244.1.1:40004"),
        ),
        // Not a virtual server (another address or port, TCP): left alone.
        entry(
            Proto::UDP,
            ("10.0.1.2:40005", "10.96.0.10:54"),
            ("10.96.0.10:54", "10.0.1.2:40005"),
        ),
        entry(
            Proto::UDP,
            ("10.0.1.2:40006", "192.0.2.2:30053"),
            ("192.0.2.2:30053", "10.0.1.2:40006"),
        ),
        entry(
            Proto::TCP,
            ("10.0.1.2:40007", "10.96.0.10:53"),
            ("10.244.3.5:5353", "10.0.1.2:40007"),
        ),
    ];
    let got: Vec<u16> = stale(&entries, &servers)
        .iter()
        .map(|e| e.original.src_port)
        .collect();
    assert_eq!(got, [40001, 40002, 40003, 40004]);
}

/// An IPv4 UDP entry as a dump sends it (`IPCTNL_MSG_CT_NEW` in subsystem 1).
fn dumped(seq: u32, orig: (&str, &str), reply: (&str, &str)) -> Vec<u8> {
    let tuple = |kind: u16, (src, dst): (&str, &str)| {
        let (src, dst) = (sa(src), sa(dst));
        let octets = |a: SocketAddr| match a.ip() {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        nest(
            kind,
            &[
                nest(1, &[nla(1, &octets(src)), nla(2, &octets(dst))]),
                nest(
                    2,
                    &[
                        nla(1, &[17]),
                        nla(2, &src.port().to_be_bytes()),
                        nla(3, &dst.port().to_be_bytes()),
                    ],
                ),
            ],
        )
    };
    let mut payload = nfgenmsg(2, 0);
    payload.extend(tuple(1, orig));
    payload.extend(tuple(2, reply));
    message(0x100, NLM_F_MULTIPART, seq, &payload)
}

fn one_family(list: &[(&str, &[&str])]) -> BTreeMap<Family, UdpServers> {
    BTreeMap::from([(Family::Ipv4, servers(list))])
}

fn scrape(metrics: &ReconcilerMetrics) -> String {
    let mut r = Registry::default();
    metrics.register(&mut r);
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, &r).unwrap_or_else(|e| panic!("{e}"));
    s
}

fn has(text: &str, line: &str) {
    assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
}

#[test]
fn a_pass_dumps_one_family_deletes_the_stale_entries_and_counts_them() {
    let stale_a = (
        ("10.0.1.2:40000", "10.96.0.10:53"),
        ("10.244.1.5:5353", "10.0.1.2:40000"),
    );
    let stale_b = (
        ("10.0.1.2:40001", "10.96.0.10:53"),
        ("10.244.1.5:5353", "10.0.1.2:40001"),
    );
    let stale_c = (
        ("10.0.1.2:40002", "10.96.0.10:53"),
        ("10.244.1.5:5353", "10.0.1.2:40002"),
    );
    let live = (
        ("10.0.1.2:40003", "10.96.0.10:53"),
        ("10.244.2.5:5353", "10.0.1.2:40003"),
    );
    let recorder = Recorder {
        replies: [
            [
                dumped(1, stale_a.0, stale_a.1),
                dumped(1, live.0, live.1),
                dumped(1, stale_b.0, stale_b.1),
                dumped(1, stale_c.0, stale_c.1),
                done(1),
            ]
            .concat(),
            error(2, 0),
            // Expired between the dump and its deletion.
            error(3, libc::ENOENT),
            error(4, libc::ENOBUFS),
        ]
        .into(),
        ..Recorder::default()
    };
    let sent: Rc<RefCell<Vec<Vec<u8>>>> = Rc::clone(&recorder.sent);
    let mut ct = Ctnetlink::over(recorder);
    let mut reconciler = ConntrackReconciler::default();
    let clean = reconciler.run_over(
        &mut ct,
        &one_family(&[("10.96.0.10:53", &["10.244.2.5:5353"])]),
    );
    assert!(!clean, "a deletion failed: run again at the next sync");

    let sent = sent.borrow();
    // The dump asks for IPv4 only.
    let dump = message(0x101, NLM_F_REQUEST | NLM_F_DUMP, 1, &nfgenmsg(2, 0));
    assert_eq!(sent[0], dump);
    let delete = |seq: u32, (orig, _): ((&str, &str), (&str, &str))| {
        let tuple = Tuple::ports(Proto::UDP, sa(orig.0), sa(orig.1));
        let request = delete_request(&tuple, 0).unwrap_or_else(|e| panic!("{e}"));
        crate::dataplane::ipvs::netlink::socket::encode(request, NLM_F_REQUEST | NLM_F_ACK, seq)
    };
    assert_eq!(
        sent[1..],
        [delete(2, stale_a), delete(3, stale_b), delete(4, stale_c)]
    );

    let text = scrape(reconciler.metrics());
    has(
        &text,
        "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"} 1",
    );
    has(
        &text,
        "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv6\"} 0",
    );
    has(
        &text,
        "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv4\"} 1",
    );
    has(
        &text,
        "proxy_agent_conntrack_reconciler_errors_total{ip_family=\"IPv4\",reason=\"delete_netlink\"} 1",
    );
}

#[test]
fn a_failed_dump_is_counted_and_deletes_nothing() {
    let recorder = Recorder {
        replies: [error(1, libc::EPERM)].into(),
        ..Recorder::default()
    };
    let sent = Rc::clone(&recorder.sent);
    let mut ct = Ctnetlink::over(recorder);
    let mut reconciler = ConntrackReconciler::default();
    assert!(!reconciler.run_over(&mut ct, &one_family(&[("10.96.0.10:53", &[])])));
    assert_eq!(sent.borrow().len(), 1, "the dump only");
    let text = scrape(reconciler.metrics());
    has(
        &text,
        "proxy_agent_conntrack_reconciler_errors_total{ip_family=\"IPv4\",reason=\"dump_denied\"} 1",
    );
    has(
        &text,
        "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"} 0",
    );
}

#[test]
fn nothing_stale_is_a_clean_pass() {
    let live = (
        ("10.0.1.2:40003", "10.96.0.10:53"),
        ("10.244.2.5:5353", "10.0.1.2:40003"),
    );
    let recorder = Recorder {
        replies: [[dumped(1, live.0, live.1), done(1)].concat()].into(),
        ..Recorder::default()
    };
    let mut ct = Ctnetlink::over(recorder);
    let mut reconciler = ConntrackReconciler::default();
    assert!(reconciler.run_over(
        &mut ct,
        &one_family(&[("10.96.0.10:53", &["10.244.2.5:5353"])])
    ));
}
