//! One Service: its ports, what is skipped and why, and session affinity.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ClientIPConfig, SessionAffinityConfig};

use crate::model::{FrontendKind, ServicePortName, VirtualService};
use crate::translate::LABEL_SERVICE_PROXY_NAME;
use crate::translate::test_support::*;

#[test]
fn a_cluster_ip_service_balances_over_its_ready_endpoints() {
    let t = run(
        vec![web()],
        vec![web_slice(
            "web-1",
            vec![ep("10.244.0.12"), ep("10.244.0.11"), ep("10.244.1.13")],
        )],
    );
    assert_eq!(
        vs(&t, WEB),
        &VirtualService {
            name: ServicePortName {
                namespace: "demo".into(),
                name: "web".into(),
                port: "http".into(),
            },
            frontend: frontend(WEB),
            backends: vec![
                "10.244.0.11:8080".parse().unwrap(),
                "10.244.0.12:8080".parse().unwrap(),
                "10.244.1.13:8080".parse().unwrap(),
            ],
            affinity_timeout_s: None,
            kind: FrontendKind::ClusterIp,
            source_ranges: Vec::new(),
            node_local: false,
        }
    );
    assert_eq!(frontends(&t), [WEB]);
    assert!(t.skipped.is_empty(), "{:?}", t.skipped);
}

#[test]
fn each_port_of_a_service_becomes_its_own_frontend() {
    let s = svc(
        "demo",
        "dns",
        "10.96.0.53",
        &[
            ("dns", 53, "UDP"),
            ("dns-tcp", 53, "TCP"),
            ("metrics", 9153, "TCP"),
        ],
    );
    let sl = slice(
        "demo",
        "dns-1",
        "dns",
        "IPv4",
        &[
            ("dns", 5353, "UDP"),
            ("dns-tcp", 5353, "TCP"),
            ("metrics", 9153, "TCP"),
        ],
        vec![ep("10.244.0.5")],
    );
    let t = run(vec![s], vec![sl]);
    assert_eq!(
        frontends(&t),
        [
            "10.96.0.53:53/TCP",
            "10.96.0.53:53/UDP",
            "10.96.0.53:9153/TCP"
        ]
    );
    assert_eq!(backends(&t, "10.96.0.53:53/UDP"), ["10.244.0.5:5353"]);
    assert_eq!(backends(&t, "10.96.0.53:53/TCP"), ["10.244.0.5:5353"]);
    assert_eq!(backends(&t, "10.96.0.53:9153/TCP"), ["10.244.0.5:9153"]);
    assert_eq!(vs(&t, "10.96.0.53:53/TCP").name.port, "dns-tcp");
}

#[test]
fn a_service_without_endpoints_is_served_with_no_backends_so_connections_are_refused() {
    let t = run(vec![web()], vec![]);
    assert_eq!(backends(&t, WEB), Vec::<String>::new());
    let t = run(vec![web()], vec![web_slice("web-1", vec![])]);
    assert_eq!(backends(&t, WEB), Vec::<String>::new());
}

#[test]
fn a_service_without_a_namespace_is_in_default() {
    let mut s = svc("default", "web", "10.96.0.10", &[("http", 80, "TCP")]);
    s.metadata.namespace = None;
    let mut sl = slice(
        "default",
        "web-1",
        "web",
        "IPv4",
        &[("http", 8080, "TCP")],
        vec![ep("10.244.0.11")],
    );
    sl.metadata.namespace = None;
    let t = run(vec![s], vec![sl]);
    assert_eq!(backends(&t, WEB), ["10.244.0.11:8080"]);
    assert_eq!(vs(&t, WEB).name.namespace, "default");
}

#[test]
fn headless_external_name_and_other_proxies_services_are_skipped_silently() {
    let headless = with(
        svc("demo", "headless", "None", &[("http", 80, "TCP")]),
        |s| {
            spec(s).cluster_ips = Some(vec!["None".into()]);
        },
    );
    let headless_no_ports = with(svc("demo", "headless2", "None", &[]), |s| {
        spec(s).ports = None;
    });
    let external = with(svc("demo", "ext", "", &[("http", 80, "TCP")]), |s| {
        spec(s).type_ = Some("ExternalName".into());
        spec(s).external_name = Some("db.example.com".into());
        spec(s).cluster_ips = None;
    });
    let foreign = with(
        svc("demo", "foreign", "10.96.0.20", &[("http", 80, "TCP")]),
        |s| {
            s.metadata.labels = Some(BTreeMap::from([(
                LABEL_SERVICE_PROXY_NAME.to_string(),
                "other-proxy".to_string(),
            )]));
        },
    );
    let labelled_headless = with(
        svc("demo", "labelled", "10.96.0.21", &[("http", 80, "TCP")]),
        |s| {
            s.metadata.labels = Some(BTreeMap::from([(
                crate::translate::LABEL_HEADLESS.to_string(),
                String::new(),
            )]));
        },
    );
    let t = run(
        vec![
            headless,
            headless_no_ports,
            external,
            foreign,
            labelled_headless,
        ],
        vec![slice(
            "demo",
            "headless-1",
            "headless",
            "IPv4",
            &[("http", 8080, "TCP")],
            vec![ep("10.244.0.11")],
        )],
    );
    assert!(t.desired.services.is_empty());
    assert!(t.skipped.is_empty(), "{:?}", t.skipped);
}

#[test]
fn sctp_ports_are_reported_and_the_other_ports_still_served() {
    let s = svc(
        "demo",
        "sig",
        "10.96.0.30",
        &[("http", 80, "TCP"), ("sig", 3868, "SCTP")],
    );
    let t = run(vec![s], vec![]);
    assert_eq!(frontends(&t), ["10.96.0.30:80/TCP"]);
    assert_eq!(
        skipped(&t),
        [
            "Service demo/sig: port \"sig\" (3868/SCTP): SCTP is not supported by this data plane yet; the service's other ports are served"
        ]
    );
}

#[test]
fn an_invalid_service_is_skipped_whole_with_the_field_error() {
    let s = svc(
        "demo",
        "web",
        "10.96.0.10",
        &[("http", 80, "TCP"), ("admin", 70000, "TCP")],
    );
    let t = run(vec![s], vec![web_slice("web-1", vec![ep("10.244.0.11")])]);
    assert!(t.desired.services.is_empty(), "{:?}", frontends(&t));
    assert_eq!(
        skipped(&t),
        ["Service demo/web: spec.ports[1].port: 70000 is not in 1..=65535"]
    );
    let s = with(web(), |s| {
        spec(s).ports.as_mut().unwrap()[0].protocol = Some("ICMP".into());
    });
    let t = run(vec![s], vec![]);
    assert_eq!(
        skipped(&t),
        ["Service demo/web: spec.ports[0].protocol: unknown protocol \"ICMP\""]
    );
}

#[test]
fn an_invalid_service_does_not_affect_others() {
    let bad = with(
        svc("demo", "bad", "10.96.0.99", &[("http", 80, "TCP")]),
        |s| {
            spec(s).cluster_ip = Some("10.96.0.999".into());
            spec(s).cluster_ips = None;
        },
    );
    let t = run(
        vec![bad, web()],
        vec![web_slice("web-1", vec![ep("10.244.0.11")])],
    );
    assert_eq!(frontends(&t), [WEB]);
    assert_eq!(
        skipped(&t),
        [
            "Service demo/bad: spec.clusterIP: \"10.96.0.999\" is not an IP address, \"None\" or empty"
        ]
    );
}

#[test]
fn client_ip_affinity_uses_the_configured_timeout_or_three_hours() {
    let affinity = |timeout: Option<i32>| {
        with(web(), |s| {
            spec(s).session_affinity = Some("ClientIP".into());
            spec(s).session_affinity_config = timeout.map(|t| SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(t),
                }),
            });
        })
    };
    let t = run(vec![affinity(Some(60))], vec![]);
    assert_eq!(vs(&t, WEB).affinity_timeout_s, Some(60));
    let t = run(vec![affinity(None)], vec![]);
    assert_eq!(vs(&t, WEB).affinity_timeout_s, Some(10800));
    let none = with(web(), |s| spec(s).session_affinity = Some("None".into()));
    let t = run(vec![none], vec![]);
    assert_eq!(vs(&t, WEB).affinity_timeout_s, None);
    let t = run(vec![web()], vec![]);
    assert_eq!(vs(&t, WEB).affinity_timeout_s, None);
}

#[test]
fn affinity_applies_to_every_port_and_family_of_the_service() {
    let s = with(
        svc(
            "demo",
            "web",
            "10.96.0.10",
            &[("http", 80, "TCP"), ("q", 5000, "UDP")],
        ),
        |s| {
            spec(s).cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
            spec(s).session_affinity = Some("ClientIP".into());
        },
    );
    let t = run(vec![s], vec![]);
    assert_eq!(t.desired.services.len(), 4);
    assert!(
        t.desired
            .services
            .values()
            .all(|v| v.affinity_timeout_s == Some(10800))
    );
}

#[test]
fn affinity_applies_to_every_frontend_of_the_service() {
    let s = with(load_balancer(web_node_port(), &["192.0.2.100"]), |s| {
        spec(s).external_ips = Some(vec!["192.0.2.10".into()]);
        spec(s).session_affinity = Some("ClientIP".into());
        spec(s).session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(60),
            }),
        });
    });
    let t = run(vec![s], vec![]);
    assert_eq!(t.desired.services.len(), 7);
    assert!(
        t.desired
            .services
            .values()
            .all(|v| v.affinity_timeout_s == Some(60))
    );
}
