use std::net::{IpAddr, SocketAddr};

use netlink_packet_sock_diag::inet::SocketId;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn be(s: &str) -> Backend {
    let a: SocketAddr = s.parse().expect("test address");
    Backend {
        addr: Addr::from(a.ip()),
        port_be: a.port().to_be(),
        proto: proto::UDP,
        flags: 0,
    }
}

fn dns() -> model::FrontendKey {
    model::FrontendKey::internal(ip("10.96.0.10"), 53, Protocol::Udp)
}

/// A socket connected to `peer`, with cookie `cookie`.
fn socket(peer: &str, cookie: u64) -> ConnectedUdp {
    let peer: SocketAddr = peer.parse().expect("test address");
    let mut id = if peer.is_ipv4() {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    id.destination_address = peer.ip();
    id.destination_port = peer.port();
    id.source_port = 40000;
    let lo = (cookie as u32).to_ne_bytes();
    let hi = ((cookie >> 32) as u32).to_ne_bytes();
    id.cookie = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]];
    ConnectedUdp {
        family: if peer.is_ipv4() { 2 } else { 10 },
        id,
    }
}

/// What the connect hook records for a socket balanced by `vip:port` (service `id`).
fn rev(vip: &str, port: u16, service_id: u32) -> RevSockValue {
    RevSockValue {
        addr: Addr::from(ip(vip)),
        port_be: port.to_be(),
        proto: proto::UDP,
        _pad: 0,
        service_id,
    }
}

#[test]
fn backends_that_leave_or_whose_frontend_goes_are_departures_those_that_stay_are_not() {
    let a = be("10.244.0.11:5353");
    let b = be("10.244.0.12:5353");
    let left = departures(&dns(), Some((7, vec![a, b])), Some((7, vec![b])));
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].backend, a);
    assert_eq!(
        (left[0].service_id, left[0].vip_port_be),
        (7, 53u16.to_be())
    );
    assert_eq!(left[0].vip, Addr::from(ip("10.96.0.10")));

    let gone = departures(&dns(), Some((7, vec![a, b, a])), None);
    assert_eq!(
        gone.len(),
        2,
        "one departure per backend, however many slots"
    );
    let new_id = departures(&dns(), Some((7, vec![a])), Some((9, vec![a])));
    assert_eq!(new_id.len(), 1, "a new service id is a new service");
    assert!(departures(&dns(), None, Some((7, vec![a]))).is_empty());
    assert!(departures(&dns(), Some((7, vec![a])), Some((7, vec![a]))).is_empty());
}

#[test]
fn only_internal_udp_frontends_are_watched() {
    let a = be("10.244.0.11:5353");
    let tcp = model::FrontendKey::internal(ip("10.96.0.10"), 53, Protocol::Tcp);
    assert!(departures(&tcp, Some((7, vec![a])), None).is_empty());
    let external = model::FrontendKey {
        scope: Scope::External,
        ..dns()
    };
    assert!(!watched(&external));
    assert!(departures(&external, Some((7, vec![a])), None).is_empty());
}

#[test]
fn a_socket_is_stale_only_if_rev_sock_says_the_departed_frontend_sent_it_there() {
    let a = be("10.244.0.11:5353");
    let departed = Departed::new(&departures(&dns(), Some((7, vec![a])), None));
    assert_eq!(departed.len(), 1);
    let s = socket("10.244.0.11:5353", 0x1_0000_0002);

    // Balanced by the departed frontend: the key is this socket's cookie and peer.
    let hit = departed.stale(&s, |k| {
        assert_eq!(k.cookie, 0x1_0000_0002);
        assert_eq!((k.addr, k.port_be), (a.addr, a.port_be));
        Some(rev("10.96.0.10", 53, 7))
    });
    assert_eq!(hit.map(|d| d.backend), Some(a));

    // Not balanced by us (no entry), by another service that keeps the backend, by a
    // reused id at another VIP, or a TCP entry: left alone.
    assert_eq!(departed.stale(&s, |_| None), None);
    assert_eq!(departed.stale(&s, |_| Some(rev("10.96.0.20", 53, 8))), None);
    assert_eq!(departed.stale(&s, |_| Some(rev("10.96.0.10", 53, 8))), None);
    let tcp = RevSockValue {
        proto: proto::TCP,
        ..rev("10.96.0.10", 53, 7)
    };
    assert_eq!(departed.stale(&s, |_| Some(tcp)), None);
    // Connected elsewhere: REV_SOCK is not even asked.
    let other = socket("10.244.0.12:5353", 3);
    assert_eq!(departed.stale(&other, |_| panic!("looked up")), None);
}

#[test]
fn an_ipv6_socket_talking_ipv4_mapped_matches_its_ipv4_backend() {
    let a = be("10.244.0.11:5353");
    let departed = Departed::new(&departures(&dns(), Some((7, vec![a])), None));
    let s = socket("[::ffff:10.244.0.11]:5353", 9);
    let hit = departed.stale(&s, |k| {
        assert_eq!(k.addr, a.addr, "the mapped address is the backend's Addr");
        Some(rev("10.96.0.10", 53, 7))
    });
    assert!(hit.is_some());
}
