//! One-shot rtnetlink dumps of links, addresses and default routes, and the pure
//! parsing of their replies.
//!
//! The socket is blocking: a dump of a node-sized table takes well under a millisecond,
//! and the callers are synchronous. The socket lives in the network namespace of the
//! calling thread.
//!
//! Only the attributes the device plan needs are decoded (a link's name, an address,
//! a route's table and output interfaces), each with netlink-packet-route's parser: an
//! attribute this crate version does not understand can then never hide a device.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    DecodeError, DoneBuffer, Emitable, ErrorBuffer, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
    NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NlasIterator, Parseable, ParseableParametrized,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeader, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkHeader, LinkMessage};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteLwEnCapType, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::Interface;
use crate::dataplane::nlsocket::{Kernel, Transport};

// Attribute kinds from <linux/if_link.h>, <linux/if_addr.h> and <linux/rtnetlink.h>.
const IFLA_IFNAME: u16 = 3;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;

/// A dump with NLM_F_DUMP_INTR set is retried this many times before giving up: the
/// kernel sets it when the table changed while it was being walked.
const DUMP_ATTEMPTS: u32 = 5;

/// Everything the device plan reads from the kernel, from one listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The interfaces with their addresses, in interface-index order.
    pub interfaces: Vec<Interface>,
    /// Names of the interfaces holding a default route of the main table (IPv4 or
    /// IPv6).
    pub default_route_interfaces: BTreeSet<String>,
}

/// Which dump a request or an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dump {
    /// `RTM_GETLINK`: every interface.
    Links,
    /// `RTM_GETADDR`, both families: every address.
    Addresses,
    /// `RTM_GETROUTE`, `AF_INET`.
    Ipv4Routes,
    /// `RTM_GETROUTE`, `AF_INET6`.
    Ipv6Routes,
}

impl Dump {
    /// The message type of the dump's entries.
    fn reply_type(self) -> u16 {
        match self {
            Dump::Links => libc::RTM_NEWLINK,
            Dump::Addresses => libc::RTM_NEWADDR,
            Dump::Ipv4Routes | Dump::Ipv6Routes => libc::RTM_NEWROUTE,
        }
    }
}

impl fmt::Display for Dump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dump::Links => "RTM_GETLINK dump",
            Dump::Addresses => "RTM_GETADDR dump",
            Dump::Ipv4Routes => "RTM_GETROUTE dump (IPv4)",
            Dump::Ipv6Routes => "RTM_GETROUTE dump (IPv6)",
        })
    }
}

/// Why talking rtnetlink failed.
#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    /// A `NETLINK_ROUTE` socket could not be opened, bound or configured.
    #[error("NETLINK_ROUTE socket: {call}: {source}")]
    Socket {
        /// The failed call (`socket`, `bind`, `setsockopt(NETLINK_ADD_MEMBERSHIP)`...).
        call: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Sending the request or receiving its reply failed.
    #[error("{dump}: {call}: {source}")]
    Syscall {
        /// The request.
        dump: Dump,
        /// `sendto` or `recvfrom`.
        call: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the request (`NLMSG_ERROR`, or `NLMSG_DONE` with an error).
    #[error("{dump}: the kernel answered: {source}")]
    Kernel {
        /// The request.
        dump: Dump,
        /// The errno it answered with.
        #[source]
        source: io::Error,
    },
    /// A reply did not parse.
    #[error("{dump}: malformed reply: {source}")]
    Decode {
        /// The request.
        dump: Dump,
        /// The parser's complaint.
        #[source]
        source: DecodeError,
    },
    /// The table kept changing while it was dumped (`NLM_F_DUMP_INTR` every time).
    #[error("{dump}: interrupted by concurrent changes {attempts} times in a row")]
    Interrupted {
        /// The request.
        dump: Dump,
        /// How many times it was tried.
        attempts: u32,
    },
    /// [`DeviceWatch`](super::DeviceWatch) was created outside a tokio runtime.
    #[error("DeviceWatch needs a tokio runtime (with IO and time enabled)")]
    NoRuntime,
}

impl RtnlError {
    /// A short, fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            RtnlError::Socket { .. } => "socket",
            RtnlError::Syscall { .. } => "syscall",
            RtnlError::Kernel { .. } => "kernel",
            RtnlError::Decode { .. } => "decode",
            RtnlError::Interrupted { .. } => "interrupted",
            RtnlError::NoRuntime => "no_runtime",
        }
    }
}

/// Lists the interfaces, their addresses and the default-route interfaces of the
/// calling thread's network namespace.
///
/// The three dumps are not one atomic read: an address or route of an interface that
/// appeared between them is left out, and a [`DeviceWatch`](super::DeviceWatch) created
/// before the listing reports that change.
pub fn list() -> Result<Snapshot, RtnlError> {
    let kernel = Kernel::open(NETLINK_ROUTE).map_err(|e| RtnlError::Socket {
        call: e.call,
        source: e.source,
    })?;
    let mut conn = Conn::new(kernel);
    let links = conn.links()?;
    let addrs = conn.addresses()?;
    let routes = conn.default_routes()?;
    Ok(assemble(links, addrs, &routes))
}

/// A link from `RTM_NEWLINK`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Link {
    pub index: u32,
    pub name: String,
    pub loopback: bool,
}

/// An address from `RTM_NEWADDR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Addr {
    pub index: u32,
    pub ip: IpAddr,
}

/// Joins the dumps: interfaces in link order, each with its addresses in dump order.
pub(super) fn assemble(links: Vec<Link>, addrs: Vec<Addr>, default_oifs: &[u32]) -> Snapshot {
    let mut snap = Snapshot::default();
    for link in links {
        if snap.interfaces.iter().any(|i| i.index == link.index) {
            continue;
        }
        if default_oifs.contains(&link.index) {
            snap.default_route_interfaces.insert(link.name.clone());
        }
        snap.interfaces.push(Interface {
            name: link.name,
            index: link.index,
            addrs: Vec::new(),
            loopback: link.loopback,
        });
    }
    for addr in addrs {
        // An address of a link that appeared after the link dump is left out; the
        // watcher reports that link.
        if let Some(iface) = snap.interfaces.iter_mut().find(|i| i.index == addr.index)
            && !iface.addrs.contains(&addr.ip)
        {
            iface.addrs.push(addr.ip);
        }
    }
    snap
}

/// The payload of an `RTM_NEWLINK`; `None` for a link without a name.
pub(super) fn parse_link(payload: &[u8]) -> Result<Option<Link>, DecodeError> {
    let header = LinkHeader::parse(payload)?;
    let mut name = None;
    for nla in attributes(payload, header.buffer_len()) {
        let nla = nla?;
        if nla.kind() == IFLA_IFNAME
            && let LinkAttribute::IfName(n) =
                LinkAttribute::parse_with_param(&nla, header.interface_family)?
        {
            name = Some(n);
        }
    }
    Ok(name.map(|name| Link {
        index: header.index,
        name,
        loopback: header.flags.contains(LinkFlags::Loopback),
    }))
}

/// The payload of an `RTM_NEWADDR`: the local address (`IFA_LOCAL`, else
/// `IFA_ADDRESS`, as getifaddrs does: on a point-to-point link `IFA_ADDRESS` is the
/// peer's).
pub(super) fn parse_address(payload: &[u8]) -> Result<Option<Addr>, DecodeError> {
    let header = AddressHeader::parse(payload)?;
    let (mut local, mut address) = (None, None);
    for nla in attributes(payload, header.buffer_len()) {
        let nla = nla?;
        if nla.kind() != IFA_LOCAL && nla.kind() != IFA_ADDRESS {
            continue;
        }
        match AddressAttribute::parse(&nla)? {
            AddressAttribute::Local(ip) => local = Some(ip),
            AddressAttribute::Address(ip) => address = Some(ip),
            _ => {}
        }
    }
    Ok(local.or(address).map(|ip| Addr {
        index: header.index,
        ip,
    }))
}

/// The payload of an `RTM_NEWROUTE`: the output interfaces if it is a unicast
/// default route of the main table, else nothing.
pub(super) fn parse_default_route(payload: &[u8]) -> Result<Vec<u32>, DecodeError> {
    let header = RouteHeader::parse(payload)?;
    if header.destination_prefix_length != 0 || header.kind != RouteType::Unicast {
        return Ok(Vec::new());
    }
    let param = (header.address_family, header.kind, RouteLwEnCapType::None);
    let mut table = u32::from(header.table);
    let mut oifs = Vec::new();
    for nla in attributes(payload, header.buffer_len()) {
        let nla = nla?;
        if ![RTA_OIF, RTA_MULTIPATH, RTA_TABLE].contains(&nla.kind()) {
            continue;
        }
        match RouteAttribute::parse_with_param(&nla, param)? {
            // A table id over 255 only fits the attribute.
            RouteAttribute::Table(t) => table = t,
            RouteAttribute::Oif(i) => oifs.push(i),
            RouteAttribute::MultiPath(hops) => oifs.extend(hops.iter().map(|h| h.interface_index)),
            _ => {}
        }
    }
    if table != RT_TABLE_MAIN {
        oifs.clear();
    }
    Ok(oifs)
}

/// The attributes after a fixed-size family header.
fn attributes(payload: &[u8], header_len: usize) -> NlasIterator<&[u8]> {
    NlasIterator::new(payload.get(header_len..).unwrap_or_default())
}

/// Whether a notification datagram can change a [`Snapshot`]: everything but routes
/// with a non-zero prefix (every pod start adds one). Anything unparseable counts.
pub(super) fn notification_matters(datagram: &[u8]) -> bool {
    let mut rest = datagram;
    while !rest.is_empty() {
        let Ok(msg) = NetlinkBuffer::new_checked(rest) else {
            return true;
        };
        let route = [libc::RTM_NEWROUTE, libc::RTM_DELROUTE].contains(&msg.message_type());
        let matters = !route
            || RouteHeader::parse(msg.payload()).map_or(true, |h| h.destination_prefix_length == 0);
        if matters {
            return true;
        }
        rest = after(rest, msg.length());
    }
    false
}

/// What follows a message of `len` bytes (messages are 4-byte aligned).
fn after(buf: &[u8], len: u32) -> &[u8] {
    let next = (len as usize).saturating_add(3) & !3;
    buf.get(next..).unwrap_or_default()
}

/// Requests and their replies over one transport.
pub(super) struct Conn<T> {
    transport: T,
    seq: u32,
    buf: Vec<u8>,
}

impl<T: Transport> Conn<T> {
    pub(super) fn new(transport: T) -> Self {
        Conn {
            transport,
            seq: 0,
            buf: Vec::with_capacity(32 * 1024),
        }
    }

    fn links(&mut self) -> Result<Vec<Link>, RtnlError> {
        let mut out = Vec::new();
        for payload in self.dump(Dump::Links)? {
            let link = parse_link(&payload).map_err(|source| RtnlError::Decode {
                dump: Dump::Links,
                source,
            })?;
            out.extend(link);
        }
        Ok(out)
    }

    fn addresses(&mut self) -> Result<Vec<Addr>, RtnlError> {
        let mut out = Vec::new();
        for payload in self.dump(Dump::Addresses)? {
            let addr = parse_address(&payload).map_err(|source| RtnlError::Decode {
                dump: Dump::Addresses,
                source,
            })?;
            out.extend(addr);
        }
        Ok(out)
    }

    fn default_routes(&mut self) -> Result<Vec<u32>, RtnlError> {
        let mut out = Vec::new();
        for dump in [Dump::Ipv4Routes, Dump::Ipv6Routes] {
            for payload in self.dump(dump)? {
                let oifs = parse_default_route(&payload)
                    .map_err(|source| RtnlError::Decode { dump, source })?;
                out.extend(oifs);
            }
        }
        Ok(out)
    }

    /// Runs one dump to its end and returns the payloads of its entries, retrying
    /// when the kernel says the walk was interrupted by a change.
    pub(super) fn dump(&mut self, dump: Dump) -> Result<Vec<Vec<u8>>, RtnlError> {
        for _ in 0..DUMP_ATTEMPTS {
            self.seq = self.seq.wrapping_add(1);
            let request = request(dump, self.seq);
            retrying(|| self.transport.send(&request)).map_err(|source| RtnlError::Syscall {
                dump,
                call: "sendto",
                source,
            })?;
            let mut reply = Reply::default();
            while !reply.done {
                retrying(|| self.transport.recv(&mut self.buf)).map_err(|source| {
                    RtnlError::Syscall {
                        dump,
                        call: "recvfrom",
                        source,
                    }
                })?;
                reply.read(&self.buf, dump, self.seq, self.transport.port())?;
            }
            if !reply.interrupted {
                return Ok(reply.entries);
            }
        }
        Err(RtnlError::Interrupted {
            dump,
            attempts: DUMP_ATTEMPTS,
        })
    }
}

/// A dump's reply as it arrives, datagram after datagram.
#[derive(Default)]
struct Reply {
    entries: Vec<Vec<u8>>,
    interrupted: bool,
    done: bool,
}

impl Reply {
    /// Takes in one datagram: entries, and the end (`NLMSG_DONE`, or `NLMSG_ERROR`).
    /// Messages for another sequence number or port (a stale reply) are skipped.
    fn read(&mut self, datagram: &[u8], dump: Dump, seq: u32, port: u32) -> Result<(), RtnlError> {
        let decode = |source: DecodeError| RtnlError::Decode { dump, source };
        let mut rest = datagram;
        while !rest.is_empty() && !self.done {
            let msg = NetlinkBuffer::new_checked(rest).map_err(decode)?;
            rest = after(rest, msg.length());
            if msg.sequence_number() != seq || (port != 0 && msg.port_number() != port) {
                continue;
            }
            if msg.flags() & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            let payload = msg.payload();
            match msg.message_type() {
                NLMSG_NOOP => {}
                NLMSG_DONE => {
                    self.done = true;
                    // The kernel may send a bare NLMSG_DONE; otherwise an errno < 0
                    // means the dump failed part way.
                    let code = if payload.is_empty() {
                        0
                    } else {
                        DoneBuffer::new_checked(payload).map_err(decode)?.code()
                    };
                    if code < 0 {
                        return Err(RtnlError::Kernel {
                            dump,
                            source: io::Error::from_raw_os_error(-code),
                        });
                    }
                }
                NLMSG_ERROR => {
                    self.done = true;
                    // Code 0 is an acknowledgement; a dump does not ask for one, but
                    // it ends the reply all the same.
                    if let Some(code) = ErrorBuffer::new_checked(payload).map_err(decode)?.code() {
                        return Err(RtnlError::Kernel {
                            dump,
                            source: io::Error::from_raw_os_error(code.get().saturating_neg()),
                        });
                    }
                }
                NLMSG_OVERRUN => {
                    return Err(decode(DecodeError::from("NLMSG_OVERRUN: data was lost")));
                }
                t if t == dump.reply_type() => self.entries.push(payload.to_vec()),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The request message for a dump.
pub(super) fn request(dump: Dump, seq: u32) -> Vec<u8> {
    let inner = match dump {
        Dump::Links => RouteNetlinkMessage::GetLink(LinkMessage::default()),
        // AF_UNSPEC: both families, IPv4 first, as getifaddrs lists them.
        Dump::Addresses => RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        Dump::Ipv4Routes | Dump::Ipv6Routes => {
            let mut msg = RouteMessage::default();
            msg.header.address_family = if dump == Dump::Ipv4Routes {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            RouteNetlinkMessage::GetRoute(msg)
        }
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Retries a system call interrupted by a signal.
fn retrying<R>(mut call: impl FnMut() -> io::Result<R>) -> io::Result<R> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
#[path = "rtnl_tests.rs"]
mod tests;
