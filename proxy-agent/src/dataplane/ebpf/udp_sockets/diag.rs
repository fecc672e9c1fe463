//! sock_diag (`NETLINK_SOCK_DIAG`) for UDP: the connected sockets of the calling
//! thread's network namespace (`SOCK_DIAG_BY_FAMILY` dump), and `SOCK_DESTROY` of one.
//!
//! The messages are the crate's (`netlink-packet-sock-diag`: `inet_diag_req_v2` with
//! its `inet_diag_sockid`); `diag_tests.rs` checks their bytes against
//! `linux/inet_diag.h`. Only the fixed `inet_diag_msg` header of a reply is parsed:
//! its attributes vary by kernel and nothing here needs them.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{DecodeError, Parseable};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags,
};
use netlink_packet_sock_diag::{SOCK_DIAG_BY_FAMILY, SockDiagDestroy, SockDiagMessage};

use crate::dataplane::ipvs::netlink::error::NetlinkError;
use crate::dataplane::ipvs::netlink::socket::{self, Conn, Kernel, Transport};

/// The two families a dump is asked for, one after the other.
pub(super) const FAMILIES: [u8; 2] = [AF_INET, AF_INET6];

/// A connected UDP socket as sock_diag reports it: enough to destroy exactly it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ConnectedUdp {
    /// `AF_INET` or `AF_INET6` (an IPv6 socket may talk IPv4-mapped).
    pub family: u8,
    /// The 4-tuple, the bound interface and the cookie, as reported.
    pub id: SocketId,
}

impl ConnectedUdp {
    /// The kernel's socket cookie (what `bpf_get_socket_cookie` returns): the kernel
    /// stores it as two host-order `u32`s, low word first.
    pub fn cookie(&self) -> u64 {
        let [a, b, c, d, e, f, g, h] = self.id.cookie;
        let lo = u32::from_ne_bytes([a, b, c, d]);
        let hi = u32::from_ne_bytes([e, f, g, h]);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    /// Where it sends.
    pub fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.id.destination_address, self.id.destination_port)
    }

    /// Where it sends from.
    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(self.id.source_address, self.id.source_port)
    }
}

/// The dump of `family`'s UDP sockets in state `TCP_ESTABLISHED`, which is what a
/// connected UDP socket is in (an unconnected one is `TCP_CLOSE`: it names its
/// destination per datagram, and the sendmsg hook balances each one afresh).
pub(super) fn dump_request(family: u8) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::ESTABLISHED,
        socket_id: if family == AF_INET6 {
            SocketId::new_v6()
        } else {
            SocketId::new_v4()
        },
    })
}

/// `SOCK_DESTROY` of exactly `socket`: the kernel looks it up by its 4-tuple and
/// interface and refuses (`ESTALE`) if the cookie is another socket's, so a socket
/// that closed and whose tuple was reused is never hit.
pub(super) fn destroy_request(socket: &ConnectedUdp) -> SockDiagDestroy {
    SockDiagDestroy::new(SockDiagMessage::InetRequest(InetRequest {
        family: socket.family,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::ESTABLISHED,
        socket_id: socket.id.clone(),
    }))
}

/// One entry of a dump, if it is a connected socket with a destination.
pub(super) fn parse(
    message_type: u16,
    payload: &[u8],
) -> Result<Option<ConnectedUdp>, DecodeError> {
    if message_type != SOCK_DIAG_BY_FAMILY {
        return Ok(None);
    }
    let header = InetResponseHeader::parse(payload)?;
    let unspecified = match header.socket_id.destination_address {
        IpAddr::V4(a) => a.is_unspecified(),
        IpAddr::V6(a) => a.is_unspecified(),
    };
    if unspecified || header.socket_id.destination_port == 0 {
        return Ok(None);
    }
    Ok(Some(ConnectedUdp {
        family: header.family,
        id: header.socket_id,
    }))
}

/// A sock_diag conversation in the network namespace of the thread that opened it.
pub(super) struct Diag<T> {
    conn: Conn<T>,
}

impl Diag<Kernel> {
    /// Opens a `NETLINK_SOCK_DIAG` socket in the calling thread's namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let kernel = socket::open(libc::NETLINK_SOCK_DIAG as isize, "NETLINK_SOCK_DIAG")?;
        Ok(Diag::new(kernel))
    }
}

impl<T: Transport> Diag<T> {
    /// A conversation over `transport`.
    pub fn new(transport: T) -> Self {
        Diag {
            conn: Conn::new(transport),
        }
    }

    /// Every connected UDP socket of `family`.
    pub fn connected(&mut self, family: u8) -> Result<Vec<ConnectedUdp>, NetlinkError> {
        let mut out = Vec::new();
        for reply in self.conn.dump(dump_request(family))? {
            if let Some(s) = parse(reply.message_type, &reply.payload)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Destroys `socket`: the kernel aborts it (`udp_abort`): it is disconnected and
    /// a pending or next recv fails with `ECONNABORTED` (a next send, with
    /// `EDESTADDRREQ`), so the application reconnects and its connect() is balanced
    /// afresh.
    pub fn destroy(&mut self, socket: &ConnectedUdp) -> Result<(), Destroy> {
        match self.conn.request(destroy_request(socket), 0) {
            Ok(_) => Ok(()),
            // Closed (or reconnected elsewhere) since the dump: nothing to do.
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::ESTALE)) => {
                Err(Destroy::Gone)
            }
            Err(e) => Err(Destroy::Failed(e)),
        }
    }
}

/// Why a socket was not destroyed.
#[derive(Debug)]
pub(super) enum Destroy {
    /// It no longer exists with that tuple and cookie.
    Gone,
    /// The kernel refused (`EOPNOTSUPP`: a kernel without CONFIG_INET_DIAG_DESTROY;
    /// `EPERM`: no CAP_NET_ADMIN over the namespace), or the conversation failed.
    Failed(NetlinkError),
}

impl Destroy {
    /// The kernel's errno, for the log.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Destroy::Gone => None,
            Destroy::Failed(e) => e.errno(),
        }
    }
}

#[cfg(test)]
#[path = "diag_tests.rs"]
mod tests;
