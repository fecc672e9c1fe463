//! The endpoints of one service port: matched by port name and protocol, deduplicated,
//! and chosen for each traffic policy (ready ones, else serving and terminating ones).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::NodeContext;
use super::topology::topology_mode;
use crate::model::Protocol;
use crate::source::validate::{family_name, parse_ip};

/// One endpoint as kube-proxy sees it for one service port.
#[derive(Debug)]
pub(super) struct Ep<'a> {
    pub(super) addr: SocketAddr,
    pub(super) ready: bool,
    pub(super) serving: bool,
    pub(super) terminating: bool,
    pub(super) local: bool,
    pub(super) zone_hints: BTreeSet<&'a str>,
    pub(super) node_hints: BTreeSet<&'a str>,
}

impl Ep<'_> {
    pub(super) fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// The endpoints of one service port in the VIP's family, deduplicated by ip:port.
pub(super) fn endpoints<'a>(
    slices: &[&'a EndpointSlice],
    port: &ServicePort,
    protocol: Protocol,
    vip: IpAddr,
    node: &NodeContext,
) -> Vec<Ep<'a>> {
    let family = family_name(&vip);
    let port_name = port.name.as_deref().unwrap_or("");
    let mut by_addr: BTreeMap<SocketAddr, Ep<'a>> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.address_type == family) {
        for slice_port in slice.ports.iter().flatten() {
            // The API server defaults an absent name to "" and protocol to TCP.
            if slice_port.name.as_deref().unwrap_or("") != port_name
                || slice_port.protocol.as_deref().unwrap_or("TCP") != protocol.to_string()
            {
                continue;
            }
            // An absent port (meant as "all ports") is not supported, as in kube-proxy.
            let Some(target) = slice_port.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            if target == 0 {
                continue;
            }
            for endpoint in &slice.endpoints {
                let Some(ep) = endpoint_info(endpoint, target, vip, node) else {
                    continue;
                };
                // The same address in two slices (an endpoint moving between slices, or
                // an IP reused by a new pod while the old one terminates): prefer the
                // copy that is not terminating.
                if !by_addr.contains_key(&ep.addr) || !ep.terminating {
                    by_addr.insert(ep.addr, ep);
                }
            }
        }
    }
    by_addr.into_values().collect()
}

fn endpoint_info<'a>(
    endpoint: &'a Endpoint,
    target: u16,
    vip: IpAddr,
    node: &NodeContext,
) -> Option<Ep<'a>> {
    // Consumers use the first address only (EndpointSlice API contract).
    let ip = parse_ip(endpoint.addresses.first()?)?;
    if ip.is_ipv4() != vip.is_ipv4() {
        return None;
    }
    let conditions = endpoint.conditions.as_ref();
    let hints = endpoint.hints.as_ref();
    Some(Ep {
        addr: SocketAddr::new(ip, target),
        ready: conditions.and_then(|c| c.ready).unwrap_or(true),
        serving: conditions.and_then(|c| c.serving).unwrap_or(true),
        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        local: !node.name.is_empty() && endpoint.node_name.as_deref() == Some(node.name.as_str()),
        zone_hints: hints
            .and_then(|h| h.for_zones.as_ref())
            .into_iter()
            .flatten()
            .map(|z| z.name.as_str())
            .collect(),
        node_hints: hints
            .and_then(|h| h.for_nodes.as_ref())
            .into_iter()
            .flatten()
            .map(|n| n.name.as_str())
            .collect(),
    })
}

/// The Cluster traffic policy's endpoints (kube-proxy's `CategorizeEndpoints`).
pub(super) fn cluster_endpoints(endpoints: &[Ep<'_>], node: &NodeContext) -> Vec<SocketAddr> {
    let zone = node.zone.as_deref().unwrap_or("");
    let mode = topology_mode(endpoints, &node.name, zone);
    let ready: Vec<SocketAddr> = endpoints
        .iter()
        .filter(|e| e.ready && mode.keeps(e, &node.name, zone))
        .map(|e| e.addr)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    // No ready endpoint anywhere (the topology mode would have been None otherwise):
    // fall back to endpoints still serving while they terminate, ignoring topology.
    endpoints
        .iter()
        .filter(|e| e.serving_terminating())
        .map(|e| e.addr)
        .collect()
}

/// The Local traffic policy's endpoints: this node's ready ones, else this node's
/// serving-and-terminating ones; never topology-filtered.
pub(super) fn local_endpoints(endpoints: &[Ep<'_>]) -> Vec<SocketAddr> {
    let ready: Vec<SocketAddr> = endpoints
        .iter()
        .filter(|e| e.local && e.ready)
        .map(|e| e.addr)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .iter()
        .filter(|e| e.local && e.serving_terminating())
        .map(|e| e.addr)
        .collect()
}

#[cfg(test)]
mod tests;
