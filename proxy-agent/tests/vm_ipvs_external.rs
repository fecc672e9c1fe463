//! The real `proxy-agent` binary in `--proxy-mode=ipvs` serving clients outside the
//! node, inside the VM (`cargo xtask vm-test`; `test = false` on the host, which has no
//! IPVS): NodePorts, externalIPs and load balancer IPs over TCP and UDP on both
//! families, `externalTrafficPolicy: Local` (only this node's endpoints, the client's
//! address kept), `loadBalancerSourceRanges`, and the conntrack-INVALID reset
//! (kubernetes#74839) that kube-proxy's IPVS rules leave open.
//!
//! The lab (see `vm_agent::lab`): client i is `10.0.<i+1>.2` behind the node's
//! `10.0.<i+1>.1`; NodePorts are served on `--nodeport-addresses 10.0.1.0/24,
//! fd00:1:1::/64`, i.e. `10.0.1.1` and `fd00:1:1::1`.

mod vm_agent;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use vm_agent::agent::Agent;
use vm_agent::client::{Held, ask, ask_udp};
use vm_agent::kernel::{self, eventually, tcp};
use vm_agent::lab::{Lab, TCP_PORT, UDP_PORT};
use vm_agent::listeners::serve_tcp_peer;
use vm_agent::manifests::{Manifests, Service};

const NODE_PORT_ADDRESSES: &str = "10.0.1.0/24,fd00:1:1::/64";
/// The pods' listener that answers with the address it sees the client at.
const PEER_PORT: u16 = 8081;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(self::ip(ip), port)
}

/// The node's address towards client 0 in `v6`'s family: where NodePorts are served.
fn node_address(v6: bool) -> IpAddr {
    ip(if v6 { "fd00:1:1::1" } else { "10.0.1.1" })
}

/// Who answers `n` TCP connections from `client` to `to`, as a set.
fn answers(client: &vm_agent::netns::Netns, to: SocketAddr, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|i| ask(client, to).unwrap_or_else(|e| panic!("connection {i} to {to}: {e}")))
        .collect()
}

/// Who answers `n` datagrams.
fn udp_answers(client: &vm_agent::netns::Netns, to: SocketAddr, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|i| ask_udp(client, to).unwrap_or_else(|e| panic!("datagram {i} to {to}: {e}")))
        .collect()
}

/// Waits until the virtual server `id` has the live destinations `want`.
fn wait_dests(
    lab: &Lab,
    id: proxy_agent::dataplane::ipvs::netlink::ServiceId,
    want: &[SocketAddr],
) {
    let mut want = want.to_vec();
    want.sort();
    eventually(&format!("{id} to serve {want:?}"), || {
        let live = kernel::live(&lab.node, id);
        if live == want { Ok(()) } else { Err(live) }
    });
}

/// The first connection from `client` to `to`, allowed one ICMP "network
/// unreachable" from the node and a retry. Seen under emulation only on a client's
/// first SYN to a load balancer IP (the node's FIB said local moments later, and every
/// later connection succeeded); not understood yet, and not hidden from anything else:
/// every connection after this one must succeed at once.
fn first_contact(client: &vm_agent::netns::Netns, to: SocketAddr) {
    let connect =
        move || std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).map(drop);
    match client.run(connect) {
        Err(e) if e.kind() == std::io::ErrorKind::NetworkUnreachable => {
            eprintln!("{to}: first contact answered {e}; retrying once");
            std::thread::sleep(Duration::from_millis(500));
            let _ = client.run(connect);
        }
        _ => {}
    }
}

/// Every pod also answers on [`PEER_PORT`] with the address it sees the client at.
fn serve_peers(lab: &Lab) {
    for pod in &lab.pods {
        for v6 in [false, true] {
            serve_tcp_peer(&pod.ns, SocketAddr::new(pod.ip(v6), PEER_PORT), &pod.name);
        }
    }
}

/// A NodePort, an externalIP and a load balancer IP per family, TCP and UDP, all
/// reach both pods from a client outside the node; the pods see the node's address
/// (masqueraded, `externalTrafficPolicy: Cluster`).
#[test]
fn node_ports_external_ips_and_lb_ips_reach_every_pod_on_both_families() {
    let lab = Lab::new("ext", &["a", "b"], 1);
    serve_peers(&lab);
    let manifests = Manifests::new("ext");
    let families = [
        ("web", "10.96.0.20", "192.0.2.10", "198.51.100.10", false),
        (
            "web6",
            "fd00:96::20",
            "2001:db8::10",
            "2001:db8:1::10",
            true,
        ),
    ];
    let services: Vec<Service> = families
        .iter()
        .map(|(name, vip, eip, lb, v6)| {
            Service::new(name, ip(vip))
                .tcp(80, TCP_PORT)
                .udp(53, UDP_PORT)
                .tcp(81, PEER_PORT)
                .node_port(80, 30080)
                .node_port(53, 30053)
                .node_port(81, 30081)
                .external_ip(ip(eip))
                .load_balancer(ip(lb))
                .endpoints(lab.pods.iter().map(|p| p.ip(*v6)))
        })
        .collect();
    manifests.write_services("web.yaml", &services);
    let _agent = Agent::start(
        &lab,
        &manifests,
        &["--nodeport-addresses", NODE_PORT_ADDRESSES],
    );
    let client = &lab.client().ns;
    let both: BTreeSet<String> = ["a", "b"].iter().map(|s| (*s).to_owned()).collect();

    for (_, _, eip, lb, v6) in families {
        let pods_tcp: Vec<SocketAddr> = lab.pods.iter().map(|p| p.tcp(v6)).collect();
        let node = node_address(v6);
        for addr in [node, ip(eip), ip(lb)] {
            let port = if addr == node { 30080 } else { 80 };
            let udp_port = if addr == node { 30053 } else { 53 };
            wait_dests(&lab, tcp(SocketAddr::new(addr, port)), &pods_tcp);
            let to = SocketAddr::new(addr, port);
            first_contact(client, to);
            assert_eq!(answers(client, to, 4), both, "TCP to {to}");
            let to = SocketAddr::new(addr, udp_port);
            assert_eq!(udp_answers(client, to, 4), both, "UDP to {to}");
            // Masqueraded: the pod sees one of the node's addresses, not the client's.
            let to = SocketAddr::new(addr, if addr == node { 30081 } else { 81 });
            let seen = ask(client, to).unwrap_or_else(|e| panic!("{to}: {e}"));
            let client_ip = if v6 {
                lab.client().ipv6.to_string()
            } else {
                lab.client().ipv4.to_string()
            };
            assert!(
                !seen.ends_with(&format!(" {client_ip}")),
                "{to}: ETP Cluster masquerades, the pod saw {seen}"
            );
        }
        // The external addresses are on kube-ipvs0; the NodePort address is not.
        let on_link = kernel::link_addresses(&lab.node).unwrap_or_default();
        assert!(
            on_link.contains(&ip(eip)) && on_link.contains(&ip(lb)),
            "{on_link:?}"
        );
        assert!(!on_link.contains(&node), "{on_link:?}");
    }
    // Only the selected node addresses serve NodePorts: not the node's pod-side ones.
    let node_port_servers: Vec<String> = kernel::services(&lab.node)
        .iter()
        .filter(|s| s.id.port == 30080)
        .map(|s| s.id.addr.to_string())
        .collect();
    assert_eq!(node_port_servers.len(), 2, "{node_port_servers:?}");
}

/// `externalTrafficPolicy: Local`: outside clients reach only this node's endpoint,
/// which sees their own address; with `Cluster` (the control) the remote endpoint
/// answers too and the address is the node's.
#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_the_local_endpoints() {
    let lab = Lab::new("etp", &["here", "there"], 1);
    serve_peers(&lab);
    let manifests = Manifests::new("etp");
    let service = |local: bool| {
        let s = Service::new("web", ip("10.96.0.30"))
            .tcp(81, PEER_PORT)
            .node_port(81, 30081)
            .load_balancer(ip("198.51.100.30"))
            .endpoints([lab.pod("here").ip(false)])
            .remote_endpoints([lab.pod("there").ip(false)]);
        if local { s.local() } else { s }
    };
    let client = &lab.client().ns;
    let client_ip = lab.client().ipv4.to_string();
    let here = SocketAddr::new(lab.pod("here").ip(false), PEER_PORT);
    let there = SocketAddr::new(lab.pod("there").ip(false), PEER_PORT);
    manifests.write_services("web.yaml", &[service(true)]);
    let _agent = Agent::start(
        &lab,
        &manifests,
        &["--nodeport-addresses", NODE_PORT_ADDRESSES],
    );
    for to in [at("10.0.1.1", 30081), at("198.51.100.30", 81)] {
        wait_dests(&lab, tcp(to), &[here]);
        first_contact(client, to);
        let seen: BTreeSet<String> = (0..6)
            .map(|_| ask(client, to).unwrap_or_else(|e| panic!("{to}: {e}")))
            .collect();
        assert_eq!(
            seen,
            BTreeSet::from([format!("here {client_ip}")]),
            "{to}: the local endpoint only, seeing the client"
        );
    }

    manifests.write_services("web.yaml", &[service(false)]);
    for to in [at("10.0.1.1", 30081), at("198.51.100.30", 81)] {
        wait_dests(&lab, tcp(to), &[here, there]);
        let seen: BTreeSet<String> = (0..6)
            .map(|_| ask(client, to).unwrap_or_else(|e| panic!("{to}: {e}")))
            .collect();
        let names: BTreeSet<&str> = seen
            .iter()
            .filter_map(|s| s.split_whitespace().next())
            .collect();
        assert_eq!(names, BTreeSet::from(["here", "there"]), "{to}: {seen:?}");
        assert!(
            seen.iter().all(|s| !s.ends_with(&format!(" {client_ip}"))),
            "{to}: Cluster masquerades: {seen:?}"
        );
    }
}

/// `loadBalancerSourceRanges`: a client inside a range connects, one outside gets no
/// answer (its SYN is dropped); the same client still reaches the ClusterIP, which
/// ranges do not cover. One range is a single address (`KUBE-LOAD-BALANCER-SOURCE-IP`),
/// the other a prefix (`-SOURCE-CIDR`).
#[test]
fn load_balancer_source_ranges_admit_only_the_listed_clients() {
    let lab = Lab::new("ranges", &["a"], 3);
    let manifests = Manifests::new("ranges");
    let lb = "198.51.100.40";
    manifests.write_services(
        "web.yaml",
        &[Service::new("web", ip("10.96.0.40"))
            .tcp(80, TCP_PORT)
            .load_balancer(ip(lb))
            .source_range("10.0.1.2/32")
            .source_range("10.0.2.0/24")
            .endpoints([lab.pod("a").ip(false)])],
    );
    let _agent = Agent::start(&lab, &manifests, &[]);
    wait_dests(&lab, tcp(at(lb, 80)), &[lab.pod("a").tcp(false)]);
    for (i, client) in lab.clients.iter().enumerate() {
        first_contact(&client.ns, at(lb, 80));
        let got = client.ns.run(move || {
            std::net::TcpStream::connect_timeout(&at(lb, 80), Duration::from_secs(2)).map(drop)
        });
        if i < 2 {
            got.unwrap_or_else(|e| panic!("client {i} is in a range: {e}"));
        } else {
            let e = got.expect_err("client 2 is in no range");
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::TimedOut,
                "dropped, not refused: {e}"
            );
            let via_cluster_ip = ask(&client.ns, at("10.96.0.40", 80));
            assert_eq!(
                via_cluster_ip.ok().as_deref(),
                Some("a"),
                "the ClusterIP has no ranges"
            );
        }
    }
}

/// The comment of the test's own counter of INVALID packets (mangle PREROUTING, no
/// verdict): this kernel's `/proc/net/stat/nf_conntrack` reads all zeros.
const INVALID_COUNTER: &str = "test: INVALID packets";

/// Installs [`INVALID_COUNTER`] in `ns`.
fn count_invalid(ns: &vm_agent::netns::Netns) {
    ns.run(|| {
        let out = std::process::Command::new("/usr/sbin/iptables")
            .args([
                "-w",
                "5",
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-m",
                "comment",
            ])
            .args(["--comment", INVALID_COUNTER])
            .args(["-m", "conntrack", "--ctstate", "INVALID"])
            .output()
            .expect("running iptables");
        assert!(out.status.success(), "iptables: {out:?}");
    });
}

/// What [`INVALID_COUNTER`] has counted in `ns`.
fn conntrack_invalid(ns: &vm_agent::netns::Netns) -> u64 {
    ns.run(|| {
        let out = std::process::Command::new("/usr/sbin/iptables-save")
            .args(["-c", "-t", "mangle"])
            .output()
            .expect("running iptables-save");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains(INVALID_COUNTER))
            .unwrap_or_else(|| panic!("no INVALID counter in:\n{text}"));
        // `[packets:bytes] -A PREROUTING ...`
        line.trim_start_matches('[')
            .split(':')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {line:?}"))
    })
}

/// `iptables-save` in `ns`.
fn iptables_save(ns: &vm_agent::netns::Netns) -> String {
    ns.run(|| {
        let out = std::process::Command::new("/usr/sbin/iptables-save")
            .output()
            .expect("running iptables-save");
        assert!(out.status.success(), "iptables-save: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

/// Rewrites `ns`'s IPv4 rules without every `--ctstate INVALID` rule: the agent's
/// rules as kube-proxy's IPVS mode has them (it has neither INVALID drop).
fn as_kube_proxy(ns: &vm_agent::netns::Netns) {
    let rules: String = iptables_save(ns)
        .lines()
        .filter(|l| !l.contains("--ctstate INVALID"))
        .map(|l| format!("{l}\n"))
        .collect();
    ns.run(move || {
        use std::io::Write as _;
        let mut child = std::process::Command::new("/usr/sbin/iptables-restore")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("running iptables-restore");
        child
            .stdin
            .take()
            .expect("its stdin")
            .write_all(rules.as_bytes())
            .expect("writing the rules");
        let status = child.wait().expect("iptables-restore");
        assert!(status.success(), "iptables-restore: {status}");
    });
}

/// Opens a connection through `to`, forges an out-of-window copy of the pod's next
/// data segment (to the masquerading address `masq`) and checks that conntrack counted
/// it INVALID; the connection is returned for the caller to try.
fn held_and_injected(lab: &Lab, to: SocketAddr, masq: Ipv4Addr) -> Held {
    let mut held = Held::open(&lab.client().ns, to);
    held.exchange();
    let invalid_before = conntrack_invalid(&lab.node);
    std::thread::scope(|s| {
        let injector = s.spawn(|| inject_out_of_window(lab, masq));
        // Something for the pod to send while the capture listens.
        std::thread::sleep(Duration::from_millis(300));
        held.exchange();
        injector.join().expect("the injection");
    });
    assert!(
        conntrack_invalid(&lab.node) > invalid_before,
        "the forged segment is INVALID for conntrack (before: {invalid_before})"
    );
    held
}

/// From the pod's namespace, a copy of its newest data segment to `peer` moved far
/// outside the TCP window: netfilter's conntrack finds it INVALID.
fn inject_out_of_window(lab: &Lab, peer: Ipv4Addr) {
    let pod = lab.pod("a");
    let src = pod.ipv4;
    pod.ns.run(move || {
        let capture = tests::packet::capture_socket();
        // The held connection's next exchange, seen leaving the pod.
        let seg = tests::packet::newest_data_segment(&capture, src, TCP_PORT);
        assert_eq!(seg.dst, peer, "the pod talks to the masquerading node");
        let bogus = seg.out_of_window();
        eprintln!("captured {seg:?}, injecting {bogus:?}");
        tests::packet::inject(&bogus, b"bogus\n");
    });
}

/// kubernetes#74839 on a masqueraded NodePort (`externalTrafficPolicy: Cluster`):
/// the pod talks to the node's address, whose conntrack entry un-SNATs the pod's
/// segments. A segment far outside the window is INVALID, so it is not un-SNATed: it
/// reaches the node's own stack at the masquerade port, which answers with a reset the
/// pod accepts, and the client's connection dies. kube-proxy's IPVS rules have no rule
/// for it (their INVALID drop, where they have one, is in FORWARD, which this packet
/// never crosses). Shown first with the agent's rules less what kube-proxy lacks, then
/// with ours: the same injection, counted INVALID, leaves the connection working.
#[test]
fn an_invalid_segment_resets_a_masqueraded_node_port_under_kube_proxy_s_rules_not_ours() {
    let lab = Lab::new("reset", &["a"], 1);
    let manifests = Manifests::new("reset");
    manifests.write_services(
        "web.yaml",
        &[Service::new("web", ip("10.96.0.50"))
            .tcp(80, TCP_PORT)
            .node_port(80, 30080)
            .endpoints([lab.pod("a").ip(false)])],
    );
    let args = [
        "--nodeport-addresses",
        NODE_PORT_ADDRESSES,
        "--sync-period",
        "3600",
    ];
    let agent = Agent::start(&lab, &manifests, &args);
    let node_port = at("10.0.1.1", 30080);
    wait_dests(&lab, tcp(node_port), &[lab.pod("a").tcp(false)]);
    // The node's address on the pod's side: what the pod sees as its client.
    let masq = Ipv4Addr::new(10, 244, 1, 1);

    // 1. kube-proxy's rules: ours without the INVALID drops (its IPVS mode has none).
    as_kube_proxy(&lab.node);
    count_invalid(&lab.node);
    assert_eq!(
        iptables_save(&lab.node)
            .matches("--ctstate INVALID")
            .count(),
        1,
        "only the test's counter"
    );
    let mut held = held_and_injected(&lab, node_port, masq);
    let broken = eventually("the node's reset to kill the connection", || {
        match held.try_exchange("after the forged segment") {
            Err(e) => Ok(e),
            Ok(answer) => Err(answer),
        }
    });
    eprintln!("under kube-proxy's rules the connection failed, as in #74839: {broken}");

    // 2. Ours, as a new agent installs them, and the same injection, which the
    // agent counts under kube-proxy's name (the nfacct object its INVALID drops add to).
    drop(agent);
    let agent = Agent::start(&lab, &manifests, &args);
    eventually(
        "the agent's rules with both INVALID drops (and the counter)",
        || {
            let drops = iptables_save(&lab.node)
                .matches("--ctstate INVALID")
                .count();
            if drops == 3 { Ok(()) } else { Err(drops) }
        },
    );
    // Its metrics server answers once it synced (the rules come first, at its start).
    agent.wait_syncs(1);
    let dropped = || {
        agent
            .metric(
                &lab.node,
                "kubeproxy_iptables_ct_state_invalid_dropped_packets_total",
            )
            .unwrap_or_else(|| panic!("no INVALID drop counter in /metrics"))
    };
    let dropped_before = dropped();
    let mut held = held_and_injected(&lab, node_port, masq);
    for _ in 0..5 {
        held.exchange();
        std::thread::sleep(Duration::from_millis(100));
    }
    let dropped_after = dropped();
    assert!(
        dropped_after > dropped_before,
        "the forged segment was dropped and counted: {dropped_before} -> {dropped_after}"
    );
    eprintln!(
        "kubeproxy_iptables_ct_state_invalid_dropped_packets_total: {dropped_before} -> {dropped_after}"
    );
}

/// A restart with NodePorts, externalIPs and load balancer IPs (one under
/// `externalTrafficPolicy: Local` with source ranges): the new agent adopts them all,
/// their internal twins included, and its first sync rewrites nothing; a connection
/// held through the NodePort lives on.
#[test]
fn a_restarted_agent_adopts_external_frontends_and_rewrites_nothing() {
    let lab = Lab::new("readopt", &["a", "b"], 1);
    let manifests = Manifests::new("readopt");
    let pods = |v6: bool| lab.pods.iter().map(move |p| p.ip(v6)).collect::<Vec<_>>();
    manifests.write_services(
        "web.yaml",
        &[
            Service::new("web", ip("10.96.0.60"))
                .tcp(80, TCP_PORT)
                .udp(53, UDP_PORT)
                .node_port(80, 30080)
                .node_port(53, 30053)
                .external_ip(ip("192.0.2.60"))
                .load_balancer(ip("198.51.100.60"))
                .endpoints(pods(false)),
            Service::new("local", ip("10.96.0.61"))
                .tcp(80, TCP_PORT)
                .node_port(80, 30081)
                .load_balancer(ip("198.51.100.61"))
                .source_range("10.0.1.0/24")
                .local()
                .endpoints(pods(false)),
            Service::new("web6", ip("fd00:96::60"))
                .tcp(80, TCP_PORT)
                .node_port(80, 30082)
                .endpoints(pods(true)),
        ],
    );
    let args = ["--nodeport-addresses", NODE_PORT_ADDRESSES];
    let first = Agent::start(&lab, &manifests, &args);
    let node_port = at("10.0.1.1", 30080);
    let pods_tcp: Vec<SocketAddr> = lab.pods.iter().map(|p| p.tcp(false)).collect();
    wait_dests(&lab, tcp(node_port), &pods_tcp);
    wait_dests(&lab, tcp(at("198.51.100.61", 80)), &pods_tcp);
    wait_dests(
        &lab,
        tcp(at("fd00:1:1::1", 30082)),
        &lab.pods.iter().map(|p| p.tcp(true)).collect::<Vec<_>>(),
    );
    let first_sync = first.wait_syncs(1).remove(0);
    let mut held = Held::open(&lab.client().ns, node_port);
    held.exchange();
    let before = kernel::table(&lab.node);

    let status = first.stop();
    assert!(status.success(), "the first agent exited {status}");
    held.exchange();
    let second = Agent::start(&lab, &manifests, &args);
    let report = second.wait_syncs(1).remove(0);
    assert_eq!(
        (report.upserted, report.removed, report.failed),
        (0, 0, 0),
        "the first sync rewrote something: {}",
        report.line
    );
    assert_eq!(report.services, first_sync.services, "{}", report.line);
    let after = kernel::table(&lab.node);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "the same virtual servers"
    );
    held.exchange();
    first_contact(&lab.client().ns, at("198.51.100.61", 80));
    assert_eq!(
        answers(&lab.client().ns, node_port, 4),
        BTreeSet::from(["a".to_owned(), "b".to_owned()])
    );
}
