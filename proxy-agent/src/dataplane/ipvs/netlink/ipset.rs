//! ipset over nfnetlink (subsystem `NFNL_SUBSYS_IPSET`, 6): the sets kube-proxy's
//! IPVS mode matches in its iptables rules, their members, and the listings.
//!
//! Layouts from `include/uapi/linux/netfilter/ipset/ip_set.h`. Every message starts
//! with `IPSET_ATTR_PROTOCOL`; every integer is network order *and* flagged
//! `NLA_F_NET_BYTEORDER`, every nest flagged `NLA_F_NESTED`, IPv4 addresses are
//! flagged too (IPv6 ones are plain binary, as libipset sends them): the kernel
//! answers `IPSET_ERR_PROTOCOL` otherwise.

use std::fmt;
use std::net::IpAddr;

use netlink_packet_core::{DecodeError, Emitable, NetlinkSerializable};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterProtoFamily};

use super::attr::{self, Attr, Nlattr, addr_bytes};
use super::ipvs::Protocol;
use super::socket::Reply;

/// `NFNL_SUBSYS_IPSET`.
pub const NFNL_SUBSYS_IPSET: u8 = 6;
/// `IPSET_PROTOCOL` of current kernels (6 still accepted, `IPSET_PROTOCOL_MIN`).
pub const PROTOCOL: u8 = 7;
/// `IPSET_MAXNAMELEN`, with the NUL.
pub const MAXNAMELEN: usize = 32;
/// `IPSET_MAX_COMMENT_SIZE`.
pub const MAX_COMMENT_SIZE: usize = 255;
const NFGENMSG_LEN: usize = 4;

/// An ipset command (`enum ipset_cmd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Ask the protocol version (a probe: is ipset there at all).
    Protocol = 1,
    /// Create a set.
    Create = 2,
    /// Destroy a set.
    Destroy = 3,
    /// Remove every member.
    Flush = 4,
    /// Rename a set.
    Rename = 5,
    /// Swap two sets' contents and names (atomic replacement).
    Swap = 6,
    /// List sets with their members.
    List = 7,
    /// Add a member.
    Add = 9,
    /// Delete a member.
    Del = 10,
    /// Test a member.
    Test = 11,
    /// A set's header only.
    Header = 12,
}

impl Command {
    /// The command as `ipset(8)` names it, for errors.
    pub fn name(self) -> &'static str {
        match self {
            Command::Protocol => "protocol",
            Command::Create => "create",
            Command::Destroy => "destroy",
            Command::Flush => "flush",
            Command::Rename => "rename",
            Command::Swap => "swap",
            Command::List => "list",
            Command::Add => "add",
            Command::Del => "del",
            Command::Test => "test",
            Command::Header => "header",
        }
    }
}

// Command-level attributes.
const ATTR_PROTOCOL: u16 = 1;
const ATTR_SETNAME: u16 = 2;
const ATTR_TYPENAME: u16 = 3;
/// `IPSET_ATTR_SETNAME2`: the second name of a rename or swap.
const ATTR_SETNAME2: u16 = 3;
const ATTR_REVISION: u16 = 4;
const ATTR_FAMILY: u16 = 5;
const ATTR_FLAGS: u16 = 6;
const ATTR_DATA: u16 = 7;
const ATTR_ADT: u16 = 8;
// Data attributes (CADT, create and ADT ones share one number space per nest).
const ATTR_IP: u16 = 1;
const ATTR_CIDR: u16 = 3;
const ATTR_PORT: u16 = 4;
const ATTR_PORT_TO: u16 = 5;
const ATTR_PROTO: u16 = 7;
const ATTR_CADT_FLAGS: u16 = 8;
const ATTR_HASHSIZE: u16 = 18;
const ATTR_MAXELEM: u16 = 19;
const ATTR_ELEMENTS: u16 = 24;
const ATTR_REFERENCES: u16 = 25;
const ATTR_IP2: u16 = 20;
const ATTR_CIDR2: u16 = 21;
const ATTR_COMMENT: u16 = 26;
const ATTR_IPADDR_IPV4: u16 = 1;
const ATTR_IPADDR_IPV6: u16 = 2;
/// `IPSET_FLAG_WITH_COMMENT` (a CADT flag): the set stores a comment per member.
const FLAG_WITH_COMMENT: u32 = 1 << 4;

/// The set types kube-proxy's IPVS mode creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetType {
    /// `hash:ip`.
    HashIp,
    /// `hash:ip,port`.
    HashIpPort,
    /// `hash:ip,port,ip`.
    HashIpPortIp,
    /// `hash:ip,port,net`.
    HashIpPortNet,
    /// `hash:net`.
    HashNet,
    /// `bitmap:port`.
    BitmapPort,
}

impl SetType {
    const ALL: [SetType; 6] = [
        SetType::HashIp,
        SetType::HashIpPort,
        SetType::HashIpPortIp,
        SetType::HashIpPortNet,
        SetType::HashNet,
        SetType::BitmapPort,
    ];

    /// The type's name in the kernel.
    pub fn name(self) -> &'static str {
        match self {
            SetType::HashIp => "hash:ip",
            SetType::HashIpPort => "hash:ip,port",
            SetType::HashIpPortIp => "hash:ip,port,ip",
            SetType::HashIpPortNet => "hash:ip,port,net",
            SetType::HashNet => "hash:net",
            SetType::BitmapPort => "bitmap:port",
        }
    }

    /// The type of a name.
    pub fn from_name(name: &str) -> Option<SetType> {
        SetType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The first revision of the type that takes comments (from the revision lists
    /// of the kernel's `ip_set_<type>.c`): every kernel since has it, and the kernel
    /// refuses a revision it does not know.
    pub fn comment_revision(self) -> u8 {
        match self {
            SetType::HashIp => 2,
            SetType::HashIpPort | SetType::HashIpPortIp => 3,
            SetType::HashIpPortNet => 5,
            SetType::HashNet => 4,
            SetType::BitmapPort => 2,
        }
    }

    /// Whether the type is a bitmap (its type-specific error codes differ).
    pub fn is_bitmap(self) -> bool {
        self == SetType::BitmapPort
    }
}

/// A set's address family (`NFPROTO_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetFamily {
    /// `NFPROTO_IPV4` (`inet`).
    Inet,
    /// `NFPROTO_IPV6` (`inet6`).
    Inet6,
    /// `NFPROTO_UNSPEC`, for the family-less `bitmap:port`.
    Unspec,
}

impl SetFamily {
    fn value(self) -> u8 {
        match self {
            SetFamily::Inet => 2,
            SetFamily::Inet6 => 10,
            SetFamily::Unspec => 0,
        }
    }

    fn from_value(v: u8) -> SetFamily {
        match v {
            2 => SetFamily::Inet,
            10 => SetFamily::Inet6,
            _ => SetFamily::Unspec,
        }
    }
}

/// What a new set is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSpec {
    /// Its name, at most 31 bytes.
    pub name: String,
    /// Its type.
    pub kind: SetType,
    /// Its family ([`SetFamily::Unspec`] for `bitmap:port`).
    pub family: SetFamily,
    /// Initial hash size (hash types; the kernel's default 1024 if `None`).
    pub hashsize: Option<u32>,
    /// Maximum number of members (hash types; the kernel's default 65536 if `None`).
    pub maxelem: Option<u32>,
    /// Whether members carry a comment (kube-proxy names the service in it).
    pub comment: bool,
    /// The port range of a `bitmap:port` (kube-proxy: 0-65535).
    pub port_range: Option<(u16, u16)>,
    /// The type revision; `None` takes [`SetType::comment_revision`].
    pub revision: Option<u8>,
}

impl SetSpec {
    /// A set as kube-proxy creates it: with comments, kernel default sizes, a bitmap
    /// over every port.
    pub fn new(name: &str, kind: SetType, family: SetFamily) -> SetSpec {
        SetSpec {
            name: name.to_owned(),
            kind,
            family: if kind.is_bitmap() {
                SetFamily::Unspec
            } else {
                family
            },
            hashsize: None,
            maxelem: None,
            comment: true,
            port_range: kind.is_bitmap().then_some((0, u16::MAX)),
            revision: None,
        }
    }
}

/// A member of a set; which fields are set depends on the set type (see the
/// constructors).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The first address (or network, with `cidr`).
    pub ip: Option<IpAddr>,
    /// The prefix length of `ip` (`hash:net`).
    pub cidr: Option<u8>,
    /// The protocol of `port`.
    pub protocol: Option<Protocol>,
    /// The port.
    pub port: Option<u16>,
    /// The second address or network (`hash:ip,port,ip`, `hash:ip,port,net`).
    pub ip2: Option<IpAddr>,
    /// The prefix length of `ip2` (`hash:ip,port,net`).
    pub cidr2: Option<u8>,
    /// The comment, at most 255 bytes.
    pub comment: Option<String>,
}

impl Entry {
    /// `hash:ip`: an address.
    pub fn ip(ip: IpAddr) -> Entry {
        Entry {
            ip: Some(ip),
            ..Entry::default()
        }
    }

    /// `hash:ip,port`: `10.96.0.10,tcp:80`.
    pub fn ip_port(ip: IpAddr, protocol: Protocol, port: u16) -> Entry {
        Entry {
            ip: Some(ip),
            protocol: Some(protocol),
            port: Some(port),
            ..Entry::default()
        }
    }

    /// `hash:ip,port,ip`: `10.244.1.5,tcp:8080,10.244.1.5` (hairpin).
    pub fn ip_port_ip(ip: IpAddr, protocol: Protocol, port: u16, ip2: IpAddr) -> Entry {
        Entry {
            ip2: Some(ip2),
            ..Entry::ip_port(ip, protocol, port)
        }
    }

    /// `hash:ip,port,net`: `10.96.0.10,tcp:80,192.0.2.0/24`.
    pub fn ip_port_net(ip: IpAddr, protocol: Protocol, port: u16, net: IpAddr, cidr: u8) -> Entry {
        Entry {
            ip2: Some(net),
            cidr2: Some(cidr),
            ..Entry::ip_port(ip, protocol, port)
        }
    }

    /// `hash:net`: `192.0.2.0/24`.
    pub fn net(net: IpAddr, cidr: u8) -> Entry {
        Entry {
            ip: Some(net),
            cidr: Some(cidr),
            ..Entry::default()
        }
    }

    /// `bitmap:port`: a port.
    pub fn port(port: u16) -> Entry {
        Entry {
            port: Some(port),
            ..Entry::default()
        }
    }

    /// The same member with a comment.
    pub fn with_comment(self, comment: &str) -> Entry {
        Entry {
            comment: Some(comment.to_owned()),
            ..self
        }
    }

    /// Whether it can only be a `bitmap:port` member.
    pub fn is_bitmap(&self) -> bool {
        self.ip.is_none() && self.port.is_some()
    }
}

/// As `ipset(8)` writes members: `10.96.0.10,tcp:80,192.0.2.0/24`.
impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(ip) = self.ip {
            write!(f, "{ip}")?;
            if let Some(c) = self.cidr {
                write!(f, "/{c}")?;
            }
            sep = ",";
        }
        if let Some(port) = self.port {
            f.write_str(sep)?;
            if let Some(p) = self.protocol {
                let name = match p {
                    Protocol::Tcp => "tcp".to_owned(),
                    Protocol::Udp => "udp".to_owned(),
                    Protocol::Sctp => "sctp".to_owned(),
                    Protocol::Other(n) => n.to_string(),
                };
                write!(f, "{name}:")?;
            }
            write!(f, "{port}")?;
            sep = ",";
        }
        if let Some(ip2) = self.ip2 {
            write!(f, "{sep}{ip2}")?;
            if let Some(c) = self.cidr2 {
                write!(f, "/{c}")?;
            }
        }
        Ok(())
    }
}

/// A set as listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetInfo {
    /// Its name.
    pub name: String,
    /// Its type's name, as the kernel gave it.
    pub type_name: String,
    /// Its type, if one of [`SetType`].
    pub kind: Option<SetType>,
    /// Its family.
    pub family: Option<SetFamily>,
    /// Its type revision.
    pub revision: u8,
    /// Hash size (hash types).
    pub hashsize: Option<u32>,
    /// Maximum members (hash types).
    pub maxelem: Option<u32>,
    /// Rules referencing it.
    pub references: u32,
    /// Member count, as the kernel counts them (kernels 4.x and later).
    pub elements: Option<u32>,
    /// Whether members carry comments.
    pub comment: bool,
    /// The members (empty for a header request).
    pub entries: Vec<Entry>,
}

/// The payload of an ipset message: `nfgenmsg` and the attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpsetMessage {
    /// The command.
    pub cmd: Command,
    /// The attributes after `IPSET_ATTR_PROTOCOL` (which is added).
    pub attrs: Vec<Attr>,
}

impl IpsetMessage {
    fn header() -> NetfilterHeader {
        // libipset sends AF_INET whatever the set's family: the kernel reads the
        // family from IPSET_ATTR_FAMILY.
        NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0)
    }

    fn all_attrs(&self) -> Vec<Attr> {
        let mut attrs = Vec::with_capacity(self.attrs.len() + 1);
        attrs.push(Attr::u8(ATTR_PROTOCOL, PROTOCOL));
        attrs.extend(self.attrs.iter().cloned());
        attrs
    }
}

impl NetlinkSerializable for IpsetMessage {
    fn message_type(&self) -> u16 {
        (u16::from(NFNL_SUBSYS_IPSET) << 8) | self.cmd as u16
    }

    fn buffer_len(&self) -> usize {
        NFGENMSG_LEN + self.all_attrs().as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        Self::header().emit(buffer);
        self.all_attrs()
            .as_slice()
            .emit(&mut buffer[NFGENMSG_LEN..]);
    }
}

fn ip_attr(kind: u16, ip: IpAddr) -> Attr {
    // Both families: the kernel's `ip_set_get_ipaddr4/6` refuse an address without
    // the byte-order flag (IPSET_ERR_PROTOCOL), as the VM test showed for IPv6.
    let leaf = match ip {
        IpAddr::V4(_) => ATTR_IPADDR_IPV4,
        IpAddr::V6(_) => ATTR_IPADDR_IPV6,
    };
    Attr::nested(
        kind,
        vec![Attr::bytes(
            leaf | netlink_packet_core::NLA_F_NET_BYTEORDER,
            addr_bytes(ip),
        )],
    )
}

/// `CREATE`: name, type, revision, family, and the creation options in `DATA`.
pub fn create(spec: &SetSpec) -> IpsetMessage {
    let mut data = Vec::new();
    if let Some((from, to)) = spec.port_range {
        data.push(Attr::net_u16(ATTR_PORT, from));
        data.push(Attr::net_u16(ATTR_PORT_TO, to));
    }
    if let Some(h) = spec.hashsize {
        data.push(Attr::net_u32(ATTR_HASHSIZE, h));
    }
    if let Some(m) = spec.maxelem {
        data.push(Attr::net_u32(ATTR_MAXELEM, m));
    }
    if spec.comment {
        data.push(Attr::net_u32(ATTR_CADT_FLAGS, FLAG_WITH_COMMENT));
    }
    IpsetMessage {
        cmd: Command::Create,
        attrs: vec![
            Attr::string(ATTR_SETNAME, &spec.name),
            Attr::string(ATTR_TYPENAME, spec.kind.name()),
            Attr::u8(
                ATTR_REVISION,
                spec.revision.unwrap_or(spec.kind.comment_revision()),
            ),
            Attr::u8(ATTR_FAMILY, spec.family.value()),
            Attr::nested(ATTR_DATA, data),
        ],
    }
}

/// `DESTROY`, `FLUSH` or `HEADER` of one set.
pub fn named(cmd: Command, name: &str) -> IpsetMessage {
    IpsetMessage {
        cmd,
        attrs: vec![Attr::string(ATTR_SETNAME, name)],
    }
}

/// `RENAME` (`from` becomes `to`) or `SWAP`.
pub fn two_named(cmd: Command, from: &str, to: &str) -> IpsetMessage {
    IpsetMessage {
        cmd,
        attrs: vec![
            Attr::string(ATTR_SETNAME, from),
            Attr::string(ATTR_SETNAME2, to),
        ],
    }
}

/// `ADD`, `DEL` or `TEST` of one member.
pub fn member(cmd: Command, name: &str, entry: &Entry) -> IpsetMessage {
    let mut data = Vec::new();
    if let Some(ip) = entry.ip {
        data.push(ip_attr(ATTR_IP, ip));
    }
    if let Some(c) = entry.cidr {
        data.push(Attr::u8(ATTR_CIDR, c));
    }
    if let Some(p) = entry.port {
        data.push(Attr::net_u16(ATTR_PORT, p));
    }
    if let Some(p) = entry.protocol {
        // IP protocol numbers fit a byte; the kernel's attribute is a u8.
        data.push(Attr::u8(ATTR_PROTO, p.number() as u8));
    }
    if let Some(ip2) = entry.ip2 {
        data.push(ip_attr(ATTR_IP2, ip2));
    }
    if let Some(c) = entry.cidr2 {
        data.push(Attr::u8(ATTR_CIDR2, c));
    }
    if let Some(c) = &entry.comment
        && cmd == Command::Add
    {
        data.push(Attr::string(ATTR_COMMENT, c));
    }
    IpsetMessage {
        cmd,
        attrs: vec![
            Attr::string(ATTR_SETNAME, name),
            Attr::nested(ATTR_DATA, data),
        ],
    }
}

/// `LIST` of one set or, without a name, of all.
pub fn list(name: Option<&str>) -> IpsetMessage {
    IpsetMessage {
        cmd: Command::List,
        attrs: name
            .map(|n| vec![Attr::string(ATTR_SETNAME, n)])
            .unwrap_or_default(),
    }
}

/// `PROTOCOL`: the probe.
pub fn protocol() -> IpsetMessage {
    IpsetMessage {
        cmd: Command::Protocol,
        attrs: Vec::new(),
    }
}

/// The sets of `LIST` (or `HEADER`) replies. The kernel splits a big set over
/// several messages, the first with the header, the rest with more members and the
/// name only; they are joined by name.
pub fn parse_sets(replies: &[Reply]) -> Result<Vec<SetInfo>, DecodeError> {
    let mut sets: Vec<SetInfo> = Vec::new();
    for reply in replies {
        let body = reply.payload.get(NFGENMSG_LEN..).unwrap_or_default();
        let mut part = SetInfo::default();
        let mut named = false;
        for nla in attr::iter(body) {
            let nla = nla?;
            match nla.kind() {
                ATTR_SETNAME => {
                    part.name = attr::get_string(&nla)?;
                    named = true;
                }
                ATTR_TYPENAME => {
                    part.type_name = attr::get_string(&nla)?;
                    part.kind = SetType::from_name(&part.type_name);
                }
                ATTR_REVISION => part.revision = attr::get_u8(&nla)?,
                ATTR_FAMILY => part.family = Some(SetFamily::from_value(attr::get_u8(&nla)?)),
                ATTR_DATA => parse_header(nla.value(), &mut part)?,
                ATTR_ADT => {
                    for member in attr::iter(nla.value()) {
                        let member = member?;
                        if member.kind() == ATTR_DATA {
                            part.entries.push(parse_entry(member.value())?);
                        }
                    }
                }
                _ => {}
            }
        }
        if !named {
            return Err(DecodeError::from("ipset reply without IPSET_ATTR_SETNAME"));
        }
        match sets.iter_mut().find(|s| s.name == part.name) {
            Some(set) => set.entries.append(&mut part.entries),
            None => sets.push(part),
        }
    }
    Ok(sets)
}

fn parse_header(buf: &[u8], set: &mut SetInfo) -> Result<(), DecodeError> {
    for nla in attr::iter(buf) {
        let nla = nla?;
        match nla.kind() {
            ATTR_HASHSIZE => set.hashsize = Some(attr::get_be32(&nla)?),
            ATTR_MAXELEM => set.maxelem = Some(attr::get_be32(&nla)?),
            ATTR_REFERENCES => set.references = attr::get_be32(&nla)?,
            ATTR_ELEMENTS => set.elements = Some(attr::get_be32(&nla)?),
            ATTR_CADT_FLAGS => set.comment = attr::get_be32(&nla)? & FLAG_WITH_COMMENT != 0,
            _ => {}
        }
    }
    Ok(())
}

fn parse_ip(nla: &Nlattr<'_>) -> Result<IpAddr, DecodeError> {
    for leaf in attr::iter(nla.value()) {
        let leaf = leaf?;
        match leaf.kind() {
            ATTR_IPADDR_IPV4 => return attr::addr_from(leaf.value(), false),
            ATTR_IPADDR_IPV6 => return attr::addr_from(leaf.value(), true),
            _ => {}
        }
    }
    Err(DecodeError::from("ipset IP attribute without an address"))
}

fn parse_entry(buf: &[u8]) -> Result<Entry, DecodeError> {
    let mut entry = Entry::default();
    for nla in attr::iter(buf) {
        let nla = nla?;
        match nla.kind() {
            ATTR_IP => entry.ip = Some(parse_ip(&nla)?),
            ATTR_CIDR => entry.cidr = Some(attr::get_u8(&nla)?),
            ATTR_PORT => entry.port = Some(attr::get_be16(&nla)?),
            ATTR_PROTO => {
                entry.protocol = Some(Protocol::from_number(u16::from(attr::get_u8(&nla)?)))
            }
            ATTR_IP2 => entry.ip2 = Some(parse_ip(&nla)?),
            ATTR_CIDR2 => entry.cidr2 = Some(attr::get_u8(&nla)?),
            ATTR_COMMENT => entry.comment = Some(attr::get_string(&nla)?),
            _ => {}
        }
    }
    Ok(entry)
}

/// `LIST` of every set's header, without members (`IPSET_FLAG_LIST_HEADER` in
/// `IPSET_ATTR_FLAGS`): what exists, cheaply.
pub fn list_headers_only() -> IpsetMessage {
    IpsetMessage {
        cmd: Command::List,
        attrs: vec![Attr::net_u32(ATTR_FLAGS, 1 << 2)],
    }
}

#[cfg(test)]
#[path = "ipset_tests.rs"]
mod tests;
