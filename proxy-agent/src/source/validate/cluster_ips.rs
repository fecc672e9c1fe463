//! `clusterIP`, `clusterIPs` and `ipFamilies`, which must agree with each other.

use k8s_openapi::api::core::v1::ServiceSpec;

use super::FieldError;
use super::ip::{family_name, parse_ip};

/// Checks `clusterIP`, `clusterIPs` and `ipFamilies` together; returns whether the
/// service is headless.
pub(super) fn cluster_ips(spec: &ServiceSpec) -> Result<bool, FieldError> {
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    let list = spec.cluster_ips.as_deref().unwrap_or(&[]);
    let headless = cluster_ip == "None" || list.first().is_some_and(|ip| ip == "None");

    if !cluster_ip.is_empty() && cluster_ip != "None" {
        match parse_ip(cluster_ip) {
            None => {
                return Err(FieldError::new(
                    "spec.clusterIP",
                    format!("{cluster_ip:?} is not an IP address, \"None\" or empty"),
                ));
            }
            Some(ip) if ip.is_unspecified() => {
                return Err(FieldError::new(
                    "spec.clusterIP",
                    format!("{cluster_ip:?} is the unspecified address"),
                ));
            }
            Some(_) => {}
        }
    }
    if list.len() > 2 {
        return Err(FieldError::new(
            "spec.clusterIPs",
            format!(
                "{} entries; at most 2 (one per IP family) are allowed",
                list.len()
            ),
        ));
    }
    let mut families = Vec::with_capacity(list.len());
    for (i, ip) in list.iter().enumerate() {
        let field = format!("spec.clusterIPs[{i}]");
        if ip == "None" {
            if list.len() > 1 {
                return Err(FieldError::new(field, "\"None\" must be the only entry"));
            }
            continue;
        }
        let Some(parsed) = parse_ip(ip) else {
            return Err(FieldError::new(
                field,
                format!("{ip:?} is not an IP address or \"None\""),
            ));
        };
        if parsed.is_unspecified() {
            return Err(FieldError::new(
                field,
                format!("{ip:?} is the unspecified address"),
            ));
        }
        if families.contains(&family_name(&parsed)) {
            return Err(FieldError::new(
                field,
                format!(
                    "{ip} is a second {} address; dual-stack needs one of each family",
                    family_name(&parsed)
                ),
            ));
        }
        families.push(family_name(&parsed));
    }
    if let Some(first) = list.first()
        && !cluster_ip.is_empty()
        && first != cluster_ip
    {
        return Err(FieldError::new(
            "spec.clusterIPs[0]",
            format!("{first:?} does not match spec.clusterIP {cluster_ip:?}"),
        ));
    }

    let declared = spec.ip_families.as_deref().unwrap_or(&[]);
    if declared.len() > 2 {
        return Err(FieldError::new(
            "spec.ipFamilies",
            format!("{} entries; at most 2 are allowed", declared.len()),
        ));
    }
    // With clusterIPs absent, the families are those of clusterIP.
    if families.is_empty()
        && let Some(ip) = parse_ip(cluster_ip)
    {
        families.push(family_name(&ip));
    }
    for (i, family) in declared.iter().enumerate() {
        let field = format!("spec.ipFamilies[{i}]");
        if !matches!(family.as_str(), "IPv4" | "IPv6") {
            return Err(FieldError::new(
                field,
                format!("unknown IP family {family:?} (IPv4 or IPv6)"),
            ));
        }
        if declared[..i].contains(family) {
            return Err(FieldError::new(field, format!("{family} is listed twice")));
        }
        if let Some(actual) = families.get(i)
            && actual != family
        {
            return Err(FieldError::new(
                field,
                format!("{family} does not match the cluster IP's family {actual}"),
            ));
        }
    }
    Ok(headless)
}

#[cfg(test)]
mod tests;
