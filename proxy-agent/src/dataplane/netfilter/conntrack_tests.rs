use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_MULTIPART, NlaBuffer, NlasIterator};

use super::*;
use crate::dataplane::ipvs::netlink::socket::tests::{done, error, message};
use crate::dataplane::netfilter::test_support::{Recorder, nest, nfgenmsg, nla};

// `enum ctattr_type`, `enum ctattr_tuple`, `enum ctattr_ip`, `enum ctattr_l4proto`,
// `enum ctattr_protoinfo(_tcp)` from nfnetlink_conntrack.h.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_USE: u16 = 11;
const CTA_ID: u16 = 12;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
/// `IPCTNL_MSG_CT_NEW` in subsystem 1, as dump entries arrive.
const CT_NEW: u16 = 0x100;

fn v4_tuple(kind: u16, src: [u8; 4], dst: [u8; 4], proto: u8, ports: (u16, u16)) -> Vec<u8> {
    nest(
        kind,
        &[
            nest(
                CTA_TUPLE_IP,
                &[nla(CTA_IP_V4_SRC, &src), nla(CTA_IP_V4_DST, &dst)],
            ),
            nest(
                CTA_TUPLE_PROTO,
                &[
                    nla(CTA_PROTO_NUM, &[proto]),
                    nla(CTA_PROTO_SRC_PORT, &ports.0.to_be_bytes()),
                    nla(CTA_PROTO_DST_PORT, &ports.1.to_be_bytes()),
                ],
            ),
        ],
    )
}

/// A DNATed TCP connection as `ctnetlink_fill_info` sends it: client 10.0.0.1:40000
/// to the VIP 10.96.0.10:80, answered by the backend 10.244.1.5:8080.
fn dnat_entry(zone: Option<u16>) -> Vec<u8> {
    let mut payload = nfgenmsg(2, 0);
    payload.extend(v4_tuple(
        CTA_TUPLE_ORIG,
        [10, 0, 0, 1],
        [10, 96, 0, 10],
        6,
        (40000, 80),
    ));
    payload.extend(v4_tuple(
        CTA_TUPLE_REPLY,
        [10, 244, 1, 5],
        [10, 0, 0, 1],
        6,
        (8080, 40000),
    ));
    if let Some(zone) = zone {
        payload.extend(nla(CTA_ZONE, &zone.to_be_bytes()));
    }
    // SEEN_REPLY | ASSURED | CONFIRMED | DST_NAT | DST_NAT_DONE.
    payload.extend(nla(CTA_STATUS, &0x12eu32.to_be_bytes()));
    payload.extend(nla(CTA_TIMEOUT, &431_999u32.to_be_bytes()));
    payload.extend(nla(CTA_MARK, &0x4000u32.to_be_bytes()));
    payload.extend(nla(CTA_USE, &1u32.to_be_bytes()));
    payload.extend(nla(CTA_ID, &0xdead_beefu32.to_be_bytes()));
    payload.extend(nest(
        CTA_PROTOINFO,
        &[nest(
            CTA_PROTOINFO_TCP,
            &[nla(CTA_PROTOINFO_TCP_STATE, &[3])],
        )],
    ));
    payload
}

#[test]
fn a_dnat_entry_decodes_into_its_tuples_state_status_mark_timeout_and_zone() {
    let entry = parse_entry(CT_NEW, &dnat_entry(Some(7))).unwrap_or_else(|e| panic!("{e}"));
    let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    assert_eq!(entry.family, Family::Ipv4);
    assert_eq!(
        entry.original,
        Tuple {
            protocol: Proto::TCP,
            src: v4(10, 0, 0, 1),
            dst: v4(10, 96, 0, 10),
            src_port: 40000,
            dst_port: 80,
            icmp: None,
        }
    );
    assert_eq!(entry.reply.source().to_string(), "10.244.1.5:8080");
    assert_eq!(entry.tcp_state.map(TcpState::name), Some("ESTABLISHED"));
    assert_eq!(
        entry.status.names(),
        [
            "SEEN_REPLY",
            "ASSURED",
            "CONFIRMED",
            "DST_NAT",
            "DST_NAT_DONE"
        ]
    );
    assert!(entry.status.has(Status::DST_NAT | Status::ASSURED));
    assert_eq!(
        (entry.mark, entry.timeout_s, entry.zone),
        (0x4000, 431_999, 7)
    );
    // The zone is sent only when not 0.
    let entry = parse_entry(CT_NEW, &dnat_entry(None)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entry.zone, 0);
}

#[test]
fn an_icmpv6_entry_keeps_its_id_type_and_code() {
    let a = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    let b = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    let tuple = |kind, src: Ipv6Addr, dst: Ipv6Addr, icmp_type| {
        nest(
            kind,
            &[
                nest(
                    CTA_TUPLE_IP,
                    &[
                        nla(CTA_IP_V6_SRC, &src.octets()),
                        nla(CTA_IP_V6_DST, &dst.octets()),
                    ],
                ),
                nest(
                    CTA_TUPLE_PROTO,
                    &[
                        nla(CTA_PROTO_NUM, &[58]),
                        nla(7, &0x1234u16.to_be_bytes()),
                        nla(8, &[icmp_type]),
                        nla(9, &[0]),
                    ],
                ),
            ],
        )
    };
    let mut payload = nfgenmsg(10, 0);
    payload.extend(tuple(CTA_TUPLE_ORIG, a, b, 128));
    payload.extend(tuple(CTA_TUPLE_REPLY, b, a, 129));
    let entry = parse_entry(CT_NEW, &payload).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entry.family, Family::Ipv6);
    assert_eq!(entry.tcp_state, None);
    assert_eq!(
        entry.original.icmp,
        Some(Icmp {
            id: 0x1234,
            kind: 128,
            code: 0
        })
    );
    assert_eq!(
        entry.original.to_string(),
        "icmpv6 fd00::1 -> fd00::2 type 128 code 0 id 4660"
    );
}

#[test]
fn an_entry_without_its_reply_tuple_or_of_another_subsystem_is_refused() {
    let mut payload = nfgenmsg(2, 0);
    payload.extend(v4_tuple(
        CTA_TUPLE_ORIG,
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        17,
        (1, 2),
    ));
    let e = parse_entry(CT_NEW, &payload).err().unwrap_or_default();
    assert_eq!(e, "no CTA_TUPLE_REPLY");
    let e = parse_entry(0x600, &dnat_entry(None))
        .err()
        .unwrap_or_default();
    assert!(e.contains("not ctnetlink's"), "{e}");
    let e = parse_entry(CT_NEW, &[2, 0]).err().unwrap_or_default();
    assert!(!e.is_empty());
}

/// The attributes of a request (after `nlmsghdr` and `nfgenmsg`) as (type, value).
fn attrs(buf: &[u8]) -> Vec<(u16, Vec<u8>)> {
    NlasIterator::new(buf)
        .map(|nla| {
            let nla: NlaBuffer<&[u8]> = nla.unwrap_or_else(|e| panic!("{e}"));
            (nla.kind(), nla.value().to_vec())
        })
        .collect()
}

#[test]
fn a_dump_asks_for_both_families_and_decodes_every_entry() {
    let mut script = Recorder::default();
    let sent = std::rc::Rc::clone(&script.sent);
    let mut datagram = message(CT_NEW, NLM_F_MULTIPART, 1, &dnat_entry(None));
    datagram.extend(message(CT_NEW, NLM_F_MULTIPART, 1, &dnat_entry(Some(2))));
    datagram.extend(done(1));
    script.replies.push_back(datagram);
    let mut ct = Ctnetlink::over(script);
    let entries = ct.dump().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entries.iter().map(|e| e.zone).collect::<Vec<_>>(), [0, 2]);
    let sent = sent.borrow();
    let request = &sent[0];
    // nlmsghdr: IPCTNL_MSG_CT_GET in subsystem 1, NLM_F_REQUEST | NLM_F_DUMP; then a
    // nfgenmsg of AF_UNSPEC and no attributes.
    assert_eq!(request.len(), 20);
    assert_eq!(&request[4..6], &0x101u16.to_ne_bytes());
    assert_eq!(&request[6..8], &0x301u16.to_ne_bytes());
    assert_eq!(&request[16..20], &[0, 0, 0, 0]);
}

#[test]
fn a_delete_sends_the_original_tuple_in_its_family_and_the_zone() {
    let mut script = Recorder::default();
    let sent = std::rc::Rc::clone(&script.sent);
    script.replies.push_back(error(1, 0));
    script.replies.push_back(error(2, libc::ENOENT));
    let mut ct = Ctnetlink::over(script);
    let tuple = Tuple::ports(
        Proto::UDP,
        "10.0.0.1:5353".parse().unwrap_or_else(|e| panic!("{e}")),
        "10.96.0.53:53".parse().unwrap_or_else(|e| panic!("{e}")),
    );
    ct.delete(&tuple, 3).unwrap_or_else(|e| panic!("{e}"));
    let gone = ct.delete(&tuple, 0);
    assert!(
        matches!(&gone, Err(NetfilterError::NotFound { tuple }) if tuple == "udp 10.0.0.1:5353 -> 10.96.0.53:53"),
        "{gone:?}"
    );
    let sent = sent.borrow();
    let request = &sent[0];
    // IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, nfgenmsg AF_INET.
    assert_eq!(&request[4..6], &0x102u16.to_ne_bytes());
    assert_eq!(&request[6..8], &5u16.to_ne_bytes());
    assert_eq!(&request[16..20], &[2, 0, 0, 0]);
    let top = attrs(&request[20..]);
    assert_eq!(top.len(), 2);
    assert_eq!(
        (top[1].0, top[1].1.as_slice()),
        (CTA_ZONE, &3u16.to_be_bytes()[..])
    );
    assert_eq!(top[0].0, CTA_TUPLE_ORIG);
    let orig = attrs(&top[0].1);
    assert_eq!(
        attrs(&orig[0].1),
        [
            (CTA_IP_V4_SRC, vec![10, 0, 0, 1]),
            (CTA_IP_V4_DST, vec![10, 96, 0, 53])
        ]
    );
    assert_eq!(
        attrs(&orig[1].1),
        [
            (CTA_PROTO_NUM, vec![17]),
            (CTA_PROTO_SRC_PORT, 5353u16.to_be_bytes().to_vec()),
            (CTA_PROTO_DST_PORT, 53u16.to_be_bytes().to_vec())
        ]
    );
    // Zone 0 is not sent.
    assert_eq!(attrs(&sent[1][20..]).len(), 1);
}

#[test]
fn a_tuple_that_cannot_be_sent_is_refused_before_asking_the_kernel() {
    let mixed = Tuple {
        protocol: Proto::TCP,
        src: IpAddr::V4(Ipv4Addr::LOCALHOST),
        dst: IpAddr::V6(Ipv6Addr::LOCALHOST),
        src_port: 1,
        dst_port: 2,
        icmp: None,
    };
    assert!(delete_request(&mixed, 0).is_err());
    let icmp = Tuple {
        protocol: Proto(1),
        dst: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ..mixed
    };
    let e = delete_request(&icmp, 0).err().unwrap_or_default();
    assert!(e.contains("ICMP"), "{e}");
}

#[test]
fn a_refused_dump_names_the_cause_and_the_fix() {
    let mut script = Recorder::default();
    script.replies.push_back(error(1, libc::EPERM));
    let e = Ctnetlink::over(script).dump().err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("netfilter conntrack: dump: permission denied (EPERM): run as root (CAP_NET_ADMIN)")
    );
    let mut script = Recorder::default();
    script.replies.push_back(error(1, libc::EOPNOTSUPP));
    let e = Ctnetlink::over(script).dump().err().map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|e| e.contains("modprobe nf_conntrack_netlink")),
        "{e:?}"
    );
}
