//! ClusterIPs, one per family: the Service's families, and which of them this node
//! serves. Every other frontend of a family exists only if its ClusterIP is served.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::ServiceSpec;

use super::NodeContext;
use super::service::Report;
use crate::source::validate::{family_name, parse_ip};

/// A Service's ClusterIPs.
#[derive(Debug)]
pub(super) struct ClusterIps {
    /// Every ClusterIP (`clusterIPs`, else `clusterIP`): the Service's families.
    pub(super) all: Vec<IpAddr>,
    /// Those of a family this node has: the VIPs served here.
    pub(super) here: Vec<IpAddr>,
}

impl ClusterIps {
    /// The Service's ClusterIPs; reports the families this node lacks. `None` (and a
    /// report) when the Service has none: it has nothing to serve.
    pub(super) fn of(
        spec: &ServiceSpec,
        node: &NodeContext,
        report: &mut Report<'_>,
    ) -> Option<ClusterIps> {
        let all: Vec<IpAddr> = match spec.cluster_ips.as_deref() {
            Some(list) if !list.is_empty() => list.iter().filter_map(|ip| parse_ip(ip)).collect(),
            _ => spec
                .cluster_ip
                .as_deref()
                .and_then(parse_ip)
                .into_iter()
                .collect(),
        };
        if all.is_empty() {
            report.skip(
                "has no clusterIP: nothing to serve (this agent does not allocate ClusterIPs; \
                 set spec.clusterIP)"
                    .into(),
            );
            return None;
        }
        let mut here = Vec::with_capacity(all.len());
        for &ip in &all {
            let has_family = match ip {
                IpAddr::V4(_) => node.ipv4,
                IpAddr::V6(_) => node.ipv6,
            };
            if has_family {
                here.push(ip);
            } else {
                report.skip(format!(
                    "ClusterIP {ip} is {}, which this node does not have: its frontends are not \
                     served",
                    family_name(&ip)
                ));
            }
        }
        Some(ClusterIps { all, here })
    }

    /// Whether an external address (`what`: "externalIP", "load balancer IP") is
    /// served: the Service must have a ClusterIP of its family (kube-proxy programs a
    /// family only for Services with a ClusterIP of it; if not, this is reported), and
    /// the node the family (if not, the ClusterIP's own report explains why nothing is
    /// served).
    pub(super) fn serve(&self, ip: &IpAddr, what: &str, report: &mut Report<'_>) -> bool {
        if !self.all.iter().any(|c| same_family(c, ip)) {
            report.skip(format!(
                "{what} {ip} is {family}, but the Service has no {family} ClusterIP: it is \
                 not served (kube-proxy ignores it too)",
                family = family_name(ip)
            ));
            return false;
        }
        self.here.iter().any(|v| same_family(v, ip))
    }
}

/// Whether two addresses are of one family.
pub(super) fn same_family(a: &IpAddr, b: &IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

#[cfg(test)]
mod tests;
