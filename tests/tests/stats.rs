//! `proxyctl list --stats` and `--rate` on real traffic: a NodePort reached from an
//! external client (the tc path: connections, packets and bytes both ways) and the
//! same service's ClusterIP reached from a process in the attached cgroup (the socket
//! path: connections only, packets shown as unknown), counted per frontend and per
//! backend, and a non-zero rate while connections run.
//!
//! Topology as in `nodeport.rs`: the agent in node-a, the backend a-pod-0
//! (10.244.1.11) behind node-a's `cbr0`, the client at 192.0.2.100.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use tests::{
    Agent, BpfFs, Cgroup, ManifestDir, NodesTopology, ProbeReply, ServiceSpec, probe_bin, run,
    spawn_guarded,
};

const POD_TCP: u16 = 8080;
const NODEPORT: &str = "192.0.2.1:30080";
const CLUSTER_IP: &str = "10.96.0.10:80";
const BACKEND: &str = "10.244.1.11:8080";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// `proxyctl list <args> -o json` parsed.
fn list(agent: &Agent, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["list"];
    all.extend_from_slice(args);
    all.extend(["-o", "json"]);
    let out = agent.proxyctl(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("proxyctl {all:?}: {e}: {out}"))
}

/// The frontend `frontend` of the listing.
fn frontend<'a>(list: &'a serde_json::Value, frontend: &str) -> &'a serde_json::Value {
    list.as_array()
        .and_then(|a| a.iter().find(|v| v["frontend"] == frontend))
        .unwrap_or_else(|| panic!("no frontend {frontend} in {list:#}"))
}

/// The backend `address` of a frontend.
fn endpoint<'a>(v: &'a serde_json::Value, address: &str) -> &'a serde_json::Value {
    v["endpoints"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["address"] == address))
        .unwrap_or_else(|| panic!("no backend {address} in {v:#}"))
}

fn n(v: &serde_json::Value, field: &str) -> u64 {
    v["stats"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("stats.{field} is not a count in {v:#}"))
}

/// Replies with a name (answered) among `probe` output.
fn answered(out: &std::process::Output) -> usize {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ProbeReply::parse_all(&stdout)
        .iter()
        .filter(|r| r.name().is_some())
        .count()
}

#[test]
fn stats_count_both_paths_per_frontend_and_backend_and_rate_sees_traffic() {
    let tag = "stats";
    let bpffs = BpfFs::new(tag);
    let dir = ManifestDir::new(tag);
    let cgroup = Cgroup::new(&format!("{tag}-pods"));
    let topo = NodesTopology::new(tag, 1);
    let _servers = topo.serve_pods(&[POD_TCP], &[]);
    let web = ServiceSpec::new("web", "NodePort")
        .cluster_ip(ip("10.96.0.10"))
        .port("http", 80, "TCP", POD_TCP, Some(30080))
        .endpoints([ip("10.244.1.11")], "node-a")
        .yaml();
    dir.write("web.yaml", &web);
    let node_a = topo.node_a();
    let agent = Agent::start_in(
        &node_a.netns,
        bpffs.path(),
        cgroup.path(),
        dir.path(),
        NodesTopology::AGENT_FLAGS,
    );
    let external = "*:30080/TCP (external)";
    let internal = "10.96.0.10:80/TCP";

    // Served: the first answer (its connection counts too, so baselines follow it).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = topo.client_probe(&["tcp", "--to", NODEPORT, "--timeout-ms", "500"]);
        if answered(&out) == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the NodePort never answered\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = list(&agent, &["--stats"]);
    let b_ext = endpoint(frontend(&before, external), BACKEND).clone();
    let b_int = endpoint(frontend(&before, internal), BACKEND).clone();

    // 20 connections from outside: the tc path.
    let out = topo.client_probe(&["tcp", "--to", NODEPORT, "--count", "20"]);
    assert_eq!(answered(&out), 20);
    // 5 from a process in the attached cgroup: the socket path.
    let out = run(
        &node_a.netns,
        Some(&cgroup),
        Command::new(probe_bin()).args(["tcp", "--to", CLUSTER_IP, "--count", "5"]),
        Duration::from_secs(30),
    );
    assert_eq!(answered(&out), 5);

    let after = list(&agent, &["--stats"]);
    let ext = frontend(&after, external);
    let e = endpoint(ext, BACKEND);
    assert_eq!(n(e, "connections") - n(&b_ext, "connections"), 20, "{e:#}");
    for field in ["packets_in", "packets_out"] {
        // At least a SYN, an ACK and the request one way; the SYN-ACK and the reply
        // the other, per connection.
        let d = n(e, field) - n(&b_ext, field);
        assert!(d >= 40, "{field}: {d} for 20 connections: {e:#}");
    }
    for field in ["bytes_in", "bytes_out"] {
        let d = n(e, field) - n(&b_ext, field);
        assert!(d >= 20 * 54, "{field}: {d} for 20 connections: {e:#}");
    }
    // One backend: the frontend's totals are its.
    assert_eq!(ext["stats"], e["stats"], "{ext:#}");

    let int = frontend(&after, internal);
    let e = endpoint(int, BACKEND);
    assert_eq!(n(e, "connections") - n(&b_int, "connections"), 5, "{e:#}");
    assert!(
        e["stats"]["packets_in"].is_null() && e["stats"]["bytes_out"].is_null(),
        "the socket path sees no packets: shown as unknown, not 0: {e:#}"
    );

    // The table: ipvsadm's columns, `-` for what the socket path cannot see.
    let table = agent.proxyctl(&["list", "--stats"]);
    assert!(
        table.starts_with("PROT")
            && table
                .lines()
                .next()
                .is_some_and(|l| l.contains("CONNS  INPKTS")),
        "{table}"
    );
    let line = table
        .lines()
        .find(|l| l.starts_with("TCP") && l.contains("10.96.0.10:80"))
        .unwrap_or_else(|| panic!("no ClusterIP line in\n{table}"));
    assert!(line.trim_end().ends_with('-'), "{line}");

    // A rate while connections run (as fast as they go, for 4 s).
    let mut crr = Command::new(probe_bin());
    crr.args(["crr", "--to", NODEPORT, "--duration-ms", "4000"]);
    let _load = spawn_guarded(&topo.client, None, &mut crr);
    std::thread::sleep(Duration::from_millis(500));
    let rate = list(&agent, &["--rate", "--interval", "1"]);
    let ext = frontend(&rate, external);
    let cps = ext["rate"]["connections"].as_f64().unwrap_or(0.0);
    let in_bps = ext["rate"]["bytes_in"].as_f64().unwrap_or(0.0);
    assert!(
        cps > 10.0 && in_bps > 0.0,
        "no rate during traffic: {ext:#}"
    );
    let e = endpoint(ext, BACKEND);
    assert_eq!(
        e["rate"]["connections"], ext["rate"]["connections"],
        "{ext:#}"
    );
    let table = agent.proxyctl(&["list", "--rate", "--interval", "0.5"]);
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|l| l.contains("CPS  INPPS")),
        "{table}"
    );
    drop(_load);

    // A restarted agent adopts the statistics with the services: nothing restarts
    // from zero.
    let kept = list(&agent, &["--stats"]);
    let kept = n(endpoint(frontend(&kept, external), BACKEND), "connections");
    agent.stop();
    let agent = Agent::start_in(
        &node_a.netns,
        bpffs.path(),
        cgroup.path(),
        dir.path(),
        NodesTopology::AGENT_FLAGS,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered(&topo.client_probe(&["tcp", "--to", NODEPORT, "--timeout-ms", "500"])) != 1 {
        assert!(
            Instant::now() < deadline,
            "not served after the restart\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let again = list(&agent, &["--stats"]);
    let e = endpoint(frontend(&again, external), BACKEND);
    assert!(
        n(e, "connections") > kept,
        "after a restart, {kept} before: {e:#}\n{}",
        agent.log()
    );
}
