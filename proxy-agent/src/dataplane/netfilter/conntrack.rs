//! Entries of netfilter's connection table: dumped (both families, every zone) and
//! decoded into plain [`Entry`] values, and deleted by their original tuple.
//!
//! Layouts from `include/uapi/linux/netfilter/nfnetlink_conntrack.h`: an entry is a
//! `nfgenmsg` (its `nfgen_family` is the entry's L3 family) and `CTA_*` attributes;
//! integers are big-endian. netlink-packet-netfilter parses the attributes it models
//! (tuples, status, protoinfo, timeout, mark); the zone and the ICMP tuple fields come
//! through as its raw `DefaultNla`s and are read here.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{DefaultNla, NLA_TYPE_MASK, Nla, ParseableParametrized};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple,
    Tuple as NlTuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};

use super::{Ctnetlink, NetfilterError};
use crate::dataplane::ipvs::netlink::socket::Transport;

/// `CTA_ZONE` (`enum ctattr_type`): the entry's zone, `__be16`, sent only when not 0.
pub const CTA_ZONE: u16 = 18;
/// `NFNL_SUBSYS_CTNETLINK`, the high byte of every ctnetlink message type.
pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;

// `enum ctattr_l4proto`: the ICMP fields of a tuple (IPv4, then ICMPv6).
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// An entry's L3 family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// `AF_INET`.
    Ipv4,
    /// `AF_INET6`.
    Ipv6,
}

/// An IP protocol number, shown by name (`tcp`, `udp`, ...) where it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Proto(pub u8);

impl Proto {
    /// TCP.
    pub const TCP: Proto = Proto(6);
    /// UDP.
    pub const UDP: Proto = Proto(17);
    /// SCTP.
    pub const SCTP: Proto = Proto(132);

    /// Whether the tuple carries ICMP's id/type/code instead of ports.
    fn is_icmp(self) -> bool {
        matches!(self.0, 1 | 58)
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.write_str("icmp"),
            6 => f.write_str("tcp"),
            17 => f.write_str("udp"),
            33 => f.write_str("dccp"),
            47 => f.write_str("gre"),
            58 => f.write_str("icmpv6"),
            132 => f.write_str("sctp"),
            136 => f.write_str("udplite"),
            n => write!(f, "{n}"),
        }
    }
}

impl serde::Serialize for Proto {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// ICMP's part of a tuple (echo requests are tracked by their id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Icmp {
    /// The echo identifier.
    pub id: u16,
    /// The ICMP type.
    #[serde(rename = "type")]
    pub kind: u8,
    /// The ICMP code.
    pub code: u8,
}

/// One direction of a connection as conntrack keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Tuple {
    /// The L4 protocol.
    pub protocol: Proto,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (0 for a protocol without ports).
    pub src_port: u16,
    /// Destination port (0 for a protocol without ports).
    pub dst_port: u16,
    /// ICMP's id, type and code, for ICMP and ICMPv6.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Icmp>,
}

impl Tuple {
    /// A tuple with ports (TCP, UDP, SCTP).
    pub fn ports(protocol: Proto, src: SocketAddr, dst: SocketAddr) -> Tuple {
        Tuple {
            protocol,
            src: src.ip(),
            dst: dst.ip(),
            src_port: src.port(),
            dst_port: dst.port(),
            icmp: None,
        }
    }

    /// The source as an address and port.
    pub fn source(&self) -> SocketAddr {
        SocketAddr::new(self.src, self.src_port)
    }

    /// The destination as an address and port.
    pub fn destination(&self) -> SocketAddr {
        SocketAddr::new(self.dst, self.dst_port)
    }

    /// The family of its addresses, if they agree.
    pub fn family(&self) -> Option<Family> {
        match (self.src, self.dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => Some(Family::Ipv4),
            (IpAddr::V6(_), IpAddr::V6(_)) => Some(Family::Ipv6),
            _ => None,
        }
    }
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.icmp {
            Some(i) => write!(
                f,
                "{} {} -> {} type {} code {} id {}",
                self.protocol, self.src, self.dst, i.kind, i.code, i.id
            ),
            None => write!(
                f,
                "{} {} -> {}",
                self.protocol,
                self.source(),
                self.destination()
            ),
        }
    }
}

/// conntrack's TCP state (`enum tcp_conntrack`), shown as `conntrack -L` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpState(pub u8);

impl TcpState {
    /// `TCP_CONNTRACK_ESTABLISHED`.
    pub const ESTABLISHED: TcpState = TcpState(3);

    /// The state's name.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "NONE",
            1 => "SYN_SENT",
            2 => "SYN_RECV",
            3 => "ESTABLISHED",
            4 => "FIN_WAIT",
            5 => "CLOSE_WAIT",
            6 => "LAST_ACK",
            7 => "TIME_WAIT",
            8 => "CLOSE",
            9 => "SYN_SENT2",
            _ => "UNKNOWN",
        }
    }
}

impl serde::Serialize for TcpState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// An entry's status bits (`enum ip_conntrack_status`), listed by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u32);

/// The names of the status bits, lowest first (`nf_conntrack_common.h`).
const STATUS_NAMES: [&str; 15] = [
    "EXPECTED",
    "SEEN_REPLY",
    "ASSURED",
    "CONFIRMED",
    "SRC_NAT",
    "DST_NAT",
    "SEQ_ADJUST",
    "SRC_NAT_DONE",
    "DST_NAT_DONE",
    "DYING",
    "FIXED_TIMEOUT",
    "TEMPLATE",
    "UNTRACKED",
    "HELPER",
    "OFFLOAD",
];

impl Status {
    /// `IPS_SEEN_REPLY`.
    pub const SEEN_REPLY: u32 = 1 << 1;
    /// `IPS_ASSURED`.
    pub const ASSURED: u32 = 1 << 2;
    /// `IPS_DST_NAT`.
    pub const DST_NAT: u32 = 1 << 5;

    /// Whether every bit of `bits` is set.
    pub fn has(self, bits: u32) -> bool {
        self.0 & bits == bits
    }

    /// The names of the bits set; unnamed ones as `BIT<n>`.
    pub fn names(self) -> Vec<String> {
        (0..32)
            .filter(|bit| self.0 & (1 << bit) != 0)
            .map(|bit| match STATUS_NAMES.get(bit) {
                Some(name) => (*name).to_owned(),
                None => format!("BIT{bit}"),
            })
            .collect()
    }
}

impl serde::Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// One entry of netfilter's connection table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// Its L3 family.
    pub family: Family,
    /// The first packet's direction, as it arrived (before any DNAT).
    pub original: Tuple,
    /// The expected reply's direction (after NAT: its source is the backend).
    pub reply: Tuple,
    /// The TCP state, for TCP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_state: Option<TcpState>,
    /// Its status bits.
    pub status: Status,
    /// `ct mark`.
    pub mark: u32,
    /// Seconds until it expires (0 if the kernel sent none).
    pub timeout_s: u32,
    /// Its zone (0: the default).
    pub zone: u16,
}

impl Entry {
    /// The L4 protocol.
    pub fn protocol(&self) -> Proto {
        self.original.protocol
    }
}

impl<T: Transport> Ctnetlink<T> {
    /// Every entry of this network namespace's table, both families, every zone
    /// (`IPCTNL_MSG_CT_GET` as a dump with `nfgen_family` `AF_UNSPEC`, which the kernel
    /// takes as "no family filter").
    pub fn dump(&mut self) -> Result<Vec<Entry>, NetfilterError> {
        self.dump_of(NetfilterProtoFamily::Unspec)
    }

    /// The entries of one family (every zone): the kernel filters by the
    /// `nfgen_family` of the request.
    pub fn dump_family(&mut self, family: Family) -> Result<Vec<Entry>, NetfilterError> {
        self.dump_of(match family {
            Family::Ipv4 => NetfilterProtoFamily::IPv4,
            Family::Ipv6 => NetfilterProtoFamily::IPv6,
        })
    }

    fn dump_of(&mut self, family: NetfilterProtoFamily) -> Result<Vec<Entry>, NetfilterError> {
        let request = NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            ConntrackMessage::Get(Vec::new()),
        );
        let replies = self
            .conn
            .dump(request)
            .map_err(|e| NetfilterError::from_netlink("dump", "entries", e))?;
        replies
            .iter()
            .enumerate()
            .map(|(i, r)| {
                parse_entry(r.message_type, &r.payload).map_err(|reason| {
                    NetfilterError::Malformed {
                        op: "dump",
                        reason: format!("entry {i}: {reason}"),
                    }
                })
            })
            .collect()
    }

    /// Deletes the entry whose original tuple is `original`, in `zone`
    /// (`IPCTNL_MSG_CT_DELETE`); [`NetfilterError::NotFound`] if there is none.
    pub fn delete(&mut self, original: &Tuple, zone: u16) -> Result<(), NetfilterError> {
        let request = delete_request(original, zone).map_err(|reason| NetfilterError::Invalid {
            tuple: original.to_string(),
            reason,
        })?;
        match self.conn.request(request, 0) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::ENOENT) => Err(NetfilterError::NotFound {
                tuple: original.to_string(),
            }),
            Err(e) => Err(NetfilterError::from_netlink(
                "delete",
                original.to_string(),
                e,
            )),
        }
    }
}

/// The `IPCTNL_MSG_CT_DELETE` for `original` in `zone`: `nfgen_family` is the
/// tuple's family (the kernel parses the addresses by it), `CTA_TUPLE_ORIG` nests
/// `CTA_TUPLE_IP` and `CTA_TUPLE_PROTO`, and `CTA_ZONE` is sent only when not 0.
pub fn delete_request(original: &Tuple, zone: u16) -> Result<NetfilterMessage, String> {
    let family = match original.family() {
        Some(Family::Ipv4) => NetfilterProtoFamily::IPv4,
        Some(Family::Ipv6) => NetfilterProtoFamily::IPv6,
        None => return Err("its addresses are of different families".to_owned()),
    };
    let mut proto = vec![ProtoTuple::Protocol(original.protocol.0.into())];
    if original.protocol.is_icmp() {
        let Some(icmp) = original.icmp else {
            return Err("an ICMP tuple needs its id, type and code".to_owned());
        };
        let (id, kind, code) = if family == NetfilterProtoFamily::IPv4 {
            (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
        } else {
            (
                CTA_PROTO_ICMPV6_ID,
                CTA_PROTO_ICMPV6_TYPE,
                CTA_PROTO_ICMPV6_CODE,
            )
        };
        proto.extend([
            ProtoTuple::Other(DefaultNla::new(id, icmp.id.to_be_bytes().to_vec())),
            ProtoTuple::Other(DefaultNla::new(kind, vec![icmp.kind])),
            ProtoTuple::Other(DefaultNla::new(code, vec![icmp.code])),
        ]);
    } else {
        proto.extend([
            ProtoTuple::SourcePort(original.src_port),
            ProtoTuple::DestinationPort(original.dst_port),
        ]);
    }
    let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(vec![
        NlTuple::Ip(vec![
            IPTuple::SourceAddress(original.src),
            IPTuple::DestinationAddress(original.dst),
        ]),
        NlTuple::Proto(proto),
    ])];
    if zone != 0 {
        attrs.push(ConntrackAttribute::Other(DefaultNla::new(
            CTA_ZONE,
            zone.to_be_bytes().to_vec(),
        )));
    }
    Ok(NetfilterMessage::new(
        NetfilterHeader::new(family, 0, 0),
        ConntrackMessage::Delete(attrs),
    ))
}

/// Decodes one message of a dump (`nlmsg_type` and what follows the `nlmsghdr`).
pub fn parse_entry(message_type: u16, payload: &[u8]) -> Result<Entry, String> {
    if message_type >> 8 != NFNL_SUBSYS_CTNETLINK {
        return Err(format!("message type {message_type:#x} is not ctnetlink's"));
    }
    let message =
        NetfilterMessage::parse_with_param(payload, message_type).map_err(|e| e.to_string())?;
    let family = match u8::from(message.header.family) {
        AF_INET => Family::Ipv4,
        AF_INET6 => Family::Ipv6,
        other => return Err(format!("family {other} is neither IPv4 nor IPv6")),
    };
    let attrs = match message.inner {
        NetfilterMessageInner::Conntrack(
            ConntrackMessage::New(attrs) | ConntrackMessage::Get(attrs),
        ) => attrs,
        _ => {
            return Err(format!(
                "message type {message_type:#x} is not a conntrack entry"
            ));
        }
    };
    let (mut original, mut reply) = (None, None);
    let mut entry = Entry {
        family,
        // Replaced below: an entry always has both tuples.
        original: placeholder(),
        reply: placeholder(),
        tcp_state: None,
        status: Status::default(),
        mark: 0,
        timeout_s: 0,
        zone: 0,
    };
    for attr in &attrs {
        match attr {
            ConntrackAttribute::CtaTupleOrig(t) => original = Some(tuple(t)?),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(tuple(t)?),
            ConntrackAttribute::CtaStatus(s) => entry.status = Status(s.bits()),
            ConntrackAttribute::CtaTimeout(t) => entry.timeout_s = *t,
            ConntrackAttribute::CtaMark(m) => entry.mark = *m,
            ConntrackAttribute::CtaProtoInfo(infos) => entry.tcp_state = tcp_state(infos),
            ConntrackAttribute::Other(nla) if nla.kind() & NLA_TYPE_MASK == CTA_ZONE => {
                let value = value_of(nla);
                let bytes: [u8; 2] = value
                    .as_slice()
                    .try_into()
                    .map_err(|_| format!("CTA_ZONE has {} bytes, expected 2", value.len()))?;
                entry.zone = u16::from_be_bytes(bytes);
            }
            _ => {}
        }
    }
    entry.original = original.ok_or("no CTA_TUPLE_ORIG")?;
    entry.reply = reply.ok_or("no CTA_TUPLE_REPLY")?;
    Ok(entry)
}

fn placeholder() -> Tuple {
    Tuple {
        protocol: Proto(0),
        src: IpAddr::from([0, 0, 0, 0]),
        dst: IpAddr::from([0, 0, 0, 0]),
        src_port: 0,
        dst_port: 0,
        icmp: None,
    }
}

/// The value bytes of a raw attribute (the crate keeps them private but emits them).
fn value_of(nla: &DefaultNla) -> Vec<u8> {
    let mut buf = vec![0; nla.value_len()];
    nla.emit_value(&mut buf);
    buf
}

fn tcp_state(infos: &[ProtoInfo]) -> Option<TcpState> {
    infos.iter().find_map(|info| match info {
        ProtoInfo::TCP(tcp) => tcp.iter().find_map(|t| match t {
            ProtoInfoTCP::State(s) => Some(TcpState(*s)),
            _ => None,
        }),
        _ => None,
    })
}

/// A `CTA_TUPLE_ORIG`/`CTA_TUPLE_REPLY` nest: `CTA_TUPLE_IP` and `CTA_TUPLE_PROTO`.
fn tuple(parts: &[NlTuple]) -> Result<Tuple, String> {
    let (mut src, mut dst, mut protocol) = (None, None, None);
    let mut t = placeholder();
    let (mut icmp_id, mut icmp_type, mut icmp_code) = (None, None, None);
    for part in parts {
        match part {
            NlTuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            NlTuple::Proto(protos) => {
                for p in protos {
                    match p {
                        ProtoTuple::Protocol(n) => protocol = Some(Proto(u8::from(*n))),
                        ProtoTuple::SourcePort(port) => t.src_port = *port,
                        ProtoTuple::DestinationPort(port) => t.dst_port = *port,
                        ProtoTuple::Other(nla) => {
                            let value = value_of(nla);
                            match nla.kind() & NLA_TYPE_MASK {
                                CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                                    icmp_id =
                                        value.as_slice().try_into().ok().map(u16::from_be_bytes);
                                }
                                CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                                    icmp_type = value.first().copied();
                                }
                                CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                                    icmp_code = value.first().copied();
                                }
                                _ => {}
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t.src = src.ok_or("a tuple without a source address")?;
    t.dst = dst.ok_or("a tuple without a destination address")?;
    t.protocol = protocol.ok_or("a tuple without CTA_PROTO_NUM")?;
    if let (Some(id), Some(kind), Some(code)) = (icmp_id, icmp_type, icmp_code) {
        t.icmp = Some(Icmp { id, kind, code });
    }
    Ok(t)
}

#[cfg(test)]
#[path = "conntrack_tests.rs"]
mod tests;
