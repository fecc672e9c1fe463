//! Asking a service from a namespace: which backend answered (see
//! [`super::listeners`] for what they say), or the error.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use super::netns::Netns;

/// How long one connection may take to open or answer. Generous: a SYN lost to a
/// connection-reuse race is retransmitted after 1 s, and emulation is slow.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a TCP connection to `to` from `ns`, reads the greeting (the backend's name)
/// and closes.
pub fn ask(ns: &Netns, to: SocketAddr) -> io::Result<String> {
    ns.run(move || ask_here(to))
}

/// [`ask`] from the calling thread's namespace (for loops on a thread of a [`Netns`]).
pub fn ask_here(to: SocketAddr) -> io::Result<String> {
    let conn = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)?;
    conn.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    greeting(line)
}

/// `ask` `n` times: the answers, failing the test on an error.
pub fn ask_n(ns: &Netns, to: SocketAddr, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| ask(ns, to).unwrap_or_else(|e| panic!("connection {i} to {to}: {e}")))
        .collect()
}

/// One datagram to `to` from a new socket in `ns` (so a new port, a new IPVS
/// connection): who answered.
pub fn ask_udp(ns: &Netns, to: SocketAddr) -> io::Result<String> {
    ns.run(move || {
        let any: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().expect("an address")
        } else {
            "[::]:0".parse().expect("an address")
        };
        let socket = UdpSocket::bind(any)?;
        socket.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        socket.connect(to)?;
        socket.send(b"who")?;
        let mut buf = [0; 512];
        let n = socket.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

/// A UDP socket connected to a service and kept across the test, as a resolver keeps
/// one: one source port, so one conntrack entry and one IPVS connection for all its
/// datagrams.
pub struct ConnectedUdp {
    socket: UdpSocket,
}

impl ConnectedUdp {
    /// A socket in `ns` on a port of its own, connected to `to`.
    pub fn open(ns: &Netns, to: SocketAddr) -> ConnectedUdp {
        let socket = ns
            .run(move || {
                let any: SocketAddr = if to.is_ipv4() {
                    "0.0.0.0:0".parse().expect("an address")
                } else {
                    "[::]:0".parse().expect("an address")
                };
                let socket = UdpSocket::bind(any)?;
                socket.connect(to)?;
                Ok::<_, io::Error>(socket)
            })
            .unwrap_or_else(|e| panic!("a UDP socket connected to {to}: {e}"));
        ConnectedUdp { socket }
    }

    /// Its address (the source of its datagrams).
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("a bound socket")
    }

    /// One datagram; who answered within `timeout`, or the error (a timeout is
    /// `WouldBlock` or `TimedOut`).
    pub fn ask(&self, timeout: Duration) -> io::Result<String> {
        self.socket.set_read_timeout(Some(timeout))?;
        self.socket.send(b"who")?;
        let mut buf = [0; 512];
        let n = self.socket.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// A TCP connection kept open across the test, exchanging lines with its backend.
pub struct Held {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The backend that answered the greeting.
    pub backend: String,
    sent: u32,
}

impl Held {
    /// Opens a connection to `to` from `ns` and reads the greeting.
    pub fn open(ns: &Netns, to: SocketAddr) -> Held {
        let conn = ns
            .run(move || TcpStream::connect_timeout(&to, CONNECT_TIMEOUT))
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        conn.set_read_timeout(Some(CONNECT_TIMEOUT))
            .expect("a read timeout");
        let writer = conn.try_clone().expect("cloning a socket");
        let mut reader = BufReader::new(conn);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading the greeting of {to}: {e}"));
        let backend = greeting(line).unwrap_or_else(|e| panic!("greeting of {to}: {e}"));
        Held {
            reader,
            writer,
            backend,
            sent: 0,
        }
    }

    /// The client's end of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.writer.local_addr().expect("a connected socket")
    }

    /// Sends a line and checks that the same backend echoes it.
    pub fn exchange(&mut self) {
        self.sent += 1;
        let msg = format!("message-{}", self.sent);
        let answer = self
            .try_exchange(&msg)
            .unwrap_or_else(|e| panic!("held connection to {}: {msg}: {e}", self.backend));
        assert_eq!(
            answer,
            format!("{} {msg}", self.backend),
            "the held connection's backend answers"
        );
    }

    /// Sends `msg` and reads the answer line, or the error.
    pub fn try_exchange(&mut self, msg: &str) -> io::Result<String> {
        self.writer.write_all(format!("{msg}\n").as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if !line.ends_with('\n') {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(line.trim_end().to_owned())
    }

    /// Ends the connection with a reset (`SO_LINGER` 0), which IPVS expires within
    /// its CLOSE timeout (10 s) rather than after TIME_WAIT (2 min): a drained
    /// destination then has no connection left soon.
    pub fn reset(self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.writer);
        // SAFETY: a valid socket we own and a correctly sized option value.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                libc::socklen_t::try_from(size_of::<libc::linger>()).expect("small"),
            )
        };
        assert_eq!(rc, 0, "SO_LINGER: {}", io::Error::last_os_error());
        // Both handles are the same socket: closing the last sends the reset.
    }
}

/// The backend's name from its greeting line.
fn greeting(line: String) -> io::Result<String> {
    if !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("closed before the greeting ({line:?})"),
        ));
    }
    Ok(line.trim_end().to_owned())
}
