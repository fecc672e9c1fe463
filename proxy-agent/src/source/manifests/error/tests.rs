//! How manifest errors display.

use super::*;

#[test]
fn errors_display_file_object_field_and_message() {
    let e = ManifestError {
        file: "examples/bad.yaml".into(),
        object: Some("Service default/web".into()),
        field: Some("spec.ports[0].port".into()),
        message: "70000 is not in 1..=65535".into(),
    };
    assert_eq!(
        e.to_string(),
        "examples/bad.yaml: Service default/web: spec.ports[0].port: 70000 is not in 1..=65535"
    );
    let e = ManifestError {
        file: "bad.yaml".into(),
        object: Some("document 2".into()),
        field: None,
        message: "did not parse: x".into(),
    };
    assert_eq!(e.to_string(), "bad.yaml: document 2: did not parse: x");
    let e = ManifestError {
        file: "gone.yaml".into(),
        object: None,
        field: None,
        message: "could not be read: x".into(),
    };
    assert_eq!(e.to_string(), "gone.yaml: could not be read: x");
}
