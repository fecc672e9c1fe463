//! Parsing addresses and ranges.

#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;

#[test]
fn cidrs_parse_like_kube_proxy_and_are_normalized() {
    let net = |s: &str| parse_cidr(s).map(|n| n.to_string());
    assert_eq!(net("192.0.2.0/24").as_deref(), Some("192.0.2.0/24"));
    assert_eq!(net("192.0.2.77/24").as_deref(), Some("192.0.2.0/24"));
    assert_eq!(net("192.0.2.77").as_deref(), Some("192.0.2.77/32"));
    assert_eq!(net("  10.0.0.0/8 ").as_deref(), Some("10.0.0.0/8"));
    assert_eq!(net("010.000.0.0/8").as_deref(), Some("10.0.0.0/8"));
    assert_eq!(net("2001:db8::1/32").as_deref(), Some("2001:db8::/32"));
    assert_eq!(net("2001:db8::1").as_deref(), Some("2001:db8::1/128"));
    assert_eq!(net("::ffff:192.0.2.0/120").as_deref(), Some("192.0.2.0/24"));
    assert_eq!(net("::ffff:192.0.2.9").as_deref(), Some("192.0.2.9/32"));
    assert_eq!(net("0.0.0.0/0").as_deref(), Some("0.0.0.0/0"));
    for bad in [
        "",
        "/8",
        "10.0.0.0/33",
        "10.0.0.0/-1",
        "10.0.0.0/8/8",
        "fe80::1%eth0/64",
        "x",
    ] {
        assert_eq!(parse_cidr(bad), None, "{bad}");
    }
}

#[test]
fn ips_parse_like_kube_proxy() {
    assert_eq!(parse_ip("10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
    assert_eq!(parse_ip("010.000.0.01"), Some("10.0.0.1".parse().unwrap()));
    assert_eq!(
        parse_ip("::ffff:10.0.0.1"),
        Some("10.0.0.1".parse().unwrap())
    );
    assert_eq!(parse_ip("fd00::1"), Some("fd00::1".parse().unwrap()));
    for bad in ["", "10.0.0", "10.0.0.1.2", "10.0.0.256", "1.2.3.0004", "x"] {
        assert_eq!(parse_ip(bad), None, "{bad}");
    }
}
