//! EndpointSlices.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::Endpoint;

use super::*;
use crate::source::validate::test_support::*;

#[test]
fn a_slice_without_the_service_name_label_is_rejected() {
    let s = slice_with(|s| s.metadata.labels = None);
    assert_eq!(
        err(endpoint_slice(&s)),
        "metadata.labels[kubernetes.io/service-name]: is required: it names the Service this slice belongs to"
    );
    let s = slice_with(|s| {
        s.metadata.labels = Some(BTreeMap::from([(
            LABEL_SERVICE_NAME.to_string(),
            String::new(),
        )]));
    });
    assert_eq!(
        err(endpoint_slice(&s)),
        "metadata.labels[kubernetes.io/service-name]: must name a Service, not be empty"
    );
}

#[test]
fn slice_address_type_must_be_known() {
    let s = slice_with(|s| s.address_type = "IPX".into());
    assert_eq!(
        err(endpoint_slice(&s)),
        "addressType: unknown address type \"IPX\" (IPv4, IPv6 or FQDN)"
    );
}

#[test]
fn slice_addresses_must_match_the_address_type() {
    let cases = [
        ("IPv4", "10.244.0.11", true),
        ("IPv4", "fd00::11", false),
        ("IPv4", "10.244.0.300", false),
        ("IPv6", "fd00::11", true),
        ("IPv6", "10.244.0.11", false),
        ("FQDN", "db.example.com", true),
        ("FQDN", "", false),
    ];
    for (family, address, ok) in cases {
        let s = slice_with(|s| {
            s.address_type = family.into();
            s.endpoints[0].addresses = vec![address.into()];
        });
        if ok {
            assert_eq!(endpoint_slice(&s), Ok(()), "{family} {address}");
        } else {
            assert!(
                err(endpoint_slice(&s))
                    .starts_with(&format!("endpoints[0].addresses[0]: {address:?} is not ")),
                "{family} {address}"
            );
        }
    }
    let s = slice_with(|s| {
        s.endpoints.push(Endpoint {
            addresses: vec!["10.244.0.12".into(), "10.244.0.x".into()],
            ..Default::default()
        });
    });
    assert_eq!(
        err(endpoint_slice(&s)),
        "endpoints[1].addresses[1]: \"10.244.0.x\" is not an IPv4 address (the slice's addressType is IPv4)"
    );
}

#[test]
fn a_slice_endpoint_needs_an_address() {
    let s = slice_with(|s| s.endpoints[0].addresses.clear());
    assert_eq!(
        err(endpoint_slice(&s)),
        "endpoints[0].addresses: at least one address is required"
    );
}

#[test]
fn slice_ports_must_be_in_range_if_set() {
    let s = slice_with(|s| s.ports.as_mut().unwrap()[0].port = Some(0));
    assert_eq!(
        err(endpoint_slice(&s)),
        "ports[0].port: 0 is not in 1..=65535"
    );
    let s = slice_with(|s| s.ports.as_mut().unwrap()[0].port = Some(65536));
    assert_eq!(
        err(endpoint_slice(&s)),
        "ports[0].port: 65536 is not in 1..=65535"
    );
    let s = slice_with(|s| s.ports.as_mut().unwrap()[0].port = None);
    assert_eq!(endpoint_slice(&s), Ok(()));
    let s = slice_with(|s| s.ports = None);
    assert_eq!(endpoint_slice(&s), Ok(()));
}

#[test]
fn slice_port_protocol_must_be_known() {
    let s = slice_with(|s| s.ports.as_mut().unwrap()[0].protocol = Some("QUIC".into()));
    assert_eq!(
        err(endpoint_slice(&s)),
        "ports[0].protocol: unknown protocol \"QUIC\""
    );
}

#[test]
fn slice_port_names_must_be_unique() {
    let s = slice_with(|s| {
        let dup = s.ports.as_ref().unwrap()[0].clone();
        s.ports.as_mut().unwrap().push(dup);
    });
    assert_eq!(
        err(endpoint_slice(&s)),
        "ports[1].name: duplicate port name \"http\""
    );
}
