//! Services: type, ports, node ports, affinity, external IPs, health check node port
//! and traffic policies; `clusterIPs` and the load balancer fields have files of their
//! own.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cluster_ips::cluster_ips;
use super::ip::{parse_ip, special_ip};
use super::load_balancer::load_balancer;
use super::metadata::{NameRule, metadata, port_name, port_number, protocol};
use super::{FieldError, MAX_AFFINITY_TIMEOUT_S};

/// Checks a Service.
pub fn service(svc: &Service) -> Result<(), FieldError> {
    metadata(&svc.metadata, NameRule::Dns1035Label)?;
    let Some(spec) = svc.spec.as_ref() else {
        return Err(FieldError::new("spec", "is required"));
    };

    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(
        type_,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        return Err(FieldError::new(
            "spec.type",
            format!(
                "unknown service type {type_:?} (ClusterIP, NodePort, LoadBalancer or ExternalName)"
            ),
        ));
    }
    let external_name = type_ == "ExternalName";
    if external_name && spec.external_name.as_deref().unwrap_or("").is_empty() {
        return Err(FieldError::new(
            "spec.externalName",
            "is required for a service of type ExternalName",
        ));
    }

    let headless = cluster_ips(spec)?;

    let ports = spec.ports.as_deref().unwrap_or(&[]);
    if ports.is_empty() && !headless && !external_name {
        return Err(FieldError::new(
            "spec.ports",
            "at least one port is required (only headless and ExternalName services may have none)",
        ));
    }
    let mut names = BTreeSet::new();
    let mut port_protocols = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let protocol = service_port(port, &format!("spec.ports[{i}]"))?;
        let node_port = port.node_port.unwrap_or(0);
        if node_port != 0 {
            if type_ == "ClusterIP" {
                return Err(FieldError::new(
                    format!("spec.ports[{i}].nodePort"),
                    format!(
                        "{node_port} is set, but a service of type ClusterIP has no node ports \
                         (type NodePort or LoadBalancer)"
                    ),
                ));
            }
            if !node_ports.insert((node_port, protocol)) {
                return Err(FieldError::new(
                    format!("spec.ports[{i}].nodePort"),
                    format!("duplicate node port {node_port}/{protocol}"),
                ));
            }
        }
        let name = port.name.as_deref().unwrap_or("");
        if name.is_empty() && ports.len() > 1 {
            return Err(FieldError::new(
                format!("spec.ports[{i}].name"),
                "is required when the service has more than one port",
            ));
        }
        if !names.insert(name) {
            return Err(FieldError::new(
                format!("spec.ports[{i}].name"),
                format!("duplicate port name {name:?}"),
            ));
        }
        if !port_protocols.insert((port.port, protocol)) {
            return Err(FieldError::new(
                format!("spec.ports[{i}]"),
                format!("duplicate port {}/{protocol}", port.port),
            ));
        }
    }

    let affinity = spec.session_affinity.as_deref().unwrap_or("None");
    if !matches!(affinity, "None" | "ClientIP") {
        return Err(FieldError::new(
            "spec.sessionAffinity",
            format!("unknown session affinity {affinity:?} (None or ClientIP)"),
        ));
    }
    if let Some(timeout) = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        && !(1..=MAX_AFFINITY_TIMEOUT_S).contains(&timeout)
    {
        return Err(FieldError::new(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            format!("{timeout} is not in 1..={MAX_AFFINITY_TIMEOUT_S}"),
        ));
    }

    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        let Some(parsed) = parse_ip(ip) else {
            return Err(FieldError::new(
                field,
                format!("{ip:?} is not an IP address"),
            ));
        };
        if let Some(why) = special_ip(&parsed) {
            return Err(FieldError::new(
                field,
                format!("{ip:?} is {why}, which cannot be an external IP"),
            ));
        }
    }

    load_balancer(svc, spec, type_)?;

    if let Some(port) = spec.health_check_node_port
        && port != 0
    {
        port_number(port, "spec.healthCheckNodePort")?;
        // As the API server has it: only a Local LoadBalancer has a health check.
        if type_ != "LoadBalancer" || spec.external_traffic_policy.as_deref() != Some("Local") {
            return Err(FieldError::new(
                "spec.healthCheckNodePort",
                "may only be set when type is LoadBalancer and externalTrafficPolicy is Local"
                    .to_string(),
            ));
        }
    }

    for (field, policy) in [
        (
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        ),
        (
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        ),
    ] {
        if let Some(policy) = policy
            && !matches!(policy, "Cluster" | "Local")
        {
            return Err(FieldError::new(
                field,
                format!("unknown traffic policy {policy:?} (Cluster or Local)"),
            ));
        }
    }
    Ok(())
}

/// Checks one service port; returns its protocol.
fn service_port<'a>(port: &'a ServicePort, at: &str) -> Result<&'a str, FieldError> {
    port_number(port.port, &format!("{at}.port"))?;
    // 0 (or absent) means the port has no node port.
    if let Some(node_port) = port.node_port
        && node_port != 0
    {
        port_number(node_port, &format!("{at}.nodePort"))?;
    }
    match &port.target_port {
        None => {}
        Some(IntOrString::Int(n)) => port_number(*n, &format!("{at}.targetPort"))?,
        Some(IntOrString::String(name)) => {
            if let Err(why) = port_name(name) {
                return Err(FieldError::new(
                    format!("{at}.targetPort"),
                    format!("{name:?} is not a port number or a port name: {why}"),
                ));
            }
        }
    }
    protocol(port.protocol.as_deref(), &format!("{at}.protocol"))
}

#[cfg(test)]
mod tests;
