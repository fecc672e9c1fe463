//! Builders shared by the validation tests.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{FieldError, LABEL_SERVICE_NAME};

pub(super) fn svc() -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            cluster_ips: Some(vec!["10.96.0.10".into()]),
            ip_families: Some(vec!["IPv4".into()]),
            ports: Some(vec![port("http", 80)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn port(name: &str, n: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: n,
        protocol: Some("TCP".into()),
        target_port: Some(IntOrString::Int(8080)),
        ..Default::default()
    }
}

pub(super) fn with(f: impl FnOnce(&mut ServiceSpec)) -> Service {
    let mut s = svc();
    f(s.spec.as_mut().unwrap());
    s
}

pub(super) fn slice() -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some("web-abc".into()),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([(
                LABEL_SERVICE_NAME.to_string(),
                "web".to_string(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["10.244.0.11".into()],
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

pub(super) fn slice_with(f: impl FnOnce(&mut EndpointSlice)) -> EndpointSlice {
    let mut s = slice();
    f(&mut s);
    s
}

/// Asserts the error's rendering, `field: message`.
pub(super) fn err(result: Result<(), FieldError>) -> String {
    match result {
        Ok(()) => panic!("expected a validation error"),
        Err(e) => e.to_string(),
    }
}
