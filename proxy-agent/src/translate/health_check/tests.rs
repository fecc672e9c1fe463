//! Health checks.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};

use crate::model::HealthCheck;
use crate::source::World;
use crate::translate::test_support::*;
use crate::translate::{Translator, translate};

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
