//! netfilter's connection tracking under the real `proxy-agent` in `--proxy-mode=ipvs`,
//! inside the VM (`cargo xtask vm-test`; `test = false` on the host, which has no
//! IPVS), in labs of `vm_agent::lab`:
//!
//! - `proxyctl list` (the table and `-o json`) shows the virtual servers with their
//!   real servers and IPVS's counters after traffic, and `proxyctl conntrack
//!   --netfilter` the flows of those services by name;
//! - the UDP conntrack reconciler: a client that keeps one UDP socket (a resolver)
//!   sends through a masqueraded ClusterIP while its endpoint is replaced: its next
//!   datagrams are answered by the live endpoint, never by the one that left, no entry
//!   towards that one is left, and one left behind (as older kernels leave them) is
//!   deleted in the sync that removed the endpoint and counted in
//!   `kubeproxy_conntrack_reconciler_deleted_entries_total`.
//!
//! (kube-proxy's INVALID drop counter is checked by the reset test in
//! `vm_ipvs_external`, which provokes the INVALID segment.)

mod vm_agent;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use proxy_agent::dataplane::netfilter::conntrack::Proto;
use proxy_agent::dataplane::netfilter::{Ctnetlink, Entry};
use serde_json::Value;
use vm_agent::agent::{self, Agent};
use vm_agent::client::{ConnectedUdp, Held, ask_n, ask_udp};
use vm_agent::kernel::{eventually, tcp, udp, wait_live};
use vm_agent::lab::{Lab, TCP_PORT, UDP_PORT};
use vm_agent::manifests::{Manifests, Service};

const WEB4: &str = "10.96.0.10";
const DNS4: &str = "10.96.0.53";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(self::ip(ip), port)
}

/// `proxyctl ARGS` in the node's namespace (no eBPF pins there: it reads IPVS); its
/// standard output, failing the test if it fails.
fn proxyctl(lab: &Lab, args: &[&str]) -> String {
    let mut all = vec!["--bpffs", "/tmp/kpt-vm-no-pins"];
    all.extend_from_slice(args);
    let out = agent::run(&lab.node, "proxyctl", &all);
    assert!(out.status.success(), "proxyctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `proxyctl ARGS -o json`, as a list.
fn proxyctl_json(lab: &Lab, args: &[&str]) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let text = proxyctl(lab, &all);
    match serde_json::from_str(&text) {
        Ok(Value::Array(list)) => list,
        other => panic!("proxyctl {all:?}: {other:?} from {text}"),
    }
}

/// Whether some line of `text` holds every one of `words`.
fn has_line(text: &str, words: &[&str]) -> bool {
    text.lines().any(|l| words.iter().all(|w| l.contains(w)))
}

fn number(v: &Value, path: &[&str]) -> u64 {
    let mut at = v;
    for key in path {
        at = &at[key];
    }
    at.as_u64()
        .unwrap_or_else(|| panic!("no number at {path:?} in {v:#}"))
}

/// The node's netfilter entries.
fn entries(lab: &Lab) -> Vec<Entry> {
    lab.node.run(|| {
        Ctnetlink::open()
            .and_then(|mut ct| ct.dump())
            .unwrap_or_else(|e| panic!("dumping the node's conntrack table: {e}"))
    })
}

/// After TCP and UDP traffic, with one TCP connection held: `proxyctl list` shows the
/// ClusterIP's virtual servers with both real servers, IPVS's counters of that traffic
/// in `-o json`, and `proxyctl conntrack --netfilter` the held connection by its
/// service, with the backend that answers it.
#[test]
fn proxyctl_lists_the_virtual_servers_with_their_counters_and_the_flows_by_service() {
    let lab = Lab::new("ctl", &["a", "b"], 1);
    let manifests = Manifests::new("ctl");
    let pods: Vec<IpAddr> = ["a", "b"].iter().map(|n| lab.pod(n).ip(false)).collect();
    manifests.write_services(
        "web.yaml",
        &[Service::new("web", ip(WEB4))
            .tcp(80, TCP_PORT)
            .udp(53, UDP_PORT)
            .endpoints(pods.clone())],
    );
    let agent = Agent::start(&lab, &manifests, &[]);
    let tcp_backends: Vec<SocketAddr> =
        pods.iter().map(|p| SocketAddr::new(*p, TCP_PORT)).collect();
    let udp_backends: Vec<SocketAddr> =
        pods.iter().map(|p| SocketAddr::new(*p, UDP_PORT)).collect();
    wait_live(&lab.node, tcp(at(WEB4, 80)), &tcp_backends);
    wait_live(&lab.node, udp(at(WEB4, 53)), &udp_backends);

    ask_n(&lab.client().ns, at(WEB4, 80), 4);
    let mut held = Held::open(&lab.client().ns, at(WEB4, 80));
    held.exchange();
    for i in 0..2 {
        ask_udp(&lab.client().ns, at(WEB4, 53)).unwrap_or_else(|e| panic!("datagram {i}: {e}"));
    }

    // The table, as `ipvsadm -Ln` lays it out.
    let table = proxyctl(&lab, &["list"]);
    assert!(
        has_line(&table, &["TCP", "10.96.0.10:80", "rr", "test/web:p80"]),
        "the TCP virtual server:\n{table}"
    );
    assert!(
        has_line(&table, &["UDP", "10.96.0.10:53", "rr", "test/web:p53"]),
        "the UDP virtual server:\n{table}"
    );
    for backend in tcp_backends.iter().chain(&udp_backends) {
        assert!(
            has_line(&table, &["->", &backend.to_string(), "serving"]),
            "{backend}:\n{table}"
        );
    }

    // IPVS's counters: five TCP connections over both real servers, one of them open;
    // two UDP "connections" (one per socket).
    // IPVS (6.1) folds its per-CPU counters into what it reports every 2 s.
    let frontend = |list: &[Value], f: &str| {
        list.iter()
            .find(|v| v["frontend"] == f)
            .unwrap_or_else(|| panic!("no {f} in {list:#?}"))
            .clone()
    };
    let list = eventually("IPVS's counters of the traffic", || {
        let list = proxyctl_json(&lab, &["list"]);
        let counted = |f: &str, n: u64| {
            number(&frontend(&list, f), &["ipvs", "counters", "connections"]) >= n
        };
        if counted("10.96.0.10:80/TCP", 5) && counted("10.96.0.10:53/UDP", 2) {
            Ok(list)
        } else {
            Err(list)
        }
    });
    let frontend = |f: &str| frontend(&list, f);
    let web = frontend("10.96.0.10:80/TCP");
    assert_eq!(web["service"], "test/web:p80");
    assert!(
        number(&web, &["ipvs", "counters", "connections"]) >= 5,
        "{web:#}"
    );
    for counter in ["packets_in", "packets_out", "bytes_in", "bytes_out"] {
        assert!(
            number(&web, &["ipvs", "counters", counter]) > 0,
            "{counter}: {web:#}"
        );
    }
    let dests = web["ipvs"]["destinations"]
        .as_array()
        .unwrap_or_else(|| panic!("no destinations: {web:#}"));
    assert_eq!(dests.len(), 2, "{web:#}");
    for d in dests {
        assert!(
            number(d, &["counters", "connections"]) >= 2,
            "rr over both: {d:#}"
        );
        assert_eq!(d["weight"], 1, "{d:#}");
    }
    let active: u64 = dests
        .iter()
        .map(|d| number(d, &["active_connections"]))
        .sum();
    assert_eq!(active, 1, "the held connection: {web:#}");
    let dns = frontend("10.96.0.10:53/UDP");
    assert!(
        number(&dns, &["ipvs", "counters", "connections"]) >= 2,
        "{dns:#}"
    );
    assert!(
        number(&dns, &["ipvs", "counters", "packets_out"]) >= 2,
        "{dns:#}"
    );

    // netfilter's view of the held connection, named by its service.
    let local = held.local_addr();
    let backend = lab.pod(&held.backend).tcp(false);
    let flows = proxyctl(&lab, &["conntrack", "--netfilter"]);
    assert!(
        has_line(
            &flows,
            &[
                "test/web:p80",
                "tcp",
                &format!("{local} -> 10.96.0.10:80"),
                &format!("{backend} -> {local}"),
                "ESTABLISHED",
                "frontend",
            ]
        ),
        "the held connection in:\n{flows}"
    );
    assert!(
        has_line(&flows, &["test/web:p53", "udp"]),
        "the datagrams:\n{flows}"
    );
    let json = proxyctl_json(&lab, &["conntrack", "--netfilter"]);
    let entry = json
        .iter()
        .find(|e| e["entry"]["original"]["src_port"] == local.port())
        .unwrap_or_else(|| panic!("no entry from {local} in {json:#?}"));
    assert_eq!(entry["service"], "test/web:p80", "{entry:#}");
    assert_eq!(entry["frontend"], "10.96.0.10:80/TCP", "{entry:#}");
    assert_eq!(entry["matched"], "frontend", "{entry:#}");
    assert_eq!(
        entry["entry"]["reply"]["src"],
        backend.ip().to_string(),
        "{entry:#}"
    );
    assert_eq!(entry["entry"]["tcp_state"], "ESTABLISHED", "{entry:#}");

    // The default rules drop INVALID packets, counted under kube-proxy's name.
    assert!(
        agent
            .metric(
                &lab.node,
                "kubeproxy_iptables_ct_state_invalid_dropped_packets_total"
            )
            .is_some(),
        "the INVALID drop counter is exported"
    );
    held.exchange();
}

const DELETED: &str = "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"}";

/// The UDP entries from `from`.
fn udp_from(lab: &Lab, from: SocketAddr) -> Vec<Entry> {
    entries(lab)
        .into_iter()
        .filter(|e| e.protocol() == Proto::UDP && e.original.source() == from)
        .collect()
}

/// Inserts a UDP entry into the node's table over ctnetlink (`IPCTNL_MSG_CT_NEW`, what
/// `conntrack -I` sends): `orig` as the client sent it, `reply` as the answer expected.
fn insert_udp_entry(lab: &Lab, orig: (SocketAddr, SocketAddr), reply: (SocketAddr, SocketAddr)) {
    use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
    use netlink_packet_netfilter::conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple,
    };
    use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
    use proxy_agent::dataplane::ipvs::netlink::socket::{self, Conn};

    let tuple = |(src, dst): (SocketAddr, SocketAddr)| {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(src.ip()),
                IPTuple::DestinationAddress(dst.ip()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(17u8.into()),
                ProtoTuple::SourcePort(src.port()),
                ProtoTuple::DestinationPort(dst.port()),
            ]),
        ]
    };
    let message = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
        ConntrackMessage::New(vec![
            ConntrackAttribute::CtaTupleOrig(tuple(orig)),
            ConntrackAttribute::CtaTupleReply(tuple(reply)),
            ConntrackAttribute::CtaTimeout(120),
        ]),
    );
    lab.node.run(move || {
        let transport = socket::open(
            netlink_sys::protocols::NETLINK_NETFILTER,
            "NETLINK_NETFILTER",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Conn::new(transport)
            .request(message, NLM_F_CREATE | NLM_F_EXCL)
            .unwrap_or_else(|e| panic!("inserting a conntrack entry {orig:?}: {e}"));
    });
}

/// See the module docs. A connected UDP client, masqueraded (`--masquerade-all`), is
/// answered by `a`; then `a` is replaced by `b`.
///
/// IPVS (Linux >= 5.9, `expire_nodest_conn` on) kills the conntrack entries of the
/// connections of a destination it deletes, usually before the reconciler looks; the
/// entries kube-proxy's reconciler exists for are those an older kernel, or a flow
/// IPVS does not own, leaves behind. One such is inserted as they look (a client's
/// datagram to the VIP answered by `a`), with one to an address no service has: the
/// pass of the sync that removes `a` deletes the first (counted), not the second.
/// The real client is answered by `b` again and again, never by `a`, and no entry
/// towards `a` is left.
///
/// Run with `--conntrack-tcp-be-liberal` too: no INVALID drop rule, so no counter of
/// its drops in `/metrics`.
#[test]
fn a_udp_endpoint_that_leaves_leaves_no_conntrack_entry_and_its_client_moves_on() {
    let lab = Lab::new("udprec", &["a", "b"], 1);
    let manifests = Manifests::new("udprec");
    let dns = |pod: &str| {
        Service::new("dns", ip(DNS4))
            .udp(53, UDP_PORT)
            .endpoints([lab.pod(pod).ip(false)])
    };
    manifests.write_services("dns.yaml", &[dns("a")]);
    let agent = Agent::start(
        &lab,
        &manifests,
        &["--masquerade-all", "--conntrack-tcp-be-liberal"],
    );
    let vip = at(DNS4, 53);
    let id = udp(vip);
    let (a, b) = (
        SocketAddr::new(lab.pod("a").ip(false), UDP_PORT),
        SocketAddr::new(lab.pod("b").ip(false), UDP_PORT),
    );
    wait_live(&lab.node, id, &[a]);
    assert_eq!(
        agent.metric(
            &lab.node,
            "kubeproxy_iptables_ct_state_invalid_dropped_packets_total"
        ),
        None,
        "liberal conntrack: no INVALID drop rule, no counter"
    );
    let client = ConnectedUdp::open(&lab.client().ns, vip);
    let wait = Duration::from_millis(500);
    let first = eventually("a to answer", || client.ask(wait).map_err(|e| e.kind()));
    assert_eq!(first, "a");
    assert!(
        udp_from(&lab, client.local_addr())
            .iter()
            .any(|e| e.reply.source() == a),
        "the client's entry is answered by a"
    );

    let peer = at("10.0.1.2", 55555);
    let elsewhere = (at("10.0.1.2", 55556), at("10.96.0.99", 53));
    insert_udp_entry(&lab, (peer, vip), (a, peer));
    insert_udp_entry(&lab, elsewhere, (elsewhere.1, elsewhere.0));
    let deleted_before = agent.wait("the reconciler's counter", || {
        agent.metric(&lab.node, DELETED)
    });

    manifests.write_services("dns.yaml", &[dns("b")]);
    wait_live(&lab.node, id, &[b]);
    let deleted = agent.wait("the reconciler to count the entry towards a", || {
        agent
            .metric(&lab.node, DELETED)
            .filter(|n| *n > deleted_before)
    });
    assert!(
        udp_from(&lab, peer).is_empty(),
        "the entry towards a is deleted: {:#?}",
        udp_from(&lab, peer)
    );
    assert_eq!(
        udp_from(&lab, elsewhere.0).len(),
        1,
        "an entry of no virtual server is left alone"
    );
    assert!(
        agent.log().contains("deleted stale UDP conntrack entries"),
        "the pass is logged:\n{}",
        agent.log()
    );

    let mut answers = Vec::new();
    eventually("the client to be answered by b", || {
        let answer = client.ask(wait).map_err(|e| e.kind());
        answers.push(answer.clone());
        match answer {
            Ok(name) if name == "b" => Ok(()),
            other => Err(other),
        }
    });
    for i in 0..5 {
        let answer = client
            .ask(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("datagram {i} after the move: {e} ({answers:?})"));
        assert_eq!(answer, "b", "datagram {i} after the move");
    }
    assert!(
        !answers.iter().any(|a| a.as_deref() == Ok("a")),
        "a answered after it left: {answers:?}"
    );
    let now = udp_from(&lab, client.local_addr());
    assert!(
        now.iter().all(|e| e.reply.source() != a) && now.iter().any(|e| e.reply.source() == b),
        "the client's entry is answered by b only: {now:#?}"
    );
    eprintln!(
        "reconciler: deleted {} entries when a left; the client's answers after: {answers:?}, then 5 from b",
        deleted - deleted_before
    );
}
