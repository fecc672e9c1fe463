//! Object and namespace names.

use crate::source::validate::test_support::*;
use crate::source::validate::{endpoint_slice, service};

#[test]
fn a_service_without_a_name_is_rejected() {
    let mut s = svc();
    s.metadata.name = None;
    assert_eq!(err(service(&s)), "metadata.name: is required");
    s.metadata.name = Some(String::new());
    assert_eq!(err(service(&s)), "metadata.name: is required");
}

#[test]
fn a_service_name_must_be_a_dns_label() {
    for bad in [
        "Web",
        "9web",
        "web-",
        "we_b",
        "web.example",
        &"a".repeat(64),
    ] {
        let mut s = svc();
        s.metadata.name = Some(bad.to_string());
        assert!(
            err(service(&s)).starts_with("metadata.name: "),
            "{bad} should be rejected"
        );
    }
    let mut s = svc();
    s.metadata.name = Some("web-2".into());
    assert_eq!(service(&s), Ok(()));
}

#[test]
fn an_invalid_namespace_is_rejected() {
    let mut s = svc();
    s.metadata.namespace = Some("Demo/x".into());
    assert_eq!(
        err(service(&s)),
        "metadata.namespace: \"Demo/x\" is not a valid namespace (lowercase letters, digits and '-', at most 63 characters)"
    );
}

#[test]
fn a_slice_without_a_name_is_rejected() {
    let s = slice_with(|s| s.metadata.name = None);
    assert_eq!(err(endpoint_slice(&s)), "metadata.name: is required");
}

#[test]
fn a_slice_name_may_be_a_dns_subdomain() {
    let s = slice_with(|s| s.metadata.name = Some("web.abc-1".into()));
    assert_eq!(endpoint_slice(&s), Ok(()));
    let s = slice_with(|s| s.metadata.name = Some("web..abc".into()));
    assert!(err(endpoint_slice(&s)).starts_with("metadata.name: \"web..abc\" is not a valid name"));
}
