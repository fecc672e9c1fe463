use std::collections::VecDeque;

use netlink_packet_core::{NLM_F_MULTIPART, NLMSG_DONE, NLMSG_ERROR};
use netlink_packet_generic::GenlMessage;

use super::*;
use crate::dataplane::ipvs::netlink::genl;

/// A transport that records requests and plays back prepared datagrams, each
/// built for the sequence number of the request it answers.
#[derive(Default)]
pub(crate) struct Script {
    /// The requests sent, in order.
    pub sent: Vec<Vec<u8>>,
    /// The datagrams to receive, in order.
    pub replies: VecDeque<Vec<u8>>,
}

impl Transport for Script {
    fn port(&self) -> u32 {
        0
    }

    fn send(&mut self, request: &[u8]) -> io::Result<()> {
        self.sent.push(request.to_vec());
        Ok(())
    }

    fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        let next = self
            .replies
            .pop_front()
            .ok_or_else(|| io::Error::other("script exhausted"))?;
        *buf = next;
        Ok(())
    }
}

/// One netlink message: header and payload, padded to 4 bytes.
pub(crate) fn message(message_type: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len();
    let mut out = Vec::new();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&message_type.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(payload);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

/// An `NLMSG_ERROR` with `-errno` (0: an acknowledgement), quoting a 16-byte header.
pub(crate) fn error(seq: u32, errno: i32) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&errno.saturating_neg().to_ne_bytes());
    payload.extend_from_slice(&[0; 16]);
    message(NLMSG_ERROR, 0, seq, &payload)
}

/// An `NLMSG_DONE` ending a dump.
pub(crate) fn done(seq: u32) -> Vec<u8> {
    message(NLMSG_DONE, NLM_F_MULTIPART, seq, &0i32.to_ne_bytes())
}

/// The answer of the controller to a `CTRL_CMD_GETFAMILY`: `CTRL_CMD_NEWFAMILY` with
/// the family id (and name), then the ack.
pub(crate) fn family_answer(seq: u32, id: u16, name: &str) -> Vec<u8> {
    let mut payload = vec![1, 2, 0, 0]; // genlmsghdr: CTRL_CMD_NEWFAMILY, version 2
    payload.extend_from_slice(&[6, 0, 1, 0]); // CTRL_ATTR_FAMILY_ID, len 6
    payload.extend_from_slice(&id.to_ne_bytes());
    payload.extend_from_slice(&[0, 0]);
    let name_len = 4 + name.len() + 1;
    payload.extend_from_slice(&(name_len as u16).to_ne_bytes());
    payload.extend_from_slice(&[2, 0]); // CTRL_ATTR_FAMILY_NAME
    payload.extend_from_slice(name.as_bytes());
    payload.push(0);
    while payload.len() % 4 != 0 {
        payload.push(0);
    }
    let mut datagram = message(0x10, 0, seq, &payload);
    datagram.extend(error(seq, 0));
    datagram
}

#[test]
fn a_request_is_acknowledged_and_returns_what_came_before_the_ack() {
    let mut script = Script::default();
    script.replies.push_back(family_answer(1, 0x1c, "IPVS"));
    let mut conn = Conn::new(script);
    let replies = conn.request(genl::get_family("IPVS"), 0);
    let replies = replies.unwrap_or_else(|e| panic!("request failed: {e}"));
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].message_type, 0x10);
    assert_eq!(genl::parse_family_id(&replies).ok(), Some(0x1c));
    // The request: NLM_F_REQUEST | NLM_F_ACK, sequence 1, to nlctrl (0x10).
    let sent = &conn.transport.sent[0];
    assert_eq!(&sent[4..6], &0x10u16.to_ne_bytes());
    assert_eq!(&sent[6..8], &5u16.to_ne_bytes());
    assert_eq!(&sent[8..12], &1u32.to_ne_bytes());
}

#[test]
fn a_netlink_error_becomes_the_errno() {
    let mut script = Script::default();
    script.replies.push_back(error(1, libc::ENOENT));
    let mut conn = Conn::new(script);
    let got = genl::resolve(&mut conn, "IPVS");
    assert!(matches!(got, Ok(None)), "{got:?}");
    let mut script = Script::default();
    script.replies.push_back(error(1, libc::EPERM));
    let mut conn = Conn::new(script);
    let got = conn.request(genl::get_family("IPVS"), 0);
    assert!(
        matches!(got, Err(NetlinkError::Kernel { errno }) if errno == libc::EPERM),
        "{got:?}"
    );
}

#[test]
fn a_dump_reads_every_datagram_until_done_and_skips_stale_replies() {
    let mut script = Script::default();
    // A stale message of sequence 7, then two entries in two datagrams, then DONE.
    let mut first = message(0x30, NLM_F_MULTIPART, 7, &[1, 1, 0, 0]);
    first.extend(message(0x30, NLM_F_MULTIPART, 1, &[1, 1, 0, 0]));
    script.replies.push_back(first);
    let mut second = message(0x30, NLM_F_MULTIPART, 1, &[1, 1, 0, 0, 4, 0, 9, 0]);
    second.extend(done(1));
    script.replies.push_back(second);
    let mut conn = Conn::new(script);
    let mut msg = GenlMessage::from_payload(crate::dataplane::ipvs::netlink::ipvs::bare_message(
        crate::dataplane::ipvs::netlink::ipvs::Command::GetService,
    ));
    msg.set_resolved_family_id(0x30);
    let entries = conn
        .dump(msg)
        .unwrap_or_else(|e| panic!("dump failed: {e}"));
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].payload, vec![1, 1, 0, 0, 4, 0, 9, 0]);
    // NLM_F_REQUEST | NLM_F_DUMP (0x301), no ack asked.
    assert_eq!(&conn.transport.sent[0][6..8], &0x301u16.to_ne_bytes());
}

#[test]
fn an_interrupted_dump_is_retried() {
    let mut script = Script::default();
    let mut first = message(0x30, NLM_F_MULTIPART | NLM_F_DUMP_INTR, 1, &[1, 1, 0, 0]);
    first.extend(done(1));
    script.replies.push_back(first);
    let mut second = message(0x30, NLM_F_MULTIPART, 2, &[1, 1, 0, 0]);
    second.extend(done(2));
    script.replies.push_back(second);
    let mut conn = Conn::new(script);
    let entries = conn.dump(genl::get_family("x"));
    assert_eq!(entries.map(|e| e.len()).ok(), Some(1));
    assert_eq!(conn.transport.sent.len(), 2);
}

#[test]
fn a_dump_failing_part_way_is_an_error() {
    let mut script = Script::default();
    script.replies.push_back(message(
        NLMSG_DONE,
        NLM_F_MULTIPART,
        1,
        &(-libc::EINVAL).to_ne_bytes(),
    ));
    let mut conn = Conn::new(script);
    let got = conn.dump(genl::get_family("x"));
    assert!(
        matches!(got, Err(NetlinkError::Kernel { errno }) if errno == libc::EINVAL),
        "{got:?}"
    );
}

/// The real controller, read-only: "nlctrl" always exists, with id GENL_ID_CTRL (16).
#[test]
fn the_kernel_controller_resolves_nlctrl_and_refuses_an_unknown_family() {
    let kernel = open(netlink_sys::protocols::NETLINK_GENERIC, "NETLINK_GENERIC")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut conn = Conn::new(kernel);
    let id = genl::resolve(&mut conn, "nlctrl").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(id, Some(16));
    // Under GENL_NAMSIZ (16 with the NUL): a longer name is EINVAL, not ENOENT.
    let none = genl::resolve(&mut conn, "no-such-fam").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(none, None);
}
