//! A blocking netlink socket of one protocol, and the [`Transport`] seam the
//! conversations over it (rtnetlink dumps in `netdev`, IPVS and ipset requests in
//! `ipvs`) are written against, so that tests can script the kernel's side.

use std::io;

use netlink_sys::{Socket, SocketAddr};

/// One side of a netlink conversation: the kernel, or a script in tests.
pub trait Transport {
    /// Our port id, which replies are addressed to (0: do not check).
    fn port(&self) -> u32;
    /// Sends one request.
    fn send(&mut self, request: &[u8]) -> io::Result<()>;
    /// Receives one whole datagram into `buf`, replacing its contents.
    fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<()>;
}

/// Opening a socket failed.
#[derive(Debug, thiserror::Error)]
#[error("{call}: {source}")]
pub struct OpenError {
    /// The failed call (`socket`, `bind`).
    pub call: &'static str,
    /// What the kernel said.
    #[source]
    pub source: io::Error,
}

/// A blocking netlink socket, in the network namespace of the thread that opened it.
pub struct Kernel {
    socket: Socket,
    port: u32,
}

impl Kernel {
    /// Opens and binds a socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_GENERIC`, ...).
    pub fn open(protocol: isize) -> Result<Kernel, OpenError> {
        let mut socket = Socket::new(protocol).map_err(|source| OpenError {
            call: "socket",
            source,
        })?;
        let addr = socket.bind_auto().map_err(|source| OpenError {
            call: "bind",
            source,
        })?;
        Ok(Kernel {
            socket,
            port: addr.port_number(),
        })
    }
}

impl Transport for Kernel {
    fn port(&self) -> u32 {
        self.port
    }

    fn send(&mut self, request: &[u8]) -> io::Result<()> {
        let sent = self.socket.send_to(request, &SocketAddr::new(0, 0), 0)?;
        if sent != request.len() {
            return Err(io::Error::other(format!(
                "sent {sent} of {} bytes",
                request.len()
            )));
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        // Peek at the size first, so that no datagram is ever truncated (the kernel
        // sizes dump datagrams after our past reads, and one huge link or set may need
        // more than any fixed buffer).
        buf.clear();
        let len = self.socket.recv(buf, libc::MSG_PEEK | libc::MSG_TRUNC)?;
        buf.clear();
        buf.reserve(len);
        let got = self.socket.recv(buf, 0)?;
        if got != len {
            return Err(io::Error::other(format!(
                "datagram of {len} bytes read as {got}"
            )));
        }
        Ok(())
    }
}
