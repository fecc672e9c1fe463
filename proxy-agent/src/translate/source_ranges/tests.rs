//! Source ranges.

use crate::translate::test_support::*;

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
