//! `loadBalancerSourceRanges`: who outside the node may reach a load balancer IP. Only
//! the external frontends of load balancer IPs carry ranges (of their family); when the
//! Service lists ranges but none of a family, nobody outside may connect to its load
//! balancer IPs of that family, so their external frontends are left out.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::ServiceSpec;

use super::service::Report;
use crate::source::validate::{family_name, parse_cidr};

/// A Service's source ranges.
#[derive(Debug)]
pub(super) struct SourceRanges {
    /// Whether the Service lists any (even one that does not parse).
    listed: bool,
    /// The ranges, normalized, sorted and deduplicated.
    ranges: Vec<IpNetwork>,
}

impl SourceRanges {
    /// The Service's ranges. An entry that does not parse (validation rejects those)
    /// can only narrow who may connect, never widen it.
    pub(super) fn of(spec: &ServiceSpec) -> SourceRanges {
        let range_entries = spec.load_balancer_source_ranges.as_deref().unwrap_or(&[]);
        let mut ranges: Vec<IpNetwork> =
            range_entries.iter().filter_map(|r| parse_cidr(r)).collect();
        ranges.sort();
        ranges.dedup();
        SourceRanges {
            listed: !range_entries.is_empty(),
            ranges,
        }
    }

    /// The ranges for the external frontend of load balancer IP `ip`: those of its
    /// family (empty: everybody). `None`: the Service lists ranges, none of the
    /// family, so no outside client of the family may connect.
    pub(super) fn for_ip(&self, ip: &IpAddr) -> Option<Vec<IpNetwork>> {
        let of_family: Vec<IpNetwork> = self
            .ranges
            .iter()
            .filter(|r| r.is_ipv4() == ip.is_ipv4())
            .copied()
            .collect();
        (!self.listed || !of_family.is_empty()).then_some(of_family)
    }

    /// Reports the load balancer IPs no outside client may reach.
    pub(super) fn report_closed(&self, lb_ips: &[IpAddr], report: &mut Report<'_>) {
        for ip in lb_ips {
            if self.for_ip(ip).is_none() {
                report.skip(format!(
                    "load balancer IP {ip}: spec.loadBalancerSourceRanges lists no {} range, so \
                     no client outside the node may connect: its external frontends are not \
                     programmed (clients on this node are still served)",
                    family_name(ip)
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;
