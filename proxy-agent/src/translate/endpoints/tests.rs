//! Port matching, deduplication, conditions, and the local set.

#![allow(clippy::unwrap_used, reason = "tests")]

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::translate::test_support::*;
use crate::translate::translate;

#[test]
fn slice_ports_match_service_ports_by_name_not_by_number() {
    // The slice lists "metrics" first and uses numbers unrelated to the service's.
    let s = svc(
        "demo",
        "web",
        "10.96.0.10",
        &[("http", 80, "TCP"), ("metrics", 9090, "TCP")],
    );
    let sl = slice(
        "demo",
        "web-1",
        "web",
        "IPv4",
        &[("metrics", 80, "TCP"), ("http", 9090, "TCP")],
        vec![ep("10.244.0.11")],
    );
    let t = run(vec![s], vec![sl]);
    assert_eq!(backends(&t, WEB), ["10.244.0.11:9090"]);
    assert_eq!(backends(&t, "10.96.0.10:9090/TCP"), ["10.244.0.11:80"]);
}

#[test]
fn a_slice_port_with_the_right_name_but_another_protocol_does_not_match() {
    let sl = slice(
        "demo",
        "web-1",
        "web",
        "IPv4",
        &[("http", 8080, "UDP")],
        vec![ep("10.244.0.11")],
    );
    let t = run(vec![web()], vec![sl]);
    assert_eq!(backends(&t, WEB), Vec::<String>::new());
}

#[test]
fn a_named_target_port_resolves_through_the_slice_port_number() {
    let s = with(web(), |s| {
        spec(s).ports.as_mut().unwrap()[0].target_port = Some(IntOrString::String("web".into()));
    });
    // Pods may name the port differently per pod; the slices carry the numbers.
    let t = run(
        vec![s],
        vec![
            web_slice("web-1", vec![ep("10.244.0.11")]),
            slice(
                "demo",
                "web-2",
                "web",
                "IPv4",
                &[("http", 8443, "TCP")],
                vec![ep("10.244.0.12")],
            ),
        ],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.0.12:8443"]);
}

#[test]
fn an_unnamed_single_port_matches_an_unnamed_slice_port() {
    let s = svc("demo", "web", "10.96.0.10", &[("", 80, "TCP")]);
    let mut sl = web_slice("web-1", vec![ep("10.244.0.11")]);
    sl.ports.as_mut().unwrap()[0].name = None;
    sl.ports.as_mut().unwrap()[0].protocol = None; // defaults to TCP
    let t = run(vec![s], vec![sl]);
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
    assert_eq!(vs(&t, WEB).name.to_string(), "demo/web");
}

#[test]
fn a_slice_port_without_a_number_is_ignored() {
    let mut sl = web_slice("web-1", vec![ep("10.244.0.11")]);
    sl.ports.as_mut().unwrap()[0].port = None;
    let t = run(vec![web()], vec![sl]);
    assert_eq!(backends(&t, WEB), Vec::<String>::new());
}

#[test]
fn endpoints_from_several_slices_are_merged_and_deduplicated() {
    let t = run(
        vec![web()],
        vec![
            web_slice("web-1", vec![ep("10.244.0.11"), ep("10.244.0.12")]),
            web_slice("web-2", vec![ep("10.244.0.12"), ep("10.244.0.13")]),
        ],
    );
    assert_eq!(
        backends(&t, WEB),
        ["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.13:8080"]
    );
}

#[test]
fn the_same_ip_on_two_target_ports_gives_two_backends() {
    let t = run(
        vec![web()],
        vec![
            web_slice("web-1", vec![ep("10.244.0.11")]),
            slice(
                "demo",
                "web-2",
                "web",
                "IPv4",
                &[("http", 8081, "TCP")],
                vec![ep("10.244.0.11")],
            ),
        ],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.0.11:8081"]);
}

#[test]
fn a_duplicate_endpoint_prefers_the_copy_that_is_not_terminating() {
    // A pod IP reused while the old pod terminates: whichever slice comes first,
    // the live copy decides, so the endpoint stays ready.
    for (first, second) in [
        (terminating(ep("10.244.0.11")), ep("10.244.0.11")),
        (ep("10.244.0.11"), terminating(ep("10.244.0.11"))),
    ] {
        let t = run(
            vec![web()],
            vec![
                web_slice("web-1", vec![first]),
                web_slice("web-2", vec![second, ep("10.244.0.12")]),
            ],
        );
        assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.0.12:8080"]);
    }
    // If both copies terminate, it is a terminating endpoint: not used while
    // another is ready.
    let t = run(
        vec![web()],
        vec![
            web_slice("web-1", vec![terminating(ep("10.244.0.11"))]),
            web_slice(
                "web-2",
                vec![terminating(ep("10.244.0.11")), ep("10.244.0.12")],
            ),
        ],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.12:8080"]);
}

#[test]
fn only_the_first_address_of_an_endpoint_is_used() {
    let mut e = ep("10.244.0.11");
    e.addresses.push("10.244.0.99".into());
    let t = run(vec![web()], vec![web_slice("web-1", vec![e])]);
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
}

#[test]
fn slices_of_a_family_only_feed_frontends_of_that_family() {
    let s = with(web(), |s| {
        spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
        spec(s).ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
    });
    let t = run(
        vec![s],
        vec![
            web_slice("web-v4", vec![ep("10.244.0.11")]),
            slice(
                "demo",
                "web-v6",
                "web",
                "IPv6",
                &[("http", 8080, "TCP")],
                vec![ep("fd00:244::11"), ep("fd00:244::12")],
            ),
        ],
    );
    assert_eq!(frontends(&t), [WEB, "[fd00::10]:80/TCP"]);
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
    assert_eq!(
        backends(&t, "[fd00::10]:80/TCP"),
        ["[fd00:244::11]:8080", "[fd00:244::12]:8080"]
    );
}

#[test]
fn an_endpoint_is_ready_unless_ready_is_false() {
    let t = run(
        vec![web()],
        vec![web_slice(
            "web-1",
            vec![
                ep("10.244.0.11"),
                conditions(ep("10.244.0.12"), Some(true), None, None),
                conditions(ep("10.244.0.13"), None, Some(false), Some(false)),
                not_ready(ep("10.244.0.14")),
                conditions(ep("10.244.0.15"), Some(false), None, None),
            ],
        )],
    );
    assert_eq!(
        backends(&t, WEB),
        ["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.13:8080"]
    );
}

#[test]
fn terminating_endpoints_are_not_used_while_any_endpoint_is_ready() {
    let t = run(
        vec![web()],
        vec![web_slice(
            "web-1",
            vec![terminating(ep("10.244.0.11")), ep("10.244.1.12")],
        )],
    );
    assert_eq!(backends(&t, WEB), ["10.244.1.12:8080"]);
}

#[test]
fn serving_terminating_endpoints_are_used_when_no_endpoint_is_ready() {
    let t = run(
        vec![web()],
        vec![web_slice(
            "web-1",
            vec![
                terminating(ep("10.244.0.11")),
                terminating(ep("10.244.1.12")),
                not_ready(ep("10.244.0.13")),
                // Terminating but no longer serving: never used.
                conditions(ep("10.244.0.14"), Some(false), Some(false), Some(true)),
                // Serving (unset) and terminating.
                conditions(ep("10.244.0.15"), Some(false), None, Some(true)),
            ],
        )],
    );
    assert_eq!(
        backends(&t, WEB),
        ["10.244.0.11:8080", "10.244.0.15:8080", "10.244.1.12:8080"]
    );
}

#[test]
fn serving_but_not_terminating_endpoints_are_never_a_fallback() {
    let t = run(
        vec![web()],
        vec![web_slice(
            "web-1",
            vec![conditions(
                ep("10.244.0.11"),
                Some(false),
                Some(true),
                Some(false),
            )],
        )],
    );
    assert_eq!(backends(&t, WEB), Vec::<String>::new());
}

#[test]
fn internal_traffic_policy_local_uses_only_this_nodes_endpoints() {
    let t = run(
        vec![local_web()],
        vec![web_slice(
            "web-1",
            vec![
                on(ep("10.244.0.11"), "node-a"),
                on(ep("10.244.0.12"), "node-a"),
                on(ep("10.244.1.13"), "node-b"),
                ep("10.244.2.14"),
            ],
        )],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.0.12:8080"]);
}

#[test]
fn internal_traffic_policy_local_without_a_local_endpoint_has_no_backends() {
    let t = run(
        vec![local_web()],
        vec![web_slice(
            "web-1",
            vec![
                on(ep("10.244.1.13"), "node-b"),
                not_ready(on(ep("10.244.0.11"), "node-a")),
            ],
        )],
    );
    assert_eq!(backends(&t, WEB), Vec::<String>::new());
    assert!(t.skipped.is_empty());
}

#[test]
fn internal_traffic_policy_cluster_is_the_default_and_uses_every_node() {
    let s = with(web(), |s| {
        spec(s).internal_traffic_policy = Some("Cluster".into())
    });
    let t = run(
        vec![s],
        vec![web_slice(
            "web-1",
            vec![
                on(ep("10.244.0.11"), "node-a"),
                on(ep("10.244.1.13"), "node-b"),
            ],
        )],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.1.13:8080"]);
}

#[test]
fn local_policy_falls_back_to_local_terminating_endpoints_even_when_remote_ones_are_ready() {
    let t = run(
        vec![local_web()],
        vec![web_slice(
            "web-1",
            vec![
                terminating(on(ep("10.244.0.11"), "node-a")),
                on(ep("10.244.1.13"), "node-b"),
            ],
        )],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
}

#[test]
fn local_policy_prefers_local_ready_endpoints_over_local_terminating_ones() {
    let t = run(
        vec![local_web()],
        vec![web_slice(
            "web-1",
            vec![
                terminating(on(ep("10.244.0.11"), "node-a")),
                on(ep("10.244.0.12"), "node-a"),
            ],
        )],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.12:8080"]);
}

#[test]
fn cluster_policy_falls_back_to_terminating_endpoints_on_any_node() {
    let t = run(
        vec![web()],
        vec![web_slice(
            "web-1",
            vec![
                terminating(on(ep("10.244.0.11"), "node-a")),
                terminating(on(ep("10.244.1.13"), "node-b")),
            ],
        )],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080", "10.244.1.13:8080"]);
}

#[test]
fn a_node_without_a_name_has_no_local_endpoints() {
    let mut n = node();
    n.name = String::new();
    let mut e = ep("10.244.0.11");
    e.node_name = Some(String::new());
    let t = translate(
        &snapshot(vec![local_web()], vec![web_slice("web-1", vec![e])]),
        &n,
    );
    assert_eq!(backends(&t, WEB), Vec::<String>::new());
}
