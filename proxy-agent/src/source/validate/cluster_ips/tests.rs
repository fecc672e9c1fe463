//! `clusterIP`, `clusterIPs` and `ipFamilies`.

use crate::source::validate::service;
use crate::source::validate::test_support::*;

#[test]
fn cluster_ip_must_be_an_ip_none_or_empty() {
    for (ip, ok) in [
        ("10.96.0.10", true),
        ("fd00::10", true),
        ("None", true),
        ("", true),
        ("10.96.0.300", false),
        ("none", false),
        ("web", false),
    ] {
        let s = with(|spec| {
            spec.cluster_ip = Some(ip.into());
            spec.cluster_ips = None;
            spec.ip_families = None;
        });
        if ok {
            assert_eq!(service(&s), Ok(()), "{ip}");
        } else {
            assert_eq!(
                err(service(&s)),
                format!("spec.clusterIP: {ip:?} is not an IP address, \"None\" or empty")
            );
        }
    }
}

#[test]
fn cluster_ips_entries_must_be_ips() {
    let s = with(|spec| {
        spec.cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::zz".into()]);
        spec.ip_families = None;
    });
    assert_eq!(
        err(service(&s)),
        "spec.clusterIPs[1]: \"fd00::zz\" is not an IP address or \"None\""
    );
}

#[test]
fn cluster_ips_may_hold_one_address_per_family() {
    let dual = with(|spec| {
        spec.cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
        spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
    });
    assert_eq!(service(&dual), Ok(()));
    let same = with(|spec| {
        spec.cluster_ips = Some(vec!["10.96.0.10".into(), "10.96.0.11".into()]);
        spec.ip_families = None;
    });
    assert_eq!(
        err(service(&same)),
        "spec.clusterIPs[1]: 10.96.0.11 is a second IPv4 address; dual-stack needs one of each family"
    );
    let three = with(|spec| {
        spec.cluster_ips = Some(vec![
            "10.96.0.10".into(),
            "fd00::10".into(),
            "fd00::11".into(),
        ]);
    });
    assert_eq!(
        err(service(&three)),
        "spec.clusterIPs: 3 entries; at most 2 (one per IP family) are allowed"
    );
}

#[test]
fn cluster_ips_first_entry_must_match_cluster_ip() {
    let s = with(|spec| spec.cluster_ips = Some(vec!["10.96.0.11".into()]));
    assert_eq!(
        err(service(&s)),
        "spec.clusterIPs[0]: \"10.96.0.11\" does not match spec.clusterIP \"10.96.0.10\""
    );
}

#[test]
fn none_must_be_the_only_cluster_ip() {
    let s = with(|spec| {
        spec.cluster_ip = Some("None".into());
        spec.cluster_ips = Some(vec!["None".into(), "fd00::10".into()]);
        spec.ip_families = None;
    });
    assert_eq!(
        err(service(&s)),
        "spec.clusterIPs[0]: \"None\" must be the only entry"
    );
}

#[test]
fn ip_families_must_be_known_distinct_and_match_the_cluster_ips() {
    let unknown = with(|spec| spec.ip_families = Some(vec!["IPv5".into()]));
    assert_eq!(
        err(service(&unknown)),
        "spec.ipFamilies[0]: unknown IP family \"IPv5\" (IPv4 or IPv6)"
    );
    let twice = with(|spec| {
        spec.cluster_ips = None;
        spec.ip_families = Some(vec!["IPv4".into(), "IPv4".into()]);
    });
    assert_eq!(
        err(service(&twice)),
        "spec.ipFamilies[1]: IPv4 is listed twice"
    );
    let mismatch = with(|spec| spec.ip_families = Some(vec!["IPv6".into()]));
    assert_eq!(
        err(service(&mismatch)),
        "spec.ipFamilies[0]: IPv6 does not match the cluster IP's family IPv4"
    );
    let too_many = with(|spec| {
        spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into(), "IPv4".into()]);
    });
    assert_eq!(
        err(service(&too_many)),
        "spec.ipFamilies: 3 entries; at most 2 are allowed"
    );
    // A headless dual-stack service lists families but no addresses.
    let headless = with(|spec| {
        spec.cluster_ip = Some("None".into());
        spec.cluster_ips = Some(vec!["None".into()]);
        spec.ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
    });
    assert_eq!(service(&headless), Ok(()));
}

#[test]
fn an_unspecified_cluster_ip_is_rejected() {
    let s = with(|spec| {
        spec.cluster_ip = Some("0.0.0.0".into());
        spec.cluster_ips = None;
    });
    assert_eq!(
        err(service(&s)),
        "spec.clusterIP: \"0.0.0.0\" is the unspecified address"
    );
    let s = with(|spec| {
        spec.cluster_ip = None;
        spec.cluster_ips = Some(vec!["::".into()]);
        spec.ip_families = None;
    });
    assert_eq!(
        err(service(&s)),
        "spec.clusterIPs[0]: \"::\" is the unspecified address"
    );
}
