//! Byte layouts derived from `include/uapi/linux/netfilter/ipset/ip_set.h` and
//! `<linux/netfilter/nfnetlink.h>`; `nlmsghdr` fields are host order (little-endian
//! on the machines that run these tests), ipset's own integers network order.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_MULTIPART, NLM_F_REQUEST};

use super::*;
use crate::dataplane::DataplaneError;
use crate::dataplane::ipvs::netlink::error::{IpsetErrno, IpsetError};
use crate::dataplane::ipvs::netlink::ipset_conn::Ipset;
use crate::dataplane::ipvs::netlink::socket::encode;
use crate::dataplane::ipvs::netlink::socket::tests::{Script, done, error, message};

fn vip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10))
}

#[cfg(target_endian = "little")]
#[test]
fn create_hash_ip_port_inet_with_comments_is_laid_out_as_the_kernel_reads_it() {
    let mut spec = SetSpec::new("KUBE-CLUSTER-IP", SetType::HashIpPort, SetFamily::Inet);
    spec.hashsize = Some(1024);
    spec.maxelem = Some(65536);
    let bytes = encode(
        create(&spec),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        1,
    );
    #[rustfmt::skip]
    let expected: Vec<u8> = vec![
        // nlmsghdr: len 112, type (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_CREATE = 0x0602,
        // flags REQUEST|ACK|EXCL|CREATE = 0x0605, seq 1, pid 0
        112, 0, 0, 0,  0x02, 0x06,  0x05, 0x06,  1, 0, 0, 0,  0, 0, 0, 0,
        // nfgenmsg: family AF_INET, version NFNETLINK_V0, res_id 0
        2, 0, 0, 0,
        // IPSET_ATTR_PROTOCOL (1), len 5: u8 7, padding
        5, 0, 1, 0,  7,  0, 0, 0,
        // IPSET_ATTR_SETNAME (2), len 20: "KUBE-CLUSTER-IP\0"
        20, 0, 2, 0,
        b'K', b'U', b'B', b'E', b'-', b'C', b'L', b'U', b'S', b'T', b'E', b'R', b'-', b'I', b'P', 0,
        // IPSET_ATTR_TYPENAME (3), len 17: "hash:ip,port\0", 3 bytes padding
        17, 0, 3, 0,
        b'h', b'a', b's', b'h', b':', b'i', b'p', b',', b'p', b'o', b'r', b't', 0,  0, 0, 0,
        // IPSET_ATTR_REVISION (4), len 5: 3 (the first with comments), padding
        5, 0, 4, 0,  3,  0, 0, 0,
        // IPSET_ATTR_FAMILY (5), len 5: NFPROTO_IPV4 (2), padding
        5, 0, 5, 0,  2,  0, 0, 0,
        // IPSET_ATTR_DATA (7) | NLA_F_NESTED, len 28
        28, 0, 7, 0x80,
        //   IPSET_ATTR_HASHSIZE (18) | NLA_F_NET_BYTEORDER: be32 1024
        8, 0, 18, 0x40,  0, 0, 0x04, 0,
        //   IPSET_ATTR_MAXELEM (19) | NLA_F_NET_BYTEORDER: be32 65536
        8, 0, 19, 0x40,  0, 1, 0, 0,
        //   IPSET_ATTR_CADT_FLAGS (8) | NLA_F_NET_BYTEORDER: IPSET_FLAG_WITH_COMMENT
        8, 0, 8, 0x40,  0, 0, 0, 0x10,
    ];
    assert_eq!(bytes, expected);
}

#[cfg(target_endian = "little")]
#[test]
fn add_of_a_vip_tcp_port_with_a_comment_nests_the_ip_and_flags_every_integer() {
    let entry = Entry::ip_port(vip(), Protocol::Tcp, 80).with_comment("ns/svc:http");
    let bytes = encode(
        member(Command::Add, "KUBE-CLUSTER-IP", &entry),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL,
        2,
    );
    #[rustfmt::skip]
    let expected: Vec<u8> = vec![
        // nlmsghdr: len 96, type 0x0609 (IPSET_CMD_ADD), flags REQUEST|ACK|EXCL, seq 2
        96, 0, 0, 0,  0x09, 0x06,  0x05, 0x02,  2, 0, 0, 0,  0, 0, 0, 0,
        // nfgenmsg
        2, 0, 0, 0,
        // IPSET_ATTR_PROTOCOL: 7
        5, 0, 1, 0,  7,  0, 0, 0,
        // IPSET_ATTR_SETNAME
        20, 0, 2, 0,
        b'K', b'U', b'B', b'E', b'-', b'C', b'L', b'U', b'S', b'T', b'E', b'R', b'-', b'I', b'P', 0,
        // IPSET_ATTR_DATA | NLA_F_NESTED, len 48
        48, 0, 7, 0x80,
        //   IPSET_ATTR_IP (1) | NLA_F_NESTED, len 12
        12, 0, 1, 0x80,
        //     IPSET_ATTR_IPADDR_IPV4 (1) | NLA_F_NET_BYTEORDER: 10.96.0.10
        8, 0, 1, 0x40,  10, 96, 0, 10,
        //   IPSET_ATTR_PORT (4) | NLA_F_NET_BYTEORDER: be16 80, padding
        6, 0, 4, 0x40,  0, 80,  0, 0,
        //   IPSET_ATTR_PROTO (7): u8 IPPROTO_TCP, padding
        5, 0, 7, 0,  6,  0, 0, 0,
        //   IPSET_ATTR_COMMENT (26), len 16: "ns/svc:http\0"
        16, 0, 26, 0,  b'n', b's', b'/', b's', b'v', b'c', b':', b'h', b't', b't', b'p', 0,
    ];
    assert_eq!(bytes, expected);
}

#[cfg(target_endian = "little")]
#[test]
fn del_sends_the_member_without_its_comment() {
    let entry = Entry::ip_port(vip(), Protocol::Udp, 53).with_comment("kube-dns");
    let bytes = encode(
        member(Command::Del, "KUBE-CLUSTER-IP", &entry),
        NLM_F_REQUEST | NLM_F_ACK,
        3,
    );
    #[rustfmt::skip]
    let data = [
        // IPSET_ATTR_DATA | NLA_F_NESTED, len 32: IP, PORT, PROTO and no COMMENT
        32, 0, 7, 0x80,
        12, 0, 1, 0x80,  8, 0, 1, 0x40,  10, 96, 0, 10,
        6, 0, 4, 0x40,  0, 53,  0, 0,
        5, 0, 7, 0,  17,  0, 0, 0,
    ];
    assert_eq!(bytes[4..6], [0x0a, 0x06]); // IPSET_CMD_DEL
    assert_eq!(bytes[6..8], [0x05, 0x00]); // REQUEST|ACK: a missing member is fine
    assert!(bytes.ends_with(&data), "{bytes:?}");
    assert_eq!(bytes.len(), 16 + 4 + 8 + 20 + 32);
}

#[test]
fn members_of_every_kube_proxy_type_carry_their_fields() {
    let net: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 0));
    let e = Entry::ip_port_net(vip(), Protocol::Tcp, 80, net, 24);
    assert_eq!(e.to_string(), "10.96.0.10,tcp:80,192.0.2.0/24");
    let data = attr::emit_all(&member(Command::Add, "S", &e).attrs);
    // IP2 (20) nested, with the IPv4 leaf, then CIDR2 (21) = 24.
    let ip2 = [
        12, 0, 20, 0x80, 8, 0, 1, 0x40, 192, 0, 2, 0, 5, 0, 21, 0, 24, 0, 0, 0,
    ];
    assert!(data.windows(ip2.len()).any(|w| w == ip2), "{data:?}");
    assert_eq!(Entry::net(net, 24).to_string(), "192.0.2.0/24");
    assert_eq!(Entry::port(30080).to_string(), "30080");
    let v6: IpAddr = "fd00::1".parse().unwrap_or(vip());
    let data = attr::emit_all(&member(Command::Add, "S", &Entry::ip(v6)).attrs);
    // An IPv6 leaf is IPSET_ATTR_IPADDR_IPV6 (2), with the byte-order flag like IPv4's
    // (the kernel refuses it without: IPSET_ERR_PROTOCOL, seen in the VM test).
    let leaf = [20, 0, 2, 0x40, 0xfd, 0];
    assert!(data.windows(leaf.len()).any(|w| w == leaf), "{data:?}");
}

#[test]
fn a_bitmap_port_set_is_created_family_less_over_every_port() {
    let spec = SetSpec::new("KUBE-NODE-PORT-TCP", SetType::BitmapPort, SetFamily::Inet);
    let attrs = attr::emit_all(&create(&spec).attrs);
    // FAMILY NFPROTO_UNSPEC; DATA: PORT 0, PORT_TO 65535, CADT_FLAGS comment.
    assert!(attrs.windows(8).any(|w| w == [5, 0, 5, 0, 0, 0, 0, 0]));
    #[rustfmt::skip]
    let data = [
        28, 0, 7, 0x80,
        6, 0, 4, 0x40, 0, 0, 0, 0,
        6, 0, 5, 0x40, 0xff, 0xff, 0, 0,
        8, 0, 8, 0x40, 0, 0, 0, 0x10,
    ];
    assert!(attrs.ends_with(&data), "{attrs:?}");
}

/// A LIST reply message for `name`, with `attrs` after SETNAME.
fn list_part(seq: u32, name: &str, attrs: Vec<Attr>) -> Vec<u8> {
    let mut all = vec![Attr::u8(1, 7), Attr::string(2, name)];
    all.extend(attrs);
    let mut payload = vec![2, 0, 0, 0];
    payload.extend(attr::emit_all(&all));
    message(0x0607, NLM_F_MULTIPART, seq, &payload)
}

fn ip_leaf(ip: Ipv4Addr) -> Attr {
    Attr::nested(1, vec![Attr::bytes(1 | 0x4000, ip.octets())])
}

#[test]
fn a_listing_split_over_messages_is_joined_with_its_members() {
    let member_a = Attr::nested(
        7,
        vec![
            ip_leaf(Ipv4Addr::new(10, 96, 0, 10)),
            Attr::net_u16(4, 80),
            Attr::u8(7, 6),
            Attr::string(26, "default/kubernetes:https"),
        ],
    );
    let member_b = Attr::nested(
        7,
        vec![
            ip_leaf(Ipv4Addr::new(10, 96, 0, 11)),
            Attr::net_u16(4, 53),
            Attr::u8(7, 17),
        ],
    );
    let mut first = list_part(
        2,
        "KUBE-CLUSTER-IP",
        vec![
            Attr::string(3, "hash:ip,port"),
            Attr::u8(4, 6),
            Attr::u8(5, 2),
            Attr::nested(
                7,
                vec![
                    Attr::net_u32(18, 1024),
                    Attr::net_u32(19, 65536),
                    Attr::net_u32(25, 1),
                    Attr::net_u32(24, 2),
                    Attr::net_u32(8, 0x10),
                ],
            ),
            Attr::nested(8, vec![member_a]),
        ],
    );
    first.extend(list_part(
        2,
        "KUBE-CLUSTER-IP",
        vec![Attr::nested(8, vec![member_b])],
    ));
    first.extend(done(2));
    let mut script = Script::default();
    script.replies.push_back(error(1, 0)); // the protocol probe's ack
    script.replies.push_back(first);
    let mut ipset = Ipset::over(script).unwrap_or_else(|e| panic!("{e}"));
    let set = ipset
        .list("KUBE-CLUSTER-IP")
        .unwrap_or_else(|e| panic!("{e}"));
    let Some(set) = set else {
        panic!("set not listed")
    };
    assert_eq!(set.kind, Some(SetType::HashIpPort));
    assert_eq!(set.family, Some(SetFamily::Inet));
    assert_eq!(set.revision, 6);
    assert_eq!((set.hashsize, set.maxelem), (Some(1024), Some(65536)));
    assert_eq!(
        (set.references, set.elements, set.comment),
        (1, Some(2), true)
    );
    assert_eq!(
        set.entries,
        vec![
            Entry::ip_port(vip(), Protocol::Tcp, 80).with_comment("default/kubernetes:https"),
            Entry::ip_port(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 11)), Protocol::Udp, 53),
        ]
    );
}

fn ipset_with(answers: Vec<Vec<u8>>) -> Ipset<Script> {
    let mut script = Script::default();
    script.replies.push_back(error(1, 0));
    script.replies.extend(answers);
    Ipset::over(script).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn ipset_error_codes_name_the_set_and_the_member() {
    let entry = Entry::ip_port(vip(), Protocol::Tcp, 80);
    let mut ipset = ipset_with(vec![
        error(2, 4103), // IPSET_ERR_EXIST
        error(3, 4352), // IPSET_ERR_HASH_FULL
        error(4, 4352), // IPSET_ERR_BITMAP_RANGE for a bitmap member
        error(5, 4097), // IPSET_ERR_PROTOCOL
        error(6, libc::ENOENT),
        error(7, 4100), // IPSET_ERR_BUSY
    ]);
    let e = ipset.add("KUBE-CLUSTER-IP", &entry, false);
    let Err(e) = e else {
        panic!("IPSET_ERR_EXIST accepted")
    };
    assert!(matches!(
        e,
        IpsetError::Kernel {
            code: IpsetErrno::Exist,
            ..
        }
    ));
    assert_eq!(
        e.to_string(),
        "ipset add KUBE-CLUSTER-IP 10.96.0.10,tcp:80: element already added, or not present (IPSET_ERR_EXIST)"
    );
    let e = ipset.add("KUBE-CLUSTER-IP", &entry, true);
    let Err(e) = e else {
        panic!("IPSET_ERR_HASH_FULL accepted")
    };
    assert!(matches!(
        DataplaneError::from(e),
        DataplaneError::Capacity { table: "ipset", .. }
    ));
    let e = ipset.add("KUBE-NODE-PORT-TCP", &Entry::port(30080), false);
    assert!(
        matches!(
            e,
            Err(IpsetError::Kernel {
                code: IpsetErrno::BitmapRange,
                ..
            })
        ),
        "{e:?}"
    );
    let e = ipset.flush("KUBE-CLUSTER-IP");
    assert!(
        matches!(
            e,
            Err(IpsetError::Kernel {
                code: IpsetErrno::Protocol,
                ..
            })
        ),
        "{e:?}"
    );
    let e = ipset.destroy("NOPE");
    let Err(e) = e else { panic!("ENOENT accepted") };
    assert_eq!(e.to_string(), "ipset destroy NOPE: no such set (ENOENT)");
    let e = ipset.destroy("KUBE-CLUSTER-IP");
    assert!(matches!(
        e,
        Err(IpsetError::Kernel {
            code: IpsetErrno::Busy,
            ..
        })
    ));
}

#[test]
fn test_answers_absent_members_with_false() {
    let entry = Entry::ip_port(vip(), Protocol::Tcp, 80);
    let mut ipset = ipset_with(vec![error(2, 0), error(3, 4103)]);
    assert_eq!(ipset.test("KUBE-CLUSTER-IP", &entry).ok(), Some(true));
    assert_eq!(ipset.test("KUBE-CLUSTER-IP", &entry).ok(), Some(false));
}

#[test]
fn a_kernel_without_ipset_is_told_to_load_it_and_bad_names_never_leave() {
    let mut script = Script::default();
    script.replies.push_back(error(1, libc::EINVAL));
    let Err(e) = Ipset::over(script) else {
        panic!("ipset found");
    };
    assert_eq!(
        e.to_string(),
        "the kernel has no ipset (nfnetlink subsystem 6 not registered): load the ip_set \
         module (modprobe ip_set)"
    );
    let dp = DataplaneError::from(e);
    assert!(matches!(dp, DataplaneError::Unavailable(_)), "{dp:?}");
    let mut ipset = ipset_with(Vec::new());
    let long = "A".repeat(32);
    let e = ipset.create(
        &SetSpec::new(&long, SetType::HashIp, SetFamily::Inet),
        false,
    );
    assert!(matches!(e, Err(IpsetError::Invalid { .. })), "{e:?}");
}

#[test]
fn every_generic_and_type_specific_code_round_trips() {
    for code in (4097..=4115).chain(4352..=4357) {
        let e = IpsetErrno::from_code(code, false);
        assert!(!matches!(e, IpsetErrno::Other(_)), "{code}");
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.name().starts_with("IPSET_ERR_"));
    }
    assert_eq!(
        IpsetErrno::from_code(4353, true),
        IpsetErrno::BitmapRangeSize
    );
    assert_eq!(IpsetErrno::from_code(4358, false), IpsetErrno::Other(4358));
    assert_eq!(
        IpsetErrno::from_code(libc::EEXIST, false),
        IpsetErrno::Os(libc::EEXIST)
    );
}
