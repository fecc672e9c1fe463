//! Backends by scope and traffic policy, the frontends without a local endpoint, and
//! a frontend a Service produces twice.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;

use crate::source::World;
use crate::translate::Translator;
use crate::translate::test_support::*;

#[test]
fn external_policy_local_narrows_only_external_frontends_to_this_node() {
    let t = run(vec![external_local(web_node_port())], spread());
    assert_eq!(
        table(&t),
        [
            // In-cluster clients short-circuit to every endpoint, as in kube-proxy.
            "*:30080/TCP NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
            "*:30080/TCP (external) NodePort (local) -> 10.244.0.11:8080",
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
            "10.96.0.10:80/TCP ClusterIP (local) -> 10.244.0.11:8080",
        ]
    );
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
fn an_external_ip_equal_to_the_services_own_cluster_ip_is_served_once() {
    let s = with(web(), |s| {
        spec(s).internal_traffic_policy = Some("Local".into());
        spec(s).external_ips = Some(vec!["10.96.0.10".into(), "10.96.0.10".into()]);
    });
    let t = run(vec![s], spread());
    assert_eq!(
        table(&t),
        [
            "10.96.0.10:80/TCP ClusterIP (local) -> 10.244.0.11:8080",
            "10.96.0.10:80/TCP (external) ExternalIP -> 10.244.0.11:8080 10.244.1.12:8080",
        ]
    );
    assert!(t.skipped.is_empty(), "{:?}", skipped(&t));
}
