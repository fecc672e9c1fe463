//! kubernetes issue 74839, the conntrack-INVALID connection reset, on the NodePort path:
//! first reproduced with kube-proxy's own iptables rules, then, in the same topology
//! with the same Service, shown not to happen with our tc data plane, on the NodePort
//! path and on the ClusterIP path (an external client routing the ClusterIP via the
//! node).
//!
//! The Service has `externalTrafficPolicy: Local` and one endpoint, a-pod-0 on node-a.
//! kube-proxy then does not masquerade external traffic (`KUBE-EXT-*` jumps straight to
//! the local endpoints' `KUBE-SVL-*`): the pod talks to the client's own address, and
//! node-a's conntrack un-DNATs the pod's segments back to `node-a:nodePort`. A segment
//! far outside the TCP window is INVALID for conntrack, so it is forwarded *without*
//! un-DNAT. The client (whose network routes pod CIDRs via the nodes, as in VPC-native
//! clusters) gets a segment from the pod's address for a connection it never opened,
//! and answers it with a RST to the pod; the RST's sequence number is exactly what the
//! pod expects, so the pod's socket is reset.
//!
//! The test asserts each of those steps on the iptables rules first (so it is known to
//! detect the bug) and only then runs the same injection through the agent.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::process::Command;
use std::time::{Duration, Instant};

use tests::packet::{
    Segment, TCP_RST, capture_socket, capture_until, conntrack_invalid, inject, newest_data_segment,
};
use tests::{
    Agent, BpfFs, Cgroup, ChildGuard, ManifestDir, NodesTopology, ProbeReply, ServiceSpec,
    flush_nat, install_kube_proxy_nodeport_local, probe_bin, spawn_guarded,
};

const POD_PORT: u16 = 8080;
const NODE_PORT: u16 = 30080;
const SVC_PORT: u16 = 80;
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// How long a RST has to appear after the injection.
const RST_WINDOW: Duration = Duration::from_secs(2);

fn service_yaml(pod: Ipv4Addr) -> String {
    ServiceSpec::new("web", "NodePort")
        .cluster_ip(IpAddr::V4(CLUSTER_IP))
        .port("http", SVC_PORT, "TCP", POD_PORT, Some(NODE_PORT))
        .endpoint(IpAddr::V4(pod), "node-a")
        .external_traffic_policy_local(None)
        .yaml()
}

/// `probe hold` from the client to `to`, `rounds` pings 1 s apart; returns it after its
/// first line, which must come from `want`.
fn hold(topo: &NodesTopology, to: &str, rounds: u32, want: &str) -> ChildGuard {
    let rounds = rounds.to_string();
    let mut hold = spawn_guarded(
        &topo.client,
        None,
        Command::new(probe_bin()).args([
            "hold",
            "--to",
            to,
            "--rounds",
            &rounds,
            "--interval-ms",
            "1000",
        ]),
    );
    let first = hold.expect_line(Duration::from_secs(5));
    let name = ProbeReply::parse(&first).and_then(|r| r.name().map(str::to_owned));
    assert_eq!(
        name.as_deref(),
        Some(want),
        "holding a connection to {to}: {first}"
    );
    hold
}

/// Waits until the probe server's stderr (it logs each connection that ends in an
/// error) mentions `what`.
fn wait_server_log(server: &ChildGuard, what: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = server.stderr();
        if let Some(line) = log.lines().find(|l| l.contains(what)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the server never logged {what:?} within {timeout:?}; its stderr: {log:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Injects, from the pod, `echo`'s flow a quarter of the sequence space ahead.
fn inject_out_of_window(pod: &tests::Pod, echo: &Segment) -> Segment {
    let bogus = echo.out_of_window();
    pod.netns.run(|| inject(&bogus, b"bogus\n"));
    bogus
}

/// The whole issue on one topology: reproduce with iptables, then fix with the agent.
#[test]
fn an_invalid_segment_resets_kube_proxy_nodeport_connections_but_not_ours() {
    let bpffs = BpfFs::new("reset");
    let dir = ManifestDir::new("reset");
    let cgroup = Cgroup::new("reset-pods");
    let topo = NodesTopology::new("reset", 1);
    let node_a = topo.node_a();
    let pod = &node_a.pods[0];
    let servers = vec![pod.serve(&[POD_PORT], &[])];
    // The client's network routes the pod CIDRs and the service CIDR via node-a.
    topo.route_client_via("10.244.1.0/24", node_a);
    topo.route_client_via("10.96.0.0/16", node_a);
    let node_port = format!("{}:{NODE_PORT}", node_a.ipv4);

    // --- kube-proxy's iptables rules: the bug ---------------------------------------
    install_kube_proxy_nodeport_local(
        &node_a.netns,
        NODE_PORT,
        CLUSTER_CIDR,
        &[(SocketAddrV4::new(pod.ipv4, POD_PORT), true)],
    );
    let at_pod = pod.netns.run(capture_socket);
    let at_client = topo.client.run(capture_socket);
    let mut held = hold(&topo, &node_port, 30, &pod.name);
    let echo = newest_data_segment(&at_pod, pod.ipv4, POD_PORT);
    assert_eq!(
        echo.dst, topo.client_v4,
        "externalTrafficPolicy: Local must not masquerade: {echo:?}"
    );
    let before = conntrack_invalid(&node_a.netns);
    let bogus = inject_out_of_window(pod, &echo);
    let delivered = capture_until(&at_client, RST_WINDOW, |s| s.seq == bogus.seq)
        .expect("iptables: the injected segment never reached the client");
    assert_eq!(
        (delivered.src, delivered.sport),
        (pod.ipv4, POD_PORT),
        "iptables: the INVALID segment should reach the client un-NATed, from the pod"
    );
    let after = conntrack_invalid(&node_a.netns);
    assert!(
        after > before,
        "iptables: conntrack's invalid count did not rise ({before} -> {after})"
    );
    let client_rst = capture_until(&at_client, RST_WINDOW, |s| {
        s.flags & TCP_RST != 0 && s.src == topo.client_v4
    })
    .expect("iptables: the client sent no RST for the stray segment");
    assert_eq!(
        (client_rst.dst, client_rst.dport),
        (pod.ipv4, POD_PORT),
        "iptables: the client's RST goes to the pod's address: {client_rst:?}"
    );
    assert_eq!(
        client_rst.seq, echo.ack,
        "iptables: the RST is exactly at the pod's next expected sequence number"
    );
    let pod_rst = capture_until(&at_pod, RST_WINDOW, |s| {
        s.flags & TCP_RST != 0 && s.dst == pod.ipv4 && s.dport == POD_PORT
    })
    .expect("iptables: the client's RST never reached the pod");
    assert_eq!(pod_rst.src, topo.client_v4, "{pod_rst:?}");
    let reset = wait_server_log(&servers[0], "reset by peer", Duration::from_secs(5));
    assert!(
        reset.contains(&topo.client_v4.to_string()),
        "iptables: the reset connection is the client's: {reset}"
    );
    let err = held.wait_for_line(Duration::from_secs(10), |l| l.starts_with("err "));
    assert!(
        err.contains("ECONNRESET"),
        "iptables: the held connection ended with {err}"
    );
    eprintln!(
        "iptables reproduced the bug: conntrack invalid {before} -> {after}, client RST {client_rst:?}, server: {reset}"
    );
    drop(held);

    // --- the agent: the fix -----------------------------------------------------------
    flush_nat(&node_a.netns);
    dir.write("web.yaml", &service_yaml(pod.ipv4));
    let agent = Agent::start_in(
        &node_a.netns,
        bpffs.path(),
        cgroup.path(),
        dir.path(),
        NodesTopology::AGENT_FLAGS,
    );
    let cluster_ip = format!("{CLUSTER_IP}:{SVC_PORT}");
    let paths = [
        ("NodePort", node_port.as_str(), node_a.ipv4, NODE_PORT),
        ("ClusterIP", cluster_ip.as_str(), CLUSTER_IP, SVC_PORT),
    ];
    for (path, to, vip, vport) in paths {
        let at_pod = pod.netns.run(capture_socket);
        let at_client = topo.client.run(capture_socket);
        let mut held = hold_when_served(&topo, &agent, to, 6, &pod.name);
        let echo = newest_data_segment(&at_pod, pod.ipv4, POD_PORT);
        let bogus = inject_out_of_window(pod, &echo);
        let delivered = capture_until(&at_client, RST_WINDOW, |s| s.seq == bogus.seq)
            .unwrap_or_else(|| {
                panic!(
                    "{path}: the injected segment never reached the client\nagent log:\n{}",
                    agent.log()
                )
            });
        assert_eq!(
            (delivered.src, delivered.sport, delivered.dst),
            (vip, vport, topo.client_v4),
            "{path}: the out-of-window segment must reach the client translated back to \
             {vip}:{vport}, never from the pod's address: {delivered:?}\nagent log:\n{}",
            agent.log()
        );
        assert_no_rst(path, &at_client, &at_pod, &agent);
        let status = held.wait(Duration::from_secs(20));
        assert!(
            status.success(),
            "{path}: the held connection broke: {:?}\nagent log:\n{}",
            held.seen_lines(),
            agent.log()
        );
        let resets = servers[0].stderr().matches("reset by peer").count();
        assert_eq!(
            resets,
            1,
            "{path}: the server logged another reset: {}",
            servers[0].stderr()
        );
    }
    drop(agent);
    drop(servers);
}

/// [`hold`], retried for a few seconds: the agent may still be attaching its tc
/// programs after its first sync.
fn hold_when_served(
    topo: &NodesTopology,
    agent: &Agent,
    to: &str,
    rounds: u32,
    want: &str,
) -> ChildGuard {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = topo.client_probe(&["tcp", "--to", to, "--timeout-ms", "500"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if ProbeReply::parse(stdout.trim()).and_then(|r| r.name().map(str::to_owned))
            == Some(want.to_owned())
        {
            return hold(topo, to, rounds, want);
        }
        assert!(
            Instant::now() < deadline,
            "{to} is not served by {want} 10 s after the agent's first sync: {stdout}\nagent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// No RST on either capture within [`RST_WINDOW`].
fn assert_no_rst(path: &str, at_client: &OwnedFd, at_pod: &OwnedFd, agent: &Agent) {
    let is_rst = |s: &Segment| s.flags & TCP_RST != 0;
    let (client, pod) = std::thread::scope(|s| {
        let c = s.spawn(|| capture_until(at_client, RST_WINDOW, is_rst));
        let p = s.spawn(|| capture_until(at_pod, RST_WINDOW, is_rst));
        (
            c.join().expect("client capture"),
            p.join().expect("pod capture"),
        )
    });
    assert!(
        client.is_none() && pod.is_none(),
        "{path}: a RST was sent (seen at the client: {client:?}, at the pod: {pod:?})\nagent log:\n{}",
        agent.log()
    );
}
