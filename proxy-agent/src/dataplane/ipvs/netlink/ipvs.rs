//! The IPVS generic netlink family ("IPVS", version 1): virtual services, their real
//! servers (destinations), and the dumps that read them back with their counters.
//!
//! Layouts from `include/uapi/linux/ip_vs.h`. A service is identified by address
//! family, protocol, address and port (firewall-mark services are not used by
//! kube-proxy's IPVS mode and are skipped in dumps). Integers are host order except
//! ports and IPv4 persistence netmasks, which are network order (unflagged).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{DecodeError, Emitable};
use netlink_packet_generic::GenlFamily;

use super::attr::{self, Attr, Nlattr, addr_bytes};
use super::socket::Reply;

/// `IPVS_GENL_NAME`.
pub const FAMILY_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub const FAMILY_VERSION: u8 = 1;

// Top-level attributes (IPVS_CMD_ATTR_*).
const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;
const CMD_ATTR_TIMEOUT_TCP: u16 = 4;
const CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
const CMD_ATTR_TIMEOUT_UDP: u16 = 6;

// Service attributes (IPVS_SVC_ATTR_*).
const SVC_AF: u16 = 1;
const SVC_PROTOCOL: u16 = 2;
const SVC_ADDR: u16 = 3;
const SVC_PORT: u16 = 4;
const SVC_FWMARK: u16 = 5;
const SVC_SCHED_NAME: u16 = 6;
const SVC_FLAGS: u16 = 7;
const SVC_TIMEOUT: u16 = 8;
const SVC_NETMASK: u16 = 9;
const SVC_STATS: u16 = 10;
const SVC_STATS64: u16 = 12;

// Destination attributes (IPVS_DEST_ATTR_*).
const DEST_ADDR: u16 = 1;
const DEST_PORT: u16 = 2;
const DEST_FWD_METHOD: u16 = 3;
const DEST_WEIGHT: u16 = 4;
const DEST_U_THRESH: u16 = 5;
const DEST_L_THRESH: u16 = 6;
const DEST_ACTIVE_CONNS: u16 = 7;
const DEST_INACT_CONNS: u16 = 8;
const DEST_PERSIST_CONNS: u16 = 9;
const DEST_STATS: u16 = 10;
const DEST_ADDR_FAMILY: u16 = 11;
const DEST_STATS64: u16 = 12;

// Statistics attributes (IPVS_STATS_ATTR_*), the same in STATS and STATS64.
const STATS_CONNS: u16 = 1;
const STATS_INPKTS: u16 = 2;
const STATS_OUTPKTS: u16 = 3;
const STATS_INBYTES: u16 = 4;
const STATS_OUTBYTES: u16 = 5;
const STATS_CPS: u16 = 6;
const STATS_INPPS: u16 = 7;
const STATS_OUTPPS: u16 = 8;
const STATS_INBPS: u16 = 9;
const STATS_OUTBPS: u16 = 10;

/// `IP_VS_CONN_F_FWD_MASK`: the forwarding method's bits of a destination's flags.
const FWD_MASK: u32 = 0x7;
/// `IP_VS_SCHEDNAME_MAXLEN`, with the NUL.
pub(super) const SCHEDNAME_MAXLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

/// An IPVS command (`IPVS_CMD_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Add a service.
    NewService = 1,
    /// Modify a service.
    SetService = 2,
    /// Delete a service and its destinations.
    DelService = 3,
    /// Get one service, or dump all.
    GetService = 4,
    /// Add a destination to a service.
    NewDest = 5,
    /// Modify a destination.
    SetDest = 6,
    /// Delete a destination.
    DelDest = 7,
    /// Dump a service's destinations.
    GetDest = 8,
    /// Set the connection timeouts (`ipvsadm --set`); also the command of the
    /// `GET_CONFIG` answer.
    SetConfig = 12,
    /// Get the connection timeouts.
    GetConfig = 13,
    /// Delete every service.
    Flush = 17,
}

impl Command {
    /// The command's name, for errors.
    pub fn name(self) -> &'static str {
        match self {
            Command::NewService => "IPVS_CMD_NEW_SERVICE",
            Command::SetService => "IPVS_CMD_SET_SERVICE",
            Command::DelService => "IPVS_CMD_DEL_SERVICE",
            Command::GetService => "IPVS_CMD_GET_SERVICE",
            Command::NewDest => "IPVS_CMD_NEW_DEST",
            Command::SetDest => "IPVS_CMD_SET_DEST",
            Command::DelDest => "IPVS_CMD_DEL_DEST",
            Command::GetDest => "IPVS_CMD_GET_DEST",
            Command::SetConfig => "IPVS_CMD_SET_CONFIG",
            Command::GetConfig => "IPVS_CMD_GET_CONFIG",
            Command::Flush => "IPVS_CMD_FLUSH",
        }
    }
}

/// A virtual service's transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// `IPPROTO_TCP`.
    Tcp,
    /// `IPPROTO_UDP`.
    Udp,
    /// `IPPROTO_SCTP`.
    Sctp,
    /// Another protocol, as a dump may hold.
    Other(u16),
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u16 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
            Protocol::Other(n) => n,
        }
    }

    /// The protocol of an IP protocol number.
    pub fn from_number(n: u16) -> Protocol {
        match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            n => Protocol::Other(n),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Sctp => f.write_str("SCTP"),
            Protocol::Other(n) => write!(f, "protocol {n}"),
        }
    }
}

/// What identifies a virtual service: protocol, address and port (the address
/// family is the address's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    /// The transport protocol.
    pub protocol: Protocol,
    /// The virtual address.
    pub addr: IpAddr,
    /// The virtual port.
    pub port: u16,
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.protocol,
            SocketAddr::new(self.addr, self.port)
        )
    }
}

/// A service's flags (`IP_VS_SVC_F_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceFlags(pub u32);

impl ServiceFlags {
    /// `IP_VS_SVC_F_PERSISTENT`: a client sticks to its destination for the timeout
    /// (kube-proxy's ClientIP session affinity).
    pub const PERSISTENT: ServiceFlags = ServiceFlags(0x1);
    /// `IP_VS_SVC_F_HASHED`: kernel-internal, set on every live service; dropped when
    /// decoding so that a read-back service equals the one written.
    pub const HASHED: ServiceFlags = ServiceFlags(0x2);
    /// `IP_VS_SVC_F_ONEPACKET`: one-packet scheduling (UDP).
    pub const ONEPACKET: ServiceFlags = ServiceFlags(0x4);
    /// `IP_VS_SVC_F_SCHED1` (`sh-fallback` for the sh scheduler).
    pub const SCHED1: ServiceFlags = ServiceFlags(0x8);
    /// `IP_VS_SVC_F_SCHED2` (`sh-port`).
    pub const SCHED2: ServiceFlags = ServiceFlags(0x10);
    /// `IP_VS_SVC_F_SCHED3`.
    pub const SCHED3: ServiceFlags = ServiceFlags(0x20);

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: ServiceFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for ServiceFlags {
    type Output = ServiceFlags;
    fn bitor(self, rhs: ServiceFlags) -> ServiceFlags {
        ServiceFlags(self.0 | rhs.0)
    }
}

/// A virtual service as written: its identity and options.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Service {
    /// Protocol, address, port.
    pub id: ServiceId,
    /// The scheduler (`rr`, `wlc`, ...: module `ip_vs_<name>`), at most 15 bytes.
    pub scheduler: String,
    /// Flags; [`ServiceFlags::PERSISTENT`] for session affinity.
    pub flags: ServiceFlags,
    /// The persistence timeout in seconds (used with [`ServiceFlags::PERSISTENT`]).
    pub timeout: u32,
    /// The persistence netmask as a prefix length: clients within one prefix share
    /// their destination (32 or 128: each client alone).
    pub netmask: u8,
}

impl Service {
    /// A service without persistence: every client scheduled on its own.
    pub fn new(id: ServiceId, scheduler: &str) -> Service {
        Service {
            id,
            scheduler: scheduler.to_owned(),
            flags: ServiceFlags::default(),
            timeout: 0,
            netmask: if id.addr.is_ipv4() { 32 } else { 128 },
        }
    }
}

/// Traffic counters of a service or a destination (the kernel's `ip_vs_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections scheduled.
    pub connections: u64,
    /// Packets in (client to server).
    pub packets_in: u64,
    /// Packets out.
    pub packets_out: u64,
    /// Bytes in.
    pub bytes_in: u64,
    /// Bytes out.
    pub bytes_out: u64,
    /// Current connection rate (per second, a kernel estimate).
    pub cps: u64,
    /// Current packet rate in.
    pub pps_in: u64,
    /// Current packet rate out.
    pub pps_out: u64,
    /// Current byte rate in.
    pub bps_in: u64,
    /// Current byte rate out.
    pub bps_out: u64,
}

/// A service as dumped: what was written, and its counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The service.
    pub service: Service,
    /// Its counters.
    pub stats: Stats,
}

/// How a destination is reached (`IP_VS_CONN_F_*` forwarding methods).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForwardMethod {
    /// NAT (`IP_VS_CONN_F_MASQ`), as kube-proxy uses.
    Masquerade,
    /// A local server (`IP_VS_CONN_F_LOCALNODE`).
    Local,
    /// IP-in-IP (`IP_VS_CONN_F_TUNNEL`).
    Tunnel,
    /// Direct routing (`IP_VS_CONN_F_DROUTE`).
    DirectRoute,
    /// Another value of the forwarding bits.
    Other(u32),
}

impl ForwardMethod {
    fn value(self) -> u32 {
        match self {
            ForwardMethod::Masquerade => 0,
            ForwardMethod::Local => 1,
            ForwardMethod::Tunnel => 2,
            ForwardMethod::DirectRoute => 3,
            ForwardMethod::Other(v) => v,
        }
    }

    fn from_value(v: u32) -> ForwardMethod {
        match v & FWD_MASK {
            0 => ForwardMethod::Masquerade,
            1 => ForwardMethod::Local,
            2 => ForwardMethod::Tunnel,
            3 => ForwardMethod::DirectRoute,
            v => ForwardMethod::Other(v),
        }
    }
}

/// A real server of a service, as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    /// Its address; the address family is this address's.
    pub addr: IpAddr,
    /// Its port.
    pub port: u16,
    /// How packets reach it.
    pub forward: ForwardMethod,
    /// Its weight; 0 takes no new connections (graceful removal). The kernel refuses
    /// values over `i32::MAX`.
    pub weight: u32,
    /// Upper connection threshold (0: none).
    pub upper_threshold: u32,
    /// Lower connection threshold (0: none).
    pub lower_threshold: u32,
}

impl Destination {
    /// A masqueraded destination of weight 1, as kube-proxy writes endpoints.
    pub fn masquerade(addr: IpAddr, port: u16) -> Destination {
        Destination {
            addr,
            port,
            forward: ForwardMethod::Masquerade,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }
}

/// A destination as dumped: what was written, its connections and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationInfo {
    /// The destination.
    pub destination: Destination,
    /// Established connections (`ActiveConn`).
    pub active_connections: u32,
    /// Other connections (`InActConn`); with the active ones, what graceful removal
    /// waits for.
    pub inactive_connections: u32,
    /// Persistence templates.
    pub persistent_connections: u32,
    /// Its counters.
    pub stats: Stats,
}

/// IPVS's connection timeouts in seconds (`struct ip_vs_timeout_user`): what
/// `GET_CONFIG` reports (a protocol the kernel lacks is absent) and what `SET_CONFIG`
/// changes (an absent one is not sent, and the kernel keeps it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeoutConfig {
    /// Established TCP connections (`IPVS_CMD_ATTR_TIMEOUT_TCP`).
    pub tcp: Option<u32>,
    /// TCP connections after a FIN (`IPVS_CMD_ATTR_TIMEOUT_TCP_FIN`).
    pub tcp_fin: Option<u32>,
    /// UDP (`IPVS_CMD_ATTR_TIMEOUT_UDP`).
    pub udp: Option<u32>,
}

impl TimeoutConfig {
    /// Whether no timeout is given.
    pub fn is_empty(&self) -> bool {
        *self == TimeoutConfig::default()
    }
}

/// The payload of an IPVS message: a command and its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsMessage {
    /// The command.
    pub cmd: Command,
    /// Its top-level attributes.
    pub attrs: Vec<Attr>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        self.cmd as u8
    }

    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

fn family_of(addr: IpAddr) -> u16 {
    if addr.is_ipv4() {
        libc::AF_INET as u16
    } else {
        libc::AF_INET6 as u16
    }
}

/// The attributes naming a service.
fn id_attrs(id: &ServiceId) -> Vec<Attr> {
    vec![
        Attr::u16(SVC_AF, family_of(id.addr)),
        Attr::u16(SVC_PROTOCOL, id.protocol.number()),
        Attr::bytes(SVC_ADDR, addr_bytes(id.addr)),
        Attr::be16(SVC_PORT, id.port),
    ]
}

/// The `IPVS_CMD_ATTR_SERVICE` nest with the service's identity and, for NEW/SET,
/// every option (the kernel requires all four).
fn service_attr(svc: &Service) -> Attr {
    let mut attrs = id_attrs(&svc.id);
    let mut flags = Vec::with_capacity(8);
    flags.extend_from_slice(&svc.flags.0.to_ne_bytes());
    // The mask says which flags to take; all, as ipvsadm sends.
    flags.extend_from_slice(&u32::MAX.to_ne_bytes());
    attrs.extend([
        Attr::string(SVC_SCHED_NAME, &svc.scheduler),
        Attr::bytes(SVC_FLAGS, flags),
        Attr::u32(SVC_TIMEOUT, svc.timeout),
        Attr::bytes(SVC_NETMASK, netmask_bytes(svc.id.addr, svc.netmask)),
    ]);
    Attr::nested(CMD_ATTR_SERVICE, attrs)
}

/// IPv4: the mask itself, network order; IPv6: the prefix length, host order (the
/// kernel compares it with 128).
fn netmask_bytes(addr: IpAddr, prefix: u8) -> [u8; 4] {
    if addr.is_ipv4() {
        let prefix = u32::from(prefix.min(32));
        let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
        mask.to_be_bytes()
    } else {
        u32::from(prefix.min(128)).to_ne_bytes()
    }
}

fn dest_attr(dest: &Destination, full: bool) -> Attr {
    let mut attrs = vec![
        Attr::bytes(DEST_ADDR, addr_bytes(dest.addr)),
        Attr::be16(DEST_PORT, dest.port),
    ];
    if full {
        attrs.extend([
            Attr::u32(DEST_FWD_METHOD, dest.forward.value()),
            Attr::u32(DEST_WEIGHT, dest.weight),
            Attr::u32(DEST_U_THRESH, dest.upper_threshold),
            Attr::u32(DEST_L_THRESH, dest.lower_threshold),
        ]);
    }
    attrs.push(Attr::u16(DEST_ADDR_FAMILY, family_of(dest.addr)));
    Attr::nested(CMD_ATTR_DEST, attrs)
}

/// `NEW_SERVICE` or `SET_SERVICE` for `svc`.
pub fn service_message(cmd: Command, svc: &Service) -> IpvsMessage {
    IpvsMessage {
        cmd,
        attrs: vec![service_attr(svc)],
    }
}

/// `DEL_SERVICE`, `GET_SERVICE` (one) or `GET_DEST` (a dump) naming a service.
pub fn service_id_message(cmd: Command, id: &ServiceId) -> IpvsMessage {
    IpvsMessage {
        cmd,
        attrs: vec![Attr::nested(CMD_ATTR_SERVICE, id_attrs(id))],
    }
}

/// `NEW_DEST`, `SET_DEST` (every option) or `DEL_DEST` (address and port only).
pub fn dest_message(cmd: Command, id: &ServiceId, dest: &Destination) -> IpvsMessage {
    IpvsMessage {
        cmd,
        attrs: vec![
            Attr::nested(CMD_ATTR_SERVICE, id_attrs(id)),
            dest_attr(dest, cmd != Command::DelDest),
        ],
    }
}

/// `SET_CONFIG` with the timeouts given, as top-level `u32` attributes. The kernel
/// reads the current ones first and overwrites only those sent (and takes a 0 as
/// "keep" too).
pub fn set_config_message(timeouts: &TimeoutConfig) -> IpvsMessage {
    let attrs = [
        (CMD_ATTR_TIMEOUT_TCP, timeouts.tcp),
        (CMD_ATTR_TIMEOUT_TCP_FIN, timeouts.tcp_fin),
        (CMD_ATTR_TIMEOUT_UDP, timeouts.udp),
    ]
    .into_iter()
    .filter_map(|(kind, secs)| secs.map(|s| Attr::u32(kind, s)))
    .collect();
    IpvsMessage {
        cmd: Command::SetConfig,
        attrs,
    }
}

/// The timeouts of a `GET_CONFIG` answer (its command is `SET_CONFIG`).
pub fn parse_config(replies: &[Reply]) -> Result<TimeoutConfig, DecodeError> {
    let mut t = TimeoutConfig::default();
    for reply in replies {
        let body = reply.payload.get(GENL_HDRLEN..).unwrap_or_default();
        for nla in attr::iter(body) {
            let nla = nla?;
            match nla.kind() {
                CMD_ATTR_TIMEOUT_TCP => t.tcp = Some(attr::get_u32(&nla)?),
                CMD_ATTR_TIMEOUT_TCP_FIN => t.tcp_fin = Some(attr::get_u32(&nla)?),
                CMD_ATTR_TIMEOUT_UDP => t.udp = Some(attr::get_u32(&nla)?),
                _ => {}
            }
        }
    }
    Ok(t)
}

/// A message without attributes (`GET_SERVICE` dumps, `GET_CONFIG`, `FLUSH`).
pub fn bare_message(cmd: Command) -> IpvsMessage {
    IpvsMessage {
        cmd,
        attrs: Vec::new(),
    }
}

/// The nest `kind` of a reply message's body.
fn top_level<'a>(reply: &'a Reply, kind: u16) -> Result<Option<Nlattr<'a>>, DecodeError> {
    let body = reply.payload.get(GENL_HDRLEN..).unwrap_or_default();
    for nla in attr::iter(body) {
        let nla = nla?;
        if nla.kind() == kind {
            return Ok(Some(nla));
        }
    }
    Ok(None)
}

/// The services of `GET_SERVICE` replies; firewall-mark services are skipped.
pub fn parse_services(replies: &[Reply]) -> Result<Vec<ServiceInfo>, DecodeError> {
    let mut out = Vec::new();
    for reply in replies {
        if let Some(nest) = top_level(reply, CMD_ATTR_SERVICE)? {
            out.extend(parse_service(nest.value())?);
        }
    }
    Ok(out)
}

/// The destinations of `GET_DEST` replies, for a service of `service_addr`'s family
/// (the family a destination without `ADDR_FAMILY` has: kernels before 4.15).
pub fn parse_dests(
    replies: &[Reply],
    service_addr: IpAddr,
) -> Result<Vec<DestinationInfo>, DecodeError> {
    let mut out = Vec::new();
    for reply in replies {
        if let Some(nest) = top_level(reply, CMD_ATTR_DEST)? {
            out.push(parse_dest(nest.value(), service_addr.is_ipv6())?);
        }
    }
    Ok(out)
}

fn missing(what: &str) -> DecodeError {
    DecodeError::from(format!("IPVS reply without {what}"))
}

/// A service nest; `None` for a firewall-mark service.
fn parse_service(buf: &[u8]) -> Result<Option<ServiceInfo>, DecodeError> {
    let (mut af, mut protocol, mut addr, mut port) = (None, None, None, None);
    let (mut fwmark, mut scheduler, mut flags, mut timeout, mut netmask) =
        (false, String::new(), 0, 0, None);
    let (mut stats, mut stats64) = (None, None);
    for nla in attr::iter(buf) {
        let nla = nla?;
        match nla.kind() {
            SVC_AF => af = Some(attr::get_u16(&nla)?),
            SVC_PROTOCOL => protocol = Some(attr::get_u16(&nla)?),
            // Read once the family is known: it may come first or not.
            SVC_ADDR => addr = Some(nla.value().to_vec()),
            SVC_PORT => port = Some(attr::get_be16(&nla)?),
            SVC_FWMARK => fwmark = attr::get_u32(&nla)? != 0,
            SVC_SCHED_NAME => scheduler = attr::get_string(&nla)?,
            SVC_FLAGS => {
                let v = nla.value();
                let raw: [u8; 4] = v
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| DecodeError::invalid_number(8, v.len()))?;
                flags = u32::from_ne_bytes(raw);
            }
            SVC_TIMEOUT => timeout = attr::get_u32(&nla)?,
            SVC_NETMASK => netmask = Some(nla.value().to_vec()),
            SVC_STATS => stats = Some(parse_stats(nla.value())?),
            SVC_STATS64 => stats64 = Some(parse_stats(nla.value())?),
            _ => {}
        }
    }
    if fwmark && addr.is_none() {
        return Ok(None);
    }
    let ipv6 = match af {
        Some(f) if f == libc::AF_INET6 as u16 => true,
        Some(f) if f == libc::AF_INET as u16 => false,
        Some(f) => return Err(DecodeError::from(format!("IPVS service of family {f}"))),
        None => return Err(missing("IPVS_SVC_ATTR_AF")),
    };
    let addr = addr.ok_or_else(|| missing("IPVS_SVC_ATTR_ADDR"))?;
    let addr = attr::addr_from(&addr, ipv6)?;
    let netmask = match netmask {
        Some(raw) if raw.len() == 4 => {
            let raw = [raw[0], raw[1], raw[2], raw[3]];
            if ipv6 {
                u8::try_from(u32::from_ne_bytes(raw)).unwrap_or(128)
            } else {
                u32::from_be_bytes(raw).leading_ones() as u8
            }
        }
        _ => {
            if ipv6 {
                128
            } else {
                32
            }
        }
    };
    let id = ServiceId {
        protocol: Protocol::from_number(protocol.ok_or_else(|| missing("IPVS_SVC_ATTR_PROTOCOL"))?),
        addr,
        port: port.ok_or_else(|| missing("IPVS_SVC_ATTR_PORT"))?,
    };
    Ok(Some(ServiceInfo {
        service: Service {
            id,
            scheduler,
            flags: ServiceFlags(flags & !ServiceFlags::HASHED.0),
            timeout,
            netmask,
        },
        // The 64-bit counters when the kernel has them (4.1+): the 32-bit ones wrap.
        stats: stats64.or(stats).unwrap_or_default(),
    }))
}

fn parse_dest(buf: &[u8], service_ipv6: bool) -> Result<DestinationInfo, DecodeError> {
    let (mut addr, mut port, mut af) = (None, None, None);
    let mut dest = Destination::masquerade(IpAddr::from([0, 0, 0, 0]), 0);
    let mut info = (0, 0, 0);
    let (mut stats, mut stats64) = (None, None);
    for nla in attr::iter(buf) {
        let nla = nla?;
        match nla.kind() {
            DEST_ADDR => addr = Some(nla.value().to_vec()),
            DEST_PORT => port = Some(attr::get_be16(&nla)?),
            DEST_FWD_METHOD => dest.forward = ForwardMethod::from_value(attr::get_u32(&nla)?),
            DEST_WEIGHT => dest.weight = attr::get_u32(&nla)?,
            DEST_U_THRESH => dest.upper_threshold = attr::get_u32(&nla)?,
            DEST_L_THRESH => dest.lower_threshold = attr::get_u32(&nla)?,
            DEST_ACTIVE_CONNS => info.0 = attr::get_u32(&nla)?,
            DEST_INACT_CONNS => info.1 = attr::get_u32(&nla)?,
            DEST_PERSIST_CONNS => info.2 = attr::get_u32(&nla)?,
            DEST_STATS => stats = Some(parse_stats(nla.value())?),
            DEST_ADDR_FAMILY => af = Some(attr::get_u16(&nla)?),
            DEST_STATS64 => stats64 = Some(parse_stats(nla.value())?),
            _ => {}
        }
    }
    let ipv6 = af.map_or(service_ipv6, |f| f == libc::AF_INET6 as u16);
    let addr = addr.ok_or_else(|| missing("IPVS_DEST_ATTR_ADDR"))?;
    dest.addr = attr::addr_from(&addr, ipv6)?;
    dest.port = port.ok_or_else(|| missing("IPVS_DEST_ATTR_PORT"))?;
    Ok(DestinationInfo {
        destination: dest,
        active_connections: info.0,
        inactive_connections: info.1,
        persistent_connections: info.2,
        stats: stats64.or(stats).unwrap_or_default(),
    })
}

/// A stats nest, 32-bit (`STATS`) or 64-bit (`STATS64`): each counter is read at the
/// width it came in.
fn parse_stats(buf: &[u8]) -> Result<Stats, DecodeError> {
    let mut s = Stats::default();
    for nla in attr::iter(buf) {
        let nla = nla?;
        let value = match nla.value().len() {
            4 => u64::from(attr::get_u32(&nla)?),
            8 => attr::get_u64(&nla)?,
            // IPVS_STATS_ATTR_PAD and anything newer.
            _ => continue,
        };
        match nla.kind() {
            STATS_CONNS => s.connections = value,
            STATS_INPKTS => s.packets_in = value,
            STATS_OUTPKTS => s.packets_out = value,
            STATS_INBYTES => s.bytes_in = value,
            STATS_OUTBYTES => s.bytes_out = value,
            STATS_CPS => s.cps = value,
            STATS_INPPS => s.pps_in = value,
            STATS_OUTPPS => s.pps_out = value,
            STATS_INBPS => s.bps_in = value,
            STATS_OUTBPS => s.bps_out = value,
            _ => {}
        }
    }
    Ok(s)
}

#[cfg(test)]
#[path = "ipvs_tests.rs"]
mod tests;
