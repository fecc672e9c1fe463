//! NodePorts: for each port with a `nodePort` (types NodePort and LoadBalancer), a
//! frontend on the unspecified address of each served family (the data plane matches
//! it on every NodePort address of the node), in both scopes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::ServicePort;

use super::service::Policy;

/// The port's node port, if it has one (0 or absent is none).
pub(super) fn of(port: &ServicePort, policy: &Policy) -> Option<u16> {
    port.node_port
        .filter(|_| policy.node_ports)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&n| n != 0)
}

/// The address NodePort frontends of `vip`'s family are on: `0.0.0.0` or `::`.
pub(super) fn address(vip: IpAddr) -> IpAddr {
    match vip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
mod tests;
