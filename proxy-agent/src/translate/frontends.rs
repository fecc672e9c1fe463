//! The frontends of one Service, port by port and family by family: which frontends
//! (ClusterIP, load balancer IPs, externalIPs, NodePort), in which scopes, with which
//! backends under the traffic policies, and which are claimed first when the Service
//! produces one twice.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;

use super::NodeContext;
use super::cluster_ip::same_family;
use super::endpoints::{Ep, cluster_endpoints, local_endpoints};
use super::node_port;
use super::service::Policy;
use super::source_ranges::SourceRanges;
use crate::model::{FrontendKey, FrontendKind, Protocol, Scope, ServicePortName, VirtualService};

/// What every frontend of one service port shares.
#[derive(Debug)]
pub(super) struct Port {
    pub(super) name: ServicePortName,
    pub(super) protocol: Protocol,
    /// The service port: of the ClusterIP, externalIP and load balancer frontends.
    pub(super) number: u16,
    /// The NodePort frontends' port, if the port has one.
    pub(super) node_port: Option<u16>,
}

impl Port {
    /// The frontend of this port's protocol at `ip:port` in `scope`.
    fn at(&self, ip: IpAddr, port: u16, scope: Scope) -> FrontendKey {
        FrontendKey {
            ip,
            port,
            protocol: self.protocol,
            scope,
        }
    }
}

/// The frontends of one Service, as they are added.
#[derive(Debug)]
pub(super) struct Frontends {
    policy: Policy,
    lb_ips: Vec<IpAddr>,
    external_ips: Vec<IpAddr>,
    ranges: SourceRanges,
    /// Every frontend the Service has produced so far: a second claim to one of them
    /// (an externalIP equal to its own ClusterIP or load balancer IP) is dropped, so the
    /// first in the order ClusterIP, LoadBalancer, ExternalIP wins.
    claimed: BTreeSet<FrontendKey>,
    /// The virtual services, in the order they were claimed.
    pub(super) services: Vec<VirtualService>,
    /// See [`Candidate::no_local_endpoints`](super::service::Candidate).
    pub(super) no_local_endpoints: usize,
    /// See [`Candidate::no_local_endpoints_external`](super::service::Candidate).
    pub(super) no_local_endpoints_external: bool,
}

impl Frontends {
    /// No frontends yet, for a Service with these policies, load balancer IPs,
    /// externalIPs and source ranges.
    pub(super) fn new(
        policy: Policy,
        lb_ips: Vec<IpAddr>,
        external_ips: Vec<IpAddr>,
        ranges: SourceRanges,
    ) -> Frontends {
        Frontends {
            policy,
            lb_ips,
            external_ips,
            ranges,
            claimed: BTreeSet::new(),
            services: Vec::new(),
            no_local_endpoints: 0,
            no_local_endpoints_external: false,
        }
    }

    /// Adds the frontends of `port` in the family of ClusterIP `vip`, whose endpoints
    /// are `endpoints`: the ClusterIP (internal scope), then each load balancer IP and
    /// externalIP of the family and the NodePort (both scopes). Internal frontends get
    /// the cluster set, except the ClusterIP under `internalTrafficPolicy: Local`;
    /// external ones get the local set under `externalTrafficPolicy: Local`.
    pub(super) fn add(
        &mut self,
        port: &Port,
        vip: IpAddr,
        endpoints: &[Ep<'_>],
        node: &NodeContext,
    ) {
        let policy = self.policy;
        let usable = endpoints.iter().any(|e| e.ready || e.serving_terminating());
        let cluster = cluster_endpoints(endpoints, node);
        let local = if policy.internal_local || policy.external_local {
            local_endpoints(endpoints)
        } else {
            Vec::new()
        };
        if policy.internal_local && local.is_empty() && usable {
            self.no_local_endpoints += 1;
        }
        let external_backends = if policy.external_local {
            &local
        } else {
            &cluster
        };

        let clusterip_backends = if policy.internal_local {
            &local
        } else {
            &cluster
        };
        self.claim(
            &port.name,
            port.at(vip, port.number, Scope::Internal),
            FrontendKind::ClusterIp,
            clusterip_backends,
            Some(Vec::new()),
            policy.internal_local,
        );
        let mut external = false;
        for (ip, kind) in self.external_addresses(vip) {
            let ranges = match kind {
                FrontendKind::LoadBalancer => self.ranges.for_ip(&ip),
                _ => Some(Vec::new()),
            };
            self.claim(
                &port.name,
                port.at(ip, port.number, Scope::Internal),
                kind,
                &cluster,
                Some(Vec::new()),
                false,
            );
            external |= self.claim(
                &port.name,
                port.at(ip, port.number, Scope::External),
                kind,
                external_backends,
                ranges,
                policy.external_local,
            );
        }
        if let Some(node_port) = port.node_port {
            let any = node_port::address(vip);
            let kind = FrontendKind::NodePort;
            self.claim(
                &port.name,
                port.at(any, node_port, Scope::Internal),
                kind,
                &cluster,
                Some(Vec::new()),
                false,
            );
            external |= self.claim(
                &port.name,
                port.at(any, node_port, Scope::External),
                kind,
                external_backends,
                Some(Vec::new()),
                policy.external_local,
            );
        }
        if policy.external_local && external && local.is_empty() && usable {
            self.no_local_endpoints_external = true;
        }
    }

    /// The load balancer IPs, then the externalIPs, of `vip`'s family.
    fn external_addresses(&self, vip: IpAddr) -> Vec<(IpAddr, FrontendKind)> {
        let lbs = self.lb_ips.iter().filter(|ip| same_family(ip, &vip));
        let eips = self.external_ips.iter().filter(|ip| same_family(ip, &vip));
        lbs.map(|&ip| (ip, FrontendKind::LoadBalancer))
            .chain(eips.map(|&ip| (ip, FrontendKind::ExternalIp)))
            .collect()
    }

    /// Claims a frontend and, with `source_ranges` (`None`: nobody may connect; the
    /// frontend stays claimed, unprogrammed), serves it. Returns whether it is served;
    /// a frontend the Service already claimed is not served twice.
    fn claim(
        &mut self,
        name: &ServicePortName,
        frontend: FrontendKey,
        kind: FrontendKind,
        backends: &[SocketAddr],
        source_ranges: Option<Vec<IpNetwork>>,
        node_local: bool,
    ) -> bool {
        if !self.claimed.insert(frontend) {
            return false;
        }
        let Some(source_ranges) = source_ranges else {
            return false;
        };
        self.services.push(VirtualService {
            name: name.clone(),
            frontend,
            backends: backends.to_vec(),
            affinity_timeout_s: self.policy.affinity_timeout_s,
            kind,
            source_ranges,
            node_local,
        });
        true
    }
}

#[cfg(test)]
mod tests;
