//! Field errors, namespaces, and objects that pass.

use super::*;
use crate::source::validate::test_support::*;

#[test]
fn a_well_formed_service_and_slice_pass() {
    assert_eq!(service(&svc()), Ok(()));
    assert_eq!(endpoint_slice(&slice()), Ok(()));
}

#[test]
fn field_errors_display_as_field_colon_message() {
    let e = FieldError::new("spec.ports[1].port", "70000 is not in 1..=65535");
    assert_eq!(
        e.to_string(),
        "spec.ports[1].port: 70000 is not in 1..=65535"
    );
}

#[test]
fn a_missing_or_empty_namespace_means_default() {
    let mut s = svc();
    s.metadata.namespace = None;
    assert_eq!(service(&s), Ok(()));
    assert_eq!(namespace_of(&s.metadata), "default");
    s.metadata.namespace = Some(String::new());
    assert_eq!(service(&s), Ok(()));
    assert_eq!(namespace_of(&s.metadata), "default");
    s.metadata.namespace = Some("demo".into());
    assert_eq!(namespace_of(&s.metadata), "demo");
}
