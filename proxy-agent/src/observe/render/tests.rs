//! Golden and table tests of the renderings, on fixed views of both data planes.

use std::net::SocketAddr;

use super::*;
use crate::dataplane::ebpf::conntrack::FlowState;
use crate::dataplane::listing::{
    EndpointState, EndpointView, IpvsCounters, IpvsDestinationView, IpvsView, ServiceView,
    TrafficRate, TrafficStats,
};

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("an address")
}

fn endpoint(
    address: &str,
    weight: u32,
    state: EndpointState,
    conns: Option<(u32, u32)>,
) -> EndpointView {
    EndpointView {
        address: sa(address),
        weight,
        state,
        active_connections: conns.map(|c| c.0),
        inactive_connections: conns.map(|c| c.1),
        stats: None,
        rate: None,
    }
}

/// Counts seen by the socket programs only (connections), or by the tc path (all).
fn sock(connections: u64) -> Option<TrafficStats> {
    Some(TrafficStats {
        connections,
        ..TrafficStats::default()
    })
}

fn tc(connections: u64, packets: (u64, u64), bytes: (u64, u64)) -> Option<TrafficStats> {
    Some(TrafficStats::all(connections, packets, bytes))
}

/// What `proxyctl list` reads from an eBPF data plane: a ClusterIP with affinity
/// (internal: no connection counts), a NodePort's external frontend with a draining
/// backend, an unnamed LoadBalancer with source ranges and no backend.
pub(crate) fn ebpf_services() -> Vec<ServiceView> {
    use EndpointState::*;
    let view =
        |service: &str, frontend: &str, ip: &str, port, kind: &str, scope: &str, id| ServiceView {
            service: service.into(),
            frontend: frontend.into(),
            ip: ip.parse().expect("an address"),
            port,
            protocol: "TCP".into(),
            scheduler: "random".into(),
            kind: kind.into(),
            scope: scope.into(),
            service_id: id,
            affinity_timeout_s: None,
            source_ranges: Vec::new(),
            backends: Vec::new(),
            endpoints: Vec::new(),
            stats: tc(0, (0, 0), (0, 0)),
            rate: None,
            ipvs: None,
        };
    let mut web = view(
        "default/web:http",
        "10.96.0.10:80/TCP",
        "10.96.0.10",
        80,
        "ClusterIP",
        "internal",
        1,
    );
    web.affinity_timeout_s = Some(10800);
    web.backends = vec![sa("10.244.1.5:8080"), sa("10.244.2.5:8080")];
    web.endpoints = vec![
        endpoint("10.244.1.5:8080", 1, Serving, None),
        endpoint("10.244.2.5:8080", 1, Serving, None),
    ];
    web.endpoints[0].stats = sock(4);
    web.endpoints[1].stats = sock(3);
    web.stats = sock(7);
    let mut np = view(
        "default/web:http",
        "*:30080/TCP (external)",
        "0.0.0.0",
        30080,
        "NodePort",
        "external",
        2,
    );
    np.backends = vec![sa("10.244.1.5:8080")];
    np.endpoints = vec![
        endpoint("10.244.1.5:8080", 2, Serving, Some((3, 1))),
        endpoint("10.244.3.9:8080", 0, Draining, Some((1, 0))),
    ];
    np.endpoints[0].stats = tc(1200, (98_000, 87_500), (10_450_000, 123_456_789));
    np.stats = np.endpoints[0].stats;
    let mut lb = view(
        "",
        "192.0.2.50:443/TCP (external)",
        "192.0.2.50",
        443,
        "LoadBalancer",
        "external",
        3,
    );
    lb.source_ranges = vec![
        "203.0.113.0/24".parse().expect("cidr"),
        "198.51.100.0/24".parse().expect("cidr"),
    ];
    vec![web, np, lb]
}

/// What `proxyctl list` reads from IPVS: a persistent ClusterIP with a drained
/// destination, and a UDP virtual server no ipset names.
pub(crate) fn ipvs_services() -> Vec<ServiceView> {
    use EndpointState::*;
    let c = |connections| IpvsCounters {
        connections,
        ..IpvsCounters::default()
    };
    let dest = |address: &str, weight, active, inactive, persistent| IpvsDestinationView {
        address: sa(address),
        forward: "masquerade".into(),
        weight,
        active_connections: active,
        inactive_connections: inactive,
        persistent_connections: persistent,
        counters: c(6),
    };
    let mut web = ServiceView {
        service: "default/web:http".into(),
        frontend: "10.96.0.10:80/TCP".into(),
        ip: "10.96.0.10".parse().expect("an address"),
        port: 80,
        protocol: "TCP".into(),
        scheduler: "rr".into(),
        kind: "ClusterIP".into(),
        scope: "internal".into(),
        service_id: 0,
        affinity_timeout_s: Some(10800),
        source_ranges: Vec::new(),
        backends: vec![sa("10.244.1.5:8080")],
        endpoints: vec![
            endpoint("10.244.1.5:8080", 1, Serving, Some((1, 0))),
            endpoint("10.244.2.5:8080", 0, Draining, Some((0, 2))),
        ],
        ipvs: Some(IpvsView {
            scheduler: "rr".into(),
            persistent: true,
            timeout_s: 10800,
            netmask: 32,
            counters: c(12),
            destinations: vec![
                dest("10.244.1.5:8080", 1, 1, 0, 1),
                dest("10.244.2.5:8080", 0, 0, 2, 0),
            ],
        }),
        stats: tc(12, (60, 48), (3600, 9100)),
        rate: None,
    };
    web.endpoints[0].stats = tc(6, (30, 24), (1800, 4550));
    web.endpoints[1].stats = tc(6, (30, 24), (1800, 4550));
    let dns = ServiceView {
        service: String::new(),
        frontend: "10.96.0.53:53/UDP".into(),
        ip: "10.96.0.53".parse().expect("an address"),
        port: 53,
        protocol: "UDP".into(),
        scheduler: "wlc".into(),
        kind: String::new(),
        scope: "internal".into(),
        service_id: 0,
        affinity_timeout_s: None,
        source_ranges: Vec::new(),
        backends: vec![sa("10.244.1.7:53")],
        endpoints: vec![endpoint("10.244.1.7:53", 1, Serving, Some((0, 4)))],
        ipvs: Some(IpvsView {
            scheduler: "wlc".into(),
            persistent: false,
            timeout_s: 0,
            netmask: 32,
            counters: c(4),
            destinations: vec![dest("10.244.1.7:53", 1, 0, 4, 0)],
        }),
        stats: tc(4, (4, 4), (240, 480)),
        rate: None,
    };
    let mut dns = dns;
    dns.endpoints[0].stats = dns.stats;
    vec![web, dns]
}

fn flow(service: &str, legs: Legs, expired: bool, snat: Option<&str>) -> Flow {
    Flow {
        protocol: "TCP".into(),
        client: sa("203.0.113.7:40001"),
        frontend: sa("192.0.2.10:30080"),
        backend: sa("10.244.1.5:8080"),
        snat: snat.map(sa),
        state: FlowState::Established,
        service_id: 7,
        service: service.into(),
        idle_s: 3,
        age_s: 60,
        packets_in: 12,
        packets_out: 10,
        bytes_in: 1200,
        bytes_out: 9000,
        expired,
        legs,
        assured: true,
    }
}

fn flows() -> Vec<Flow> {
    let mut opening = flow("demo/echo:http", Legs::Both, false, None);
    opening.assured = false;
    opening.state = FlowState::Opening;
    opening.client = sa("[2001:db8::7]:40002");
    vec![
        flow(
            "demo/echo:http",
            Legs::Both,
            false,
            Some("192.0.2.10:40001"),
        ),
        flow("", Legs::ReplyOnly, true, None),
        opening,
    ]
}

#[test]
fn list_ebpf_golden() {
    golden::check(
        "list_ebpf.txt",
        &render_list(&ebpf_services(), Width::Normal),
    );
    golden::check(
        "list_ebpf_wide.txt",
        &render_list(&ebpf_services(), Width::Wide),
    );
}

#[test]
fn list_ipvs_golden() {
    golden::check(
        "list_ipvs.txt",
        &render_list(&ipvs_services(), Width::Normal),
    );
    golden::check(
        "list_ipvs_wide.txt",
        &render_list(&ipvs_services(), Width::Wide),
    );
}

#[test]
fn list_stats_golden() {
    golden::check(
        "list_ebpf_stats.txt",
        &render_list_numbers(&ebpf_services(), Numbers::Totals, Width::Normal),
    );
    golden::check(
        "list_ebpf_stats_wide.txt",
        &render_list_numbers(&ebpf_services(), Numbers::Totals, Width::Wide),
    );
    golden::check(
        "list_ipvs_stats.txt",
        &render_list_numbers(&ipvs_services(), Numbers::Totals, Width::Normal),
    );
}

#[test]
fn list_rate_golden() {
    let mut services = ebpf_services();
    let np = &mut services[1];
    let r = TrafficRate {
        connections: 120.4,
        packets_in: Some(9800.0),
        packets_out: Some(8750.6),
        bytes_in: Some(1_045_000.0),
        bytes_out: Some(12_345_678.9),
    };
    np.rate = Some(r);
    np.endpoints[0].rate = Some(r);
    services[0].rate = Some(TrafficRate {
        connections: 3.0,
        ..TrafficRate::default()
    });
    golden::check(
        "list_ebpf_rate.txt",
        &render_list_numbers(&services, Numbers::Rate, Width::Normal),
    );
}

#[test]
fn the_json_carries_the_statistics_with_unseen_counts_as_null() {
    let json = serde_json::to_value(ebpf_services()).expect("json");
    assert_eq!(json[0]["stats"]["connections"], 7);
    assert!(json[0]["stats"]["packets_in"].is_null());
    assert_eq!(json[1]["endpoints"][0]["stats"]["bytes_out"], 123_456_789);
    assert!(
        json[1]["endpoints"][1]["stats"].is_null(),
        "draining: uncounted"
    );
    assert!(json[1].get("rate").is_none(), "only with --rate");
}

#[test]
fn conntrack_golden() {
    golden::check("conntrack.txt", &render_conntrack(&flows(), Width::Normal));
    golden::check(
        "conntrack_wide.txt",
        &render_conntrack(&flows(), Width::Wide),
    );
}

#[test]
fn affinity_golden() {
    let list = [
        AffinityView {
            client_netns_cookie: 4096,
            service: "default/web:http".into(),
            backend: "10.244.1.5:8080".into(),
            idle_s: 12,
        },
        AffinityView {
            client_netns_cookie: 8193,
            service: String::new(),
            backend: String::new(),
            idle_s: 3600,
        },
    ];
    golden::check("affinity.txt", &render_affinities(&list));
}

#[test]
fn backend_lines_share_the_frontend_lines_columns_in_both_modes() {
    for services in [ebpf_services(), ipvs_services()] {
        for width in [Width::Normal, Width::Wide] {
            let t = render_list(&services, width);
            let lines: Vec<&str> = t.lines().collect();
            let col = |l: &str, name: &str| l.find(name).unwrap_or(usize::MAX);
            assert_eq!(col(lines[0], "FRONTEND"), col(lines[1], "BACKEND"), "{t}");
            assert_eq!(col(lines[0], "SCOPE"), col(lines[1], "WEIGHT"), "{t}");
            assert_eq!(col(lines[0], "SERVICE"), col(lines[1], "INACTIVE"), "{t}");
            assert!(lines.iter().all(|l| l == &l.trim_end()), "{t}");
        }
    }
}

#[test]
fn a_frontend_without_a_serving_backend_says_so_before_its_draining_ones() {
    let mut services = ipvs_services();
    services[0].endpoints.remove(0);
    let t = render_list(&services[..1], Width::Normal);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines[3], "  ->  (no serving backend)", "{t}");
    assert!(
        lines[4].contains("10.244.2.5:8080") && lines[4].contains("draining"),
        "{t}"
    );
}

#[test]
fn the_json_keeps_the_older_fields_and_adds_the_endpoints() {
    let json = serde_json::to_value(&ebpf_services()[1]).expect("json");
    let stats = serde_json::json!({"connections": 1200, "packets_in": 98_000,
        "packets_out": 87_500, "bytes_in": 10_450_000, "bytes_out": 123_456_789});
    assert_eq!(
        json,
        serde_json::json!({
            "service": "default/web:http",
            "frontend": "*:30080/TCP (external)",
            "ip": "0.0.0.0",
            "port": 30080,
            "protocol": "TCP",
            "scheduler": "random",
            "kind": "NodePort",
            "scope": "external",
            "service_id": 2,
            "affinity_timeout_s": null,
            "source_ranges": [],
            "backends": ["10.244.1.5:8080"],
            "endpoints": [
                {"address": "10.244.1.5:8080", "weight": 2, "state": "serving",
                 "active_connections": 3, "inactive_connections": 1,
                 "stats": stats},
                {"address": "10.244.3.9:8080", "weight": 0, "state": "draining",
                 "active_connections": 1, "inactive_connections": 0, "stats": null},
            ],
            "stats": stats,
        })
    );
}
