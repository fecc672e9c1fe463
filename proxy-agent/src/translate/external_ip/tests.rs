//! ExternalIPs.

use crate::translate::test_support::*;
use crate::translate::translate;

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
            "192.0.2.10:80/TCP (external) ExternalIP (local) -> 10.244.0.11:8080",
            "192.0.2.11:80/TCP ExternalIP -> 10.244.0.11:8080 10.244.1.12:8080",
            "192.0.2.11:80/TCP (external) ExternalIP (local) -> 10.244.0.11:8080",
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
