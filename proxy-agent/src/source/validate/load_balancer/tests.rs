//! Source ranges and load balancer ingress.

#![allow(clippy::unwrap_used, reason = "tests")]

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus};

use crate::source::validate::service;
use crate::source::validate::test_support::*;

fn load_balancer_with(f: impl FnOnce(&mut Service)) -> Service {
    let mut s = with(|spec| spec.type_ = Some("LoadBalancer".into()));
    f(&mut s);
    s
}

fn ranges(list: &[&str]) -> Service {
    load_balancer_with(|s| {
        s.spec.as_mut().unwrap().load_balancer_source_ranges =
            Some(list.iter().map(|r| r.to_string()).collect());
    })
}

#[test]
fn load_balancer_source_ranges_must_be_cidrs_or_addresses() {
    let ok = ranges(&[
        "192.0.2.0/24",
        " 198.51.100.7 ",
        "2001:db8::/32",
        "0.0.0.0/0",
    ]);
    assert_eq!(service(&ok), Ok(()));
    for bad in [
        "192.0.2.0/33",
        "2001:db8::/129",
        "192.0.2.0/",
        "192.0.2.0/+8",
        "192.0.2/24",
        "example.com/24",
        "",
        "10.0.0.0/8,10.1.0.0/16",
    ] {
        let s = ranges(&["192.0.2.0/24", bad]);
        assert_eq!(
            err(service(&s)),
            format!(
                "spec.loadBalancerSourceRanges[1]: {bad:?} is not a CIDR (address/prefix) or an IP address; the service is not served rather than served to more sources than it allows"
            )
        );
    }
}

#[test]
fn load_balancer_source_ranges_need_a_load_balancer() {
    let s = with(|spec| {
        spec.type_ = Some("NodePort".into());
        spec.load_balancer_source_ranges = Some(vec!["192.0.2.0/24".into()]);
    });
    assert_eq!(
        err(service(&s)),
        "spec.loadBalancerSourceRanges: may only be set on a service of type LoadBalancer, not NodePort"
    );
    let empty = with(|spec| spec.load_balancer_source_ranges = Some(vec![]));
    assert_eq!(service(&empty), Ok(()));
}

fn ingress(ip: Option<&str>, mode: Option<&str>) -> Service {
    load_balancer_with(|s| {
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![
                    LoadBalancerIngress {
                        hostname: Some("lb.example.com".into()),
                        ..Default::default()
                    },
                    LoadBalancerIngress {
                        ip: ip.map(Into::into),
                        ip_mode: mode.map(Into::into),
                        ..Default::default()
                    },
                ]),
            }),
            ..Default::default()
        });
    })
}

#[test]
fn load_balancer_ingress_ips_must_be_ips_with_a_known_mode() {
    for (ip, mode) in [
        (Some("192.0.2.10"), None),
        (Some("192.0.2.10"), Some("VIP")),
        (Some("2001:db8::10"), Some("Proxy")),
        (None, None),
        (Some(""), None),
    ] {
        assert_eq!(service(&ingress(ip, mode)), Ok(()), "{ip:?} {mode:?}");
    }
    assert_eq!(
        err(service(&ingress(Some("192.0.2.300"), None))),
        "status.loadBalancer.ingress[1].ip: \"192.0.2.300\" is not an IP address"
    );
    assert_eq!(
        err(service(&ingress(Some("192.0.2.10"), Some("Tunnel")))),
        "status.loadBalancer.ingress[1].ipMode: unknown IP mode \"Tunnel\" (VIP or Proxy)"
    );
}
