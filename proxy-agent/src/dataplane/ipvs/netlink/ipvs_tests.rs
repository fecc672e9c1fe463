//! Byte layouts below are derived from `include/uapi/linux/ip_vs.h` and
//! `<linux/netlink.h>`/`<linux/genetlink.h>`; host-order fields are written for a
//! little-endian host, as the machines that run these tests are.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_generic::GenlMessage;

use super::*;
use crate::dataplane::DataplaneError;
use crate::dataplane::ipvs::netlink::attr::{Attr, emit_all};
use crate::dataplane::ipvs::netlink::error::IpvsError;
use crate::dataplane::ipvs::netlink::ipvs_conn::Ipvs;
use crate::dataplane::ipvs::netlink::socket::tests::{Script, done, error, family_answer, message};
use crate::dataplane::ipvs::netlink::socket::{Reply, encode};

/// The family id the tests pretend the controller assigned.
const FAMILY: u16 = 0x1c;

fn vip() -> ServiceId {
    ServiceId {
        protocol: Protocol::Tcp,
        addr: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
        port: 80,
    }
}

fn vip6() -> ServiceId {
    ServiceId {
        protocol: Protocol::Tcp,
        addr: "fd00::a".parse().unwrap_or(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        port: 443,
    }
}

fn request_bytes(msg: IpvsMessage) -> Vec<u8> {
    let mut msg = GenlMessage::from_payload(msg);
    msg.set_resolved_family_id(FAMILY);
    encode(msg, NLM_F_REQUEST | NLM_F_ACK, 1)
}

#[cfg(target_endian = "little")]
#[test]
fn new_service_for_a_persistent_tcp_vip_is_laid_out_as_the_kernel_reads_it() {
    let mut svc = Service::new(vip(), "rr");
    svc.flags = ServiceFlags::PERSISTENT;
    svc.timeout = 10800;
    let bytes = request_bytes(service_message(Command::NewService, &svc));
    #[rustfmt::skip]
    let expected: Vec<u8> = vec![
        // nlmsghdr: len 92, type = family id 0x1c, flags REQUEST|ACK, seq 1, pid 0
        92, 0, 0, 0,  0x1c, 0,  0x05, 0,  1, 0, 0, 0,  0, 0, 0, 0,
        // genlmsghdr: cmd IPVS_CMD_NEW_SERVICE (1), version 1, reserved
        1, 1, 0, 0,
        // IPVS_CMD_ATTR_SERVICE (1) | NLA_F_NESTED, len 72
        72, 0, 0x01, 0x80,
        //   IPVS_SVC_ATTR_AF (1), len 6: u16 AF_INET (2), 2 bytes padding
        6, 0, 1, 0,  2, 0,  0, 0,
        //   IPVS_SVC_ATTR_PROTOCOL (2), len 6: u16 IPPROTO_TCP (6), padding
        6, 0, 2, 0,  6, 0,  0, 0,
        //   IPVS_SVC_ATTR_ADDR (3), len 8: 10.96.0.10
        8, 0, 3, 0,  10, 96, 0, 10,
        //   IPVS_SVC_ATTR_PORT (4), len 6: be16 80, padding
        6, 0, 4, 0,  0, 80,  0, 0,
        //   IPVS_SVC_ATTR_SCHED_NAME (6), len 7: "rr\0", padding
        7, 0, 6, 0,  b'r', b'r', 0,  0,
        //   IPVS_SVC_ATTR_FLAGS (7), len 12: struct ip_vs_flags { flags PERSISTENT, mask ~0 }
        12, 0, 7, 0,  1, 0, 0, 0,  0xff, 0xff, 0xff, 0xff,
        //   IPVS_SVC_ATTR_TIMEOUT (8), len 8: u32 10800 (0x2a30)
        8, 0, 8, 0,  0x30, 0x2a, 0, 0,
        //   IPVS_SVC_ATTR_NETMASK (9), len 8: be32 255.255.255.255
        8, 0, 9, 0,  0xff, 0xff, 0xff, 0xff,
    ];
    assert_eq!(bytes, expected);
}

#[cfg(target_endian = "little")]
#[test]
fn new_dest_for_an_ipv6_masquerade_backend_nests_the_service_identity_and_the_dest() {
    let dest = Destination::masquerade("fd00:1::5".parse().unwrap_or(vip6().addr), 8443);
    let bytes = request_bytes(dest_message(Command::NewDest, &vip6(), &dest));
    #[rustfmt::skip]
    let expected: Vec<u8> = vec![
        // nlmsghdr: len 140, type 0x1c, flags REQUEST|ACK, seq 1, pid 0
        140, 0, 0, 0,  0x1c, 0,  0x05, 0,  1, 0, 0, 0,  0, 0, 0, 0,
        // genlmsghdr: cmd IPVS_CMD_NEW_DEST (5), version 1
        5, 1, 0, 0,
        // IPVS_CMD_ATTR_SERVICE (1) | NLA_F_NESTED, len 48: the identity only
        48, 0, 0x01, 0x80,
        //   AF (1): u16 AF_INET6 (10), padding
        6, 0, 1, 0,  10, 0,  0, 0,
        //   PROTOCOL (2): TCP
        6, 0, 2, 0,  6, 0,  0, 0,
        //   ADDR (3), len 20: fd00::a
        20, 0, 3, 0,  0xfd, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0x0a,
        //   PORT (4): be16 443
        6, 0, 4, 0,  0x01, 0xbb,  0, 0,
        // IPVS_CMD_ATTR_DEST (2) | NLA_F_NESTED, len 72
        72, 0, 0x02, 0x80,
        //   IPVS_DEST_ATTR_ADDR (1), len 20: fd00:1::5
        20, 0, 1, 0,  0xfd, 0, 0, 1,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 5,
        //   IPVS_DEST_ATTR_PORT (2): be16 8443 (0x20fb)
        6, 0, 2, 0,  0x20, 0xfb,  0, 0,
        //   IPVS_DEST_ATTR_FWD_METHOD (3): u32 IP_VS_CONN_F_MASQ (0)
        8, 0, 3, 0,  0, 0, 0, 0,
        //   IPVS_DEST_ATTR_WEIGHT (4): u32 1
        8, 0, 4, 0,  1, 0, 0, 0,
        //   IPVS_DEST_ATTR_U_THRESH (5), IPVS_DEST_ATTR_L_THRESH (6): 0
        8, 0, 5, 0,  0, 0, 0, 0,
        8, 0, 6, 0,  0, 0, 0, 0,
        //   IPVS_DEST_ATTR_ADDR_FAMILY (11): u16 AF_INET6, padding
        6, 0, 11, 0,  10, 0,  0, 0,
    ];
    assert_eq!(bytes, expected);
}

#[cfg(target_endian = "little")]
#[test]
fn del_dest_sends_only_the_address_port_and_family_and_del_service_only_the_identity() {
    let dest = Destination::masquerade(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 5)), 8080);
    let bytes = request_bytes(dest_message(Command::DelDest, &vip(), &dest));
    #[rustfmt::skip]
    let dest_nest = [
        // IPVS_CMD_ATTR_DEST | NLA_F_NESTED, len 28
        28, 0, 0x02, 0x80,
        8, 0, 1, 0,  10, 244, 1, 5,     // ADDR
        6, 0, 2, 0,  0x1f, 0x90, 0, 0,  // PORT be16 8080
        6, 0, 11, 0,  2, 0, 0, 0,       // ADDR_FAMILY AF_INET
    ];
    assert_eq!(bytes[16..20], [7, 1, 0, 0]); // IPVS_CMD_DEL_DEST
    assert!(bytes.ends_with(&dest_nest), "{bytes:?}");
    assert_eq!(bytes.len(), 16 + 4 + (4 + 32) + 28);

    let bytes = request_bytes(service_id_message(Command::DelService, &vip()));
    #[rustfmt::skip]
    let expected: Vec<u8> = vec![
        56, 0, 0, 0,  0x1c, 0,  0x05, 0,  1, 0, 0, 0,  0, 0, 0, 0,
        3, 1, 0, 0,                     // IPVS_CMD_DEL_SERVICE
        36, 0, 0x01, 0x80,              // SERVICE nest
        6, 0, 1, 0,  2, 0, 0, 0,        // AF_INET
        6, 0, 2, 0,  6, 0, 0, 0,        // TCP
        8, 0, 3, 0,  10, 96, 0, 10,     // 10.96.0.10
        6, 0, 4, 0,  0, 80, 0, 0,       // port 80
    ];
    assert_eq!(bytes, expected);
}

#[test]
fn an_ipv6_persistence_netmask_is_a_prefix_length_and_an_ipv4_one_a_mask() {
    let mut svc = Service::new(vip(), "rr");
    svc.netmask = 24;
    let v4 = emit_all(&service_message(Command::NewService, &svc).attrs);
    assert!(v4.ends_with(&[8, 0, 9, 0, 255, 255, 255, 0]), "{v4:?}");
    let mut svc = Service::new(vip6(), "rr");
    svc.netmask = 64;
    let v6 = emit_all(&service_message(Command::NewService, &svc).attrs);
    let mut tail = vec![8, 0, 9, 0];
    tail.extend_from_slice(&64u32.to_ne_bytes());
    assert!(v6.ends_with(&tail), "{v6:?}");
}

/// A dump entry as the kernel sends it: genlmsghdr (cmd NEW_*) and one nest.
fn dump_entry(cmd: Command, attrs: Vec<Attr>) -> Reply {
    let mut payload = vec![cmd as u8, 1, 0, 0];
    payload.extend(emit_all(&attrs));
    Reply {
        message_type: FAMILY,
        payload,
    }
}

fn v4_as_union(a: Ipv4Addr) -> Vec<u8> {
    // The kernel sends a whole union nf_inet_addr, IPv4 in its first four bytes.
    let mut v = a.octets().to_vec();
    v.resize(16, 0);
    v
}

fn service_entry() -> Reply {
    let mut flags = Vec::new();
    // PERSISTENT | HASHED, as the kernel reports a live persistent service.
    flags.extend_from_slice(&3u32.to_ne_bytes());
    flags.extend_from_slice(&u32::MAX.to_ne_bytes());
    dump_entry(
        Command::NewService,
        vec![Attr::nested(
            1,
            vec![
                Attr::u16(1, libc::AF_INET as u16),
                Attr::u16(2, 17),
                Attr::bytes(3, v4_as_union(Ipv4Addr::new(10, 96, 0, 10))),
                Attr::be16(4, 53),
                Attr::string(6, "wlc"),
                Attr::bytes(7, flags),
                Attr::u32(8, 10800),
                Attr::bytes(9, [255, 255, 255, 255]),
                // IPVS_SVC_ATTR_STATS: the 32-bit counters, wrapped
                Attr::nested(
                    10,
                    vec![
                        Attr::u32(1, 7),
                        Attr::u32(2, 1),
                        Attr::bytes(4, 5u64.to_ne_bytes()),
                    ],
                ),
                // IPVS_SVC_ATTR_STATS64: the real ones
                Attr::nested(
                    12,
                    vec![
                        Attr::bytes(1, 4_294_967_303u64.to_ne_bytes()),
                        Attr::bytes(2, 100u64.to_ne_bytes()),
                        Attr::bytes(3, 90u64.to_ne_bytes()),
                        Attr::bytes(4, 6400u64.to_ne_bytes()),
                        Attr::bytes(5, 12800u64.to_ne_bytes()),
                        Attr::bytes(6, 2u64.to_ne_bytes()),
                        Attr::bytes(11, [0; 8]), // IPVS_STATS_ATTR_PAD
                    ],
                ),
            ],
        )],
    )
}

#[test]
fn a_service_dump_decodes_identity_options_and_the_64_bit_counters() {
    let services = parse_services(&[service_entry()]).unwrap_or_else(|e| panic!("{e}"));
    let expected_id = ServiceId {
        protocol: Protocol::Udp,
        addr: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
        port: 53,
    };
    assert_eq!(
        services,
        vec![ServiceInfo {
            service: Service {
                id: expected_id,
                scheduler: "wlc".into(),
                // HASHED is the kernel's own and is dropped.
                flags: ServiceFlags::PERSISTENT,
                timeout: 10800,
                netmask: 32,
            },
            stats: Stats {
                connections: 4_294_967_303,
                packets_in: 100,
                packets_out: 90,
                bytes_in: 6400,
                bytes_out: 12800,
                cps: 2,
                ..Stats::default()
            },
        }]
    );
}

#[test]
fn a_service_written_reads_back_equal() {
    let mut svc = Service::new(vip6(), "sh");
    svc.flags = ServiceFlags::PERSISTENT | ServiceFlags::SCHED2;
    svc.timeout = 60;
    svc.netmask = 64;
    let msg = service_message(Command::NewService, &svc);
    let reply = dump_entry(Command::NewService, msg.attrs);
    let back = parse_services(&[reply]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].service, svc);
    assert_eq!(back[0].stats, Stats::default());
}

#[test]
fn a_firewall_mark_service_is_skipped_and_a_truncated_one_refused() {
    let fwmark = dump_entry(
        Command::NewService,
        vec![Attr::nested(
            1,
            vec![Attr::u16(1, 2), Attr::u32(5, 0x4000), Attr::string(6, "rr")],
        )],
    );
    assert_eq!(parse_services(&[fwmark]).ok(), Some(Vec::new()));
    let no_port = dump_entry(
        Command::NewService,
        vec![Attr::nested(
            1,
            vec![
                Attr::u16(1, 2),
                Attr::u16(2, 6),
                Attr::bytes(3, v4_as_union(Ipv4Addr::LOCALHOST)),
            ],
        )],
    );
    assert!(parse_services(&[no_port]).is_err());
}

fn dest_entry() -> Reply {
    dump_entry(
        Command::NewDest,
        vec![Attr::nested(
            2,
            vec![
                Attr::bytes(1, v4_as_union(Ipv4Addr::new(10, 244, 1, 5))),
                Attr::be16(2, 8080),
                Attr::u32(3, 0),
                Attr::u32(4, 0), // weight 0: being drained
                Attr::u32(5, 0),
                Attr::u32(6, 0),
                Attr::u32(7, 3), // IPVS_DEST_ATTR_ACTIVE_CONNS
                Attr::u32(8, 5), // IPVS_DEST_ATTR_INACT_CONNS
                Attr::u32(9, 1), // IPVS_DEST_ATTR_PERSIST_CONNS
                Attr::nested(
                    10,
                    vec![Attr::u32(1, 9), Attr::u32(2, 40), Attr::u32(3, 38)],
                ),
                Attr::u16(11, libc::AF_INET as u16),
            ],
        )],
    )
}

#[test]
fn a_destination_dump_decodes_active_and_inactive_connections() {
    let dests = parse_dests(&[dest_entry()], vip().addr).unwrap_or_else(|e| panic!("{e}"));
    let mut dest = Destination::masquerade(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 5)), 8080);
    dest.weight = 0;
    assert_eq!(
        dests,
        vec![DestinationInfo {
            destination: dest,
            active_connections: 3,
            inactive_connections: 5,
            persistent_connections: 1,
            // No STATS64 (an old kernel): the 32-bit counters.
            stats: Stats {
                connections: 9,
                packets_in: 40,
                packets_out: 38,
                ..Stats::default()
            },
        }]
    );
}

#[test]
fn a_destination_without_address_family_takes_the_services() {
    let dest = Destination::masquerade("fd00:1::5".parse().unwrap_or(vip6().addr), 80);
    let mut attrs = dest_message(Command::NewDest, &vip6(), &dest).attrs;
    attrs.remove(0);
    let mut payload = vec![Command::NewDest as u8, 1, 0, 0];
    // Strip ADDR_FAMILY (the last 8 bytes) and fix the nest length.
    let mut nest = emit_all(&attrs);
    nest.truncate(nest.len() - 8);
    let len = nest.len() as u16;
    nest[..2].copy_from_slice(&len.to_ne_bytes());
    payload.extend(nest);
    let reply = Reply {
        message_type: FAMILY,
        payload,
    };
    let back = parse_dests(&[reply], vip6().addr).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back[0].destination, dest);
}

/// An IPVS connection over a script whose first answer resolves the family.
fn ipvs_with(answers: Vec<Vec<u8>>) -> Ipvs<Script> {
    let mut script = Script::default();
    script.replies.push_back(family_answer(1, FAMILY, "IPVS"));
    script.replies.extend(answers);
    Ipvs::over(script).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn eexist_on_new_service_names_the_service() {
    let mut ipvs = ipvs_with(vec![error(2, libc::EEXIST)]);
    assert_eq!(ipvs.family_id(), FAMILY);
    let err = ipvs.new_service(&Service::new(vip(), "rr"));
    let Err(err) = err else {
        panic!("EEXIST accepted");
    };
    assert!(matches!(err, IpvsError::Exists { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "IPVS service TCP 10.96.0.10:80: already exists (EEXIST)"
    );
    let dp = DataplaneError::from(err);
    assert_eq!(dp.errno(), Some(libc::EEXIST));
    assert!(dp.to_string().contains("TCP 10.96.0.10:80"), "{dp}");
}

#[test]
fn missing_services_destinations_and_schedulers_are_told_apart() {
    let dest = Destination::masquerade(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 5)), 8080);
    let mut ipvs = ipvs_with(vec![
        error(2, libc::ESRCH),
        error(3, libc::ENOENT),
        error(4, libc::ENOENT),
        error(5, libc::ESRCH),
        error(6, libc::EPERM),
    ]);
    let e = ipvs.set_service(&Service::new(vip(), "rr"));
    assert!(matches!(e, Err(IpvsError::NoSuchService { .. })), "{e:?}");
    let e = ipvs.del_dest(&vip(), &dest);
    let Err(e) = e else { panic!("ENOENT accepted") };
    assert_eq!(
        e.to_string(),
        "IPVS destination 10.244.1.5:8080 of service TCP 10.96.0.10:80: no such destination (ENOENT)"
    );
    let e = ipvs.new_service(&Service::new(vip(), "nope"));
    assert!(
        matches!(&e, Err(IpvsError::NoScheduler { scheduler, .. }) if scheduler == "nope"),
        "{e:?}"
    );
    // GET of one service: a missing one is an answer, not an error.
    assert!(matches!(ipvs.service(&vip()), Ok(None)));
    let e = ipvs.flush();
    let Err(e) = e else { panic!("EPERM accepted") };
    assert!(matches!(e, IpvsError::Kernel { errno, .. } if errno == libc::EPERM));
    assert!(e.to_string().contains("IPVS_CMD_FLUSH"), "{e}");
}

#[test]
fn a_kernel_without_ipvs_is_told_to_load_the_module() {
    let mut script = Script::default();
    script.replies.push_back(error(1, libc::ENOENT));
    let Err(e) = Ipvs::over(script) else {
        panic!("an unknown family resolved");
    };
    assert!(matches!(e, IpvsError::NoIpvs));
    assert_eq!(
        e.to_string(),
        "the kernel has no IPVS (no generic netlink family \"IPVS\"): load the ip_vs module \
         (modprobe ip_vs)"
    );
    let dp = DataplaneError::from(e);
    assert!(matches!(dp, DataplaneError::Unavailable(_)), "{dp:?}");
    // Said once: the variant adds no words of its own.
    assert_eq!(dp.to_string().matches("no IPVS").count(), 1, "{dp}");
}

#[test]
fn the_services_and_destinations_dumps_go_through_the_connection() {
    let seq_entry = |seq: u32, reply: Reply| {
        message(
            reply.message_type,
            netlink_packet_core::NLM_F_MULTIPART,
            seq,
            &reply.payload,
        )
    };
    let mut first = seq_entry(2, service_entry());
    first.extend(done(2));
    let mut second = seq_entry(3, dest_entry());
    second.extend(done(3));
    let mut ipvs = ipvs_with(vec![first, second]);
    let services = ipvs.services().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].service.scheduler, "wlc");
    let id = services[0].service.id;
    let dests = ipvs.dests(&id).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dests.len(), 1);
    assert_eq!(
        dests[0].active_connections + dests[0].inactive_connections,
        8
    );
}

#[test]
fn a_scheduler_name_too_long_for_the_kernel_is_refused_before_sending() {
    let mut ipvs = ipvs_with(Vec::new());
    let e = ipvs.new_service(&Service::new(vip(), "a-scheduler-name-too-long"));
    assert!(matches!(e, Err(IpvsError::Invalid { .. })), "{e:?}");
}

#[cfg(target_endian = "little")]
#[test]
fn set_config_sends_only_the_timeouts_given_as_top_level_u32s() {
    let timeouts = TimeoutConfig {
        tcp: Some(900),
        tcp_fin: None,
        udp: Some(300),
    };
    let bytes = request_bytes(set_config_message(&timeouts));
    #[rustfmt::skip]
    let expected: Vec<u8> = vec![
        // nlmsghdr: len 36, type 0x1c, flags REQUEST|ACK, seq 1, pid 0
        36, 0, 0, 0,  0x1c, 0,  0x05, 0,  1, 0, 0, 0,  0, 0, 0, 0,
        // genlmsghdr: cmd IPVS_CMD_SET_CONFIG (12), version 1
        12, 1, 0, 0,
        // IPVS_CMD_ATTR_TIMEOUT_TCP (4): u32 900 (0x384)
        8, 0, 4, 0,  0x84, 0x03, 0, 0,
        // IPVS_CMD_ATTR_TIMEOUT_UDP (6): u32 300 (0x12c); no TIMEOUT_TCP_FIN (5)
        8, 0, 6, 0,  0x2c, 0x01, 0, 0,
    ];
    assert_eq!(bytes, expected);

    let bytes = request_bytes(bare_message(Command::GetConfig));
    #[rustfmt::skip]
    let expected: Vec<u8> = vec![
        20, 0, 0, 0,  0x1c, 0,  0x05, 0,  1, 0, 0, 0,  0, 0, 0, 0,
        13, 1, 0, 0, // IPVS_CMD_GET_CONFIG, no attributes
    ];
    assert_eq!(bytes, expected);
}

/// The kernel's `GET_CONFIG` answer: command `SET_CONFIG`, the three timeouts.
fn config_answer(tcp: u32, tcp_fin: u32, udp: u32) -> Reply {
    let mut payload = vec![Command::SetConfig as u8, 1, 0, 0];
    payload.extend(emit_all(&[
        Attr::u32(4, tcp),
        Attr::u32(5, tcp_fin),
        Attr::u32(6, udp),
    ]));
    Reply {
        message_type: FAMILY,
        payload,
    }
}

#[test]
fn get_config_decodes_the_three_timeouts_and_absent_ones_stay_unknown() {
    let t = parse_config(&[config_answer(900, 120, 300)]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        t,
        TimeoutConfig {
            tcp: Some(900),
            tcp_fin: Some(120),
            udp: Some(300),
        }
    );
    // A kernel built without UDP support sends only the TCP ones.
    let mut payload = vec![Command::SetConfig as u8, 1, 0, 0];
    payload.extend(emit_all(&[Attr::u32(4, 900), Attr::u32(5, 120)]));
    let tcp_only = Reply {
        message_type: FAMILY,
        payload,
    };
    let t = parse_config(&[tcp_only]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.udp, None);
    let mut payload = vec![Command::SetConfig as u8, 1, 0, 0];
    payload.extend(emit_all(&[Attr::u16(4, 900)]));
    let short = Reply {
        message_type: FAMILY,
        payload,
    };
    assert!(parse_config(&[short]).is_err(), "a 2-byte timeout");
}

#[test]
fn timeouts_go_through_the_connection_and_nothing_to_set_sends_nothing() {
    let answer = config_answer(900, 120, 300);
    let mut get = message(answer.message_type, 0, 3, &answer.payload);
    get.extend(error(3, 0));
    let mut ipvs = ipvs_with(vec![error(2, 0), get, error(4, libc::EINVAL)]);
    let udp_only = TimeoutConfig {
        udp: Some(45),
        ..TimeoutConfig::default()
    };
    ipvs.set_timeouts(&udp_only)
        .unwrap_or_else(|e| panic!("{e}"));
    let t = ipvs.timeouts().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.tcp, Some(900));
    // Nothing given: no request (the script has no answer for one).
    ipvs.set_timeouts(&TimeoutConfig::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let too_long = TimeoutConfig {
        tcp: Some(u32::MAX),
        ..TimeoutConfig::default()
    };
    let Err(e) = ipvs.set_timeouts(&too_long) else {
        panic!("EINVAL accepted");
    };
    assert_eq!(
        e.to_string(),
        "IPVS connection timeouts: IPVS_CMD_SET_CONFIG: the kernel answered EINVAL (22)"
    );
}
