//! ClusterIP served at the socket layer, on the real kernel.
//!
//! Each test builds its own node (a namespace with a bridge), a client pod whose
//! processes live in a cgroup made for the test, and backend pods running `probe
//! serve`; it runs the real agent on a private bpffs with a manifest directory, and
//! sends real traffic. Everything is removed on drop, also when a test fails.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::{
    Agent, BpfFs, ChildGuard, ClusterTopology, ManifestDir, PortSpec, ProbeReply, probe_bin,
    service, start_probe_server,
};

const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";
const SYNC: Duration = Duration::from_secs(10);

/// Field order is drop order: the agent and servers go before the namespaces.
struct Env {
    agent: Option<Agent>,
    _servers: Vec<ChildGuard>,
    topo: ClusterTopology,
    dir: ManifestDir,
    bpffs: BpfFs,
}

impl Env {
    /// A topology with `n` backends, each serving `tcp`/`udp` ports, and an agent
    /// running on the manifests in `files`.
    fn new(tag: &str, n: usize, tcp: &[u16], udp: &[u16], files: &[(&str, String)]) -> Env {
        Env::with_flags(tag, n, tcp, udp, files, &[])
    }

    /// Like [`Env::new`], with the agent's `flags`.
    fn with_flags(
        tag: &str,
        n: usize,
        tcp: &[u16],
        udp: &[u16],
        files: &[(&str, String)],
        flags: &[&str],
    ) -> Env {
        let topo = ClusterTopology::new(tag, n);
        let servers = topo.serve_backends(tcp, udp);
        let dir = ManifestDir::new(tag);
        for (name, content) in files {
            dir.write(name, content);
        }
        let bpffs = BpfFs::new(tag);
        let agent = Agent::start(bpffs.path(), topo.client_cgroup.path(), dir.path(), flags);
        Env {
            agent: Some(agent),
            _servers: servers,
            topo,
            dir,
            bpffs,
        }
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent running")
    }

    fn agent_mut(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent running")
    }

    fn v4(&self) -> Vec<IpAddr> {
        self.topo
            .backends
            .iter()
            .map(|p| IpAddr::V4(p.ipv4))
            .collect()
    }

    fn v6(&self) -> Vec<IpAddr> {
        self.topo
            .backends
            .iter()
            .map(|p| IpAddr::V6(p.ipv6))
            .collect()
    }

    /// Runs `probe <args>` in the client pod and parses its replies.
    fn probe(&self, args: &[&str]) -> Vec<ProbeReply> {
        let out = self.topo.client_probe(args);
        assert!(
            out.status.success(),
            "probe {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ProbeReply::parse_all(&String::from_utf8_lossy(&out.stdout))
    }
}

/// The backend names of `replies`, counted; panics on any error reply.
fn spread(replies: &[ProbeReply]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in replies {
        match r.name() {
            Some(n) => *m.entry(n.to_owned()).or_insert(0) += 1,
            None => panic!("error reply in {replies:?}"),
        }
    }
    m
}

fn addrs(replies: &[ProbeReply]) -> Vec<SocketAddr> {
    replies
        .iter()
        .map(|r| match r {
            ProbeReply::Ok { addr, .. } => *addr,
            ProbeReply::Err { reason, .. } => panic!("error reply {reason}"),
        })
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

fn backends(ips: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    ips.iter().map(|i| SocketAddr::new(*i, port)).collect()
}

const WEB_PORTS: &[PortSpec<'static>] = &[("http", 80, "TCP", 8080), ("dns", 53, "UDP", 5353)];

fn web(env_ips: &[IpAddr], vip: &str, affinity: Option<u32>) -> String {
    service("web", ip(vip), WEB_PORTS, env_ips, affinity)
}

fn assert_spread(m: &BTreeMap<String, usize>, backends: usize, at_least: usize) {
    assert_eq!(m.len(), backends, "not every backend was reached: {m:?}");
    for (name, n) in m {
        assert!(*n >= at_least, "{name} got only {n} of the requests: {m:?}");
    }
}

#[test]
fn tcp_and_udp_through_the_vip_reach_every_backend_and_report_the_vip() {
    let ips = ["10.244.0.11", "10.244.0.12", "10.244.0.13"].map(ip);
    let env = Env::new(
        "spread",
        3,
        &[8080],
        &[5353],
        &[("web.yaml", web(&ips, VIP4, None))],
    );
    env.agent()
        .wait_for("10.96.0.10:80/TCP", &backends(&env.v4(), 8080), SYNC);

    // 90 connections over 3 backends: ~30 each; 12 is more than 4 sigma below.
    let views = env.agent().programmed();
    let http = views.iter().find(|v| v.frontend == "10.96.0.10:80/TCP");
    assert_eq!(
        http.map(|v| v.service.as_str()),
        Some("test/web:http"),
        "{views:?}"
    );

    let tcp = env.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "90"]);
    assert_spread(&spread(&tcp), 3, 12);
    assert!(
        addrs(&tcp).iter().all(|a| *a == sa("10.96.0.10:80")),
        "getpeername() must return the VIP: {tcp:?}"
    );

    let udp = env.probe(&["udp", "--to", "10.96.0.10:53", "--count", "90"]);
    assert_spread(&spread(&udp), 3, 12);
    assert!(
        addrs(&udp).iter().all(|a| *a == sa("10.96.0.10:53")),
        "UDP replies must appear to come from the VIP: {udp:?}"
    );

    // One unconnected UDP socket keeps talking to one backend; a connected one too.
    for mode in [&["--same-socket"][..], &["--same-socket", "--connected"]] {
        let mut args = vec!["udp", "--to", "10.96.0.10:53", "--count", "10"];
        args.extend_from_slice(mode);
        let r = env.probe(&args);
        assert_eq!(spread(&r).len(), 1, "{mode:?}: {r:?}");
        assert!(
            addrs(&r).iter().all(|a| *a == sa("10.96.0.10:53")),
            "{mode:?}: {r:?}"
        );
    }
}

#[test]
fn ipv6_vips_balance_tcp_and_udp() {
    let ips = ["fd00:244::11", "fd00:244::12", "fd00:244::13"].map(ip);
    let env = Env::new(
        "ipv6",
        3,
        &[8080],
        &[5353],
        &[("web6.yaml", web(&ips, VIP6, None))],
    );
    env.agent()
        .wait_for("[fd00:96::10]:80/TCP", &backends(&env.v6(), 8080), SYNC);

    let tcp = env.probe(&["tcp", "--to", "[fd00:96::10]:80", "--count", "60"]);
    assert_spread(&spread(&tcp), 3, 6);
    assert!(
        addrs(&tcp).iter().all(|a| *a == sa("[fd00:96::10]:80")),
        "{tcp:?}"
    );

    let udp = env.probe(&["udp", "--to", "[fd00:96::10]:53", "--count", "60"]);
    assert_spread(&spread(&udp), 3, 6);
    assert!(
        addrs(&udp).iter().all(|a| *a == sa("[fd00:96::10]:53")),
        "{udp:?}"
    );
}

#[test]
fn client_ip_affinity_holds_while_used_and_expires_after_its_timeout() {
    const TIMEOUT_S: u32 = 3;
    let ips = ["10.244.0.11", "10.244.0.12", "10.244.0.13"].map(ip);
    let env = Env::new(
        "affinity",
        3,
        &[8080],
        &[5353],
        &[("web.yaml", web(&ips, VIP4, Some(TIMEOUT_S)))],
    );
    let view = env
        .agent()
        .wait_for("10.96.0.10:80/TCP", &backends(&env.v4(), 8080), SYNC);
    assert_eq!(view.affinity_timeout_s, Some(TIMEOUT_S));

    let first = spread(&env.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "30"]));
    assert_eq!(first.len(), 1, "affinity must pin the client: {first:?}");
    let pinned = first.keys().next().cloned().unwrap_or_default();
    // proxyctl shows the remembered choice: this client pod -> the pinned backend.
    let pinned_ip = env
        .topo
        .backend(&pinned)
        .map(|p| p.ipv4.to_string())
        .unwrap_or_default();
    // The remembered entry, as proxyctl shows it: (backend, seconds idle).
    let remembered = || -> Option<(String, u64)> {
        let listed: serde_json::Value =
            serde_json::from_str(&env.agent().proxyctl(&["affinity", "--json"])).expect("JSON");
        listed.as_array()?.iter().find_map(|e| {
            (e["service"] == "test/web:http").then(|| {
                (
                    e["backend"].as_str().unwrap_or_default().to_owned(),
                    e["idle_s"].as_u64().unwrap_or(u64::MAX),
                )
            })
        })
    };
    let (backend, _) = remembered().expect("proxyctl affinity lists the choice");
    assert_eq!(backend, format!("{pinned_ip}:8080"));

    // In use for longer than the timeout: each use refreshes the entry (the map says
    // so: idle again right after it), so the client stays pinned throughout.
    let used_since = Instant::now();
    while used_since.elapsed() < Duration::from_secs(u64::from(TIMEOUT_S) + 2) {
        let r = spread(&env.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "1"]));
        assert!(r.contains_key(&pinned), "affinity lost while in use: {r:?}");
        let (backend, idle) = remembered().expect("the entry while in use");
        assert_eq!(backend, format!("{pinned_ip}:8080"));
        assert!(idle <= 1, "a use did not refresh the entry: idle {idle} s");
    }

    // Once the map shows the entry idle past the timeout, the next connection is a
    // fresh random choice. Each round has a 2/3 chance to land elsewhere; 15 rounds all
    // on `pinned` would happen with probability 7e-8.
    for _ in 0..15 {
        let deadline = Instant::now() + Duration::from_secs(u64::from(TIMEOUT_S) + 10);
        while remembered().is_some_and(|(_, idle)| idle <= u64::from(TIMEOUT_S)) {
            assert!(Instant::now() < deadline, "the entry never went idle");
            std::thread::sleep(Duration::from_millis(200));
        }
        let r = spread(&env.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "1"]));
        if !r.contains_key(&pinned) {
            return;
        }
    }
    panic!("affinity to {pinned} never expired");
}

#[test]
fn a_service_without_endpoints_refuses_connections_at_once() {
    let env = Env::new(
        "noep",
        1,
        &[8080],
        &[5353],
        &[("web.yaml", web(&[], VIP4, None))],
    );
    let view = env.agent().wait_for("10.96.0.10:80/TCP", &[], SYNC);
    assert!(view.backends.is_empty());
    // `proxyctl monitor` sees each refusal, with why.
    let mut monitor = env.agent().monitor(&["-o", "json"]);

    let start = Instant::now();
    let tcp = env.probe(&[
        "tcp",
        "--to",
        "10.96.0.10:80",
        "--count",
        "3",
        "--timeout-ms",
        "5000",
    ]);
    for r in &tcp {
        match r {
            ProbeReply::Err { reason, ms } => {
                assert_eq!(reason, "ECONNREFUSED", "{tcp:?}");
                assert!(
                    *ms < 500,
                    "refusal took {ms} ms (a timeout would take 5000)"
                );
            }
            ok => panic!("connected to a service without endpoints: {ok:?}"),
        }
    }
    let udp = env.probe(&[
        "udp",
        "--to",
        "10.96.0.10:53",
        "--count",
        "1",
        "--timeout-ms",
        "5000",
    ]);
    assert_eq!(udp[0].error(), Some("ECONNREFUSED"), "{udp:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "refusals must not wait for a timeout"
    );
    for (proto, port) in [("tcp", 80); 3].into_iter().chain([("udp", 53)]) {
        let line = monitor.expect_line(Duration::from_secs(5));
        let e: serde_json::Value = serde_json::from_str(&line).expect("a JSON event");
        assert_eq!(
            (&e["kind"], &e["reason"], &e["hook"]),
            (&"drop".into(), &"lb_no_backend".into(), &"sock".into()),
            "{e:#}"
        );
        assert_eq!(e["protocol"], proto, "{e:#}");
        assert_eq!(e["destination"], format!("10.96.0.10:{port}"), "{e:#}");
        assert_eq!(e["source"], serde_json::Value::Null, "{e:#}");
    }
}

#[test]
fn removing_a_backend_stops_new_connections_to_it_while_established_ones_keep_working() {
    let ips = ["10.244.0.11", "10.244.0.12", "10.244.0.13"].map(ip);
    let env = Env::new(
        "remove",
        3,
        &[8080],
        &[],
        &[("web.yaml", web(&ips, VIP4, None))],
    );
    env.agent()
        .wait_for("10.96.0.10:80/TCP", &backends(&env.v4(), 8080), SYNC);

    let mut hold = env.topo.spawn_client_probe(&[
        "hold",
        "--to",
        "10.96.0.10:80",
        "--rounds",
        "40",
        "--interval-ms",
        "100",
    ]);
    let greeting = hold.expect_line(Duration::from_secs(5));
    let victim = ProbeReply::parse(&greeting)
        .and_then(|r| r.name().map(str::to_owned))
        .unwrap_or_else(|| panic!("bad greeting {greeting:?}"));
    let victim_ip = env
        .topo
        .backend(&victim)
        .map(|p| IpAddr::V4(p.ipv4))
        .expect("victim is a backend");

    let rest: Vec<IpAddr> = ips.iter().copied().filter(|i| *i != victim_ip).collect();
    env.dir.write("web.yaml", &web(&rest, VIP4, None));
    env.agent()
        .wait_for("10.96.0.10:80/TCP", &backends(&rest, 8080), SYNC);

    let after = spread(&env.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "40"]));
    assert!(
        !after.contains_key(&victim),
        "{victim} still gets new connections: {after:?}"
    );
    assert_eq!(after.len(), 2, "{after:?}");

    let status = hold.wait(Duration::from_secs(20));
    assert!(
        status.success(),
        "the established connection to {victim} broke: {:?}",
        hold.seen_lines()
    );
}

#[test]
fn multi_port_services_and_the_same_port_on_tcp_and_udp() {
    let topo = ClusterTopology::new("multiport", 2);
    // One server per target port, each naming its port, so a wrong mapping shows.
    let mut servers = Vec::new();
    for pod in &topo.backends {
        for (port, tcp) in [(8080, true), (9090, true), (5353, false), (5354, true)] {
            let addr = [SocketAddr::new(IpAddr::V4(pod.ipv4), port)];
            let name = format!("{}-{port}", pod.name);
            let (t, u): (&[SocketAddr], &[SocketAddr]) =
                if tcp { (&addr, &[]) } else { (&[], &addr) };
            servers.push(start_probe_server(&pod.netns, &name, t, u));
        }
    }
    let ips: Vec<IpAddr> = topo.backends.iter().map(|p| IpAddr::V4(p.ipv4)).collect();
    let ports: &[PortSpec<'_>] = &[
        ("http", 80, "TCP", 8080),
        ("metrics", 81, "TCP", 9090),
        ("dns-udp", 53, "UDP", 5353),
        ("dns-tcp", 53, "TCP", 5354),
    ];
    let dir = ManifestDir::new("multiport");
    dir.write("svc.yaml", &service("multi", ip(VIP4), ports, &ips, None));
    let bpffs = BpfFs::new("multiport");
    let agent = Agent::start(bpffs.path(), topo.client_cgroup.path(), dir.path(), &[]);
    agent.wait_for("10.96.0.10:53/TCP", &backends(&ips, 5354), SYNC);
    agent.wait_for("10.96.0.10:53/UDP", &backends(&ips, 5353), SYNC);

    for (proto, port, suffix) in [
        ("tcp", 80, "-8080"),
        ("tcp", 81, "-9090"),
        ("udp", 53, "-5353"),
        ("tcp", 53, "-5354"),
    ] {
        let to = format!("10.96.0.10:{port}");
        let out = topo.client_probe(&[proto, "--to", &to, "--count", "20"]);
        let replies = ProbeReply::parse_all(&String::from_utf8_lossy(&out.stdout));
        let names = spread(&replies);
        assert_eq!(names.len(), 2, "{proto} {port}: {names:?}");
        assert!(
            names.keys().all(|n| n.ends_with(suffix)),
            "{proto} {port} reached {names:?}"
        );
    }
    drop(agent);
}

/// An agent restart is seamless, shown on the clock: a held connection exchanges a
/// round trip every 10 ms and a client opens a new connection every 10 ms, before the
/// old agent stops, while no agent runs, while the new one loads and adopts the maps
/// (between its spawn and its "eBPF data plane loaded ... adopted=4" line), and after
/// its first sync; none fails. A service deleted while no agent ran is removed, and
/// adoption rewrites nothing that was already right: the new agent's first sync reports
/// `upserted=0` (where the first agent's reported `upserted=4`, so the field counts).
///
/// Control: the same watch on new connections, with the data plane removed
/// (`proxy-agent --cleanup`) instead of adopted, sees them fail at once.
#[test]
fn restarting_the_agent_neither_breaks_open_connections_nor_refuses_new_ones() {
    let ips = ["10.244.0.11", "10.244.0.12", "10.244.0.13"].map(ip);
    let old = service("old", ip("10.96.0.99"), WEB_PORTS, &ips, None);
    let files = [("web.yaml", web(&ips, VIP4, None)), ("old.yaml", old)];
    let mut env = Env::new("restart", 3, &[8080], &[], &files);
    env.agent()
        .wait_for("10.96.0.10:80/TCP", &backends(&env.v4(), 8080), SYNC);
    env.agent()
        .wait_for("10.96.0.99:80/TCP", &backends(&env.v4(), 8080), SYNC);
    let before = env.agent().programmed();
    let first = env.agent().syncs_logged();
    assert_eq!(
        first.first().map(|l| l.count("upserted")),
        Some(4),
        "the first agent writes its 4 frontends: {first:?}"
    );

    let mut watch = tests::TrafficWatch::default();
    let mut hold = env.topo.spawn_client_probe(&[
        "hold",
        "--to",
        "10.96.0.10:80",
        "--rounds",
        "0",
        "--interval-ms",
        "10",
        "--timestamps",
    ]);
    let greeting = hold.expect_line(Duration::from_secs(5));
    assert!(
        tests::Stamped::parse(&greeting).is_some_and(|s| s.text.starts_with("ok backend-")),
        "{greeting}"
    );
    watch.add("the held connection", hold);
    watch.add("new connections", new_connections(&env.topo));
    let phase = Duration::from_secs(10);
    watch.wait_each("before the stop", tests::unix_us(), 3, phase);

    let stopping = tests::unix_us();
    env.agent.take().expect("agent").stop();
    let stopped = tests::unix_us();
    // Deleted while no agent runs: the next agent must remove it.
    env.dir.remove("old.yaml");
    // No agent: the pinned programs and maps keep serving, old and new connections.
    watch.wait_each("with no agent", stopped, 3, phase);

    let agent = Agent::start(
        env.bpffs.path(),
        env.topo.client_cgroup.path(),
        env.dir.path(),
        &[],
    );
    let adopted = agent.first_logged("eBPF data plane loaded");
    assert_eq!(
        adopted.count("adopted"),
        4,
        "the new agent must adopt the maps"
    );
    let sync = agent.syncs_logged().remove(0);
    assert_eq!(
        (
            sync.count("upserted"),
            sync.count("removed"),
            sync.count("unchanged"),
            sync.count("failed")
        ),
        (0, 2, 2, 0),
        "adoption must rewrite nothing that was right, and remove the deleted service: {}",
        sync.text
    );
    watch.wait_each("after the new agent's first sync", sync.at_us, 3, phase);
    let restart = tests::Restart {
        stopping,
        stopped,
        spawned: agent.spawned_us(),
        adopted: adopted.at_us,
        first_sync: sync.at_us,
    };
    eprintln!(
        "restart: no agent for {} ms, the new one adopted {} ms after its spawn",
        (restart.spawned - restart.stopped) / 1000,
        (restart.adopted - restart.spawned) / 1000
    );
    for (label, lines) in watch.finish() {
        restart.check(&label, &lines);
    }

    agent.wait_gone("10.96.0.99:80/TCP", SYNC);
    let before: Vec<_> = before
        .into_iter()
        .filter(|v| !v.frontend.starts_with("10.96.0.99"))
        .collect();
    let after = agent.programmed();
    assert_eq!(
        format!("{before:?}"),
        format!("{after:?}"),
        "the restart must not change what is programmed"
    );

    // Control: a gap in service is seen.
    let mut watch = tests::TrafficWatch::default();
    watch.add("new connections", new_connections(&env.topo));
    watch.wait_each("before the cleanup", tests::unix_us(), 3, phase);
    let pins = agent.bpffs.clone();
    agent.stop();
    cleanup(&pins);
    let (label, failed) = watch.wait_failure("with the data plane removed", phase);
    eprintln!(
        "control: {label} failed at once without a data plane: {}",
        failed.text
    );
}

/// `probe tcp` from the client pod to the VIP, a connection every 10 ms until SIGTERM,
/// timestamped.
fn new_connections(topo: &ClusterTopology) -> ChildGuard {
    topo.spawn_client_probe(&[
        "tcp",
        "--to",
        "10.96.0.10:80",
        "--count",
        "0",
        "--interval-ms",
        "10",
        "--timestamps",
    ])
}

/// `proxy-agent --cleanup --bpffs PINS`: detaches the programs and removes every pin.
fn cleanup(pins: &std::path::Path) {
    let out = tests::run_cleanup(pins);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_process_outside_the_attached_cgroup_is_not_balanced() {
    // The programs act only on the cgroup they are attached to, never machine-wide.
    let ips = ["10.244.0.11"].map(ip);
    let env = Env::new(
        "scope",
        1,
        &[8080],
        &[],
        &[("web.yaml", web(&ips, VIP4, None))],
    );
    env.agent()
        .wait_for("10.96.0.10:80/TCP", &backends(&env.v4(), 8080), SYNC);
    let mut cmd = Command::new(probe_bin());
    cmd.args([
        "tcp",
        "--to",
        "10.96.0.10:80",
        "--count",
        "1",
        "--timeout-ms",
        "500",
    ]);
    let out = tests::run(
        &env.topo.client.netns,
        None,
        &mut cmd,
        Duration::from_secs(10),
    );
    let r = ProbeReply::parse_all(&String::from_utf8_lossy(&out.stdout));
    assert!(
        r[0].error().is_some(),
        "outside the cgroup the VIP must not answer: {r:?}"
    );
    // The control: the same probe from the same namespace, inside the cgroup, is
    // balanced.
    let inside = env.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "1"]);
    assert_eq!(spread(&inside).values().sum::<usize>(), 1, "{inside:?}");
}

#[test]
fn traffic_from_inside_the_cgroup_to_anything_but_a_service_passes_untouched() {
    let ips = ["10.244.0.11"].map(ip);
    let env = Env::new(
        "passthru",
        1,
        &[8080],
        &[5353],
        &[("web.yaml", web(&ips, VIP4, None))],
    );
    env.agent()
        .wait_for("10.96.0.10:80/TCP", &backends(&env.v4(), 8080), SYNC);
    let translated = || env.agent().counter("lb_translated").expect("lb_translated");
    // The control: a connection to the VIP is counted as translated.
    let before = translated();
    spread(&env.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "1"]));
    assert!(
        translated() > before,
        "the VIP's connection was not counted"
    );

    // The pod's own address, TCP and UDP: reached as itself, never counted.
    let pod = env.v4()[0];
    let before = translated();
    for (proto, port) in [("tcp", 8080), ("udp", 5353)] {
        let to = SocketAddr::new(pod, port).to_string();
        let r = env.probe(&[proto, "--to", &to, "--count", "3"]);
        assert_eq!(spread(&r).values().sum::<usize>(), 3, "{proto} {to}: {r:?}");
        assert!(
            addrs(&r).iter().all(|a| a.to_string() == to),
            "{proto} {to} answered from elsewhere: {r:?}"
        );
    }
    assert_eq!(translated(), before, "direct traffic was translated");
}

#[test]
fn metrics_health_and_proxy_mode_answer_like_kube_proxy() {
    let ips = ["10.244.0.11"].map(ip);
    let mut files = vec![("web.yaml", web(&ips, VIP4, None))];
    files.push((
        "empty.yaml",
        service("empty", ip("10.96.0.11"), WEB_PORTS, &[], None),
    ));
    let env = Env::new("metrics", 1, &[8080], &[], &files);
    env.agent()
        .wait_for("10.96.0.10:80/TCP", &backends(&env.v4(), 8080), SYNC);
    env.agent().wait_for("10.96.0.11:80/TCP", &[], SYNC);
    let agent = env.agent();
    let (code, body) = agent.get_health("/healthz");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("healthz JSON");
    assert!(
        v["lastUpdated"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    assert_eq!(v["nodeEligible"], true, "{body}");
    assert_eq!(agent.get_health("/livez").0, 200);
    assert_eq!(agent.get_metrics("/proxyMode"), (200, "ebpf".to_owned()));

    env.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "5"]);
    env.probe(&["tcp", "--to", "10.96.0.11:80", "--count", "3"]);
    let text = agent.metrics();
    let value = |m: &str, l: &str| {
        tests::metric_value(&text, m, l).unwrap_or_else(|| panic!("no {m}{l} in\n{text}"))
    };
    assert_eq!(value("proxy_agent_services", ""), 4.0);
    assert_eq!(value("proxy_agent_backends", ""), 2.0);
    assert!(
        value(
            "proxy_agent_datapath_events_total",
            "{event=\"lb_translated\"}"
        ) >= 5.0
    );
    assert!(
        value(
            "proxy_agent_datapath_events_total",
            "{event=\"lb_no_backend\"}"
        ) >= 3.0
    );
    assert!(value("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "") > 0.0);
    assert!(
        text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket"),
        "{text}"
    );
    let stats = agent.proxyctl(&["stats"]);
    assert!(
        stats.contains("lb_translated") && stats.contains("lb_no_backend"),
        "{stats}"
    );

    // The whole scrape parses as Prometheus parses it, and holds each family an
    // operator's dashboards and alerts read, the newer ones included.
    let scrape = tests::exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for (family, kind) in [
        ("kubeproxy_sync_proxy_rules_duration_seconds", "histogram"),
        ("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "gauge"),
        ("proxy_agent_datapath_events", "counter"),
        ("proxy_agent_netfilter_conntrack_entries", "gauge"),
        ("proxy_agent_netfilter_conntrack_invalid", "counter"),
        ("proxy_agent_udp_sockets_terminated", "counter"),
        ("proxy_agent_udp_socket_pod_namespaces", "gauge"),
        ("proxy_agent_udp_socket_sweep_duration_seconds", "histogram"),
        ("proxy_agent_stats_slots", "gauge"),
        ("proxy_agent_stats_slots_used", "gauge"),
        ("proxy_agent_stats_uncounted_pairs", "gauge"),
    ] {
        assert_eq!(
            scrape.families.get(family).map(String::as_str),
            Some(kind),
            "family {family} ({kind}) in\n{text}"
        );
    }
    // Every data plane event is exported from the start, a lost monitor event too.
    let events: Vec<&str> = scrape
        .series("proxy_agent_datapath_events_total")
        .filter_map(|s| s.labels.iter().find(|(k, _)| k == "event"))
        .map(|(_, v)| v.as_str())
        .collect();
    for event in ["lb_translated", "nat_source_denied", "monitor_lost"] {
        assert!(events.contains(&event), "no {event} in {events:?}");
    }
    // web's memberships are counted (the empty service has none), none left out.
    let gauge = |name: &str| scrape.series(name).next().map(|s| s.value);
    assert!(
        gauge("proxy_agent_stats_slots").is_some_and(|n| n >= 8191.0),
        "{text}"
    );
    assert!(
        gauge("proxy_agent_stats_slots_used").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        gauge("proxy_agent_stats_uncounted_pairs"),
        Some(0.0),
        "{text}"
    );
}

/// `--bpf-log-level debug`: the programs' own log (aya-log) reaches the agent's, one
/// record per balanced connection; without the flag there is none.
#[test]
fn the_data_planes_debug_log_is_there_only_when_asked_for() {
    let ips = ["10.244.0.11"].map(ip);
    let files = [("web.yaml", web(&ips, VIP4, None))];
    let env = Env::with_flags(
        "bpflog",
        1,
        &[8080],
        &[],
        &files,
        &["--bpf-log-level", "debug"],
    );
    env.agent()
        .wait_for("10.96.0.10:80/TCP", &backends(&env.v4(), 8080), SYNC);
    env.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "3"]);
    let record = "sock: connection to service";
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.agent().log().matches(record).count() < 3 {
        assert!(
            Instant::now() < deadline,
            "no data plane log records:\n{}",
            env.agent().log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        env.agent().log().contains("proxy_ebpf"),
        "the records' target"
    );

    let quiet = Env::new("bpfnolog", 1, &[8080], &[], &files);
    quiet
        .agent()
        .wait_for("10.96.0.10:80/TCP", &backends(&quiet.v4(), 8080), SYNC);
    quiet.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "3"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !quiet.agent().log().contains(record),
        "{}",
        quiet.agent().log()
    );
}

#[test]
fn bad_manifests_are_reported_by_file_object_and_field_and_everything_else_keeps_working() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let read = |f: &str| std::fs::read_to_string(root.join(f)).expect("reading an example");
    let ips = ["10.244.0.11"].map(ip);
    let mut env = Env::new(
        "bad",
        1,
        &[8080],
        &[],
        &[
            ("clusterip.yaml", read("clusterip.yaml")),
            ("bad.yaml", read("bad.yaml")),
            (
                "web.yaml",
                service("web", ip("10.96.2.10"), WEB_PORTS, &ips, None),
            ),
        ],
    );
    env.agent()
        .wait_for("10.96.2.10:80/TCP", &backends(&env.v4(), 8080), SYNC);
    let log = env.agent().log();
    for expected in [
        "bad.yaml: Service default/web: spec.ports[0].port: 70000 is not in 1..=65535",
        "bad.yaml: Service bad-examples/zero-port: spec.ports[0].port: 0 is not in 1..=65535",
        "bad.yaml: Service bad-examples/bad-ip: spec.clusterIP: \"10.96.1.300\" is not an IP address",
        "spec.ports: at least one port is required",
        "spec.ports[0].protocol: unknown protocol \"ICMP\"",
        "did not parse",
    ] {
        assert!(
            log.contains(expected),
            "missing {expected:?} in the agent log:\n{log}"
        );
    }
    // The good objects next to the bad ones are served.
    let r = spread(&env.probe(&["tcp", "--to", "10.96.2.10:80", "--count", "3"]));
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        env.agent()
            .programmed()
            .iter()
            .any(|v| v.frontend == "10.96.0.10:80/TCP"),
        "examples/clusterip.yaml must still be programmed"
    );

    // A typo in a working service keeps its last good version.
    env.dir.write(
        "web.yaml",
        &service("web", ip("10.96.2.10"), WEB_PORTS, &ips, None)
            .replace("port: 80\n", "port: 80000\n"),
    );
    let before = env.agent().syncs();
    env.agent_mut().wait_syncs(before + 1, SYNC);
    assert!(
        env.agent()
            .log()
            .contains("spec.ports[0].port: 80000 is not in 1..=65535"),
        "{}",
        env.agent().log()
    );
    let r = spread(&env.probe(&["tcp", "--to", "10.96.2.10:80", "--count", "3"]));
    assert_eq!(
        r.len(),
        1,
        "the last good version must stay programmed: {r:?}"
    );
}

#[test]
fn entries_deleted_behind_the_agents_back_are_repaired_by_the_periodic_resync() {
    use aya::maps::{HashMap, Map, MapData};
    use proxy_common::{FrontendKey, FrontendValue, SlotKey};

    let ips = ["10.244.0.11", "10.244.0.12"].map(ip);
    let topo = ClusterTopology::new("drift", 2);
    let _servers = topo.serve_backends(&[8080], &[]);
    let dir = ManifestDir::new("drift");
    dir.write("web.yaml", &web(&ips, VIP4, None));
    let bpffs = BpfFs::new("drift");
    let agent = Agent::start(
        bpffs.path(),
        topo.client_cgroup.path(),
        dir.path(),
        &["--sync-period", "1"],
    );
    let want = backends(&ips, 8080);
    agent.wait_for("10.96.0.10:80/TCP", &want, SYNC);

    let open = |name: &str| {
        MapData::from_pin(agent.bpffs.join("maps").join(name)).expect("opening a pinned map")
    };
    let mut frontends: HashMap<_, FrontendKey, FrontendValue> =
        HashMap::try_from(Map::HashMap(open("FRONTENDS"))).expect("FRONTENDS");
    let mut slots: HashMap<_, SlotKey, u32> =
        HashMap::try_from(Map::HashMap(open("SLOTS"))).expect("SLOTS");
    let key = frontends
        .keys()
        .map(|k| k.expect("key"))
        .find(|k| u16::from_be(k.port_be) == 80)
        .expect("the frontend is in the map");
    let fe = frontends.get(&key, 0).expect("frontend value");

    // A deleted slot: the service would silently lose a backend. The next full resync
    // (every second here) must put back exactly what was there.
    let slot = SlotKey {
        service_id: fe.service_id,
        slot: 1,
    };
    let was = slots.get(&slot, 0).expect("slot 1 before");
    slots.remove(&slot).expect("deleting a slot");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match slots.get(&slot, 0) {
            Ok(v) => {
                assert_eq!(v, was, "slot 1 restored with another backend id");
                break;
            }
            Err(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the slot was not restored within 10 s (sync period 1 s):\n{}",
                    agent.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    // A deleted frontend: the service would vanish.
    frontends.remove(&key).expect("deleting the frontend");
    agent.wait_for("10.96.0.10:80/TCP", &want, Duration::from_secs(5));
    let r = topo.client_probe(&["tcp", "--to", "10.96.0.10:80", "--count", "20"]);
    let names = spread(&ProbeReply::parse_all(&String::from_utf8_lossy(&r.stdout)));
    assert_eq!(names.len(), 2, "both backends serve again: {names:?}");
}

#[test]
fn a_full_map_refuses_a_whole_service_keeps_the_rest_and_retries_when_room_appears() {
    let ips = ["10.244.0.11"].map(ip);
    let topo = ClusterTopology::new("full", 1);
    let _servers = topo.serve_backends(&[8080], &[5353]);
    let dir = ManifestDir::new("full");
    dir.write(
        "other.yaml",
        &service("other", ip("10.96.0.20"), WEB_PORTS, &ips, None),
    );
    dir.write("web.yaml", &web(&ips, VIP4, None));
    let bpffs = BpfFs::new("full");
    // Room for three frontends; the two services need four.
    let agent = Agent::start(
        bpffs.path(),
        topo.client_cgroup.path(),
        dir.path(),
        &["--max-frontends", "3"],
    );
    agent.wait_for("10.96.0.20:80/TCP", &backends(&ips, 8080), SYNC);
    let programmed = agent.programmed();
    assert_eq!(
        programmed.len(),
        2,
        "only the service that fits whole: {programmed:?}"
    );
    assert!(
        agent
            .log()
            .contains("FRONTENDS is full (3 entries) while programming test/web"),
        "{}",
        agent.log()
    );
    let text = agent.metrics();
    assert!(
        tests::metric_value(
            &text,
            "proxy_agent_programming_failures_total",
            "{reason=\"capacity\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );

    // Room appears: the refused service is programmed on the next sync.
    dir.remove("other.yaml");
    agent.wait_for("10.96.0.10:80/TCP", &backends(&ips, 8080), SYNC);
    agent.wait_for("10.96.0.10:53/UDP", &backends(&ips, 5353), SYNC);
    agent.wait_gone("10.96.0.20:80/TCP", SYNC);
}

/// The ClusterIP half of kubernetes issue 74839 (`reset.rs` has the NodePort half), with
/// its controls, in one topology and with one injection: an out-of-window segment from
/// the backend pod to the client, a quarter of the sequence space ahead.
///
/// 1. **Control, the bug:** a kube-proxy-style ClusterIP (nat `KUBE-SERVICES` /
///    `KUBE-SVC-*` / `KUBE-SEP-*` DNAT of the VIP to the pod on the node), the pods on a
///    bridge with `bridge-nf-call-iptables=1` (so conntrack sees the bridged replies and
///    un-DNATs them, as kube-proxy requires), no INVALID drop. The segment is INVALID for
///    conntrack, reaches the client un-translated, from the pod's address; the client
///    answers with a RST at exactly the pod's next sequence number, and the pod's socket
///    is reset. Each step is asserted, so the injection is known to break a NATed
///    ClusterIP here.
/// 2. **Control, kube-proxy's fix:** the same, plus kube-proxy's
///    `KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP`: the rule drops the segment
///    (its counter rises), the client never sees it, the connection lives on.
/// 3. **Ours:** the nat rules and the INVALID drop gone (bridge netfilter still on, and
///    a FORWARD rule that only counts INVALID packets keeps conntrack at work, as a CNI's
///    rules would), the agent serves the VIP at the socket layer. The socket is
///    connected to the pod itself, so the segment reaches the client with the
///    connection's own addresses: netfilter still calls it INVALID (the counting rule
///    counts it), but there is no translation to skip. The client only ACKs it; no RST,
///    and the connection lives on.
#[test]
fn an_out_of_window_segment_resets_a_kube_proxy_clusterip_unless_invalid_is_dropped_and_never_ours()
{
    use std::net::{Ipv4Addr, SocketAddrV4};
    use tests::packet::{Segment, TCP_RST, capture_until, conntrack_invalid};
    use tests::{
        COUNT_INVALID_RULES, flush_filter, flush_nat, forward_invalid_drops, install_iptables,
        install_kube_proxy_clusterip, install_kube_proxy_forward, rule_packets,
    };

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const CLUSTER_CIDR: &str = "10.244.0.0/16";
    let topo = ClusterTopology::new("invalid", 1);
    let servers = topo.serve_backends(&[8080], &[]);
    let node = &topo.node;
    let pod = &topo.backends[0];
    let client_ip = topo.client.ipv4;
    topo.enable_bridge_netfilter();
    let is_rst = |s: &Segment| s.flags & TCP_RST != 0;
    let resets = || servers[0].stderr().matches("reset by peer").count();

    // --- 1. kube-proxy's ClusterIP without the INVALID drop: the connection is reset.
    install_kube_proxy_clusterip(
        node,
        VIP,
        80,
        CLUSTER_CIDR,
        &[SocketAddrV4::new(pod.ipv4, 8080)],
    );
    let mut phase = InjectionPhase::start(&topo, "iptables");
    // On the wire the client talks to the VIP: conntrack un-DNATs the bridged replies.
    let greeting = capture_until(&phase.at_client, Duration::from_secs(5), |s| {
        s.dst == client_ip && s.payload_len > 0
    })
    .expect("iptables: no data segment reached the client");
    assert_eq!(
        (greeting.src, greeting.sport),
        (VIP, 80),
        "iptables: the pod's replies must reach the client translated back to the VIP"
    );
    let before = conntrack_invalid(node);
    let (echo, bogus) = phase.inject(pod);
    let delivered = capture_until(&phase.at_client, RST_WINDOW, |s| s.seq == bogus.seq)
        .expect("iptables: the injected segment never reached the client");
    assert_eq!(
        (delivered.src, delivered.sport),
        (pod.ipv4, 8080),
        "iptables: the INVALID segment should reach the client un-NATed, from the pod"
    );
    let after = conntrack_invalid(node);
    assert!(
        after > before,
        "iptables: conntrack's invalid count did not rise ({before} -> {after})"
    );
    let client_rst = capture_until(&phase.at_client, RST_WINDOW, |s| {
        is_rst(s) && s.src == client_ip
    })
    .expect("iptables: the client sent no RST for the stray segment");
    assert_eq!(
        (client_rst.dst, client_rst.dport, client_rst.seq),
        (pod.ipv4, 8080, echo.ack),
        "iptables: the client's RST goes to the pod's address at exactly its next \
         expected sequence number: {client_rst:?}"
    );
    capture_until(&phase.at_pod, RST_WINDOW, |s| {
        is_rst(s) && s.dst == pod.ipv4
    })
    .expect("iptables: the client's RST never reached the pod");
    let err = phase
        .hold
        .wait_for_line(Duration::from_secs(10), |l| l.contains(" err "));
    assert!(
        err.contains("ECONNRESET"),
        "iptables: the held connection ended with {err}"
    );
    wait_until("the server logs the reset", Duration::from_secs(5), || {
        resets() == 1
    });
    eprintln!("iptables reproduced the reset: invalid {before} -> {after}, {client_rst:?}");
    drop(phase);

    // --- 2. kube-proxy's INVALID drop in FORWARD protects the bridged ClusterIP.
    install_kube_proxy_forward(node);
    let mut phase = InjectionPhase::start(&topo, "iptables + INVALID drop");
    let drops = forward_invalid_drops(node);
    let (_, bogus) = phase.inject(pod);
    wait_until(
        "the INVALID rule drops the injected segment",
        Duration::from_secs(5),
        || forward_invalid_drops(node) > drops,
    );
    phase.survives("iptables + INVALID drop");
    let leaked = capture_until(&phase.at_client, CAPTURED, |s| {
        s.seq == bogus.seq || is_rst(s)
    });
    assert!(
        leaked.is_none(),
        "INVALID drop: the segment (or a RST) reached the client: {leaked:?}"
    );
    let pod_rst = capture_until(&phase.at_pod, CAPTURED, is_rst);
    assert!(pod_rst.is_none(), "INVALID drop: a RST: {pod_rst:?}");
    assert_eq!(resets(), 1, "INVALID drop: {}", servers[0].stderr());
    drop(phase);

    // --- 3. Ours: no nat, no INVALID drop; the socket layer serves the VIP.
    flush_nat(node);
    flush_filter(node);
    install_iptables(node, COUNT_INVALID_RULES);
    let dir = ManifestDir::new("invalid");
    dir.write("web.yaml", &web(&[IpAddr::V4(pod.ipv4)], VIP4, None));
    let bpffs = BpfFs::new("invalid");
    let agent = Agent::start(bpffs.path(), topo.client_cgroup.path(), dir.path(), &[]);
    agent.wait_for(
        "10.96.0.10:80/TCP",
        &[SocketAddr::new(IpAddr::V4(pod.ipv4), 8080)],
        SYNC,
    );
    let translated = agent.counter("lb_translated").unwrap_or(0);
    let mut phase = InjectionPhase::start(&topo, "agent");
    assert!(
        agent.counter("lb_translated").unwrap_or(0) > translated,
        "the agent did not balance the held connection"
    );
    let before = rule_packets(node, "FORWARD", &["INVALID"]);
    let (_, bogus) = phase.inject(pod);
    let delivered = capture_until(&phase.at_client, RST_WINDOW, |s| s.seq == bogus.seq)
        .expect("agent: the injected segment never reached the client");
    assert_eq!(
        (delivered.src, delivered.sport, delivered.dst),
        (pod.ipv4, 8080, client_ip),
        "agent: the socket is connected to the pod itself, so the segment arrives with \
         the connection's own addresses"
    );
    let after = rule_packets(node, "FORWARD", &["INVALID"]);
    assert!(
        after > before,
        "agent: netfilter should still call the segment INVALID ({before} -> {after} \
         counted): the trigger is the same as in the control"
    );
    phase.survives("agent");
    let rst = capture_until(&phase.at_client, CAPTURED, is_rst)
        .or_else(|| capture_until(&phase.at_pod, CAPTURED, is_rst));
    assert!(
        rst.is_none(),
        "agent: a RST was sent: {rst:?}\nagent log:\n{}",
        agent.log()
    );
    assert_eq!(resets(), 1, "agent: {}", servers[0].stderr());
    drop(phase);
    drop(agent);
}

/// How long a segment (or the RST it provokes) has to show on a capture.
const RST_WINDOW: Duration = Duration::from_secs(2);
/// How long to read what a capture already holds, once a later fact (a round trip after
/// the injection) proves that anything the injection provoked was sent before it.
const CAPTURED: Duration = Duration::from_millis(200);

/// Waits until `fact` holds; panics after `timeout`.
fn wait_until(what: &str, timeout: Duration, fact: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !fact() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One phase of the injection test: captures in the pod and the client, and a held
/// connection from the client (in its cgroup) to the VIP.
struct InjectionPhase {
    hold: ChildGuard,
    at_pod: std::os::fd::OwnedFd,
    at_client: std::os::fd::OwnedFd,
    injected_us: u64,
}

impl InjectionPhase {
    /// Captures first, then `probe hold` to the VIP (a round trip a second, until
    /// SIGTERM), whose greeting must come from the backend through the VIP.
    fn start(topo: &ClusterTopology, what: &str) -> Self {
        use tests::packet::capture_socket;
        let at_pod = topo.backends[0].netns.run(capture_socket);
        let at_client = topo.client.netns.run(capture_socket);
        let mut hold = topo.spawn_client_probe(&[
            "hold",
            "--to",
            "10.96.0.10:80",
            "--rounds",
            "0",
            "--interval-ms",
            "1000",
            "--timestamps",
        ]);
        let line = hold.expect_line(Duration::from_secs(5));
        let greeting = tests::Stamped::parse(&line).and_then(|s| s.reply());
        assert_eq!(
            greeting,
            Some(ProbeReply::Ok {
                name: "backend-0".into(),
                addr: sa("10.96.0.10:80"),
                peer: None
            }),
            "{what}: holding a connection to the VIP: {line}"
        );
        Self {
            hold,
            at_pod,
            at_client,
            injected_us: 0,
        }
    }

    /// Injects from `pod` the out-of-window successor of its newest data segment;
    /// returns that segment and the injected one.
    fn inject(&mut self, pod: &tests::Pod) -> (tests::packet::Segment, tests::packet::Segment) {
        use tests::packet::{inject, newest_data_segment};
        let echo = newest_data_segment(&self.at_pod, pod.ipv4, 8080);
        let bogus = echo.out_of_window();
        self.injected_us = tests::unix_us();
        pod.netns.run(|| inject(&bogus, b"bogus\n"));
        (echo, bogus)
    }

    /// The held connection completes a round trip that began after the injection, then
    /// ends cleanly on SIGTERM.
    fn survives(&mut self, what: &str) {
        let after = self.injected_us;
        let line = self.hold.wait_for_line(Duration::from_secs(10), |l| {
            l.contains(" err ") || tests::Stamped::parse(l).is_some_and(|s| s.start_us > after)
        });
        let round = tests::Stamped::parse(&line);
        assert!(
            round
                .as_ref()
                .is_some_and(|r| !r.is_err() && r.text.starts_with("round ")),
            "{what}: the held connection broke after the injection: {line}"
        );
        self.hold.signal(libc::SIGTERM);
        let status = self.hold.wait(Duration::from_secs(10));
        assert!(
            status.success(),
            "{what}: the held connection broke: {:?}",
            self.hold.seen_lines()
        );
    }
}

#[test]
fn cleanup_detaches_the_programs_and_removes_every_pin() {
    let ips = ["10.244.0.11"].map(ip);
    let mut env = Env::new(
        "cleanup",
        1,
        &[8080],
        &[],
        &[("web.yaml", web(&ips, VIP4, None))],
    );
    env.agent()
        .wait_for("10.96.0.10:80/TCP", &backends(&env.v4(), 8080), SYNC);
    let pins = env.agent().bpffs.clone();
    env.agent.take().expect("agent").stop();
    // Stopped, the pinned data plane still serves.
    assert_eq!(
        spread(&env.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "3"])).len(),
        1
    );

    cleanup(&pins);
    assert!(!pins.exists(), "{} still exists", pins.display());
    let r = env.probe(&[
        "tcp",
        "--to",
        "10.96.0.10:80",
        "--count",
        "1",
        "--timeout-ms",
        "300",
    ]);
    assert!(
        r[0].error().is_some(),
        "the VIP still answers after cleanup: {r:?}"
    );
}

/// Backends of the write-order test; every one serves throughout, so a connection can
/// only fail because of what the maps held.
const CHURN_BACKENDS: usize = 32;
/// Bursts of generations, and generations per burst.
const CHURN_BURSTS: usize = 8;
const CHURN_BURST_LEN: usize = 8;
/// Clients hammering the VIP with short connections, each in its own process.
const CHURN_CLIENTS: usize = 2;

/// The backends (indexes) of generation `g`: small and large sets in turn, shifted each
/// time, so that every change grows or shrinks the frontend and replaces backends.
fn churn_generation(g: usize) -> Vec<usize> {
    let n = CHURN_BACKENDS;
    let size = if g.is_multiple_of(2) {
        1 + g % 3
    } else {
        n - g % 3
    };
    let start = (g * 5) % n;
    (0..size).map(|i| (start + i) % n).collect()
}

/// What one run of [`churn`] saw.
#[derive(Debug)]
struct ChurnOutcome {
    /// Connections made, over all clients.
    connections: usize,
    /// Connections whose lifetime overlapped an update (from a manifest write to the
    /// log line of the sync that programmed it).
    during_updates: usize,
    /// Generations whose update no connection overlapped.
    unexercised: Vec<usize>,
    /// Lines of failed connections.
    failures: Vec<String>,
    /// Connections that reached a backend removed before they started.
    stale: Vec<String>,
    /// The data plane's `lb_backend_missing` counter at the end.
    backend_missing: u64,
    /// Generations programmed.
    generations: usize,
}

/// Judges the lines of `probe tcp --timestamps` clients against `times`, the (manifest
/// written, sync logged) pair of each generation ([`churn_generation`]; generation 0's
/// is `(0, 0)`): generation `g` may be in the maps from its write until the sync that
/// replaced it was logged, so a connection may reach a backend of any generation live at
/// some instant of its lifetime, and no other.
fn judge_churn(times: &[(u64, u64)], lines: &[String]) -> ChurnOutcome {
    let last = times.len() - 1;
    let live = |g: usize| (times[g].0, times.get(g + 1).map_or(u64::MAX, |t| t.1));
    let overlaps =
        |c: &tests::Stamped, (from, to): (u64, u64)| c.start_us <= to && from <= c.end_us;
    let connections = tests::Stamped::parse_all(lines.iter().map(String::as_str));
    let mut outcome = ChurnOutcome {
        connections: connections.len(),
        during_updates: 0,
        unexercised: (1..=last)
            .filter(|&k| !connections.iter().any(|c| overlaps(c, times[k])))
            .collect(),
        failures: Vec::new(),
        stale: Vec::new(),
        backend_missing: 0,
        generations: last,
    };
    for (c, line) in connections.iter().zip(lines) {
        if times[1..].iter().any(|&t| overlaps(c, t)) {
            outcome.during_updates += 1;
        }
        let Some(name) = c.reply().and_then(|r| r.name().map(str::to_owned)) else {
            outcome.failures.push(line.clone());
            continue;
        };
        let index: usize = name
            .strip_prefix("backend-")
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("an unknown server answered: {line}"));
        let valid =
            (0..=last).any(|k| churn_generation(k).contains(&index) && overlaps(c, live(k)));
        if !valid {
            outcome.stale.push(line.clone());
        }
    }
    outcome
}

/// The judge of the write-order test is not vacuous: it flags a backend reached after
/// the sync that removed it was logged, a failed connection, and an update no
/// connection overlapped; and it accepts a backend reached while it was live.
#[test]
fn the_churn_judge_flags_removed_backends_failures_and_unexercised_updates() {
    // Generation 1 is written at 100 and its sync logged at 200; generation 2 at 300
    // and 400. Backend 5 is in generation 1 only: live from 100 to 400.
    assert!(churn_generation(1).contains(&5));
    assert!(!churn_generation(0).contains(&5) && !churn_generation(2).contains(&5));
    let times = [(0, 0), (100, 200), (300, 400)];
    let lines = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let judged = judge_churn(
        &times,
        &lines(&[
            "50 60 ok backend-5 10.96.0.10:80",
            "90 110 ok backend-5 10.96.0.10:80",
            "350 360 ok backend-5 10.96.0.10:80",
            "390 450 ok backend-5 10.96.0.10:80",
            "450 460 ok backend-5 10.96.0.10:80",
        ]),
    );
    // Before its write and after the sync that removed it: flagged; in between, or
    // overlapping either bound: fine.
    assert_eq!(
        judged.stale,
        lines(&[
            "50 60 ok backend-5 10.96.0.10:80",
            "450 460 ok backend-5 10.96.0.10:80",
        ])
    );
    assert_eq!(judged.during_updates, 3);
    assert!(judged.unexercised.is_empty() && judged.failures.is_empty());
    let bad = judge_churn(&times, &lines(&["150 160 err EHOSTUNREACH 0"]));
    assert_eq!(bad.failures.len(), 1);
    assert_eq!(bad.unexercised, vec![2]);
}

/// Runs the write-order experiment once: clients open short connections to the VIP
/// without pause while the Service's backends are replaced in bursts (each generation
/// written as soon as the previous one's sync is logged), and every connection is judged
/// by [`judge_churn`]. `unsafe_order` runs a debug agent with
/// `PROXY_AGENT_TEST_UNSAFE_WRITE_ORDER=1`.
fn churn(tag: &str, unsafe_order: bool) -> ChurnOutcome {
    let topo = ClusterTopology::new(tag, CHURN_BACKENDS);
    // A connect() left untranslated fails at once rather than after its timeout, so a
    // client keeps hammering: the node knows the service range is not routed.
    topo.node
        .ip(&["route", "add", "unreachable", "10.96.0.0/16"]);
    let _servers = topo.serve_backends(&[8080], &[]);
    let ips: Vec<IpAddr> = topo.backends.iter().map(|p| IpAddr::V4(p.ipv4)).collect();
    let set = |g: usize| -> Vec<IpAddr> { churn_generation(g).iter().map(|&i| ips[i]).collect() };
    let dir = ManifestDir::new(tag);
    dir.write("web.yaml", &web(&set(0), VIP4, None));
    let bpffs = BpfFs::new(tag);
    let env: &[(&str, &str)] = if unsafe_order {
        &[("PROXY_AGENT_TEST_UNSAFE_WRITE_ORDER", "1")]
    } else {
        &[]
    };
    let agent = Agent::start_env(
        bpffs.path(),
        topo.client_cgroup.path(),
        dir.path(),
        &[],
        env,
    );
    assert_eq!(
        agent.log().contains("written in a WRONG order"),
        unsafe_order,
        "the agent must say whether the test-only write order is on:\n{}",
        agent.log()
    );
    let frontend = "10.96.0.10:80/TCP";
    agent.wait_for(frontend, &backends(&set(0), 8080), SYNC);

    let mut clients: Vec<ChildGuard> = (0..CHURN_CLIENTS)
        .map(|_| {
            topo.spawn_client_probe(&[
                "tcp",
                "--to",
                "10.96.0.10:80",
                "--count",
                "0",
                "--timestamps",
            ])
        })
        .collect();
    // Waits until every client finished a connection that began after `t`.
    let exercised = |clients: &mut [ChildGuard], t: u64| {
        for c in clients.iter_mut() {
            c.wait_for_line(Duration::from_secs(10), |l| {
                tests::Stamped::parse(l).is_some_and(|s| s.start_us > t)
            });
        }
    };
    exercised(&mut clients, tests::unix_us());

    // (manifest written, sync logged) per generation; generation 0 was there first.
    let mut times: Vec<(u64, u64)> = vec![(0, 0)];
    let mut attributed = agent.syncs_logged().len();
    let mut g = 0;
    for _ in 0..CHURN_BURSTS {
        for _ in 0..CHURN_BURST_LEN {
            g += 1;
            let written = tests::unix_us();
            dir.write("web.yaml", &web(&set(g), VIP4, None));
            agent.wait_for(frontend, &backends(&set(g), 8080), SYNC);
            // The sync that wrote it: the first one logged since the last generation's
            // that wrote anything (a sync logs after its map writes).
            let deadline = Instant::now() + SYNC;
            let logged = loop {
                let syncs = agent.syncs_logged();
                if let Some((i, l)) = syncs
                    .iter()
                    .enumerate()
                    .skip(attributed)
                    .find(|(_, l)| l.count("upserted") > 0)
                {
                    assert!(
                        l.at_us >= written,
                        "generation {g}: a sync logged before its manifest was written \
                         wrote something: {}",
                        l.text
                    );
                    attributed = i + 1;
                    break l.at_us;
                }
                assert!(
                    Instant::now() < deadline,
                    "generation {g} is programmed but no sync that wrote it was logged:\n{}",
                    agent.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            times.push((written, logged));
        }
        // Between bursts every client makes a connection on the settled service.
        exercised(&mut clients, times[g].1);
    }
    for c in &clients {
        c.signal(libc::SIGTERM);
    }
    let mut lines = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        c.drain_lines(Duration::from_secs(10));
        let status = c.wait(Duration::from_secs(10));
        assert!(
            status.success(),
            "client {i} exited with {status}: {}",
            c.stderr()
        );
        lines.extend(c.seen_lines().iter().cloned());
    }

    let outcome = ChurnOutcome {
        backend_missing: agent.counter("lb_backend_missing").unwrap_or(0),
        ..judge_churn(&times, &lines)
    };
    eprintln!(
        "{tag}: {} connections ({} during updates) over {} generations: {} failed, {} reached \
         a removed backend, lb_backend_missing={}",
        outcome.connections,
        outcome.during_updates,
        outcome.generations,
        outcome.failures.len(),
        outcome.stale.len(),
        outcome.backend_missing
    );
    for f in outcome.failures.iter().chain(&outcome.stale).take(5) {
        eprintln!("{tag}:   {f}");
    }
    outcome
}

/// "Never half-written": clients hammer a ClusterIP with short connections while its
/// backends are replaced in bursts (growing, shrinking, replacing), and no connection
/// fails or reaches a backend removed before it started.
///
/// Control, in the same test: the same run against a debug agent told to write in a
/// wrong order (`PROXY_AGENT_TEST_UNSAFE_WRITE_ORDER=1`: the frontend's new count before
/// the slots it counts, surplus slots deleted before the count shrinks). There the same
/// clients must see failures: the traffic is dense enough to land inside an update, so
/// the clean run means the real order leaves nothing half-written to land on.
#[test]
fn connections_during_backend_churn_never_fail_nor_reach_a_removed_backend_unlike_a_wrong_write_order()
 {
    let control = churn("churn-ctl", true);
    assert!(
        !control.failures.is_empty() || !control.stale.is_empty(),
        "the wrong write order went unnoticed: the test cannot see a half-written \
         service ({control:?})"
    );
    assert!(
        control.backend_missing > 0,
        "the wrong write order left no missing slot for the data plane to count: {control:?}"
    );

    let real = churn("churn", false);
    assert_eq!(
        real.unexercised,
        Vec::<usize>::new(),
        "updates of these generations saw no traffic"
    );
    assert_eq!(
        real.failures,
        Vec::<String>::new(),
        "connections failed during updates ({} of {})",
        real.failures.len(),
        real.connections
    );
    assert_eq!(
        real.stale,
        Vec::<String>::new(),
        "connections reached a backend removed before they started"
    );
    assert_eq!(
        real.backend_missing, 0,
        "the data plane found a missing slot or backend during updates"
    );
}
