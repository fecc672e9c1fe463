//! Load balancer IPs (`status.loadBalancer.ingress[].ip`, type LoadBalancer only):
//! served at the service port, in both scopes, for each family the Service has a
//! ClusterIP of. The external frontends carry the source ranges (see `source_ranges`).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use super::cluster_ip::ClusterIps;
use super::service::{Policy, Report};
use crate::source::validate::parse_ip;

/// The load balancer IPs served here, deduplicated, in the status' order. Hostname-only
/// entries and `ipMode: Proxy` ones are left out silently; an unspecified address, or
/// one of a family the Service has no ClusterIP of, is reported.
pub(super) fn addresses(
    svc: &Service,
    policy: &Policy,
    cluster_ips: &ClusterIps,
    report: &mut Report<'_>,
) -> Vec<IpAddr> {
    let mut lb_ips: Vec<IpAddr> = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .filter(|_| policy.load_balancer)
        .unwrap_or(&[]);
    for entry in ingress {
        // Hostname-only entries (some cloud load balancers) name no address; `ipMode:
        // Proxy` load balancers deliver to the node addresses, not to this IP.
        if entry.ip_mode.as_deref().is_some_and(|m| m != "VIP") {
            continue;
        }
        let Some(ip) = entry.ip.as_deref().and_then(parse_ip) else {
            continue;
        };
        if ip.is_unspecified() {
            report.skip(format!(
                "load balancer IP {ip} is the unspecified address: it is not served"
            ));
        } else if cluster_ips.serve(&ip, "load balancer IP", report) && !lb_ips.contains(&ip) {
            lb_ips.push(ip);
        }
    }
    lb_ips
}

#[cfg(test)]
mod tests;
