//! The dump parser and conversation over a scripted transport: no kernel needed.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::VecDeque;
use std::net::IpAddr;
use std::num::NonZeroI32;

use netlink_packet_core::{DefaultNla, DoneMessage, ErrorMessage, NLM_F_MULTIPART};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteNextHop, RouteType};

use super::*;

/// One netlink message, as the kernel would frame it.
fn frame(payload: NetlinkPayload<RouteNetlinkMessage>, seq: u32, flags: u16) -> Vec<u8> {
    let mut msg = NetlinkMessage::new(NetlinkHeader::default(), payload);
    msg.finalize();
    msg.header.sequence_number = seq;
    msg.header.flags = flags;
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

fn entry(inner: RouteNetlinkMessage, seq: u32) -> Vec<u8> {
    frame(NetlinkPayload::InnerMessage(inner), seq, NLM_F_MULTIPART)
}

fn done(seq: u32, code: i32, flags: u16) -> Vec<u8> {
    let mut d = DoneMessage::default();
    d.code = code;
    frame(NetlinkPayload::Done(d), seq, NLM_F_MULTIPART | flags)
}

fn error(seq: u32, errno: i32) -> Vec<u8> {
    let mut e = ErrorMessage::default();
    e.code = NonZeroI32::new(-errno);
    e.header = vec![0; 16];
    frame(NetlinkPayload::Error(e), seq, 0)
}

fn link_msg(index: u32, name: &str, flags: LinkFlags) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = flags;
    m.attributes = vec![
        LinkAttribute::Mtu(1500),
        LinkAttribute::IfName(name.into()),
        // An attribute no parser knows: skipped, not fatal.
        LinkAttribute::Other(DefaultNla::new(0x3ff, vec![1, 2, 3])),
    ];
    m
}

fn link(index: u32, name: &str, seq: u32) -> Vec<u8> {
    entry(
        RouteNetlinkMessage::NewLink(link_msg(index, name, LinkFlags::Up)),
        seq,
    )
}

fn addr_msg(index: u32, attrs: &[AddressAttribute]) -> AddressMessage {
    let mut m = AddressMessage::default();
    let v4 = attrs
        .iter()
        .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(_))));
    m.header.family = if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.index = index;
    m.header.prefix_len = 24;
    m.attributes = attrs.to_vec();
    m
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn route_msg(
    v4: bool,
    dst_len: u8,
    table: u8,
    kind: RouteType,
    attrs: Vec<RouteAttribute>,
) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.destination_prefix_length = dst_len;
    m.header.table = table;
    m.header.kind = kind;
    m.attributes = attrs;
    m
}

fn bytes<M: Emitable>(m: &M) -> Vec<u8> {
    let mut buf = vec![0; m.buffer_len()];
    m.emit(&mut buf);
    buf
}

/// A kernel that answers from a script; `Err` entries are returned by the call.
#[derive(Default)]
struct Script {
    sent: Vec<Vec<u8>>,
    send_errors: VecDeque<io::Error>,
    replies: VecDeque<io::Result<Vec<u8>>>,
}

impl Script {
    fn replying(replies: Vec<Vec<u8>>) -> Self {
        Script {
            replies: replies.into_iter().map(Ok).collect(),
            ..Script::default()
        }
    }
}

impl Transport for Script {
    fn port(&self) -> u32 {
        0
    }

    fn send(&mut self, request: &[u8]) -> io::Result<()> {
        if let Some(e) = self.send_errors.pop_front() {
            return Err(e);
        }
        self.sent.push(request.to_vec());
        Ok(())
    }

    fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        let datagram = self
            .replies
            .pop_front()
            .unwrap_or_else(|| panic!("read past the end of the script"))?;
        *buf = datagram;
        Ok(())
    }
}

fn names(conn: &mut Conn<Script>) -> Vec<String> {
    conn.links().unwrap().into_iter().map(|l| l.name).collect()
}

#[test]
fn a_multi_part_dump_is_read_across_datagrams_to_its_done() {
    let first = [link(1, "lo", 1), link(2, "eth0", 1)].concat();
    let second = [link(3, "veth1", 1), done(1, 0, 0)].concat();
    let mut conn = Conn::new(Script::replying(vec![first, second]));
    assert_eq!(names(&mut conn), ["lo", "eth0", "veth1"]);
    assert!(conn.transport.replies.is_empty());
}

#[test]
fn the_request_is_a_dump_of_the_right_kind() {
    let mut conn = Conn::new(Script::replying(vec![done(1, 0, 0)]));
    assert!(conn.dump(Dump::Ipv6Routes).unwrap().is_empty());
    let sent = &conn.transport.sent[0];
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(sent).unwrap();
    assert_eq!(msg.header.flags, NLM_F_REQUEST | NLM_F_DUMP);
    assert_eq!(msg.header.sequence_number, 1);
    match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetRoute(r)) => {
            assert_eq!(r.header.address_family, AddressFamily::Inet6);
        }
        other => panic!("not an RTM_GETROUTE: {other:?}"),
    }
}

#[test]
fn a_signal_interrupting_send_or_recv_is_retried() {
    let mut script = Script::replying(vec![link(1, "lo", 1), done(1, 0, 0)]);
    script
        .send_errors
        .push_back(io::Error::from(io::ErrorKind::Interrupted));
    script
        .replies
        .push_front(Err(io::Error::from_raw_os_error(libc::EINTR)));
    let mut conn = Conn::new(script);
    assert_eq!(names(&mut conn), ["lo"]);
}

#[test]
fn stale_replies_of_another_request_are_skipped() {
    let datagram = [link(9, "stale", 0), link(1, "lo", 1), done(1, 0, 0)].concat();
    let mut conn = Conn::new(Script::replying(vec![datagram]));
    assert_eq!(names(&mut conn), ["lo"]);
}

#[test]
fn an_interrupted_dump_is_retried_then_given_up() {
    // The walk raced a change: NLM_F_DUMP_INTR, so the whole dump is redone.
    let mut conn = Conn::new(Script::replying(vec![
        [link(1, "lo", 1), done(1, 0, NLM_F_DUMP_INTR)].concat(),
        [link(1, "lo", 2), link(2, "new0", 2), done(2, 0, 0)].concat(),
    ]));
    assert_eq!(names(&mut conn), ["lo", "new0"]);

    let always: Vec<Vec<u8>> = (1..=5).map(|s| done(s, 0, NLM_F_DUMP_INTR)).collect();
    let mut conn = Conn::new(Script::replying(always));
    let e = conn.dump(Dump::Addresses).unwrap_err();
    assert!(
        matches!(
            e,
            RtnlError::Interrupted {
                dump: Dump::Addresses,
                attempts: 5
            }
        ),
        "{e:?}"
    );
}

#[test]
fn an_nlmsg_error_fails_the_dump_and_names_it() {
    let mut conn = Conn::new(Script::replying(vec![error(1, libc::EPERM)]));
    let e = conn.dump(Dump::Ipv6Routes).unwrap_err();
    let RtnlError::Kernel { dump, source } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(
        (*dump, source.raw_os_error()),
        (Dump::Ipv6Routes, Some(libc::EPERM))
    );
    assert!(
        e.to_string().starts_with("RTM_GETROUTE dump (IPv6): "),
        "{e}"
    );
    assert_eq!(e.metric_label(), "kernel");
}

#[test]
fn a_done_carrying_an_errno_fails_the_dump() {
    let datagram = [link(1, "lo", 1), done(1, -libc::ENOBUFS, 0)].concat();
    let mut conn = Conn::new(Script::replying(vec![datagram]));
    let e = conn.links().unwrap_err();
    assert!(
        matches!(&e, RtnlError::Kernel { dump: Dump::Links, source } if source.raw_os_error() == Some(libc::ENOBUFS)),
        "{e:?}"
    );
}

#[test]
fn a_truncated_message_is_a_decode_error_not_a_panic() {
    let mut datagram = link(1, "lo", 1);
    datagram.truncate(datagram.len() - 4);
    let mut conn = Conn::new(Script::replying(vec![datagram]));
    let e = conn.links().unwrap_err();
    assert!(
        matches!(
            e,
            RtnlError::Decode {
                dump: Dump::Links,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(parse_link(&[0; 3]).is_err());
    assert!(parse_address(&[]).is_err());
    assert!(parse_default_route(&[1]).is_err());
}

#[test]
fn links_addresses_and_default_routes_make_interfaces() {
    let links: Vec<Link> = [
        link_msg(1, "lo", LinkFlags::Up | LinkFlags::Loopback),
        link_msg(2, "eth0", LinkFlags::Up),
        link_msg(3, "tun0", LinkFlags::empty()),
        link_msg(4, "veth9", LinkFlags::Up),
    ]
    .iter()
    .map(|m| parse_link(&bytes(m)).unwrap().unwrap())
    .collect();
    assert_eq!(
        links[0],
        Link {
            index: 1,
            name: "lo".into(),
            loopback: true
        }
    );
    assert!(!links[1].loopback);

    use AddressAttribute::{Address, Local};
    let addrs: Vec<Addr> = [
        addr_msg(1, &[Address(ip("127.0.0.1")), Local(ip("127.0.0.1"))]),
        addr_msg(2, &[Address(ip("192.0.2.1")), Local(ip("192.0.2.1"))]),
        // Point to point: IFA_ADDRESS is the peer, IFA_LOCAL ours.
        addr_msg(3, &[Address(ip("10.9.0.2")), Local(ip("10.9.0.1"))]),
        // Listed twice (IPv4 and an alias): kept once.
        addr_msg(2, &[Address(ip("192.0.2.1"))]),
        addr_msg(1, &[Address(ip("::1"))]),
        addr_msg(2, &[Address(ip("2001:db8::1"))]),
        // Its link appeared after the link dump: left out.
        addr_msg(77, &[Address(ip("198.51.100.1"))]),
    ]
    .iter()
    .map(|m| parse_address(&bytes(m)).unwrap().unwrap())
    .collect();
    assert_eq!(addrs[2].ip, ip("10.9.0.1"));

    let main = RouteHeader::RT_TABLE_MAIN;
    let hop = |index: u32| {
        let mut h = RouteNextHop::default();
        h.interface_index = index;
        h
    };
    let routes = [
        route_msg(
            true,
            0,
            main,
            RouteType::Unicast,
            vec![RouteAttribute::Oif(2)],
        ),
        route_msg(
            false,
            0,
            main,
            RouteType::Unicast,
            vec![RouteAttribute::MultiPath(vec![hop(2), hop(4)])],
        ),
        // Not default routes, or not of the main table, or not unicast.
        route_msg(
            true,
            24,
            main,
            RouteType::Unicast,
            vec![RouteAttribute::Oif(3)],
        ),
        route_msg(
            true,
            0,
            100,
            RouteType::Unicast,
            vec![RouteAttribute::Oif(3)],
        ),
        route_msg(
            true,
            0,
            0,
            RouteType::Unicast,
            vec![RouteAttribute::Table(1000), RouteAttribute::Oif(3)],
        ),
        route_msg(
            false,
            0,
            main,
            RouteType::Unreachable,
            vec![RouteAttribute::Oif(1)],
        ),
    ];
    let oifs: Vec<u32> = routes
        .iter()
        .flat_map(|m| parse_default_route(&bytes(m)).unwrap())
        .collect();
    assert_eq!(oifs, [2, 2, 4]);

    let snap = assemble(links, addrs, &oifs);
    let got: Vec<(&str, u32, Vec<String>, bool)> = snap
        .interfaces
        .iter()
        .map(|i| {
            let addrs = i.addrs.iter().map(ToString::to_string).collect();
            (i.name.as_str(), i.index, addrs, i.loopback)
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(
        got,
        [
            ("lo", 1, s(&["127.0.0.1", "::1"]), true),
            ("eth0", 2, s(&["192.0.2.1", "2001:db8::1"]), false),
            ("tun0", 3, s(&["10.9.0.1"]), false),
            ("veth9", 4, s(&[]), false),
        ]
    );
    assert_eq!(
        snap.default_route_interfaces,
        ["eth0".to_string(), "veth9".to_string()].into()
    );
}

#[test]
fn only_routes_with_a_prefix_are_ignored_as_notifications() {
    let route = |dst_len| {
        let m = route_msg(
            true,
            dst_len,
            RouteHeader::RT_TABLE_MAIN,
            RouteType::Unicast,
            vec![RouteAttribute::Oif(2)],
        );
        frame(
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(m)),
            0,
            0,
        )
    };
    let pod_route = route(32);
    assert!(!notification_matters(&pod_route));
    assert!(!notification_matters(&[]));
    assert!(notification_matters(&route(0)));
    assert!(notification_matters(&link(5, "veth5", 0)));
    let addr = addr_msg(5, &[AddressAttribute::Address(ip("10.0.0.1"))]);
    let addr = frame(
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(addr)),
        0,
        0,
    );
    assert!(notification_matters(&addr));
    // Anything in the datagram that matters makes it matter.
    assert!(notification_matters(&[pod_route.clone(), addr].concat()));
    // Truncated or garbage: counted, never ignored.
    assert!(notification_matters(&pod_route[..20]));
    assert!(notification_matters(&[0xff; 7]));
}
