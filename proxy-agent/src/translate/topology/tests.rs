//! Topology hints.

use std::collections::BTreeMap;

use crate::translate::test_support::*;
use crate::translate::translate;

#[test]
fn zone_hints_restrict_endpoints_to_this_zone_when_every_ready_endpoint_has_one() {
    let t = run(
        vec![web()],
        vec![web_slice(
            "web-1",
            vec![
                for_zones(ep("10.244.0.11"), &["zone-a"]),
                for_zones(ep("10.244.1.12"), &["zone-b"]),
                for_zones(ep("10.244.2.13"), &["zone-c", "zone-a"]),
            ],
        )],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.2.13:8080"]);
}

#[test]
fn zone_hints_are_ignored_when_a_ready_endpoint_has_none() {
    let t = run(
        vec![web()],
        vec![web_slice(
            "web-1",
            vec![
                for_zones(ep("10.244.0.11"), &["zone-a"]),
                ep("10.244.1.12"),
                for_zones(ep("10.244.2.13"), &[]), // an empty list is no hint
            ],
        )],
    );
    assert_eq!(
        backends(&t, WEB),
        ["10.244.0.11:8080", "10.244.1.12:8080", "10.244.2.13:8080"]
    );
}

#[test]
fn zone_hints_are_ignored_when_none_is_for_this_zone() {
    let t = run(
        vec![web()],
        vec![web_slice(
            "web-1",
            vec![
                for_zones(ep("10.244.1.11"), &["zone-b"]),
                for_zones(ep("10.244.2.12"), &["zone-c"]),
            ],
        )],
    );
    assert_eq!(backends(&t, WEB), ["10.244.1.11:8080", "10.244.2.12:8080"]);
}

#[test]
fn zone_hints_are_ignored_on_a_node_without_a_zone() {
    let mut n = node();
    n.zone = None;
    let t = translate(
        &snapshot(
            vec![web()],
            vec![web_slice(
                "web-1",
                vec![
                    for_zones(ep("10.244.0.11"), &["zone-a"]),
                    for_zones(ep("10.244.1.12"), &["zone-b"]),
                ],
            )],
        ),
        &n,
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.1.12:8080"]);
}

#[test]
fn endpoints_that_are_not_ready_do_not_need_hints() {
    let t = run(
        vec![web()],
        vec![web_slice(
            "web-1",
            vec![
                for_zones(ep("10.244.0.11"), &["zone-a"]),
                for_zones(ep("10.244.1.12"), &["zone-b"]),
                not_ready(ep("10.244.0.13")),
                terminating(ep("10.244.0.14")),
            ],
        )],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
}

#[test]
fn node_hints_restrict_endpoints_to_this_node_when_every_ready_endpoint_has_one() {
    // PreferSameNode: the controller writes node and zone hints; node hints win.
    let t = run(
        vec![web()],
        vec![web_slice(
            "web-1",
            vec![
                for_zones(for_nodes(ep("10.244.0.11"), &["node-a"]), &["zone-a"]),
                for_zones(for_nodes(ep("10.244.0.12"), &["node-c"]), &["zone-a"]),
                for_zones(for_nodes(ep("10.244.1.13"), &["node-b"]), &["zone-b"]),
            ],
        )],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
}

#[test]
fn node_hints_fall_back_to_zone_hints_when_none_is_for_this_node() {
    let t = run(
        vec![web()],
        vec![web_slice(
            "web-1",
            vec![
                for_zones(for_nodes(ep("10.244.0.12"), &["node-c"]), &["zone-a"]),
                for_zones(for_nodes(ep("10.244.1.13"), &["node-b"]), &["zone-b"]),
            ],
        )],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.12:8080"]);
}

#[test]
fn node_hints_are_ignored_when_a_ready_endpoint_has_none() {
    let t = run(
        vec![web()],
        vec![web_slice(
            "web-1",
            vec![for_nodes(ep("10.244.0.11"), &["node-a"]), ep("10.244.1.13")],
        )],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.1.13:8080"]);
}

#[test]
fn topology_does_not_apply_to_the_terminating_fallback() {
    let t = run(
        vec![web()],
        vec![web_slice(
            "web-1",
            vec![
                terminating(for_zones(ep("10.244.0.11"), &["zone-a"])),
                terminating(for_zones(ep("10.244.1.12"), &["zone-b"])),
            ],
        )],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.1.12:8080"]);
}

#[test]
fn topology_does_not_apply_under_a_local_traffic_policy() {
    let t = run(
        vec![local_web()],
        vec![web_slice(
            "web-1",
            vec![
                on(for_zones(ep("10.244.0.11"), &["zone-b"]), "node-a"),
                on(for_zones(ep("10.244.0.12"), &["zone-a"]), "node-a"),
                on(for_zones(ep("10.244.1.13"), &["zone-a"]), "node-b"),
            ],
        )],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.0.12:8080"]);
}

#[test]
fn hints_decide_topology_whatever_the_service_asks_for_as_in_kube_proxy() {
    // kube-proxy 1.33+ trusts the hints: the EndpointSlice controller writes them
    // only for services with trafficDistribution or topology-mode: Auto.
    let slices = || {
        vec![web_slice(
            "web-1",
            vec![
                for_zones(ep("10.244.0.11"), &["zone-a"]),
                for_zones(ep("10.244.1.12"), &["zone-b"]),
            ],
        )]
    };
    let prefer_close = with(web(), |s| {
        spec(s).traffic_distribution = Some("PreferClose".into());
    });
    let prefer_same_zone = with(web(), |s| {
        spec(s).traffic_distribution = Some("PreferSameZone".into());
    });
    let annotated = with(web(), |s| {
        s.metadata.annotations = Some(BTreeMap::from([(
            "service.kubernetes.io/topology-mode".to_string(),
            "Auto".to_string(),
        )]));
    });
    let legacy = with(web(), |s| {
        s.metadata.annotations = Some(BTreeMap::from([(
            "service.kubernetes.io/topology-aware-hints".to_string(),
            "auto".to_string(),
        )]));
    });
    for s in [web(), prefer_close, prefer_same_zone, annotated, legacy] {
        let t = run(vec![s], slices());
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
    }
    // Without hints, trafficDistribution alone changes nothing.
    let prefer_close = with(web(), |s| {
        spec(s).traffic_distribution = Some("PreferClose".into());
    });
    let t = run(
        vec![prefer_close],
        vec![web_slice(
            "web-1",
            vec![
                on(ep("10.244.0.11"), "node-a"),
                on(ep("10.244.1.12"), "node-b"),
            ],
        )],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.1.12:8080"]);
}
