//! One Service: ports, skipping, affinity, families and every kind of frontend.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort,
    SessionAffinityConfig,
};

use crate::model::{FrontendKind, HealthCheck, ServicePortName, VirtualService};
use crate::source::World;
use crate::translate::test_support::*;
use crate::translate::{LABEL_SERVICE_PROXY_NAME, Translator, translate};

#[test]
fn a_cluster_ip_service_balances_over_its_ready_endpoints() {
    let t = run(
        vec![web()],
        vec![web_slice(
            "web-1",
            vec![ep("10.244.0.12"), ep("10.244.0.11"), ep("10.244.1.13")],
        )],
    );
    assert_eq!(
        vs(&t, WEB),
        &VirtualService {
            name: ServicePortName {
                namespace: "demo".into(),
                name: "web".into(),
                port: "http".into(),
            },
            frontend: frontend(WEB),
            backends: vec![
                "10.244.0.11:8080".parse().unwrap(),
                "10.244.0.12:8080".parse().unwrap(),
                "10.244.1.13:8080".parse().unwrap(),
            ],
            affinity_timeout_s: None,
            kind: FrontendKind::ClusterIp,
            source_ranges: Vec::new(),
        }
    );
    assert_eq!(frontends(&t), [WEB]);
    assert!(t.skipped.is_empty(), "{:?}", t.skipped);
}

#[test]
fn each_port_of_a_service_becomes_its_own_frontend() {
    let s = svc(
        "demo",
        "dns",
        "10.96.0.53",
        &[
            ("dns", 53, "UDP"),
            ("dns-tcp", 53, "TCP"),
            ("metrics", 9153, "TCP"),
        ],
    );
    let sl = slice(
        "demo",
        "dns-1",
        "dns",
        "IPv4",
        &[
            ("dns", 5353, "UDP"),
            ("dns-tcp", 5353, "TCP"),
            ("metrics", 9153, "TCP"),
        ],
        vec![ep("10.244.0.5")],
    );
    let t = run(vec![s], vec![sl]);
    assert_eq!(
        frontends(&t),
        [
            "10.96.0.53:53/TCP",
            "10.96.0.53:53/UDP",
            "10.96.0.53:9153/TCP"
        ]
    );
    assert_eq!(backends(&t, "10.96.0.53:53/UDP"), ["10.244.0.5:5353"]);
    assert_eq!(backends(&t, "10.96.0.53:53/TCP"), ["10.244.0.5:5353"]);
    assert_eq!(backends(&t, "10.96.0.53:9153/TCP"), ["10.244.0.5:9153"]);
    assert_eq!(vs(&t, "10.96.0.53:53/TCP").name.port, "dns-tcp");
}

#[test]
fn a_service_without_endpoints_is_served_with_no_backends_so_connections_are_refused() {
    let t = run(vec![web()], vec![]);
    assert_eq!(backends(&t, WEB), Vec::<String>::new());
    let t = run(vec![web()], vec![web_slice("web-1", vec![])]);
    assert_eq!(backends(&t, WEB), Vec::<String>::new());
}

#[test]
fn a_service_without_a_namespace_is_in_default() {
    let mut s = svc("default", "web", "10.96.0.10", &[("http", 80, "TCP")]);
    s.metadata.namespace = None;
    let mut sl = slice(
        "default",
        "web-1",
        "web",
        "IPv4",
        &[("http", 8080, "TCP")],
        vec![ep("10.244.0.11")],
    );
    sl.metadata.namespace = None;
    let t = run(vec![s], vec![sl]);
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
    assert_eq!(vs(&t, WEB).name.namespace, "default");
}

#[test]
fn local_policy_frontends_without_a_local_endpoint_are_counted() {
    let mut world = World::default();
    world.reset(snapshot(
        vec![local_web()],
        vec![web_slice("web-1", vec![on(ep("10.244.1.5"), "node-b")])],
    ));
    let mut t = Translator::default();
    t.rebuild(&world, &node());
    assert_eq!(t.no_local_endpoints(), 1);
    let dirty = world.apply(
        vec![],
        vec![(
            ("demo".into(), "web-1".into()),
            Some(Arc::new(web_slice(
                "web-1",
                vec![on(ep("10.244.0.5"), "node-a")],
            ))),
        )],
    );
    t.update(&world, dirty, &node());
    assert_eq!(t.no_local_endpoints(), 0);
}

#[test]
fn client_ip_affinity_uses_the_configured_timeout_or_three_hours() {
    let affinity = |timeout: Option<i32>| {
        with(web(), |s| {
            spec(s).session_affinity = Some("ClientIP".into());
            spec(s).session_affinity_config = timeout.map(|t| SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(t),
                }),
            });
        })
    };
    let t = run(vec![affinity(Some(60))], vec![]);
    assert_eq!(vs(&t, WEB).affinity_timeout_s, Some(60));
    let t = run(vec![affinity(None)], vec![]);
    assert_eq!(vs(&t, WEB).affinity_timeout_s, Some(10800));
    let none = with(web(), |s| spec(s).session_affinity = Some("None".into()));
    let t = run(vec![none], vec![]);
    assert_eq!(vs(&t, WEB).affinity_timeout_s, None);
    let t = run(vec![web()], vec![]);
    assert_eq!(vs(&t, WEB).affinity_timeout_s, None);
}

#[test]
fn affinity_applies_to_every_port_and_family_of_the_service() {
    let s = with(
        svc(
            "demo",
            "web",
            "10.96.0.10",
            &[("http", 80, "TCP"), ("q", 5000, "UDP")],
        ),
        |s| {
            spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
            spec(s).session_affinity = Some("ClientIP".into());
        },
    );
    let t = run(vec![s], vec![]);
    assert_eq!(t.desired.services.len(), 4);
    assert!(
        t.desired
            .services
            .values()
            .all(|v| v.affinity_timeout_s == Some(10800))
    );
}

#[test]
fn a_dual_stack_service_gets_one_frontend_per_family_and_port() {
    let s = with(
        svc(
            "demo",
            "web",
            "fd00::10",
            &[("http", 80, "TCP"), ("dns", 53, "UDP")],
        ),
        |s| {
            spec(s).cluster_ips = Some(vec!["fd00::10".into(), "10.96.0.10".into()]);
            spec(s).ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
        },
    );
    let t = run(vec![s], vec![]);
    assert_eq!(
        frontends(&t),
        [
            "10.96.0.10:53/UDP",
            "10.96.0.10:80/TCP",
            "[fd00::10]:53/UDP",
            "[fd00::10]:80/TCP"
        ]
    );
}

#[test]
fn a_single_stack_ipv6_service_is_served() {
    let s = svc("demo", "web", "fd00::10", &[("http", 80, "TCP")]);
    let sl = slice(
        "demo",
        "web-1",
        "web",
        "IPv6",
        &[("http", 8080, "TCP")],
        vec![ep("fd00:244::11")],
    );
    let t = run(vec![s], vec![sl]);
    assert_eq!(backends(&t, "[fd00::10]:80/TCP"), ["[fd00:244::11]:8080"]);
}

#[test]
fn cluster_ip_alone_is_enough_without_cluster_ips() {
    let s = with(web(), |s| spec(s).cluster_ips = None);
    let t = run(vec![s], vec![web_slice("web-1", vec![ep("10.244.0.11")])]);
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
}

#[test]
fn a_family_the_node_does_not_have_is_skipped_and_reported() {
    let s = with(web(), |s| {
        spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
    });
    let mut n = node();
    n.ipv6 = false;
    let t = translate(&snapshot(vec![s.clone()], vec![]), &n);
    assert_eq!(frontends(&t), [WEB]);
    assert_eq!(
        skipped(&t),
        [
            "Service demo/web: ClusterIP fd00::10 is IPv6, which this node does not have: its frontends are not served"
        ]
    );
    let mut n = node();
    n.ipv4 = false;
    let t = translate(&snapshot(vec![s], vec![]), &n);
    assert_eq!(frontends(&t), ["[fd00::10]:80/TCP"]);
    assert_eq!(t.skipped.len(), 1);
    assert!(
        t.skipped[0]
            .reason
            .starts_with("ClusterIP 10.96.0.10 is IPv4")
    );
}

#[test]
fn headless_external_name_and_other_proxies_services_are_skipped_silently() {
    let headless = with(
        svc("demo", "headless", "None", &[("http", 80, "TCP")]),
        |s| {
            spec(s).cluster_ips = Some(vec!["None".into()]);
        },
    );
    let headless_no_ports = with(svc("demo", "headless2", "None", &[]), |s| {
        spec(s).ports = None;
    });
    let external = with(svc("demo", "ext", "", &[("http", 80, "TCP")]), |s| {
        spec(s).type_ = Some("ExternalName".into());
        spec(s).external_name = Some("db.example.com".into());
        spec(s).cluster_ips = None;
    });
    let foreign = with(
        svc("demo", "foreign", "10.96.0.20", &[("http", 80, "TCP")]),
        |s| {
            s.metadata.labels = Some(BTreeMap::from([(
                LABEL_SERVICE_PROXY_NAME.to_string(),
                "other-proxy".to_string(),
            )]));
        },
    );
    let t = run(
        vec![headless, headless_no_ports, external, foreign],
        vec![slice(
            "demo",
            "headless-1",
            "headless",
            "IPv4",
            &[("http", 8080, "TCP")],
            vec![ep("10.244.0.11")],
        )],
    );
    assert!(t.desired.services.is_empty());
    assert!(t.skipped.is_empty(), "{:?}", t.skipped);
}

#[test]
fn a_service_without_a_cluster_ip_is_reported() {
    let s = with(web(), |s| {
        spec(s).cluster_ip = None;
        spec(s).cluster_ips = None;
    });
    let t = run(vec![s], vec![]);
    assert!(t.desired.services.is_empty());
    assert_eq!(
        skipped(&t),
        [
            "Service demo/web: has no clusterIP: nothing to serve (this agent does not allocate ClusterIPs; set spec.clusterIP)"
        ]
    );
}

#[test]
fn sctp_ports_are_reported_and_the_other_ports_still_served() {
    let s = svc(
        "demo",
        "sig",
        "10.96.0.30",
        &[("http", 80, "TCP"), ("sig", 3868, "SCTP")],
    );
    let t = run(vec![s], vec![]);
    assert_eq!(frontends(&t), ["10.96.0.30:80/TCP"]);
    assert_eq!(
        skipped(&t),
        [
            "Service demo/sig: port \"sig\" (3868/SCTP): SCTP is not supported by this data plane yet; the service's other ports are served"
        ]
    );
}

#[test]
fn an_invalid_service_is_skipped_whole_with_the_field_error() {
    let s = svc(
        "demo",
        "web",
        "10.96.0.10",
        &[("http", 80, "TCP"), ("admin", 70000, "TCP")],
    );
    let t = run(vec![s], vec![web_slice("web-1", vec![ep("10.244.0.11")])]);
    assert!(t.desired.services.is_empty(), "{:?}", frontends(&t));
    assert_eq!(
        skipped(&t),
        ["Service demo/web: spec.ports[1].port: 70000 is not in 1..=65535"]
    );
    let s = with(web(), |s| {
        spec(s).ports.as_mut().unwrap()[0].protocol = Some("ICMP".into());
    });
    let t = run(vec![s], vec![]);
    assert_eq!(
        skipped(&t),
        ["Service demo/web: spec.ports[0].protocol: unknown protocol \"ICMP\""]
    );
}

#[test]
fn an_invalid_service_does_not_affect_others() {
    let bad = with(
        svc("demo", "bad", "10.96.0.99", &[("http", 80, "TCP")]),
        |s| {
            spec(s).cluster_ip = Some("10.96.0.999".into());
            spec(s).cluster_ips = None;
        },
    );
    let t = run(
        vec![bad, web()],
        vec![web_slice("web-1", vec![ep("10.244.0.11")])],
    );
    assert_eq!(frontends(&t), [WEB]);
    assert_eq!(
        skipped(&t),
        [
            "Service demo/bad: spec.clusterIP: \"10.96.0.999\" is not an IP address, \"None\" or empty"
        ]
    );
}

#[test]
fn a_node_port_is_served_on_the_unspecified_address_in_both_scopes() {
    let t = run(vec![web_node_port()], spread());
    assert_eq!(
        table(&t),
        [
            "*:30080/TCP NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
            "*:30080/TCP (external) NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
            "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080 10.244.1.12:8080",
        ]
    );
    assert_eq!(vs(&t, NP_EXT).name.to_string(), "demo/web:http");
    assert!(t.skipped.is_empty(), "{:?}", skipped(&t));
}

#[test]
fn node_ports_are_served_for_node_port_and_load_balancer_services_when_set() {
    let lb = load_balancer(node_ports(web(), &[30080]), &[]);
    assert_eq!(frontends(&run(vec![lb], vec![])), [NP, NP_EXT, WEB]);
    // allocateLoadBalancerNodePorts: false leaves nodePort 0 (or absent): none.
    for n in [Some(0), None] {
        let lb = load_balancer(
            with(web(), |s| spec(s).ports.as_mut().unwrap()[0].node_port = n),
            &[],
        );
        assert_eq!(frontends(&run(vec![lb], vec![])), [WEB]);
    }
    // A multi-port NodePort service: one node port per service port.
    let s = node_ports(
        svc(
            "demo",
            "dns",
            "10.96.0.53",
            &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
        ),
        &[30053, 30054],
    );
    assert_eq!(
        frontends(&run(vec![s], vec![])),
        [
            "*:30053/UDP",
            "*:30053/UDP (external)",
            "*:30054/TCP",
            "*:30054/TCP (external)",
            "10.96.0.53:53/TCP",
            "10.96.0.53:53/UDP",
        ]
    );
}

#[test]
fn a_dual_stack_node_port_has_frontends_for_each_family_the_node_serves() {
    let s = with(web_node_port(), |s| {
        spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
    });
    let v6 = slice(
        "demo",
        "web-v6",
        "web",
        "IPv6",
        &[("http", 8080, "TCP")],
        vec![ep("fd00:244::11")],
    );
    let slices = vec![web_slice("web-v4", vec![ep("10.244.0.11")]), v6];
    let t = run(vec![s.clone()], slices.clone());
    assert_eq!(
        table(&t),
        [
            "*:30080/TCP NodePort -> 10.244.0.11:8080",
            "*:30080/TCP (external) NodePort -> 10.244.0.11:8080",
            "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080",
            "[::]:30080/TCP NodePort -> [fd00:244::11]:8080",
            "[::]:30080/TCP (external) NodePort -> [fd00:244::11]:8080",
            "[fd00::10]:80/TCP ClusterIP -> [fd00:244::11]:8080",
        ]
    );
    let mut n = node();
    n.ipv6 = false;
    let t = translate(&snapshot(vec![s], slices), &n);
    assert_eq!(frontends(&t), [NP, NP_EXT, WEB]);
}

#[test]
fn external_policy_local_narrows_only_external_frontends_to_this_node() {
    let t = run(vec![external_local(web_node_port())], spread());
    assert_eq!(
        table(&t),
        [
            // In-cluster clients short-circuit to every endpoint, as in kube-proxy.
            "*:30080/TCP NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
            "*:30080/TCP (external) NodePort -> 10.244.0.11:8080",
            "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080 10.244.1.12:8080",
        ]
    );
}

#[test]
fn external_policy_local_falls_back_to_local_terminating_endpoints() {
    let t = run(
        vec![external_local(web_node_port())],
        vec![web_slice(
            "web-1",
            vec![
                terminating(on(ep("10.244.0.11"), "node-a")),
                on(ep("10.244.1.12"), "node-b"),
            ],
        )],
    );
    assert_eq!(backends(&t, NP_EXT), ["10.244.0.11:8080"]);
    assert_eq!(backends(&t, NP), ["10.244.1.12:8080"]);
}

#[test]
fn external_policy_local_without_a_local_endpoint_drops_outside_clients() {
    let t = run(
        vec![external_local(web_node_port())],
        vec![web_slice("web-1", vec![on(ep("10.244.1.12"), "node-b")])],
    );
    assert_eq!(backends(&t, NP_EXT), Vec::<String>::new());
    assert_eq!(backends(&t, NP), ["10.244.1.12:8080"]);
    assert!(t.skipped.is_empty());
}

#[test]
fn external_policy_cluster_is_the_default_and_topology_applies_to_it() {
    let slices = vec![web_slice(
        "web-1",
        vec![
            for_zones(on(ep("10.244.0.11"), "node-a"), &["zone-a"]),
            for_zones(on(ep("10.244.1.12"), "node-b"), &["zone-b"]),
        ],
    )];
    for policy in [None, Some("Cluster")] {
        let s = with(web_node_port(), |s| {
            spec(s).external_traffic_policy = policy.map(Into::into)
        });
        let t = run(vec![s], slices.clone());
        assert_eq!(backends(&t, NP_EXT), ["10.244.0.11:8080"], "{policy:?}");
        assert_eq!(backends(&t, NP), ["10.244.0.11:8080"], "{policy:?}");
    }
}

#[test]
fn internal_policy_local_applies_to_the_cluster_ip_only() {
    let s = with(web_node_port(), |s| {
        spec(s).internal_traffic_policy = Some("Local".into());
    });
    let t = run(vec![s], spread());
    assert_eq!(
        table(&t),
        [
            "*:30080/TCP NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
            "*:30080/TCP (external) NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
            "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080",
        ]
    );
}

#[test]
fn external_policy_local_services_without_a_local_endpoint_are_counted_once() {
    // Two ports, two families, no local endpoint anywhere: one Service.
    let s = external_local(node_ports(
        with(
            svc(
                "demo",
                "web",
                "10.96.0.10",
                &[("http", 80, "TCP"), ("https", 443, "TCP")],
            ),
            |s| spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]),
        ),
        &[30080, 30443],
    ));
    let remote = slice(
        "demo",
        "web-1",
        "web",
        "IPv4",
        &[("http", 8080, "TCP"), ("https", 8443, "TCP")],
        vec![on(ep("10.244.1.12"), "node-b")],
    );
    let t = translator(vec![s.clone()], vec![remote.clone()]);
    assert_eq!(t.no_local_endpoints_external(), 1);
    assert_eq!(t.no_local_endpoints(), 0);
    // No usable endpoint at all is not "no local endpoint".
    let t = translator(vec![s.clone()], vec![]);
    assert_eq!(t.no_local_endpoints_external(), 0);
    let t = translator(
        vec![s.clone()],
        vec![web_slice(
            "web-1",
            vec![not_ready(on(ep("10.244.1.12"), "node-b"))],
        )],
    );
    assert_eq!(t.no_local_endpoints_external(), 0);
    // A local endpoint for one port but not the other still counts.
    let partial = slice(
        "demo",
        "web-2",
        "web",
        "IPv4",
        &[("http", 8080, "TCP")],
        vec![on(ep("10.244.0.11"), "node-a")],
    );
    let t = translator(vec![s.clone()], vec![remote.clone(), partial]);
    assert_eq!(t.no_local_endpoints_external(), 1);
    // Cluster policy, or no external frontend at all, never counts.
    let cluster = with(s.clone(), |s| spec(s).external_traffic_policy = None);
    assert_eq!(
        translator(vec![cluster], vec![remote.clone()]).no_local_endpoints_external(),
        0
    );
    let no_frontend = with(s, |s| {
        spec(s).type_ = Some("LoadBalancer".into());
        for p in spec(s).ports.as_mut().unwrap() {
            p.node_port = None;
        }
    });
    assert_eq!(
        translator(vec![no_frontend], vec![remote]).no_local_endpoints_external(),
        0
    );
}

#[test]
fn the_external_no_local_endpoints_count_follows_updates() {
    let mut world = World::default();
    world.reset(snapshot(
        vec![external_local(web_node_port())],
        vec![web_slice("web-1", vec![on(ep("10.244.1.5"), "node-b")])],
    ));
    let mut t = Translator::default();
    t.rebuild(&world, &node());
    assert_eq!(t.no_local_endpoints_external(), 1);
    let dirty = world.apply(
        vec![],
        vec![(
            ("demo".into(), "web-1".into()),
            Some(Arc::new(web_slice(
                "web-1",
                vec![on(ep("10.244.0.5"), "node-a")],
            ))),
        )],
    );
    t.update(&world, dirty, &node());
    assert_eq!(t.no_local_endpoints_external(), 0);
    let dirty = world.apply(vec![(("demo".into(), "web".into()), None)], vec![]);
    t.update(&world, dirty, &node());
    assert_eq!(t.no_local_endpoints_external(), 0);
}

#[test]
fn external_ips_are_served_in_both_scopes_with_the_service_port() {
    let s = external_local(with(web(), |s| {
        spec(s).external_ips = Some(vec!["192.0.2.10".into(), "192.0.2.11".into()]);
    }));
    let t = run(vec![s], spread());
    assert_eq!(
        table(&t),
        [
            "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080 10.244.1.12:8080",
            "192.0.2.10:80/TCP ExternalIP -> 10.244.0.11:8080 10.244.1.12:8080",
            "192.0.2.10:80/TCP (external) ExternalIP -> 10.244.0.11:8080",
            "192.0.2.11:80/TCP ExternalIP -> 10.244.0.11:8080 10.244.1.12:8080",
            "192.0.2.11:80/TCP (external) ExternalIP -> 10.244.0.11:8080",
        ]
    );
}

#[test]
fn external_ips_of_a_family_without_a_cluster_ip_are_reported_and_not_served() {
    let s = with(web(), |s| {
        spec(s).external_ips = Some(vec!["2001:db8::10".into(), "192.0.2.10".into()]);
    });
    let t = run(vec![s], vec![]);
    assert_eq!(
        frontends(&t),
        [WEB, "192.0.2.10:80/TCP", "192.0.2.10:80/TCP (external)"]
    );
    assert_eq!(
        skipped(&t),
        [
            "Service demo/web: externalIP 2001:db8::10 is IPv6, but the Service has no IPv6 ClusterIP: it is not served (kube-proxy ignores it too)"
        ]
    );
    // A family the Service has but this node lacks: the ClusterIP's entry says it.
    let dual = with(web(), |s| {
        spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
        spec(s).external_ips = Some(vec!["2001:db8::10".into()]);
    });
    let mut n = node();
    n.ipv6 = false;
    let t = translate(&snapshot(vec![dual], vec![]), &n);
    assert_eq!(frontends(&t), [WEB]);
    assert_eq!(t.skipped.len(), 1);
    assert!(
        t.skipped[0]
            .reason
            .starts_with("ClusterIP fd00::10 is IPv6")
    );
}

#[test]
fn an_external_ip_equal_to_the_services_own_cluster_ip_is_served_once() {
    let s = with(web(), |s| {
        spec(s).internal_traffic_policy = Some("Local".into());
        spec(s).external_ips = Some(vec!["10.96.0.10".into(), "10.96.0.10".into()]);
    });
    let t = run(vec![s], spread());
    assert_eq!(
        table(&t),
        [
            "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080",
            "10.96.0.10:80/TCP (external) ExternalIP -> 10.244.0.11:8080 10.244.1.12:8080",
        ]
    );
    assert!(t.skipped.is_empty(), "{:?}", skipped(&t));
}

#[test]
fn an_invalid_external_ip_rejects_the_service_whole() {
    let s = with(web_node_port(), |s| {
        spec(s).external_ips = Some(vec!["192.0.2.10".into(), "1.2.3".into()]);
    });
    let t = run(vec![s], spread());
    assert!(t.desired.services.is_empty(), "{:?}", frontends(&t));
    assert_eq!(
        skipped(&t),
        ["Service demo/web: spec.externalIPs[1]: \"1.2.3\" is not an IP address"]
    );
}

#[test]
fn load_balancer_ips_are_served_in_both_scopes() {
    let s = external_local(load_balancer(web_node_port(), &["192.0.2.100"]));
    let t = run(vec![s], spread());
    assert_eq!(
        table(&t),
        [
            "*:30080/TCP NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
            "*:30080/TCP (external) NodePort -> 10.244.0.11:8080",
            "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080 10.244.1.12:8080",
            "192.0.2.100:80/TCP LoadBalancer -> 10.244.0.11:8080 10.244.1.12:8080",
            "192.0.2.100:80/TCP (external) LoadBalancer -> 10.244.0.11:8080",
        ]
    );
}

#[test]
fn load_balancer_ingress_without_an_ip_or_in_proxy_mode_is_not_served() {
    let mut s = load_balancer(web(), &[]);
    s.status.as_mut().unwrap().load_balancer = Some(LoadBalancerStatus {
        ingress: Some(vec![
            LoadBalancerIngress {
                hostname: Some("lb.example.com".into()),
                ..Default::default()
            },
            LoadBalancerIngress {
                ip: Some("192.0.2.101".into()),
                ip_mode: Some("Proxy".into()),
                ..Default::default()
            },
            LoadBalancerIngress {
                ip: Some("192.0.2.100".into()),
                ip_mode: Some("VIP".into()),
                ..Default::default()
            },
        ]),
    });
    let t = run(vec![s], vec![]);
    assert_eq!(frontends(&t), [WEB, LB, LB_EXT]);
    assert!(t.skipped.is_empty(), "{:?}", skipped(&t));
}

#[test]
fn a_load_balancer_status_is_ignored_unless_the_type_is_load_balancer() {
    let s = with(load_balancer(web(), &["192.0.2.100"]), |s| {
        spec(s).type_ = Some("ClusterIP".into());
    });
    assert_eq!(frontends(&run(vec![s], vec![])), [WEB]);
}

#[test]
fn load_balancer_ips_of_another_family_or_unspecified_are_reported() {
    let s = load_balancer(web(), &["2001:db8::100", "0.0.0.0", "192.0.2.100"]);
    let t = run(vec![s], vec![]);
    assert_eq!(frontends(&t), [WEB, LB, LB_EXT]);
    assert_eq!(
        skipped(&t),
        [
            "Service demo/web: load balancer IP 2001:db8::100 is IPv6, but the Service has no IPv6 ClusterIP: it is not served (kube-proxy ignores it too)",
            "Service demo/web: load balancer IP 0.0.0.0 is the unspecified address: it is not served",
        ]
    );
}

#[test]
fn source_ranges_restrict_only_external_load_balancer_frontends_of_their_family() {
    let s = source_ranges(
        with(
            load_balancer(web_node_port(), &["192.0.2.100", "2001:db8::100"]),
            |s| {
                spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
                spec(s).external_ips = Some(vec!["192.0.2.10".into()]);
            },
        ),
        &[
            "203.0.113.0/24",
            " 198.51.100.7 ",
            "2001:db8:1::/48",
            "203.0.113.9/24",
        ],
    );
    let t = run(vec![s], vec![]);
    let with_ranges: Vec<String> = table(&t)
        .into_iter()
        .filter(|line| line.contains(" from "))
        .collect();
    assert_eq!(
        with_ranges,
        [
            "192.0.2.100:80/TCP (external) LoadBalancer -> (none) from 198.51.100.7/32 203.0.113.0/24",
            "[2001:db8::100]:80/TCP (external) LoadBalancer -> (none) from 2001:db8:1::/48",
        ]
    );
    // The internal LB frontends, NodePorts and externalIPs are not filtered.
    assert_eq!(frontends(&t).len(), 12);
    assert!(t.skipped.is_empty(), "{:?}", skipped(&t));
}

#[test]
fn a_load_balancer_ip_without_a_source_range_of_its_family_admits_no_outside_client() {
    // Ranges of IPv6 only: the IPv4 load balancer IP's external frontend is left out
    // (nobody outside may connect), never programmed without ranges (everybody).
    let s = source_ranges(
        with(load_balancer(web_node_port(), &["192.0.2.100"]), |s| {
            // The same address as an externalIP must not open it either.
            spec(s).external_ips = Some(vec!["192.0.2.100".into()]);
        }),
        &["2001:db8:1::/48"],
    );
    let t = run(vec![s], spread());
    assert_eq!(
        table(&t),
        [
            "*:30080/TCP NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
            "*:30080/TCP (external) NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
            "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080 10.244.1.12:8080",
            "192.0.2.100:80/TCP LoadBalancer -> 10.244.0.11:8080 10.244.1.12:8080",
        ]
    );
    assert_eq!(
        skipped(&t),
        [
            "Service demo/web: load balancer IP 192.0.2.100: spec.loadBalancerSourceRanges lists no IPv4 range, so no client outside the node may connect: its external frontends are not programmed (clients on this node are still served)"
        ]
    );
}

#[test]
fn a_load_balancer_ip_listed_as_an_external_ip_keeps_its_source_ranges() {
    let s = source_ranges(
        with(load_balancer(web(), &["192.0.2.100"]), |s| {
            spec(s).external_ips = Some(vec!["192.0.2.100".into()]);
        }),
        &["203.0.113.0/24"],
    );
    let t = run(vec![s], vec![]);
    assert_eq!(
        table(&t),
        [
            "10.96.0.10:80/TCP ClusterIP -> (none)",
            "192.0.2.100:80/TCP LoadBalancer -> (none)",
            "192.0.2.100:80/TCP (external) LoadBalancer -> (none) from 203.0.113.0/24",
        ]
    );
}

#[test]
fn an_invalid_source_range_rejects_the_service_whole_never_widening_access() {
    let s = source_ranges(
        load_balancer(web(), &["192.0.2.100"]),
        &["203.0.113.0/24", "203.0.113.0/33"],
    );
    let t = run(vec![s], spread());
    assert!(t.desired.services.is_empty(), "{:?}", frontends(&t));
    assert_eq!(
        skipped(&t),
        [
            "Service demo/web: spec.loadBalancerSourceRanges[1]: \"203.0.113.0/33\" is not a CIDR (address/prefix) or an IP address; the service is not served rather than served to more sources than it allows"
        ]
    );
    let s = with(load_balancer(web(), &["192.0.2.1000"]), |_| {});
    let t = run(vec![s], vec![]);
    assert_eq!(
        skipped(&t),
        [
            "Service demo/web: status.loadBalancer.ingress[0].ip: \"192.0.2.1000\" is not an IP address"
        ]
    );
}

#[test]
fn affinity_applies_to_every_frontend_of_the_service() {
    let s = with(load_balancer(web_node_port(), &["192.0.2.100"]), |s| {
        spec(s).external_ips = Some(vec!["192.0.2.10".into()]);
        spec(s).session_affinity = Some("ClientIP".into());
        spec(s).session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(60),
            }),
        });
    });
    let t = run(vec![s], vec![]);
    assert_eq!(t.desired.services.len(), 7);
    assert!(
        t.desired
            .services
            .values()
            .all(|v| v.affinity_timeout_s == Some(60))
    );
}

/// A LoadBalancer `demo/<name>` with `externalTrafficPolicy: Local` and a health
/// check node port.
fn local_lb(name: &str, ip: &str, health_port: i32) -> Service {
    with(
        external_local(load_balancer(
            svc("demo", name, ip, &[("http", 80, "TCP")]),
            &[],
        )),
        |s| spec(s).health_check_node_port = Some(health_port),
    )
}

fn hc(name: &str, port: u16, local_endpoints: usize) -> HealthCheck {
    HealthCheck {
        namespace: "demo".into(),
        name: name.into(),
        port,
        local_endpoints,
    }
}

#[test]
fn a_local_load_balancer_counts_its_distinct_local_ready_endpoint_addresses() {
    let s = with(local_lb("web", "10.96.0.10", 32000), |s| {
        spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
        spec(s).ports = Some(vec![
            ServicePort {
                name: Some("http".into()),
                port: 80,
                ..Default::default()
            },
            ServicePort {
                name: Some("metrics".into()),
                port: 9090,
                ..Default::default()
            },
        ]);
    });
    let slices = vec![
        slice(
            "demo",
            "web-1",
            "web",
            "IPv4",
            &[("http", 8080, "TCP"), ("metrics", 9090, "TCP")],
            vec![
                on(ep("10.244.0.11"), "node-a"), // both ports: counted once
                terminating(on(ep("10.244.0.12"), "node-a")),
                not_ready(on(ep("10.244.0.13"), "node-a")),
                on(ep("10.244.1.14"), "node-b"),
            ],
        ),
        slice(
            "demo",
            "web-2",
            "web",
            "IPv4",
            &[("metrics", 9091, "TCP")],
            vec![on(ep("10.244.0.15"), "node-a")],
        ),
        slice(
            "demo",
            "web-v6",
            "web",
            "IPv6",
            &[("http", 8080, "TCP")],
            vec![on(ep("fd00:244::11"), "node-a")],
        ),
        // A port the Service does not have.
        slice(
            "demo",
            "web-3",
            "web",
            "IPv4",
            &[("other", 7000, "TCP")],
            vec![on(ep("10.244.0.16"), "node-a")],
        ),
    ];
    let t = run(vec![s.clone()], slices.clone());
    assert_eq!(t.health_checks, [hc("web", 32000, 3)]);
    assert_eq!(translator(vec![s], slices).health_checks(), t.health_checks);
}

#[test]
fn a_health_check_needs_a_load_balancer_with_external_policy_local_and_a_port() {
    let base = local_lb("web", "10.96.0.10", 32000);
    let t = run(vec![base.clone()], vec![]);
    assert_eq!(t.health_checks, [hc("web", 32000, 0)]);
    let cluster = with(base.clone(), |s| spec(s).external_traffic_policy = None);
    let node_port = with(base.clone(), |s| spec(s).type_ = Some("NodePort".into()));
    let unset = with(base.clone(), |s| spec(s).health_check_node_port = None);
    let zero = with(base, |s| spec(s).health_check_node_port = Some(0));
    for s in [cluster, node_port, unset, zero] {
        let t = run(vec![s], vec![]);
        assert!(t.health_checks.is_empty(), "{:?}", t.health_checks);
    }
    // Not on a node that serves none of the Service's families.
    let mut n = node();
    n.ipv4 = false;
    let t = translate(
        &snapshot(vec![local_lb("web", "10.96.0.10", 32000)], vec![]),
        &n,
    );
    assert!(t.health_checks.is_empty());
}

#[test]
fn health_checks_are_sorted_by_port() {
    let t = run(
        vec![
            local_lb("a", "10.96.0.1", 32002),
            local_lb("b", "10.96.0.2", 32000),
            local_lb("c", "10.96.0.3", 32001),
        ],
        vec![],
    );
    assert_eq!(
        t.health_checks,
        [hc("b", 32000, 0), hc("c", 32001, 0), hc("a", 32002, 0)]
    );
}

#[test]
fn a_service_left_out_by_a_conflict_gets_no_health_check() {
    let old = created(local_lb("old", "10.96.0.10", 32000), "2024-01-01T00:00:00Z");
    let new = created(local_lb("new", "10.96.0.10", 32001), "2025-01-01T00:00:00Z");
    let t = run(vec![new.clone(), old.clone()], vec![]);
    assert_eq!(t.health_checks, [hc("old", 32000, 0)]);
    assert_eq!(
        translator(vec![new, old], vec![]).health_checks(),
        t.health_checks
    );
}

#[test]
fn health_checks_follow_incremental_updates() {
    let mut world = World::default();
    world.reset(snapshot(vec![local_lb("web", "10.96.0.10", 32000)], vec![]));
    let mut t = Translator::default();
    t.rebuild(&world, &node());
    assert_eq!(t.health_checks(), [hc("web", 32000, 0)]);
    let dirty = world.apply(
        vec![],
        vec![(
            ("demo".into(), "web-1".into()),
            Some(Arc::new(web_slice(
                "web-1",
                vec![
                    on(ep("10.244.0.5"), "node-a"),
                    on(ep("10.244.0.6"), "node-a"),
                ],
            ))),
        )],
    );
    t.update(&world, dirty, &node());
    assert_eq!(t.health_checks(), [hc("web", 32000, 2)]);
    let dirty = world.apply(vec![(("demo".into(), "web".into()), None)], vec![]);
    t.update(&world, dirty, &node());
    assert!(t.health_checks().is_empty());
}
