//! NodePorts.

#![allow(clippy::unwrap_used, reason = "tests")]

use crate::translate::test_support::*;
use crate::translate::translate;

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
