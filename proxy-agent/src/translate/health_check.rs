//! Health checks: kube-proxy's service health server. A LoadBalancer Service with
//! `externalTrafficPolicy: Local` and a `healthCheckNodePort`, served on this node,
//! reports how many of its endpoints are local and ready.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::ServiceSpec;

use super::cluster_ip::ClusterIps;
use super::endpoints::Ep;
use super::service::Policy;
use crate::model::HealthCheck;

/// One Service's health check while its ports are translated.
#[derive(Debug)]
pub(super) struct Health {
    port: u16,
    /// The addresses of this node's ready endpoints, over every TCP and UDP port and
    /// served family (kube-proxy's `LocalReadyEndpoints`).
    local_ready: BTreeSet<IpAddr>,
}

impl Health {
    /// The Service's health check, if it has one to answer: LoadBalancer + Local only,
    /// and only on a node that serves one of the Service's families.
    pub(super) fn of(
        spec: &ServiceSpec,
        policy: &Policy,
        cluster_ips: &ClusterIps,
    ) -> Option<Health> {
        spec.health_check_node_port
            .filter(|_| {
                policy.load_balancer && policy.external_local && !cluster_ips.here.is_empty()
            })
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0)
            .map(|port| Health {
                port,
                local_ready: BTreeSet::new(),
            })
    }

    /// Counts the local ready endpoints of one port and family.
    pub(super) fn count(&mut self, endpoints: &[Ep<'_>]) {
        self.local_ready.extend(
            endpoints
                .iter()
                .filter(|e| e.local && e.ready)
                .map(|e| e.addr.ip()),
        );
    }

    /// The health check of Service `namespace/name`.
    pub(super) fn check(self, namespace: &str, name: &str) -> HealthCheck {
        HealthCheck {
            namespace: namespace.to_string(),
            name: name.to_string(),
            port: self.port,
            local_endpoints: self.local_ready.len(),
        }
    }
}

/// Orders health checks by port, then namespace and name.
pub(super) fn sort(checks: &mut [HealthCheck]) {
    checks.sort_by(|a, b| (a.port, &a.namespace, &a.name).cmp(&(b.port, &b.namespace, &b.name)));
}

#[cfg(test)]
mod tests;
