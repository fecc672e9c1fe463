//! EndpointSlices: the Service label, the address type and addresses, and ports.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::ip::parse_ip;
use super::metadata::{NameRule, metadata, port_number, protocol};
use super::{FieldError, LABEL_SERVICE_NAME};

/// Checks an EndpointSlice.
pub fn endpoint_slice(slice: &EndpointSlice) -> Result<(), FieldError> {
    metadata(&slice.metadata, NameRule::Dns1123Subdomain)?;
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(LABEL_SERVICE_NAME));
    match service {
        None => {
            return Err(FieldError::new(
                format!("metadata.labels[{LABEL_SERVICE_NAME}]"),
                "is required: it names the Service this slice belongs to",
            ));
        }
        Some(name) if name.is_empty() => {
            return Err(FieldError::new(
                format!("metadata.labels[{LABEL_SERVICE_NAME}]"),
                "must name a Service, not be empty",
            ));
        }
        Some(_) => {}
    }

    let address_type = slice.address_type.as_str();
    if !matches!(address_type, "IPv4" | "IPv6" | "FQDN") {
        return Err(FieldError::new(
            "addressType",
            format!("unknown address type {address_type:?} (IPv4, IPv6 or FQDN)"),
        ));
    }
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        if endpoint.addresses.is_empty() {
            return Err(FieldError::new(
                format!("endpoints[{i}].addresses"),
                "at least one address is required",
            ));
        }
        for (j, address) in endpoint.addresses.iter().enumerate() {
            let field = format!("endpoints[{i}].addresses[{j}]");
            let ok = match address_type {
                "IPv4" => matches!(parse_ip(address), Some(IpAddr::V4(_))),
                "IPv6" => matches!(parse_ip(address), Some(IpAddr::V6(_))),
                _ => !address.is_empty() && !address.contains(char::is_whitespace),
            };
            if !ok {
                let what = match address_type {
                    "FQDN" => "a host name".to_string(),
                    family => format!("an {family} address"),
                };
                return Err(FieldError::new(
                    field,
                    format!(
                        "{address:?} is not {what} (the slice's addressType is {address_type})"
                    ),
                ));
            }
        }
    }
    let mut names = BTreeSet::new();
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        if let Some(n) = port.port {
            port_number(n, &format!("ports[{i}].port"))?;
        }
        protocol(port.protocol.as_deref(), &format!("ports[{i}].protocol"))?;
        let name = port.name.as_deref().unwrap_or("");
        if !names.insert(name) {
            return Err(FieldError::new(
                format!("ports[{i}].name"),
                format!("duplicate port name {name:?}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
