//! ExternalIPs (`spec.externalIPs`): served at the service port, in both scopes, for
//! each family the Service has a ClusterIP of.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::ServiceSpec;

use super::cluster_ip::ClusterIps;
use super::service::Report;
use crate::source::validate::parse_ip;

/// The externalIPs served here, deduplicated, in the Service's order; those of a
/// family the Service has no ClusterIP of are reported.
pub(super) fn addresses(
    spec: &ServiceSpec,
    cluster_ips: &ClusterIps,
    report: &mut Report<'_>,
) -> Vec<IpAddr> {
    let mut external_ips: Vec<IpAddr> = Vec::new();
    for ip in spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| parse_ip(ip))
    {
        if cluster_ips.serve(&ip, "externalIP", report) && !external_ips.contains(&ip) {
            external_ips.push(ip);
        }
    }
    external_ips
}

#[cfg(test)]
mod tests;
