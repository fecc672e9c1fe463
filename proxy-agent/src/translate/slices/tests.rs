//! Which slices count, and for which Service.

#![allow(clippy::unwrap_used, reason = "tests")]

use crate::translate::test_support::*;
use crate::translate::{LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME};

#[test]
fn slices_belong_to_the_service_named_by_their_label_in_the_same_namespace() {
    let t = run(
        vec![web()],
        vec![
            web_slice("web-1", vec![ep("10.244.0.11")]),
            // Same service name, other namespace.
            slice(
                "other",
                "web-1",
                "web",
                "IPv4",
                &[("http", 8080, "TCP")],
                vec![ep("10.244.9.9")],
            ),
            // Same namespace, other service; the slice's own name is irrelevant.
            slice(
                "demo",
                "web-2",
                "api",
                "IPv4",
                &[("http", 8080, "TCP")],
                vec![ep("10.244.8.8")],
            ),
        ],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
}

#[test]
fn an_invalid_slice_is_reported_and_ignored_while_valid_ones_are_used() {
    let bad = web_slice("web-2", vec![ep("10.244.0.300")]);
    let t = run(
        vec![web()],
        vec![web_slice("web-1", vec![ep("10.244.0.11")]), bad],
    );
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
    assert_eq!(
        skipped(&t),
        [
            "EndpointSlice demo/web-2: endpoints[0].addresses[0]: \"10.244.0.300\" is not an IPv4 address (the slice's addressType is IPv4)"
        ]
    );
}

#[test]
fn a_slice_without_the_service_name_label_is_reported_and_ignored() {
    let mut sl = web_slice("web-1", vec![ep("10.244.0.11")]);
    sl.metadata.labels = None;
    let t = run(vec![web()], vec![sl]);
    assert_eq!(backends(&t, WEB), Vec::<String>::new());
    assert_eq!(
        skipped(&t),
        [
            "EndpointSlice demo/web-1: metadata.labels[kubernetes.io/service-name]: is required: it names the Service this slice belongs to"
        ]
    );
}

#[test]
fn fqdn_slices_and_slices_kube_proxy_does_not_watch_are_ignored_silently() {
    let fqdn = slice(
        "demo",
        "web-fqdn",
        "web",
        "FQDN",
        &[("http", 8080, "TCP")],
        vec![ep("web.example.com")],
    );
    let mut foreign = web_slice("web-foreign", vec![ep("10.244.0.21")]);
    foreign
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(LABEL_SERVICE_PROXY_NAME.into(), "other-proxy".into());
    let mut headless = web_slice("web-headless", vec![ep("10.244.0.22")]);
    headless
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(LABEL_HEADLESS.into(), String::new());
    let t = run(vec![web()], vec![fqdn, foreign, headless]);
    assert_eq!(backends(&t, WEB), Vec::<String>::new());
    assert!(t.skipped.is_empty(), "{:?}", t.skipped);
}
