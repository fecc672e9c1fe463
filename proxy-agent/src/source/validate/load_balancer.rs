//! `loadBalancerSourceRanges` (strictly: an entry that does not parse rejects the
//! Service) and `status.loadBalancer.ingress`.

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::FieldError;
use super::ip::{parse_cidr, parse_ip};

/// Checks `loadBalancerSourceRanges` and `status.loadBalancer.ingress`.
pub(super) fn load_balancer(
    svc: &Service,
    spec: &ServiceSpec,
    type_: &str,
) -> Result<(), FieldError> {
    let ranges = spec.load_balancer_source_ranges.as_deref().unwrap_or(&[]);
    if !ranges.is_empty() && type_ != "LoadBalancer" {
        return Err(FieldError::new(
            "spec.loadBalancerSourceRanges",
            format!("may only be set on a service of type LoadBalancer, not {type_}"),
        ));
    }
    for (i, range) in ranges.iter().enumerate() {
        if parse_cidr(range).is_none() {
            return Err(FieldError::new(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!(
                    "{range:?} is not a CIDR (address/prefix) or an IP address; the service is \
                     not served rather than served to more sources than it allows"
                ),
            ));
        }
    }
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or(&[]);
    for (i, entry) in ingress.iter().enumerate() {
        if let Some(ip) = entry.ip.as_deref()
            && !ip.is_empty()
            && parse_ip(ip).is_none()
        {
            return Err(FieldError::new(
                format!("status.loadBalancer.ingress[{i}].ip"),
                format!("{ip:?} is not an IP address"),
            ));
        }
        if let Some(mode) = entry.ip_mode.as_deref()
            && !matches!(mode, "VIP" | "Proxy")
        {
            return Err(FieldError::new(
                format!("status.loadBalancer.ingress[{i}].ipMode"),
                format!("unknown IP mode {mode:?} (VIP or Proxy)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
