//! Load balancer IPs.

#![allow(clippy::unwrap_used, reason = "tests")]

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus};

use crate::translate::test_support::*;

#[test]
fn load_balancer_ips_are_served_in_both_scopes() {
    let s = external_local(load_balancer(web_node_port(), &["192.0.2.100"]));
    let t = run(vec![s], spread());
    assert_eq!(
        table(&t),
        [
            "*:30080/TCP NodePort -> 10.244.0.11:8080 10.244.1.12:8080",
            "*:30080/TCP (external) NodePort (local) -> 10.244.0.11:8080",
            "10.96.0.10:80/TCP ClusterIP -> 10.244.0.11:8080 10.244.1.12:8080",
            "192.0.2.100:80/TCP LoadBalancer -> 10.244.0.11:8080 10.244.1.12:8080",
            "192.0.2.100:80/TCP (external) LoadBalancer (local) -> 10.244.0.11:8080",
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
