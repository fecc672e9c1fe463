//! Frontend conflicts between Services.

use crate::model::FrontendKind;
use crate::translate::test_support::*;

#[test]
fn of_two_services_on_one_frontend_the_older_wins_and_the_loser_is_reported() {
    let old = created(
        svc("zzz", "old", "10.96.0.10", &[("http", 80, "TCP")]),
        "2024-01-01T00:00:00Z",
    );
    let new = created(
        svc(
            "aaa",
            "new",
            "10.96.0.10",
            &[("http", 80, "TCP"), ("other", 81, "TCP")],
        ),
        "2025-01-01T00:00:00Z",
    );
    let t = run(vec![new, old], vec![]);
    assert_eq!(frontends(&t), [WEB]);
    assert_eq!(vs(&t, WEB).name.to_string(), "zzz/old:http");
    assert_eq!(
        skipped(&t),
        [
            "Service aaa/new: frontend 10.96.0.10:80/TCP is already served by Service zzz/old, which is older (or as old and sorts first); Service aaa/new is not served"
        ]
    );
}

#[test]
fn of_two_equally_old_services_the_smaller_namespace_and_name_wins() {
    let at = "2024-01-01T00:00:00Z";
    let a = created(svc("demo", "a", "10.96.0.10", &[("http", 80, "TCP")]), at);
    let b = created(svc("demo", "b", "10.96.0.10", &[("http", 80, "TCP")]), at);
    let t = run(vec![b, a], vec![]);
    assert_eq!(vs(&t, WEB).name.name, "a");
    assert_eq!(t.skipped.len(), 1);
    assert_eq!(t.skipped[0].object, "Service demo/b");
    // Without timestamps (hand-written manifests) names decide too.
    let a = svc("demo", "a", "10.96.0.10", &[("http", 80, "TCP")]);
    let b = svc("demo", "b", "10.96.0.10", &[("http", 80, "TCP")]);
    let t = run(vec![b, a], vec![]);
    assert_eq!(vs(&t, WEB).name.name, "a");
}

#[test]
fn a_service_with_a_creation_timestamp_beats_one_without() {
    let dated = created(
        svc("demo", "z", "10.96.0.10", &[("http", 80, "TCP")]),
        "2024-01-01T00:00:00Z",
    );
    let undated = svc("demo", "a", "10.96.0.10", &[("http", 80, "TCP")]);
    let t = run(vec![undated, dated], vec![]);
    assert_eq!(vs(&t, WEB).name.name, "z");
}

#[test]
fn services_sharing_a_vip_on_different_ports_or_protocols_do_not_conflict() {
    let a = svc("demo", "a", "10.96.0.10", &[("http", 80, "TCP")]);
    let b = svc(
        "demo",
        "b",
        "10.96.0.10",
        &[("dns", 80, "UDP"), ("x", 81, "TCP")],
    );
    let t = run(vec![a, b], vec![]);
    assert_eq!(t.desired.services.len(), 3);
    assert!(t.skipped.is_empty());
}

#[test]
fn a_service_displaced_by_a_conflict_does_not_displace_others() {
    // a beats b on :80; b would beat c on :81, but b is not served, so c is.
    let a = svc("demo", "a", "10.96.0.10", &[("http", 80, "TCP")]);
    let b = svc(
        "demo",
        "b",
        "10.96.0.10",
        &[("http", 80, "TCP"), ("x", 81, "TCP")],
    );
    let c = svc("demo", "c", "10.96.0.10", &[("x", 81, "TCP")]);
    let t = run(vec![a, b, c], vec![]);
    assert_eq!(vs(&t, WEB).name.name, "a");
    assert_eq!(vs(&t, "10.96.0.10:81/TCP").name.name, "c");
    assert_eq!(t.skipped.len(), 1);
    assert_eq!(t.skipped[0].object, "Service demo/b");
}

#[test]
fn of_two_services_on_one_node_port_the_older_wins() {
    let old = created(
        node_ports(
            svc("zzz", "old", "10.96.0.10", &[("http", 80, "TCP")]),
            &[30080],
        ),
        "2024-01-01T00:00:00Z",
    );
    let new = created(
        node_ports(
            svc("aaa", "new", "10.96.0.20", &[("http", 80, "TCP")]),
            &[30080],
        ),
        "2025-01-01T00:00:00Z",
    );
    let t = run(vec![new, old], vec![]);
    assert_eq!(frontends(&t), [NP, NP_EXT, WEB]);
    assert_eq!(vs(&t, NP_EXT).name.to_string(), "zzz/old:http");
    assert_eq!(
        skipped(&t),
        [
            "Service aaa/new: frontend *:30080/TCP is already served by Service zzz/old, which is older (or as old and sorts first); Service aaa/new is not served"
        ]
    );
}

#[test]
fn an_external_ip_on_another_services_cluster_ip_and_port_is_a_conflict() {
    let cluster = created(web(), "2024-01-01T00:00:00Z");
    let external = created(
        with(
            svc("demo", "ext", "10.96.0.20", &[("http", 80, "TCP")]),
            |s| {
                spec(s).external_ips = Some(vec!["10.96.0.10".into()]);
            },
        ),
        "2025-01-01T00:00:00Z",
    );
    let t = run(vec![external.clone(), cluster.clone()], vec![]);
    assert_eq!(frontends(&t), [WEB]);
    assert_eq!(t.skipped.len(), 1);
    assert_eq!(t.skipped[0].object, "Service demo/ext");
    // The other way round, the older externalIP holder wins and web is left out.
    let cluster = created(web(), "2025-01-01T00:00:00Z");
    let external = created(external, "2024-01-01T00:00:00Z");
    let t = run(vec![external, cluster], vec![]);
    assert_eq!(vs(&t, WEB).kind, FrontendKind::ExternalIp);
    assert_eq!(vs(&t, WEB).name.name, "ext");
    assert_eq!(t.skipped[0].object, "Service demo/web");
}

#[test]
fn two_load_balancers_on_one_ip_and_port_conflict_but_not_on_different_ports() {
    let a = created(
        load_balancer(
            svc("demo", "a", "10.96.0.1", &[("http", 80, "TCP")]),
            &["192.0.2.100"],
        ),
        "2024-01-01T00:00:00Z",
    );
    let b = load_balancer(
        svc("demo", "b", "10.96.0.2", &[("http", 80, "TCP")]),
        &["192.0.2.100"],
    );
    let t = run(vec![a.clone(), b], vec![]);
    assert_eq!(vs(&t, LB_EXT).name.name, "a");
    assert_eq!(t.skipped.len(), 1);
    assert_eq!(t.skipped[0].object, "Service demo/b");
    // An IP shared by Services on different ports (as MetalLB allows) is fine.
    let c = load_balancer(
        svc("demo", "c", "10.96.0.3", &[("dns", 53, "UDP")]),
        &["192.0.2.100"],
    );
    let t = run(vec![a, c], vec![]);
    assert_eq!(t.desired.services.len(), 6);
    assert!(t.skipped.is_empty(), "{:?}", skipped(&t));
}

#[test]
fn node_ports_of_other_protocols_or_families_do_not_conflict() {
    let tcp = node_ports(
        svc("demo", "tcp", "10.96.0.1", &[("p", 80, "TCP")]),
        &[30080],
    );
    let udp = node_ports(
        svc("demo", "udp", "10.96.0.2", &[("p", 80, "UDP")]),
        &[30080],
    );
    let v6 = node_ports(svc("demo", "v6", "fd00::3", &[("p", 80, "TCP")]), &[30080]);
    let t = run(vec![tcp, udp, v6], vec![]);
    assert_eq!(t.desired.services.len(), 9);
    assert!(t.skipped.is_empty(), "{:?}", skipped(&t));
}
