//! The Kubernetes source end to end: the real kube-rs client in the agent against a
//! fake API server on 127.0.0.1, with real traffic in network namespaces following
//! Services and EndpointSlices as they appear, change and disappear, through dropped
//! watches, "410 Gone" relists and an API server outage.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use tests::{
    Agent, BpfFs, ClusterTopology, FakeApiServer, ManifestDir, PortSpec, ProbeReply, service,
    yaml_objects,
};

const SYNC: Duration = Duration::from_secs(15);
const PORTS: &[PortSpec<'static>] = &[("http", 80, "TCP", 8080)];

fn apply_all(api: &FakeApiServer, yaml: &str) {
    for o in yaml_objects(yaml) {
        api.apply(o);
    }
}

fn web(ips: &[IpAddr]) -> String {
    service("web", "10.96.0.10".parse().expect("vip"), PORTS, ips, None)
}

fn reached(topo: &ClusterTopology, n: usize) -> std::collections::BTreeSet<String> {
    let out = topo.client_probe(&["tcp", "--to", "10.96.0.10:80", "--count", &n.to_string()]);
    ProbeReply::parse_all(&String::from_utf8_lossy(&out.stdout))
        .iter()
        .map(|r| {
            r.name()
                .unwrap_or_else(|| panic!("request failed: {r:?}"))
                .to_owned()
        })
        .collect()
}

#[test]
fn services_and_endpoint_slices_follow_the_api_server_through_relists_and_outages() {
    let topo = ClusterTopology::new("kube", 3);
    let _servers = topo.serve_backends(&[8080], &[]);
    let ips: Vec<IpAddr> = topo.backends.iter().map(|p| IpAddr::V4(p.ipv4)).collect();
    let addrs = |ips: &[IpAddr]| -> Vec<SocketAddr> {
        ips.iter().map(|i| SocketAddr::new(*i, 8080)).collect()
    };

    let api = FakeApiServer::start();
    api.apply(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "zone-a"}}}));
    apply_all(&api, &web(&ips[..2]));
    let dir = ManifestDir::new("kube");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let bpffs = BpfFs::new("kube");
    // A full resync every second: after any moment, a sync that starts later is
    // at most a second away, whether or not an object changed.
    let mut agent = Agent::start_kube(
        &api,
        bpffs.path(),
        topo.client_cgroup.path(),
        &kubeconfig,
        &["--sync-period", "1"],
    );

    agent.wait_for("10.96.0.10:80/TCP", &addrs(&ips[..2]), SYNC);
    assert_eq!(reached(&topo, 30).len(), 2);

    // Services and EndpointSlices are listed and watched with kube-proxy's selector.
    for resource in [
        "/api/v1/services?",
        "/apis/discovery.k8s.io/v1/endpointslices?",
    ] {
        let queries: Vec<String> = api
            .requests()
            .iter()
            .filter(|r| r.contains(resource))
            .map(|r| {
                r.replace("%21", "!")
                    .replace("%2F", "/")
                    .replace("%2f", "/")
                    .replace("%2C", ",")
                    .replace("%2c", ",")
            })
            .collect();
        assert!(
            !queries.is_empty()
                && queries.iter().all(|q| q.contains(
                    "labelSelector=!service.kubernetes.io/service-proxy-name,\
                     !service.kubernetes.io/headless"
                )),
            "{resource}: {queries:?}"
        );
    }

    // A new endpoint appears.
    apply_all(&api, &web(&ips));
    agent.wait_for("10.96.0.10:80/TCP", &addrs(&ips), SYNC);
    assert_eq!(reached(&topo, 45).len(), 3);

    // The watch is dropped; the change made meanwhile still arrives.
    api.drop_watches();
    apply_all(&api, &web(&ips[1..]));
    agent.wait_for("10.96.0.10:80/TCP", &addrs(&ips[1..]), SYNC);

    // "410 Gone": the agent relists; nothing is withdrawn while it does.
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch="))
        .count();
    api.expire_history();
    apply_all(&api, &web(&ips[..1]));
    agent.wait_for("10.96.0.10:80/TCP", &addrs(&ips[..1]), SYNC);
    let deadline = std::time::Instant::now() + SYNC;
    while api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch="))
        .count()
        <= lists_before
    {
        assert!(
            std::time::Instant::now() < deadline,
            "a 410 must cause a relist: {:?}",
            api.requests()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Two syncs after the relist request was seen (with a resync every second, the
    // second runs after the list was answered and swapped in), the world is the same:
    // still programmed, still served.
    let seen = agent.syncs();
    agent.wait_syncs(seen + 2, SYNC);
    agent.wait_for("10.96.0.10:80/TCP", &addrs(&ips[..1]), SYNC);
    assert_eq!(reached(&topo, 5).len(), 1);

    // The API server goes away: once the agent has seen its watches fail (both
    // resources, and retries refused), traffic keeps flowing and nothing is withdrawn.
    let failed = |agent: &Agent| agent.log().matches("watch failed").count();
    let failed_before = failed(&agent);
    api.set_down(true);
    let deadline = std::time::Instant::now() + SYNC;
    while failed(&agent) < failed_before + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never noticed the outage:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        agent.programmed().len(),
        1,
        "services withdrawn during an outage"
    );
    assert_eq!(reached(&topo, 5).len(), 1);
    api.set_down(false);

    // The service disappears.
    api.delete("EndpointSlice", "test", "web-1");
    api.delete("Service", "test", "web");
    agent.wait_gone("10.96.0.10:80/TCP", SYNC);
}

#[test]
fn bad_objects_conflicts_and_missing_families_are_skipped_with_a_reason_and_the_last_good_state_stays()
 {
    let topo = ClusterTopology::new("kubebad", 2);
    let _servers = topo.serve_backends(&[8080], &[]);
    let ips: Vec<IpAddr> = topo.backends.iter().map(|p| IpAddr::V4(p.ipv4)).collect();
    let addrs: Vec<SocketAddr> = ips.iter().map(|i| SocketAddr::new(*i, 8080)).collect();

    let api = FakeApiServer::start();
    // An IPv4-only node.
    api.apply(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]}}),
    );
    apply_all(&api, &web(&ips));
    // A dual-stack service: its IPv6 frontend cannot be served on this node.
    let mut dual = yaml_objects(&service(
        "dual",
        "10.96.0.20".parse().expect("ip"),
        PORTS,
        &ips,
        None,
    ));
    dual[0]["spec"]["clusterIPs"] = json!(["10.96.0.20", "fd00:96::20"]);
    dual[0]["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    dual[0]["spec"]["ipFamilyPolicy"] = json!("PreferDualStack");
    for o in dual {
        api.apply(o);
    }

    let dir = ManifestDir::new("kubebad");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let bpffs = BpfFs::new("kubebad");
    // A full resync every second: after each bad object, a resync re-translates
    // everything, which would withdraw the service if the bad version had been taken.
    let mut agent = Agent::start_kube(
        &api,
        bpffs.path(),
        topo.client_cgroup.path(),
        &kubeconfig,
        &["--sync-period", "1"],
    );
    agent.wait_for("10.96.0.10:80/TCP", &addrs, SYNC);
    agent.wait_for("10.96.0.20:80/TCP", &addrs, SYNC);
    assert!(
        !agent
            .programmed()
            .iter()
            .any(|v| v.frontend.contains("fd00:96::20")),
        "an IPv6 frontend on an IPv4-only node"
    );
    assert!(
        agent
            .log()
            .contains("ClusterIP fd00:96::20 is IPv6, which this node does not have"),
        "{}",
        agent.log()
    );

    // An invalid update: skipped with its field named; the last good version stays.
    let mut broken = yaml_objects(&web(&ips)).remove(0);
    broken["spec"]["ports"][0]["port"] = json!(0);
    api.apply(broken);
    wait_log(
        &agent,
        "Service test/web: spec.ports[0].port: 0 is not in 1..=65535",
    );
    let seen = agent.syncs();
    agent.wait_syncs(seen + 1, SYNC);
    agent.wait_for("10.96.0.10:80/TCP", &addrs, SYNC);
    assert_eq!(
        reached(&topo, 10).len(),
        2,
        "the last good version must keep serving"
    );

    // A newer Service claiming the same VIP and port loses, whole, with a reason.
    let mut thief = yaml_objects(&service(
        "thief",
        "10.96.0.10".parse().expect("ip"),
        PORTS,
        &ips[..1],
        None,
    ));
    thief[0]["metadata"]["creationTimestamp"] = json!("2026-06-01T00:00:00Z");
    for o in thief {
        api.apply(o);
    }
    wait_log(
        &agent,
        "frontend 10.96.0.10:80/TCP is already served by Service test/web",
    );
    // The line is written while translating; the maps are written after it.
    let seen = agent.syncs();
    agent.wait_syncs(seen + 1, SYNC);
    agent.wait_for("10.96.0.10:80/TCP", &addrs, SYNC);
    assert!(
        agent
            .programmed()
            .iter()
            .all(|v| !v.service.starts_with("test/thief")),
        "the thief was programmed: {:?}",
        agent.programmed()
    );

    // An endpoint change stamped by the EndpointSlice controller: the time from that
    // stamp to the map write is the network programming latency.
    let mut slice = yaml_objects(&web(&ips[..1])).remove(1);
    slice["metadata"]["annotations"] = json!({"endpoints.kubernetes.io/last-change-trigger-time": jiff::Timestamp::now().to_string()});
    api.apply(slice);
    agent.wait_for("10.96.0.10:80/TCP", &addrs[..1], SYNC);

    let text = agent.metrics();
    let value =
        |m: &str| tests::metric_value(&text, m, "").unwrap_or_else(|| panic!("no {m} in\n{text}"));
    assert!(value("proxy_agent_input_errors_total") >= 1.0, "{text}");
    assert!(
        tests::metric_value(&text, "proxy_agent_skipped", "{reason=\"translation\"}")
            .unwrap_or(0.0)
            >= 2.0,
        "{text}"
    );
    assert!(
        value("kubeproxy_network_programming_duration_seconds_count") >= 1.0,
        "{text}"
    );
    // The node is being deleted: /healthz says so (503, nodeEligible false), as
    // kube-proxy's does, so that load balancers drain it; /livez stays 200.
    api.apply(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "deletionTimestamp": "2026-01-01T00:00:00Z",
                     "finalizers": ["test"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]}}));
    let deadline = std::time::Instant::now() + SYNC;
    loop {
        let (code, body) = agent.get_health("/healthz");
        if code == 503 {
            assert!(body.contains("\"nodeEligible\":false"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "healthz stayed {code}: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(agent.get_health("/livez").0, 200);
}

fn wait_log(agent: &Agent, needle: &str) {
    let deadline = std::time::Instant::now() + SYNC;
    while !agent.log().contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
