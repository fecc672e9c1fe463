//! Names (of objects, namespaces and ports), port numbers and protocols: the rules
//! Services and EndpointSlices share.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::FieldError;

/// Which naming rule `metadata.name` follows.
#[derive(Clone, Copy)]
pub(super) enum NameRule {
    /// Services: a DNS-1035 label (starts with a letter).
    Dns1035Label,
    /// EndpointSlices: a DNS-1123 subdomain.
    Dns1123Subdomain,
}

pub(super) fn metadata(meta: &ObjectMeta, rule: NameRule) -> Result<(), FieldError> {
    let name = meta.name.as_deref().unwrap_or("");
    if name.is_empty() {
        return Err(FieldError::new("metadata.name", "is required"));
    }
    let name_ok = match rule {
        NameRule::Dns1035Label => {
            dns1123_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())
        }
        NameRule::Dns1123Subdomain => name.len() <= 253 && name.split('.').all(dns1123_label),
    };
    if !name_ok {
        let rule = match rule {
            NameRule::Dns1035Label => {
                "lowercase letters, digits and '-', starting with a letter and ending with a letter or digit, at most 63 characters"
            }
            NameRule::Dns1123Subdomain => {
                "dot-separated parts of lowercase letters, digits and '-', each starting and ending with a letter or digit"
            }
        };
        return Err(FieldError::new(
            "metadata.name",
            format!("{name:?} is not a valid name ({rule})"),
        ));
    }
    if let Some(ns) = meta.namespace.as_deref()
        && !ns.is_empty()
        && !dns1123_label(ns)
    {
        return Err(FieldError::new(
            "metadata.namespace",
            format!(
                "{ns:?} is not a valid namespace (lowercase letters, digits and '-', at most 63 characters)"
            ),
        ));
    }
    Ok(())
}

/// A DNS-1123 label: 1 to 63 of `[a-z0-9-]`, starting and ending with `[a-z0-9]`.
fn dns1123_label(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            bytes.len() <= 63
                && alnum(first)
                && alnum(last)
                && bytes.iter().all(|&b| alnum(b) || b == b'-')
        }
        _ => false,
    }
}

/// An IANA service name as used for named ports: 1 to 15 of `[a-z0-9-]`, at least one
/// letter, no leading, trailing or doubled '-'.
pub(super) fn port_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("a port name must not be empty");
    }
    if s.len() > 15 {
        return Err("a port name has at most 15 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("a port name has only lowercase letters, digits and '-'");
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("a port name has at least one letter (write a number without quotes)");
    }
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return Err("a port name does not start or end with '-' or contain \"--\"");
    }
    Ok(())
}

pub(super) fn port_number(n: i32, field: &str) -> Result<(), FieldError> {
    if (1..=65535).contains(&n) {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("{n} is not in 1..=65535")))
    }
}

/// Checks a protocol (absent means TCP, the API default); returns it.
pub(super) fn protocol<'a>(protocol: Option<&'a str>, field: &str) -> Result<&'a str, FieldError> {
    match protocol {
        None => Ok("TCP"),
        Some(p @ ("TCP" | "UDP" | "SCTP")) => Ok(p),
        Some(other) => Err(FieldError::new(
            field,
            format!("unknown protocol {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests;
