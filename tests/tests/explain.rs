//! `proxyctl explain` checked against real traffic: what it names is what the next
//! connection does. Each test runs the real agent on a manifest directory and a
//! private bpffs, asks `proxyctl explain -o json` about a flow, then sends that flow
//! (with `probe`, whose servers answer with their pod's name) and compares.
//!
//! - ClientIP affinity, at the socket layer ([`ClusterTopology`]: a client pod in the
//!   agent's cgroup) and at tc ([`NodesTopology`]: a client outside the node): the
//!   backend explain names is the one every next connection reaches.
//! - A source outside `loadBalancerSourceRanges`: explain says dropped (exit 4), and the
//!   client's connection times out; an allowed source is translated (exit 0).
//! - A tracked flow (a connection held open from a known port): explain names its
//!   backend, the one the held connection talks to.
//! - A service whose endpoints are all terminating: explain says why there is no
//!   backend (exit 4) and the pod's connection is refused; with endpoints terminating
//!   but still serving, explain lists them as the candidates, and they answer.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tests::{
    Agent, BpfFs, Cgroup, ChildGuard, ClusterTopology, ManifestDir, NodesTopology, PortSpec,
    ProbeReply, ServiceSpec, agent_binary, probe_bin, service, spawn_guarded,
};

const SYNC: Duration = Duration::from_secs(10);
const POD_TCP: u16 = 8080;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// `proxyctl --bpffs PINS explain ARGS -o json`: the exit status and the answer.
fn explain(pins: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(agent_binary("proxyctl"))
        .arg("--bpffs")
        .arg(pins)
        .arg("explain")
        .args(args)
        .args(["-o", "json"])
        .output()
        .expect("running proxyctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let code = out.status.code().unwrap_or(-1);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "proxyctl explain {args:?} exited {code} without JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, json)
}

/// The text form, for failure messages.
fn explain_text(pins: &Path, args: &[&str]) -> String {
    let out = Command::new(agent_binary("proxyctl"))
        .arg("--bpffs")
        .arg(pins)
        .arg("explain")
        .args(args)
        .output()
        .expect("running proxyctl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The outcome of check `name` in an explanation.
fn outcome<'a>(x: &'a serde_json::Value, name: &str) -> &'a str {
    x["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["check"] == name))
        .and_then(|c| c["outcome"].as_str())
        .unwrap_or_else(|| panic!("no {name} check in {x:#}"))
}

/// The backend the explanation's choice names.
fn chosen(x: &serde_json::Value) -> SocketAddr {
    x["choice"]["backend"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the choice names no backend: {x:#}"))
}

/// The server names of `replies`; panics on an error reply.
fn names(replies: &[ProbeReply], what: &str) -> Vec<String> {
    replies
        .iter()
        .map(|r| {
            r.name()
                .unwrap_or_else(|| panic!("{what}: {r:?} in {replies:?}"))
                .to_owned()
        })
        .collect()
}

fn parse(out: &std::process::Output, what: &str) -> Vec<ProbeReply> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: probe failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ProbeReply::parse_all(&stdout)
}

// --- the socket layer ------------------------------------------------------------------

/// One node with a client pod and `n` backends serving TCP 8080, and the agent.
struct PodEnv {
    agent: Agent,
    _servers: Vec<ChildGuard>,
    topo: ClusterTopology,
    _dir: ManifestDir,
    _bpffs: BpfFs,
}

impl PodEnv {
    fn new(tag: &str, n: usize, files: &[(&str, String)]) -> PodEnv {
        let topo = ClusterTopology::new(tag, n);
        let servers = topo.serve_backends(&[POD_TCP], &[]);
        let dir = ManifestDir::new(tag);
        for (name, content) in files {
            dir.write(name, content);
        }
        let bpffs = BpfFs::new(tag);
        let agent = Agent::start(bpffs.path(), topo.client_cgroup.path(), dir.path(), &[]);
        PodEnv {
            agent,
            _servers: servers,
            topo,
            _dir: dir,
            _bpffs: bpffs,
        }
    }

    /// `probe tcp --to TO --count N` from the client pod.
    fn probe(&self, to: &str, count: u32) -> Vec<ProbeReply> {
        let out = self
            .topo
            .client_probe(&["tcp", "--to", to, "--count", &count.to_string()]);
        parse(&out, to)
    }

    /// The pod name of backend address `a`.
    fn pod_of(&self, a: SocketAddr) -> String {
        self.topo
            .backends
            .iter()
            .find(|p| IpAddr::V4(p.ipv4) == a.ip())
            .map(|p| p.name.clone())
            .unwrap_or_else(|| panic!("{a} is no backend pod"))
    }
}

const HTTP: &[PortSpec<'static>] = &[("http", 80, "TCP", POD_TCP)];

#[test]
fn explain_names_the_backend_a_pods_clientip_affinity_pins_and_the_next_connections_hit_it() {
    let backends = ["10.244.0.11", "10.244.0.12", "10.244.0.13"].map(ip);
    let env = PodEnv::new(
        "xaff",
        3,
        &[(
            "web.yaml",
            service("web", ip("10.96.0.10"), HTTP, &backends, Some(600)),
        )],
    );
    let want: Vec<SocketAddr> = backends
        .iter()
        .map(|b| SocketAddr::new(*b, POD_TCP))
        .collect();
    env.agent.wait_for("10.96.0.10:80/TCP", &want, SYNC);
    let pins = env.agent.bpffs.clone();
    let netns = env.topo.client.netns.path();
    let args = [
        "10.244.0.2",
        "10.96.0.10:80/TCP",
        "--from-pod",
        "--netns",
        netns.to_str().expect("a UTF-8 path"),
    ];

    // Nothing remembered yet: every backend is a candidate, picked at random.
    let (code, x) = explain(&pins, &args);
    assert_eq!(code, 0, "{x:#}");
    assert_eq!(x["verdict"], "translated", "{x:#}");
    assert_eq!(x["choice"]["by"], "random", "{x:#}");
    assert_eq!(outcome(&x, "affinity"), "pass", "{x:#}");
    assert_eq!(x["candidates"].as_array().map(Vec::len), Some(3), "{x:#}");

    // The first connection's pick is remembered; explain names it, and every next
    // connection reaches it.
    let first = names(&env.probe("10.96.0.10:80", 1), "first connection");
    let (code, x) = explain(&pins, &args);
    assert_eq!(code, 0, "{x:#}");
    assert_eq!(x["choice"]["by"], "affinity", "{x:#}");
    assert_eq!(outcome(&x, "affinity"), "pin", "{x:#}");
    let named = env.pod_of(chosen(&x));
    assert_eq!(
        named,
        first[0],
        "explain names another backend than the one remembered:\n{}",
        explain_text(&pins, &args)
    );
    let next = names(&env.probe("10.96.0.10:80", 10), "next connections");
    assert!(
        next.iter().all(|n| *n == named),
        "explain named {named}, the next connections reached {next:?}"
    );
}

#[test]
fn explain_says_why_a_service_whose_endpoints_all_terminate_has_no_backend_and_it_is_refused() {
    // `gone`: both endpoints terminating and no longer serving. `draining`: terminating
    // but still serving, kube-proxy's fallback when none is ready.
    let slice = |name: &str, serving: bool| {
        let mut y = service(
            name,
            ip(if serving { "10.96.0.21" } else { "10.96.0.20" }),
            HTTP,
            &[],
            None,
        );
        y.truncate(y.find("endpoints: []").expect("an empty slice"));
        y.push_str("endpoints:\n");
        for b in ["10.244.0.11", "10.244.0.12"] {
            y.push_str(&format!(
                "- addresses: [\"{b}\"]\n  conditions:\n    ready: false\n    serving: {serving}\n    terminating: true\n  nodeName: node-a\n"
            ));
        }
        y.push_str(&format!(
            "ports:\n- name: http\n  port: {POD_TCP}\n  protocol: TCP\n"
        ));
        y
    };
    let env = PodEnv::new(
        "xterm",
        2,
        &[
            ("gone.yaml", slice("gone", false)),
            ("draining.yaml", slice("draining", true)),
        ],
    );
    env.agent.wait_for("10.96.0.20:80/TCP", &[], SYNC);
    let serving = [
        SocketAddr::new(ip("10.244.0.11"), POD_TCP),
        SocketAddr::new(ip("10.244.0.12"), POD_TCP),
    ];
    env.agent.wait_for("10.96.0.21:80/TCP", &serving, SYNC);
    let pins = env.agent.bpffs.clone();

    let (code, x) = explain(&pins, &["10.244.0.2", "10.96.0.20:80/TCP"]);
    assert_eq!(code, 4, "refused is exit 4: {x:#}");
    assert_eq!(x["verdict"], "refused", "{x:#}");
    assert_eq!(outcome(&x, "backends"), "fail", "{x:#}");
    let reason = x["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("ECONNREFUSED") && reason.contains("terminating"),
        "the reason names the cause: {reason}"
    );
    assert_eq!(x["frontend"]["service"], "test/gone:http", "{x:#}");
    let replies = env.probe("10.96.0.20:80", 3);
    assert!(
        replies.iter().all(|r| r.error() == Some("ECONNREFUSED")),
        "explain said refused; the pod got {replies:?}"
    );

    let (code, x) = explain(&pins, &["10.244.0.2", "10.96.0.21:80/TCP"]);
    assert_eq!(code, 0, "{x:#}");
    let candidates: Vec<SocketAddr> = x["candidates"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["backend"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(candidates, serving, "{x:#}");
    let reached = names(
        &env.probe("10.96.0.21:80", 10),
        "serving terminating endpoints",
    );
    let allowed: Vec<String> = candidates.iter().map(|a| env.pod_of(*a)).collect();
    assert!(
        reached.iter().all(|n| allowed.contains(n)),
        "explain's candidates {allowed:?}, reached {reached:?}"
    );
}

// --- the tc path -----------------------------------------------------------------------

/// An external client, node-a with the agent, node-b; pods serving TCP 8080.
struct ExtEnv {
    agent: Agent,
    _servers: Vec<ChildGuard>,
    topo: NodesTopology,
    _cgroup: Cgroup,
    _dir: ManifestDir,
    _bpffs: BpfFs,
}

impl ExtEnv {
    fn new(tag: &str, files: &[(&str, String)]) -> ExtEnv {
        let bpffs = BpfFs::new(tag);
        let dir = ManifestDir::new(tag);
        let cgroup = Cgroup::new(&format!("{tag}-pods"));
        let topo = NodesTopology::new(tag, 2);
        let servers = topo.serve_pods(&[POD_TCP], &[]);
        for cidr in ["10.96.0.0/16", "203.0.113.0/24"] {
            topo.route_client_via(cidr, topo.node_a());
        }
        for (name, content) in files {
            dir.write(name, content);
        }
        let agent = Agent::start_in(
            &topo.node_a().netns,
            bpffs.path(),
            cgroup.path(),
            dir.path(),
            NodesTopology::AGENT_FLAGS,
        );
        ExtEnv {
            agent,
            _servers: servers,
            topo,
            _cgroup: cgroup,
            _dir: dir,
            _bpffs: bpffs,
        }
    }

    /// `probe tcp ARGS` from the external client.
    fn probe(&self, args: &[&str]) -> Vec<ProbeReply> {
        let mut a = vec!["tcp"];
        a.extend_from_slice(args);
        parse(&self.topo.client_probe(&a), &format!("{args:?}"))
    }

    /// Waits until `to` answers the client.
    fn wait_served(&self, to: &str) -> String {
        let deadline = Instant::now() + SYNC;
        loop {
            let r = self.probe(&["--to", to, "--timeout-ms", "500"]);
            if let Some(n) = r.first().and_then(ProbeReply::name) {
                return n.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{to} never answered: {r:?}\n{}",
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn pod_of(&self, a: SocketAddr) -> String {
        self.topo
            .pods()
            .find(|p| IpAddr::V4(p.ipv4) == a.ip())
            .map(|p| p.name.clone())
            .unwrap_or_else(|| panic!("{a} is no pod"))
    }
}

#[test]
fn explain_names_the_backend_an_external_clients_affinity_pins_and_the_next_connections_hit_it() {
    let sticky = ServiceSpec::new("sticky", "NodePort")
        .cluster_ip(ip("10.96.0.16"))
        .port("http", 80, "TCP", POD_TCP, Some(30086))
        .endpoints([ip("10.244.1.11"), ip("10.244.1.12")], "node-a")
        .endpoints([ip("10.244.2.11"), ip("10.244.2.12")], "node-b")
        .client_ip_affinity(600)
        .yaml();
    let env = ExtEnv::new("xextaff", &[("sticky.yaml", sticky)]);
    let first = env.wait_served("192.0.2.1:30086");
    let pins = env.agent.bpffs.clone();
    let args = ["192.0.2.100", "192.0.2.1:30086/TCP", "--external"];
    let (code, x) = explain(&pins, &args);
    assert_eq!(code, 0, "{x:#}");
    assert_eq!(x["frontend"]["via_node_address"], true, "{x:#}");
    assert_eq!(x["frontend"]["scope"], "external", "{x:#}");
    assert_eq!(x["choice"]["by"], "affinity", "{x:#}");
    let named = env.pod_of(chosen(&x));
    assert_eq!(named, first, "{}", explain_text(&pins, &args));
    let next = names(
        &env.probe(&["--to", "192.0.2.1:30086", "--count", "10"]),
        "next connections",
    );
    assert!(
        next.iter().all(|n| *n == named),
        "explain named {named}, the next connections reached {next:?}"
    );
}

#[test]
fn explain_says_a_source_outside_the_ranges_is_dropped_and_the_connection_times_out() {
    let make = |name: &str, vip: &str, node_port: u16, range: &str| {
        ServiceSpec::new(name, "LoadBalancer")
            .cluster_ip(ip(&format!("10.96.0.{}", node_port - 30000)))
            .port("http", 80, "TCP", POD_TCP, Some(node_port))
            .endpoint(ip("10.244.1.11"), "node-a")
            .endpoint(ip("10.244.2.11"), "node-b")
            .lb_ingress(ip(vip))
            .source_range(range)
            .yaml()
    };
    let env = ExtEnv::new(
        "xsrc",
        &[
            (
                "allowed.yaml",
                make("allowed", "203.0.113.20", 30020, "192.0.2.96/28"),
            ),
            (
                "denied.yaml",
                make("denied", "203.0.113.21", 30021, "198.18.0.0/15"),
            ),
        ],
    );
    env.wait_served("203.0.113.20:80");
    let pins = env.agent.bpffs.clone();

    let (code, x) = explain(&pins, &["192.0.2.100", "203.0.113.21:80/TCP", "--external"]);
    assert_eq!(code, 4, "dropped is exit 4: {x:#}");
    assert_eq!(x["verdict"], "dropped", "{x:#}");
    assert_eq!(outcome(&x, "source ranges"), "fail", "{x:#}");
    assert_eq!(x["frontend"]["kind"], "LoadBalancer", "{x:#}");
    let replies = env.probe(&[
        "--to",
        "203.0.113.21:80",
        "--count",
        "2",
        "--timeout-ms",
        "700",
    ]);
    assert!(
        replies.iter().all(|r| r.error() == Some("ETIMEDOUT")),
        "explain said dropped; the client got {replies:?}"
    );

    let (code, x) = explain(&pins, &["192.0.2.100", "203.0.113.20:80/TCP", "--external"]);
    assert_eq!(code, 0, "{x:#}");
    assert_eq!(outcome(&x, "source ranges"), "pass", "{x:#}");
    let candidates: Vec<String> = x["candidates"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["backend"].as_str()?.parse().ok())
                .map(|a| env.pod_of(a))
                .collect()
        })
        .unwrap_or_default();
    let reached = names(
        &env.probe(&["--to", "203.0.113.20:80", "--count", "5"]),
        "allowed",
    );
    assert!(
        reached.iter().all(|n| candidates.contains(n)),
        "explain's candidates {candidates:?}, reached {reached:?}"
    );
}

#[test]
fn explain_names_the_backend_a_tracked_flow_of_the_tuple_goes_to() {
    let spread = ServiceSpec::new("spread", "NodePort")
        .cluster_ip(ip("10.96.0.17"))
        .port("http", 80, "TCP", POD_TCP, Some(30087))
        .endpoints([ip("10.244.1.11"), ip("10.244.1.12")], "node-a")
        .endpoints([ip("10.244.2.11"), ip("10.244.2.12")], "node-b")
        .yaml();
    let env = ExtEnv::new("xct", &[("spread.yaml", spread)]);
    env.wait_served("192.0.2.1:30087");
    let pins = env.agent.bpffs.clone();
    // One connection held open from a known port: its flow is tracked.
    let mut hold = spawn_guarded(
        &env.topo.client,
        None,
        Command::new(probe_bin()).args([
            "hold",
            "--to",
            "192.0.2.1:30087",
            "--rounds",
            "100",
            "--interval-ms",
            "100",
            "--source-port",
            "41000",
        ]),
    );
    let first = hold.expect_line(SYNC);
    let held = match ProbeReply::parse(&first) {
        Some(ProbeReply::Ok { name, .. }) => name,
        other => panic!("the held connection failed: {other:?} ({first})"),
    };
    let args = ["192.0.2.100:41000", "192.0.2.1:30087/TCP", "--external"];
    let (code, x) = explain(&pins, &args);
    assert_eq!(code, 0, "{x:#}");
    assert_eq!(x["choice"]["by"], "conntrack", "{x:#}");
    assert_eq!(outcome(&x, "conntrack"), "pin", "{x:#}");
    assert_eq!(
        env.pod_of(chosen(&x)),
        held,
        "{}",
        explain_text(&pins, &args)
    );
    // Its next packets still reach that backend (the connection lives on).
    let round = hold.wait_for_line(SYNC, |l| l.starts_with("round") || l.starts_with("err"));
    assert!(round.ends_with(" ok"), "the held connection broke: {round}");

    // Another port has no flow: a new one opens, to any of the four.
    let (code, x) = explain(
        &pins,
        &["192.0.2.100:41001", "192.0.2.1:30087/TCP", "--external"],
    );
    assert_eq!(code, 0, "{x:#}");
    assert_eq!(outcome(&x, "conntrack"), "pass", "{x:#}");
    assert_eq!(x["choice"]["by"], "random", "{x:#}");
    assert_eq!(x["candidates"].as_array().map(Vec::len), Some(4), "{x:#}");
}
