//! The kube-proxy iptables baseline: a NodePort programmed with kube-proxy-style nat rules
//! on node-a of a [`NodesTopology`], reached from the external client.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::process::Command;
use std::time::{Duration, Instant};

use std::net::SocketAddrV4;
use tests::packet::{
    TCP_RST, capture_socket, capture_until, conntrack_invalid, inject, newest_data_segment,
};
use tests::{
    NodesTopology, ProbeReply, install_kube_proxy_nodeport, probe_bin, spawn_guarded, tool,
};

const POD_PORT: u16 = 8080;
const NODE_PORT: u16 = 30080;

fn netns_list() -> String {
    let out = Command::new(tool("ip"))
        .args(["netns", "list"])
        .output()
        .unwrap_or_else(|e| panic!("ip netns list: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn nodeport_spreads_over_local_and_remote_pods() {
    let start = Instant::now();
    let topo = NodesTopology::new("ipt-np", 2);
    eprintln!("topology ready in {:?}", start.elapsed());
    let names = topo.netns_names();
    let servers = topo.serve_pods(&[POD_PORT], &[]);
    let node_a = topo.node_a();
    let backends: Vec<SocketAddrV4> = topo
        .pods()
        .map(|p| SocketAddrV4::new(p.ipv4, POD_PORT))
        .collect();
    assert_eq!(backends.len(), 4);
    install_kube_proxy_nodeport(&node_a.netns, node_a.ipv4, NODE_PORT, &backends);

    let to = format!("{}:{NODE_PORT}", node_a.ipv4);
    let out = topo.client_probe(&["tcp", "--to", &to, "--count", "40", "--peer"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let replies = ProbeReply::parse_all(&stdout);
    assert_eq!(replies.len(), 40, "stdout: {stdout}");
    let errors: Vec<_> = replies.iter().filter_map(ProbeReply::error).collect();
    assert!(
        errors.is_empty(),
        "failed requests: {errors:?}; stdout: {stdout}"
    );
    assert!(out.status.success(), "probe failed: {out:?}");
    let seen: BTreeSet<&str> = replies.iter().filter_map(ProbeReply::name).collect();
    let expected: BTreeSet<&str> = topo.pods().map(|p| p.name.as_str()).collect();
    assert_eq!(seen, expected, "stdout: {stdout}");
    // externalTrafficPolicy=Cluster: masqueraded to node-a's address toward each pod.
    for reply in &replies {
        let ProbeReply::Ok {
            name,
            peer: Some(peer),
            ..
        } = reply
        else {
            panic!("no peer in {reply:?}");
        };
        let masq = if name.starts_with("a-") {
            node_a.gateway_v4
        } else {
            node_a.ipv4
        };
        assert_eq!(peer.ip(), masq, "{name} saw {peer}");
    }
    eprintln!("test done in {:?}", start.elapsed());

    drop(servers);
    drop(topo);
    let left = netns_list();
    for name in &names {
        assert!(
            !left
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} left behind: {left}"
        );
    }
}

/// kubernetes issue 74839 with the kube-proxy rules of the test above (no
/// `--ctstate INVALID -j DROP`): an out-of-window segment from a node-a-local backend is
/// INVALID for node-a's conntrack, so it skips un-NAT; node-a answers it with an RST that
/// the pod accepts, and the client's held connection breaks.
#[test]
fn invalid_segment_resets_a_nodeport_connection() {
    let topo = NodesTopology::new("ipt-inv", 2);
    let servers = topo.serve_pods(&[POD_PORT], &[]);
    let node_a = topo.node_a();
    let backends: Vec<SocketAddrV4> = topo
        .pods()
        .map(|p| SocketAddrV4::new(p.ipv4, POD_PORT))
        .collect();
    install_kube_proxy_nodeport(&node_a.netns, node_a.ipv4, NODE_PORT, &backends);
    let captures: Vec<OwnedFd> = node_a
        .pods
        .iter()
        .map(|p| p.netns.run(capture_socket))
        .collect();

    // Hold a connection on a node-a-local pod (the rules spread randomly: retry).
    let to = format!("{}:{NODE_PORT}", node_a.ipv4);
    let mut found = None;
    for _ in 0..30 {
        let mut hold = spawn_guarded(
            &topo.client,
            None,
            Command::new(probe_bin()).args([
                "hold",
                "--to",
                &to,
                "--rounds",
                "30",
                "--interval-ms",
                "1000",
            ]),
        );
        let first = hold.expect_line(Duration::from_secs(5));
        let name = ProbeReply::parse(&first)
            .and_then(|r| r.name().map(str::to_owned))
            .unwrap_or_else(|| panic!("hold failed: {first}"));
        if let Some(i) = node_a.pods.iter().position(|p| p.name == name) {
            found = Some((hold, i));
            break;
        }
    }
    let (mut hold, i) = found.expect("no hold landed on a node-a pod in 30 tries");
    let pod = &node_a.pods[i];
    let capture = &captures[i];

    // The pod's echo of a ping; the client then stays quiet for the rest of the 1 s
    // interval.
    let echo = newest_data_segment(capture, pod.ipv4, POD_PORT);
    eprintln!("captured {echo:?}");
    let before = conntrack_invalid(&node_a.netns);
    let bogus = echo.out_of_window();
    pod.netns.run(|| inject(&bogus, b"bogus\n"));
    let rst = capture_until(capture, Duration::from_secs(2), |s| {
        s.dst == pod.ipv4 && s.dport == POD_PORT && s.flags & TCP_RST != 0
    })
    .expect("no RST came back for the INVALID segment");
    eprintln!("RST {rst:?}");
    let after = conntrack_invalid(&node_a.netns);
    assert!(after > before, "conntrack invalid {before} -> {after}");
    assert_eq!(
        rst.src, echo.dst,
        "the RST comes from the masquerade address, not un-NATed"
    );
    assert_eq!(rst.seq, echo.ack, "the RST is in the pod's window");

    let err = hold.wait_for_line(Duration::from_secs(10), |l| l.starts_with("err "));
    assert!(err.contains("ECONNRESET"), "hold ended with {err}");
    drop(servers);
}

/// The premise of the tc data plane's path-MTU test (`nodeport.rs`): through
/// kube-proxy's rules, ICMP "fragmentation needed" for a translated flow is RELATED to
/// it in conntrack and reaches the client translated, so an upload through a NodePort
/// to a pod behind a narrower link (to a local and to a remote pod) completes.
#[test]
fn path_mtu_discovery_works_through_a_kube_proxy_nodeport() {
    let topo = NodesTopology::new("ipt-pmtu", 1);
    let _servers = topo.serve_pods(&[POD_PORT], &[]);
    for node in &topo.nodes {
        node.netns.ip(&["link", "set", "vp0", "mtu", "1280"]);
    }
    let node_a = topo.node_a();
    let to = format!("{}:{NODE_PORT}", node_a.ipv4);
    for node in &topo.nodes {
        let pod = &node.pods[0];
        install_kube_proxy_nodeport(
            &node_a.netns,
            node_a.ipv4,
            NODE_PORT,
            &[SocketAddrV4::new(pod.ipv4, POD_PORT)],
        );
        let out = topo.client_probe(&[
            "send",
            "--to",
            &to,
            "--bytes",
            "2000000",
            "--direction",
            "up",
            "--timeout-ms",
            "3000",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with(&format!("transfer ok {} ", pod.name)),
            "upload through kube-proxy's NodePort to {}: {stdout}",
            pod.name
        );
        // It really went through PMTU discovery: the client learned the narrow link.
        let route = topo.client.ip(&["route", "get", &node_a.ipv4.to_string()]);
        let route = String::from_utf8_lossy(&route.stdout);
        assert!(
            route.contains("mtu 1280"),
            "the client holds no path MTU for {}: {route}",
            node_a.ipv4
        );
        topo.client.ip(&["route", "flush", "cache"]);
        let route = topo.client.ip(&["route", "get", &node_a.ipv4.to_string()]);
        let route = String::from_utf8_lossy(&route.stdout);
        assert!(!route.contains("mtu 1280"), "not flushed: {route}");
    }
}
