//! ClusterIPs and families.

use crate::translate::test_support::*;
use crate::translate::translate;

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
