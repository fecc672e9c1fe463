//! Services: type, ports, node ports, affinity, external IPs and policies.

#![allow(clippy::unwrap_used, reason = "tests")]

use k8s_openapi::api::core::v1::{ClientIPConfig, Service, ServiceSpec, SessionAffinityConfig};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::source::validate::test_support::*;

#[test]
fn a_service_without_spec_is_rejected() {
    let mut s = svc();
    s.spec = None;
    assert_eq!(err(service(&s)), "spec: is required");
}

#[test]
fn an_unknown_service_type_is_rejected() {
    let s = with(|spec| spec.type_ = Some("Internal".into()));
    assert_eq!(
        err(service(&s)),
        "spec.type: unknown service type \"Internal\" (ClusterIP, NodePort, LoadBalancer or ExternalName)"
    );
    for ok in ["ClusterIP", "NodePort", "LoadBalancer"] {
        assert_eq!(service(&with(|spec| spec.type_ = Some(ok.into()))), Ok(()));
    }
}

#[test]
fn an_external_name_service_needs_a_name_but_no_ports_or_ip() {
    let s = with(|spec| {
        spec.type_ = Some("ExternalName".into());
        spec.cluster_ip = None;
        spec.cluster_ips = None;
        spec.ip_families = None;
        spec.ports = None;
    });
    assert_eq!(
        err(service(&s)),
        "spec.externalName: is required for a service of type ExternalName"
    );
    let mut s = s;
    s.spec.as_mut().unwrap().external_name = Some("db.example.com".into());
    assert_eq!(service(&s), Ok(()));
}

#[test]
fn ports_are_required_unless_headless_or_external_name() {
    let none = with(|spec| spec.ports = None);
    assert_eq!(
        err(service(&none)),
        "spec.ports: at least one port is required (only headless and ExternalName services may have none)"
    );
    let empty = with(|spec| spec.ports = Some(vec![]));
    assert!(service(&empty).is_err());
    let headless = with(|spec| {
        spec.cluster_ip = Some("None".into());
        spec.cluster_ips = Some(vec!["None".into()]);
        spec.ports = None;
    });
    assert_eq!(service(&headless), Ok(()));
}

#[test]
fn port_numbers_must_be_in_range() {
    for (n, ok) in [
        (0, false),
        (1, true),
        (65535, true),
        (65536, false),
        (-1, false),
    ] {
        let s = with(|spec| spec.ports = Some(vec![port("http", n)]));
        if ok {
            assert_eq!(service(&s), Ok(()));
        } else {
            assert_eq!(
                err(service(&s)),
                format!("spec.ports[0].port: {n} is not in 1..=65535")
            );
        }
    }
    let second = with(|spec| spec.ports = Some(vec![port("http", 80), port("https", 70000)]));
    assert_eq!(
        err(service(&second)),
        "spec.ports[1].port: 70000 is not in 1..=65535"
    );
}

#[test]
fn target_port_must_be_a_valid_number_or_name() {
    let cases: [(IntOrString, Option<&str>); 8] = [
        (IntOrString::Int(8080), None),
        (IntOrString::String("http".into()), None),
        (IntOrString::String("web-8080".into()), None),
        (
            IntOrString::Int(0),
            Some("spec.ports[0].targetPort: 0 is not in 1..=65535"),
        ),
        (
            IntOrString::Int(65536),
            Some("spec.ports[0].targetPort: 65536 is not in 1..=65535"),
        ),
        (
            IntOrString::String(String::new()),
            Some(
                "spec.ports[0].targetPort: \"\" is not a port number or a port name: a port name must not be empty",
            ),
        ),
        (
            IntOrString::String("8080".into()),
            Some(
                "spec.ports[0].targetPort: \"8080\" is not a port number or a port name: a port name has at least one letter (write a number without quotes)",
            ),
        ),
        (
            IntOrString::String("HTTP".into()),
            Some(
                "spec.ports[0].targetPort: \"HTTP\" is not a port number or a port name: a port name has only lowercase letters, digits and '-'",
            ),
        ),
    ];
    for (target, expected) in cases {
        let s = with(|spec| {
            spec.ports.as_mut().unwrap()[0].target_port = Some(target.clone());
        });
        match expected {
            None => assert_eq!(service(&s), Ok(()), "{target:?}"),
            Some(msg) => assert_eq!(err(service(&s)), msg),
        }
    }
    for bad in ["a-very-long-port-name", "-http", "http-", "ht--tp"] {
        let s = with(|spec| {
            spec.ports.as_mut().unwrap()[0].target_port = Some(IntOrString::String(bad.into()));
        });
        assert!(
            err(service(&s)).starts_with("spec.ports[0].targetPort: "),
            "{bad}"
        );
    }
    let absent = with(|spec| spec.ports.as_mut().unwrap()[0].target_port = None);
    assert_eq!(service(&absent), Ok(()));
}

fn node_port_service(f: impl FnOnce(&mut ServiceSpec)) -> Service {
    with(|spec| {
        spec.type_ = Some("NodePort".into());
        f(spec);
    })
}

#[test]
fn node_port_if_set_must_be_in_range_and_zero_means_none() {
    for (n, expected) in [
        (Some(0), None),
        (None, None),
        (Some(1), None),
        (Some(30080), None),
        (Some(65535), None),
        (
            Some(70000),
            Some("spec.ports[0].nodePort: 70000 is not in 1..=65535"),
        ),
        (
            Some(-1),
            Some("spec.ports[0].nodePort: -1 is not in 1..=65535"),
        ),
    ] {
        let s = node_port_service(|spec| spec.ports.as_mut().unwrap()[0].node_port = n);
        match expected {
            None => assert_eq!(service(&s), Ok(()), "{n:?}"),
            Some(msg) => assert_eq!(err(service(&s)), msg),
        }
    }
}

#[test]
fn a_cluster_ip_service_may_not_have_node_ports() {
    let s = with(|spec| spec.ports.as_mut().unwrap()[0].node_port = Some(30080));
    assert_eq!(
        err(service(&s)),
        "spec.ports[0].nodePort: 30080 is set, but a service of type ClusterIP has no node ports (type NodePort or LoadBalancer)"
    );
    let zero = with(|spec| spec.ports.as_mut().unwrap()[0].node_port = Some(0));
    assert_eq!(service(&zero), Ok(()));
    let lb = with(|spec| {
        spec.type_ = Some("LoadBalancer".into());
        spec.ports.as_mut().unwrap()[0].node_port = Some(30080);
    });
    assert_eq!(service(&lb), Ok(()));
}

#[test]
fn a_node_port_may_appear_once_per_protocol() {
    let s = node_port_service(|spec| {
        let mut a = port("a", 80);
        a.node_port = Some(30080);
        let mut b = port("b", 81);
        b.node_port = Some(30080);
        spec.ports = Some(vec![a, b]);
    });
    assert_eq!(
        err(service(&s)),
        "spec.ports[1].nodePort: duplicate node port 30080/TCP"
    );
    let s = node_port_service(|spec| {
        let mut tcp = port("dns-tcp", 53);
        tcp.node_port = Some(30053);
        let mut udp = port("dns-udp", 53);
        udp.protocol = Some("UDP".into());
        udp.node_port = Some(30053);
        spec.ports = Some(vec![tcp, udp]);
    });
    assert_eq!(service(&s), Ok(()));
}

#[test]
fn health_check_node_port_if_set_must_be_in_range() {
    for (n, ok) in [
        (0, true),
        (1, true),
        (32000, true),
        (65536, false),
        (-5, false),
    ] {
        let s = with(|spec| {
            spec.type_ = Some("LoadBalancer".into());
            spec.external_traffic_policy = Some("Local".into());
            spec.health_check_node_port = Some(n);
        });
        if ok {
            assert_eq!(service(&s), Ok(()), "{n}");
        } else {
            assert_eq!(
                err(service(&s)),
                format!("spec.healthCheckNodePort: {n} is not in 1..=65535")
            );
        }
    }
}

#[test]
fn only_a_local_load_balancer_may_have_a_health_check_node_port() {
    for (type_, policy) in [("NodePort", "Local"), ("LoadBalancer", "Cluster")] {
        let s = with(|spec| {
            spec.type_ = Some(type_.into());
            spec.external_traffic_policy = Some(policy.into());
            spec.health_check_node_port = Some(32000);
        });
        assert!(
            err(service(&s)).contains("may only be set when type is LoadBalancer"),
            "{type_}/{policy}"
        );
    }
}

#[test]
fn external_ips_may_not_be_special_addresses() {
    for (ip, why) in [
        ("0.0.0.0", "the unspecified address"),
        ("::", "the unspecified address"),
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("169.254.1.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("224.0.0.251", "a link-local multicast address"),
        ("ff02::fb", "a link-local multicast address"),
    ] {
        let s = with(|spec| spec.external_ips = Some(vec![ip.into()]));
        assert_eq!(
            err(service(&s)),
            format!("spec.externalIPs[0]: {ip:?} is {why}, which cannot be an external IP")
        );
    }
    for ok in ["192.0.2.1", "2001:db8::1", "224.0.1.1", "ff05::1"] {
        let s = with(|spec| spec.external_ips = Some(vec![ok.into()]));
        assert_eq!(service(&s), Ok(()), "{ok}");
    }
}

#[test]
fn service_port_protocol_must_be_tcp_udp_or_sctp() {
    for ok in ["TCP", "UDP", "SCTP"] {
        let s = with(|spec| spec.ports.as_mut().unwrap()[0].protocol = Some(ok.into()));
        assert_eq!(service(&s), Ok(()));
    }
    let absent = with(|spec| spec.ports.as_mut().unwrap()[0].protocol = None);
    assert_eq!(service(&absent), Ok(()));
    for bad in ["ICMP", "tcp", ""] {
        let s = with(|spec| spec.ports.as_mut().unwrap()[0].protocol = Some(bad.into()));
        assert_eq!(
            err(service(&s)),
            format!("spec.ports[0].protocol: unknown protocol {bad:?}")
        );
    }
}

#[test]
fn port_names_must_be_unique() {
    let s = with(|spec| spec.ports = Some(vec![port("http", 80), port("http", 81)]));
    assert_eq!(
        err(service(&s)),
        "spec.ports[1].name: duplicate port name \"http\""
    );
}

#[test]
fn every_port_of_a_multi_port_service_is_named() {
    let s = with(|spec| spec.ports = Some(vec![port("http", 80), port("", 81)]));
    assert_eq!(
        err(service(&s)),
        "spec.ports[1].name: is required when the service has more than one port"
    );
    let single = with(|spec| spec.ports = Some(vec![port("", 80)]));
    assert_eq!(service(&single), Ok(()));
}

#[test]
fn the_same_port_and_protocol_twice_is_rejected() {
    let s = with(|spec| spec.ports = Some(vec![port("a", 80), port("b", 80)]));
    assert_eq!(err(service(&s)), "spec.ports[1]: duplicate port 80/TCP");
    let udp = with(|spec| {
        let mut dns = port("dns-udp", 53);
        dns.protocol = Some("UDP".into());
        spec.ports = Some(vec![port("dns-tcp", 53), dns]);
    });
    assert_eq!(service(&udp), Ok(()));
}

#[test]
fn session_affinity_must_be_none_or_client_ip() {
    for ok in ["None", "ClientIP"] {
        let s = with(|spec| spec.session_affinity = Some(ok.into()));
        assert_eq!(service(&s), Ok(()));
    }
    let s = with(|spec| spec.session_affinity = Some("Cookie".into()));
    assert_eq!(
        err(service(&s)),
        "spec.sessionAffinity: unknown session affinity \"Cookie\" (None or ClientIP)"
    );
}

#[test]
fn affinity_timeout_must_be_between_one_second_and_one_day() {
    for (t, ok) in [
        (0, false),
        (1, true),
        (10800, true),
        (86400, true),
        (86401, false),
    ] {
        let s = with(|spec| {
            spec.session_affinity = Some("ClientIP".into());
            spec.session_affinity_config = Some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(t),
                }),
            });
        });
        if ok {
            assert_eq!(service(&s), Ok(()));
        } else {
            assert_eq!(
                err(service(&s)),
                format!(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} is not in 1..=86400"
                )
            );
        }
    }
}

#[test]
fn external_ips_must_be_ips() {
    let s = with(|spec| {
        spec.external_ips = Some(vec!["192.0.2.1".into(), "example.com".into()]);
    });
    assert_eq!(
        err(service(&s)),
        "spec.externalIPs[1]: \"example.com\" is not an IP address"
    );
}

#[test]
fn traffic_policies_must_be_cluster_or_local() {
    let s = with(|spec| spec.internal_traffic_policy = Some("PreferLocal".into()));
    assert_eq!(
        err(service(&s)),
        "spec.internalTrafficPolicy: unknown traffic policy \"PreferLocal\" (Cluster or Local)"
    );
    let s = with(|spec| spec.external_traffic_policy = Some("Global".into()));
    assert_eq!(
        err(service(&s)),
        "spec.externalTrafficPolicy: unknown traffic policy \"Global\" (Cluster or Local)"
    );
    let s = with(|spec| spec.internal_traffic_policy = Some("Local".into()));
    assert_eq!(service(&s), Ok(()));
}
