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
    let agent = Agent::start_kube(bpffs.path(), topo.client_cgroup.path(), &kubeconfig, &[]);

    agent.wait_for("10.96.0.10:80/TCP", &addrs(&ips[..2]), SYNC);
    assert_eq!(reached(&topo, 30).len(), 2);

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
    // The relist completes and the world is the same: still programmed, still served.
    std::thread::sleep(Duration::from_millis(500));
    agent.wait_for("10.96.0.10:80/TCP", &addrs(&ips[..1]), SYNC);
    assert_eq!(reached(&topo, 5).len(), 1);

    // The API server goes away: traffic keeps flowing, nothing is withdrawn.
    api.set_down(true);
    std::thread::sleep(Duration::from_secs(3));
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
