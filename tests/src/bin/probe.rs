//! `probe`: a small traffic tool run inside test namespaces.
//!
//! ```text
//! probe serve --name NAME [--tcp ADDR:PORT]... [--udp ADDR:PORT]...
//! probe tcp   --to ADDR:PORT [--count N] [--interval-ms I] [--timeout-ms T] [--peer]
//!             [--source-port P] [--timestamps]
//! probe udp   --to ADDR:PORT [--count N] [--same-socket] [--connected] [--timeout-ms T] [--peer]
//! probe resolver --to ADDR:PORT [--count N] [--interval-ms I] [--timeout-ms T] [--peer]
//! probe hold  --to ADDR:PORT --rounds R --interval-ms I [--timeout-ms T] [--source-port P]
//!             [--timestamps]
//! probe crr   --to ADDR:PORT --duration-ms D [--timeout-ms T]
//! probe rr    --to ADDR:PORT --duration-ms D [--timeout-ms T]
//! probe send  --to ADDR:PORT --bytes N [--direction up|down|both] [--timeout-ms T]
//! ```
//!
//! Result lines are `ok <name> <addr> [<peer>]` or `err <reason> <ms>`, where `reason` is
//! an errno name (`ECONNREFUSED`, `EPERM`, `ETIMEDOUT` for a connect timeout, ...),
//! `timeout` (no answer in time), `EOF` (closed before answering) or `mismatch`.
//! Every socket operation has a timeout (default 2000 ms), so nothing hangs.
//!
//! `tcp --count 0` and `hold --rounds 0` run until SIGTERM, then finish the connection
//! or round under way and exit 0 (a failed `hold` still exits 1). With `--timestamps`
//! every line of `tcp` and `hold` starts with `<start_us> <end_us> `: when the
//! connection (or round) began and ended, in microseconds since the Unix epoch
//! (CLOCK_REALTIME, the clock of the agent's log lines), e.g.
//! `1764630000123456 1764630000123789 ok backend-0 10.96.0.10:80`.
//!
//! `resolver` is a client like glibc's resolver: one UDP socket, connect()ed once, a
//! query (send, then recv with a timeout) every I ms. A timeout keeps the socket; any
//! other error (`ECONNABORTED` or `EDESTADDRREQ` when the agent destroyed it,
//! `ECONNREFUSED`, ...) closes
//! it, and the next query opens and connects a new one. `--count 0` runs until SIGTERM.
//!
//! `send` moves N bytes of a seeded pseudo-random pattern through one connection and
//! verifies them end to end: up, the server (`SINK n`) answers `sunk <count> <hash>` and
//! the client compares both with what it sent; down, the server (`SOURCE n seed`) sends
//! the pattern and the client checks every byte. It prints
//! `transfer ok <name> <addr> up <n> <hash> down <n> <hash> secs <f>` or
//! `err <reason> <ms> <detail>`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::mem;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "probe",
    about = "Traffic tool for the kernel integration tests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve TCP and UDP: greet with NAME, echo lines, answer PEER with the client address.
    Serve {
        /// Name sent to every client.
        #[arg(long)]
        name: String,
        /// TCP listen address (repeatable; IPv6 sockets are v6-only).
        #[arg(long)]
        tcp: Vec<SocketAddr>,
        /// UDP listen address (repeatable; IPv6 sockets are v6-only).
        #[arg(long)]
        udp: Vec<SocketAddr>,
    },
    /// Open COUNT TCP connections (0: until SIGTERM), one result line each.
    Tcp {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Pause between two connections.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Start each line with the connection's start and end time (unix µs).
        #[arg(long)]
        timestamps: bool,
        /// Also ask the server for the client address it sees (4th field).
        #[arg(long)]
        peer: bool,
        /// Bind this local port (with SO_REUSEADDR, so several connections to different
        /// destinations can share it).
        #[arg(long)]
        source_port: Option<u16>,
    },
    /// Send COUNT UDP datagrams, one result line each.
    Udp {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Use one socket for all datagrams (default: a new socket per datagram).
        #[arg(long)]
        same_socket: bool,
        /// connect() the socket and use send() (default: unconnected sendto()).
        #[arg(long)]
        connected: bool,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Ask the server for the client address it sees (4th field).
        #[arg(long)]
        peer: bool,
    },
    /// A resolver-like client: one connected UDP socket, a query every INTERVAL,
    /// reconnecting on any error but a timeout; one result line per query.
    Resolver {
        #[arg(long)]
        to: SocketAddr,
        /// Queries (0: until SIGTERM).
        #[arg(long, default_value_t = 0)]
        count: u32,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        #[arg(long, default_value_t = 500)]
        timeout_ms: u64,
        /// Ask the server for the client address it sees (4th field): the same
        /// address and port means the same socket.
        #[arg(long)]
        peer: bool,
    },
    /// Keep one TCP connection and ping-pong on it ROUNDS times (0: until SIGTERM).
    Hold {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        rounds: u32,
        #[arg(long)]
        interval_ms: u64,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Start each line with the round's start and end time (unix µs).
        #[arg(long)]
        timestamps: bool,
        /// Bind this local port (SO_REUSEADDR).
        #[arg(long)]
        source_port: Option<u16>,
    },
    /// Connect/greeting/close loop; prints `conns <n> secs <f> errs <e>`.
    Crr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        duration_ms: u64,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Request/response loop on one connection; prints `rrs <n> secs <f> p50_us <x> p99_us <y>`.
    Rr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        duration_ms: u64,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Move BYTES bytes through one connection and verify them end to end.
    Send {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: u64,
        /// `up` (client to server), `down` (server to client) or `both`.
        #[arg(long, default_value = "both")]
        direction: Direction,
        /// Per socket operation (a stalled transfer fails after this long).
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Direction {
    Up,
    Down,
    Both,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ms = Duration::from_millis;
    match cli.cmd {
        Cmd::Serve { name, tcp, udp } => serve(&name, &tcp, &udp),
        Cmd::Tcp {
            to,
            count,
            interval_ms,
            timeout_ms,
            timestamps,
            peer,
            source_port,
        } => {
            if count == 0 {
                stop_on_sigterm();
            }
            let mut done = 0u32;
            while (count == 0 || done < count) && !stopped() {
                if done > 0 && interval_ms > 0 {
                    thread::sleep(ms(interval_ms));
                }
                let clock = Stamp::now(timestamps);
                let start = Instant::now();
                let line = match tcp_once(to, ms(timeout_ms), peer, source_port) {
                    Ok(line) => line,
                    Err(e) => format!("err {} {}", e, elapsed_ms(start)),
                };
                say(&clock.line(&line));
                done = done.saturating_add(1);
            }
            ExitCode::SUCCESS
        }
        Cmd::Udp {
            to,
            count,
            same_socket,
            connected,
            timeout_ms,
            peer,
        } => udp(to, count, same_socket, connected, ms(timeout_ms), peer),
        Cmd::Resolver {
            to,
            count,
            interval_ms,
            timeout_ms,
            peer,
        } => resolver(to, count, ms(interval_ms), ms(timeout_ms), peer),
        Cmd::Hold {
            to,
            rounds,
            interval_ms,
            timeout_ms,
            timestamps,
            source_port,
        } => hold(
            to,
            rounds,
            ms(interval_ms),
            ms(timeout_ms),
            source_port,
            timestamps,
        ),
        Cmd::Crr {
            to,
            duration_ms,
            timeout_ms,
        } => crr(to, ms(duration_ms), ms(timeout_ms)),
        Cmd::Rr {
            to,
            duration_ms,
            timeout_ms,
        } => rr(to, ms(duration_ms), ms(timeout_ms)),
        Cmd::Send {
            to,
            bytes,
            direction,
            timeout_ms,
        } => send(to, bytes, direction, ms(timeout_ms)),
    }
}

/// Prints one line and flushes, so a reading test sees it at once.
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn elapsed_ms(start: Instant) -> u128 {
    start.elapsed().as_millis()
}

/// Microseconds since the Unix epoch (CLOCK_REALTIME).
fn unix_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default()
}

/// When an operation began, for `--timestamps` (`None`: no timestamps).
struct Stamp(Option<u128>);

impl Stamp {
    fn now(on: bool) -> Self {
        Self(on.then(unix_us))
    }

    /// `line`, prefixed with `<start_us> <end_us> ` if timestamps are on.
    fn line(&self, line: &str) -> String {
        match self.0 {
            Some(start) => format!("{start} {} {line}", unix_us()),
            None => line.to_owned(),
        }
    }
}

/// Set by SIGTERM once [`stop_on_sigterm`] ran.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// From now on SIGTERM only sets [`STOP`] (system calls restart), so a loop can finish
/// what it does and exit cleanly.
fn stop_on_sigterm() {
    // SAFETY: an all-zero sigaction is valid; the handler only stores to an atomic,
    // which is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = mem::zeroed();
        sa.sa_sigaction = on_sigterm as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&raw mut sa.sa_mask);
        if libc::sigaction(libc::SIGTERM, &raw const sa, std::ptr::null_mut()) != 0 {
            eprintln!("probe: sigaction: {}", io::Error::last_os_error());
        }
    }
}

fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Why a probe failed, printed as one word.
#[derive(Debug)]
enum Failure {
    Io(io::Error),
    Eof,
    Mismatch,
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => f.write_str(&io_reason(e)),
            Self::Eof => f.write_str("EOF"),
            Self::Mismatch => f.write_str("mismatch"),
        }
    }
}

/// An errno name; `timeout` for a read/write timeout (EAGAIN); `ETIMEDOUT` for std's
/// connect timeout (which has no errno).
fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) if code == libc::EAGAIN => "timeout".to_owned(),
        Some(code) => errno_name(code),
        None => match e.kind() {
            io::ErrorKind::TimedOut => "ETIMEDOUT".to_owned(),
            io::ErrorKind::UnexpectedEof => "EOF".to_owned(),
            kind => format!("{kind:?}"),
        },
    }
}

fn errno_name(code: i32) -> String {
    let name = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENOSPC => "ENOSPC",
        libc::EPIPE => "EPIPE",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EDESTADDRREQ => "EDESTADDRREQ",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::EISCONN => "EISCONN",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => return format!("errno{code}"),
    };
    name.to_owned()
}

// ---------------------------------------------------------------------------------------
// serve

fn serve(name: &str, tcp: &[SocketAddr], udp: &[SocketAddr]) -> ExitCode {
    if tcp.is_empty() && udp.is_empty() {
        eprintln!("probe serve: give at least one --tcp or --udp address");
        return ExitCode::from(2);
    }
    let mut listeners = Vec::new();
    for addr in tcp {
        match bind_socket(*addr, libc::SOCK_STREAM).and_then(|fd| {
            // SAFETY: plain syscall on an owned socket.
            if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&fd), 1024) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(TcpListener::from(fd))
        }) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("probe serve: tcp {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut sockets = Vec::new();
    for addr in udp {
        match bind_socket(*addr, libc::SOCK_DGRAM).map(UdpSocket::from) {
            Ok(s) => sockets.push(s),
            Err(e) => {
                eprintln!("probe serve: udp {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for listener in listeners {
        let name = name.to_owned();
        thread::spawn(move || accept_loop(&listener, &name));
    }
    for socket in sockets {
        let name = name.to_owned();
        thread::spawn(move || udp_loop(&socket, &name));
    }
    say("ready");
    loop {
        thread::park();
    }
}

/// A socket bound to `addr` with SO_REUSEADDR, and IPV6_V6ONLY for IPv6 so that `0.0.0.0`
/// and `[::]` on one port can both be served.
fn bind_socket(addr: SocketAddr, ty: libc::c_int) -> io::Result<OwnedFd> {
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall.
    let raw = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    // SAFETY (both arms): an all-zero sockaddr is valid; the fields are then set.
    let rc = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: an all-zero sockaddr is a valid value; its fields are set below.
            let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            // SAFETY: `sa` is a valid sockaddr_in of the given length.
            unsafe {
                libc::bind(
                    raw,
                    (&raw const sa).cast(),
                    socklen_of::<libc::sockaddr_in>(),
                )
            }
        }
        SocketAddr::V6(a) => {
            set_int_opt(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
            // SAFETY: an all-zero sockaddr is a valid value; its fields are set below.
            let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_addr.s6_addr = a.ip().octets();
            sa.sin6_flowinfo = a.flowinfo();
            sa.sin6_scope_id = a.scope_id();
            // SAFETY: `sa` is a valid sockaddr_in6 of the given length.
            unsafe {
                libc::bind(
                    raw,
                    (&raw const sa).cast(),
                    socklen_of::<libc::sockaddr_in6>(),
                )
            }
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(mem::size_of::<T>()).expect("sockaddr size fits socklen_t")
}

fn set_int_opt(
    fd: libc::c_int,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` outlives the call and the length matches.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&raw const value).cast(),
            socklen_of::<libc::c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn accept_loop(listener: &TcpListener, name: &str) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let name = name.to_owned();
                thread::spawn(move || {
                    if let Err(e) = serve_conn(stream, peer, &name) {
                        eprintln!("probe serve: connection from {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("probe serve: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn serve_conn(mut stream: TcpStream, peer: SocketAddr, name: &str) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.write_all(format!("{name}\n").as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        // One write per reply: no Nagle/delayed-ACK stalls in request/response loops.
        let reply = match words.as_slice() {
            ["PEER"] => format!("{peer}\n"),
            ["SINK", n] => {
                let n: u64 = n.parse().map_err(|_| bad_request(&line))?;
                let (count, hash) = sink(&mut reader, n)?;
                format!("sunk {count} {hash:016x}\n")
            }
            ["SOURCE", n, seed] => {
                let n: u64 = n.parse().map_err(|_| bad_request(&line))?;
                let seed: u64 = seed.parse().map_err(|_| bad_request(&line))?;
                source(&mut stream, n, seed)?;
                continue;
            }
            _ => line.clone(),
        };
        stream.write_all(reply.as_bytes())?;
    }
}

fn bad_request(line: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad request {line:?}"))
}

/// Reads exactly `n` bytes (less if the peer closes first) and hashes them.
fn sink(reader: &mut impl Read, n: u64) -> io::Result<(u64, u64)> {
    let mut hasher = WordHash::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut count = 0u64;
    while count < n {
        let want = usize::try_from((n - count).min(buf.len() as u64)).unwrap_or(buf.len());
        let got = reader.read(&mut buf[..want])?;
        if got == 0 {
            break;
        }
        hasher.update(&buf[..got]);
        count += got as u64;
    }
    Ok((count, hasher.finish()))
}

/// Writes `n` bytes of the pattern seeded with `seed`.
fn source(stream: &mut TcpStream, n: u64, seed: u64) -> io::Result<()> {
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 1 << 16];
    let mut sent = 0u64;
    while sent < n {
        let len = usize::try_from((n - sent).min(buf.len() as u64)).unwrap_or(buf.len());
        pattern.fill(&mut buf[..len]);
        stream.write_all(&buf[..len])?;
        sent += len as u64;
    }
    Ok(())
}

/// A deterministic byte stream: byte `k` is byte `k % 8` (little-endian) of
/// `splitmix64(seed + k / 8)`.
struct Pattern {
    seed: u64,
    offset: u64,
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Pattern {
    fn new(seed: u64) -> Self {
        Self { seed, offset: 0 }
    }

    fn byte_at(&self, k: u64) -> u8 {
        splitmix64(self.seed.wrapping_add(k / 8)).to_le_bytes()[(k % 8) as usize]
    }

    /// The next `buf.len()` bytes of the stream.
    fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() && !self.offset.is_multiple_of(8) {
            buf[i] = self.byte_at(self.offset);
            i += 1;
            self.offset += 1;
        }
        let words = (buf.len() - i) / 8;
        for chunk in buf[i..i + words * 8].chunks_exact_mut(8) {
            chunk.copy_from_slice(
                &splitmix64(self.seed.wrapping_add(self.offset / 8)).to_le_bytes(),
            );
            self.offset += 8;
        }
        i += words * 8;
        while i < buf.len() {
            buf[i] = self.byte_at(self.offset);
            i += 1;
            self.offset += 1;
        }
    }
}

/// A streaming hash over 8-byte little-endian words (FNV-1a style), with the byte
/// count mixed in at the end; independent of how the stream was split into reads.
struct WordHash {
    state: u64,
    tail: Vec<u8>,
    len: u64,
}

impl WordHash {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Self {
            state: 0xcbf2_9ce4_8422_2325,
            tail: Vec::with_capacity(8),
            len: 0,
        }
    }

    fn word(&mut self, w: u64) {
        self.state = (self.state ^ w).wrapping_mul(Self::PRIME);
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.tail.is_empty() {
            let need = 8 - self.tail.len();
            let take = need.min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.tail[..].try_into().expect("8 bytes"));
            self.tail.clear();
            self.word(w);
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        self.tail.extend_from_slice(words.remainder());
    }

    fn finish(mut self) -> u64 {
        let mut last = [0u8; 8];
        last[..self.tail.len()].copy_from_slice(&self.tail);
        let len = self.len;
        self.word(u64::from_le_bytes(last));
        self.word(len);
        self.state
    }
}

fn udp_loop(socket: &UdpSocket, name: &str) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let data = buf.get(..n).unwrap_or_default();
                let reply = if data.trim_ascii() == b"PEER" {
                    format!("{name} {peer}")
                } else {
                    name.to_owned()
                };
                if let Err(e) = socket.send_to(reply.as_bytes(), peer) {
                    eprintln!("probe serve: udp reply to {peer}: {e}");
                }
            }
            Err(e) => {
                eprintln!("probe serve: udp recv: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// clients

/// A connected TCP stream with timeouts, and a line reader on it.
struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(to: SocketAddr, timeout: Duration) -> Result<Self, Failure> {
        Self::open_from(to, timeout, None)
    }

    fn open_from(
        to: SocketAddr,
        timeout: Duration,
        source_port: Option<u16>,
    ) -> Result<Self, Failure> {
        let stream = match source_port {
            None => TcpStream::connect_timeout(&to, timeout)?,
            Some(port) => connect_from(to, port, timeout)?,
        };
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self { stream, reader })
    }

    fn read_line(&mut self) -> Result<String, Failure> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(Failure::Eof);
        }
        Ok(line.trim_end().to_owned())
    }

    fn send_line(&mut self, line: &str) -> Result<(), Failure> {
        self.stream.write_all(format!("{line}\n").as_bytes())?;
        Ok(())
    }

    /// Sends `ping` and expects `ping` back.
    fn ping(&mut self) -> Result<(), Failure> {
        self.send_line("ping")?;
        if self.read_line()? == "ping" {
            Ok(())
        } else {
            Err(Failure::Mismatch)
        }
    }
}

/// A TCP connection to `to` from local port `port` (bound with SO_REUSEADDR on the
/// unspecified address of `to`'s family), within `timeout`; a timeout is `ETIMEDOUT`.
fn connect_from(to: SocketAddr, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let local: SocketAddr = match to {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, port).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, port).into(),
    };
    let fd = bind_socket(local, libc::SOCK_STREAM)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY (all blocks below): plain syscalls on the descriptor we own, with
    // buffers that outlive the calls and lengths that match them.
    // SAFETY: fcntl on the descriptor we own.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    // SAFETY: fcntl on the descriptor we own.
    if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let rc = match to {
        SocketAddr::V4(a) => {
            // SAFETY: an all-zero sockaddr is a valid value; its fields are set below.
            let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            // SAFETY: `sa` is a valid sockaddr of the length passed, alive for the call.
            unsafe {
                libc::connect(
                    raw,
                    (&raw const sa).cast(),
                    socklen_of::<libc::sockaddr_in>(),
                )
            }
        }
        SocketAddr::V6(a) => {
            // SAFETY: an all-zero sockaddr is a valid value; its fields are set below.
            let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_addr.s6_addr = a.ip().octets();
            sa.sin6_scope_id = a.scope_id();
            // SAFETY: `sa` is a valid sockaddr of the length passed, alive for the call.
            unsafe {
                libc::connect(
                    raw,
                    (&raw const sa).cast(),
                    socklen_of::<libc::sockaddr_in6>(),
                )
            }
        }
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd {
            fd: raw,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is a valid pollfd we own, alive for the call.
        let n = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        let mut err: libc::c_int = 0;
        let mut len = socklen_of::<libc::c_int>();
        // SAFETY: `err` and `len` are ours and sized for SO_ERROR.
        if unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut err).cast(),
                &raw mut len,
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    // SAFETY: fcntl on the descriptor we own.
    if unsafe { libc::fcntl(raw, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpStream::from(fd))
}

/// One connection: `ok <name> <getpeername> [<peer seen by server>]`.
fn tcp_once(
    to: SocketAddr,
    timeout: Duration,
    ask_peer: bool,
    source_port: Option<u16>,
) -> Result<String, Failure> {
    let mut conn = Conn::open_from(to, timeout, source_port)?;
    let addr = conn.stream.peer_addr()?;
    let name = conn.read_line()?;
    let mut line = format!("ok {name} {addr}");
    if ask_peer {
        conn.send_line("PEER")?;
        let seen = conn.read_line()?;
        line.push(' ');
        line.push_str(&seen);
    }
    Ok(line)
}

fn udp_socket(to: SocketAddr, timeout: Duration, connected: bool) -> io::Result<UdpSocket> {
    let bind: SocketAddr = match to {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    if connected {
        socket.connect(to)?;
    }
    Ok(socket)
}

fn udp_once(
    socket: &UdpSocket,
    to: SocketAddr,
    connected: bool,
    ask_peer: bool,
) -> Result<String, Failure> {
    let msg: &[u8] = if ask_peer { b"PEER" } else { b"hello" };
    if connected {
        socket.send(msg)?;
    } else {
        socket.send_to(msg, to)?;
    }
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf)?;
    let reply = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
    let mut words = reply.split_whitespace();
    let name = words.next().ok_or(Failure::Mismatch)?;
    let mut line = format!("ok {name} {from}");
    if ask_peer {
        let seen = words.next().ok_or(Failure::Mismatch)?;
        line.push(' ');
        line.push_str(seen);
    }
    Ok(line)
}

fn udp(
    to: SocketAddr,
    count: u32,
    same_socket: bool,
    connected: bool,
    timeout: Duration,
    ask_peer: bool,
) -> ExitCode {
    let mut shared: Option<UdpSocket> = None;
    for _ in 0..count {
        let start = Instant::now();
        let socket = match (same_socket, shared.take()) {
            (true, Some(s)) => Ok(s),
            _ => udp_socket(to, timeout, connected),
        };
        let result = match socket {
            Ok(s) => {
                let r = udp_once(&s, to, connected, ask_peer);
                if same_socket {
                    shared = Some(s);
                }
                r
            }
            Err(e) => Err(Failure::Io(e)),
        };
        match result {
            Ok(line) => say(&line),
            Err(e) => say(&format!("err {e} {}", elapsed_ms(start))),
        }
    }
    ExitCode::SUCCESS
}

fn resolver(
    to: SocketAddr,
    count: u32,
    interval: Duration,
    timeout: Duration,
    ask_peer: bool,
) -> ExitCode {
    if count == 0 {
        stop_on_sigterm();
    }
    let mut socket: Option<UdpSocket> = None;
    let mut done = 0u32;
    while (count == 0 || done < count) && !stopped() {
        if done > 0 {
            thread::sleep(interval);
        }
        done = done.saturating_add(1);
        let start = Instant::now();
        let s = match socket.take() {
            Some(s) => s,
            None => match udp_socket(to, timeout, true) {
                Ok(s) => s,
                Err(e) => {
                    say(&format!("err {} {}", Failure::Io(e), elapsed_ms(start)));
                    continue;
                }
            },
        };
        match udp_once(&s, to, true, ask_peer) {
            Ok(line) => {
                say(&line);
                socket = Some(s);
            }
            Err(e) => {
                let timed_out =
                    matches!(&e, Failure::Io(io) if io.raw_os_error() == Some(libc::EAGAIN));
                say(&format!("err {e} {}", elapsed_ms(start)));
                // As a resolver does: a lost answer is retried on the same socket; a
                // socket error means it is done with, and the next query reconnects.
                if timed_out {
                    socket = Some(s);
                }
            }
        }
    }
    ExitCode::SUCCESS
}

fn hold(
    to: SocketAddr,
    rounds: u32,
    interval: Duration,
    timeout: Duration,
    source_port: Option<u16>,
    timestamps: bool,
) -> ExitCode {
    if rounds == 0 {
        stop_on_sigterm();
    }
    let clock = Stamp::now(timestamps);
    let start = Instant::now();
    let mut conn = match Conn::open_from(to, timeout, source_port).and_then(|mut c| {
        let addr = c.stream.peer_addr()?;
        let name = c.read_line()?;
        say(&clock.line(&format!("ok {name} {addr}")));
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            say(&clock.line(&format!("err {e} {} round 0", elapsed_ms(start))));
            return ExitCode::FAILURE;
        }
    };
    let mut k = 0u32;
    while (rounds == 0 || k < rounds) && !stopped() {
        k = k.saturating_add(1);
        thread::sleep(interval);
        let clock = Stamp::now(timestamps);
        let round_start = Instant::now();
        if let Err(e) = conn.ping() {
            say(&clock.line(&format!("err {e} {} round {k}", elapsed_ms(round_start))));
            return ExitCode::FAILURE;
        }
        say(&clock.line(&format!("round {k} ok")));
    }
    ExitCode::SUCCESS
}

fn crr(to: SocketAddr, duration: Duration, timeout: Duration) -> ExitCode {
    let start = Instant::now();
    let (mut conns, mut errs) = (0u64, 0u64);
    let mut first_err: Option<String> = None;
    while start.elapsed() < duration {
        match Conn::open(to, timeout).and_then(|mut c| c.read_line()) {
            Ok(_) => conns += 1,
            Err(e) => {
                errs += 1;
                first_err.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if let Some(e) = first_err {
        eprintln!("probe crr: first error: {e}");
    }
    let secs = start.elapsed().as_secs_f64();
    say(&format!("conns {conns} secs {secs:.3} errs {errs}"));
    ExitCode::SUCCESS
}

fn rr(to: SocketAddr, duration: Duration, timeout: Duration) -> ExitCode {
    let start = Instant::now();
    let mut conn = match Conn::open(to, timeout).and_then(|mut c| c.read_line().map(|_| c)) {
        Ok(c) => c,
        Err(e) => {
            say(&format!("err {e} {}", elapsed_ms(start)));
            return ExitCode::FAILURE;
        }
    };
    let mut latencies_us: Vec<u64> = Vec::new();
    let loop_start = Instant::now();
    while loop_start.elapsed() < duration {
        let t = Instant::now();
        if let Err(e) = conn.ping() {
            say(&format!("err {e} {}", elapsed_ms(start)));
            return ExitCode::FAILURE;
        }
        latencies_us.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    let secs = loop_start.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    let pct = |p: usize| -> u64 {
        if latencies_us.is_empty() {
            return 0;
        }
        let idx = (latencies_us.len() * p / 100).min(latencies_us.len() - 1);
        latencies_us.get(idx).copied().unwrap_or(0)
    };
    say(&format!(
        "rrs {} secs {secs:.3} p50_us {} p99_us {}",
        latencies_us.len(),
        pct(50),
        pct(99)
    ));
    ExitCode::SUCCESS
}

/// `probe send`: see the module docs.
fn send(to: SocketAddr, bytes: u64, direction: Direction, timeout: Duration) -> ExitCode {
    let start = Instant::now();
    match transfer(to, bytes, direction, timeout) {
        Ok(line) => {
            say(&format!("{line} secs {:.3}", start.elapsed().as_secs_f64()));
            ExitCode::SUCCESS
        }
        Err((e, detail)) => {
            say(&format!("err {e} {} {detail}", elapsed_ms(start)));
            ExitCode::FAILURE
        }
    }
}

type TransferError = (Failure, String);

fn at(what: &str) -> impl Fn(Failure) -> TransferError + '_ {
    move |e| (e, what.to_owned())
}

fn transfer(
    to: SocketAddr,
    bytes: u64,
    direction: Direction,
    timeout: Duration,
) -> Result<String, TransferError> {
    let mut conn = Conn::open(to, timeout).map_err(at("connect"))?;
    let addr = conn
        .stream
        .peer_addr()
        .map_err(|e| (e.into(), "getpeername".to_owned()))?;
    let name = conn.read_line().map_err(at("greeting"))?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut line = format!("transfer ok {name} {addr}");
    if direction != Direction::Down {
        conn.send_line(&format!("SINK {bytes}"))
            .map_err(at("SINK request"))?;
        let mut pattern = Pattern::new(seed);
        let mut hasher = WordHash::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut sent = 0u64;
        while sent < bytes {
            let len = usize::try_from((bytes - sent).min(buf.len() as u64)).unwrap_or(buf.len());
            pattern.fill(&mut buf[..len]);
            hasher.update(&buf[..len]);
            conn.stream
                .write_all(&buf[..len])
                .map_err(|e| (e.into(), format!("up at byte {sent}")))?;
            sent += len as u64;
        }
        let want = hasher.finish();
        let reply = conn.read_line().map_err(at("sunk reply"))?;
        let words: Vec<&str> = reply.split_whitespace().collect();
        let (count, hash) = match words.as_slice() {
            ["sunk", c, h] => (c.parse::<u64>().ok(), u64::from_str_radix(h, 16).ok()),
            _ => (None, None),
        };
        if count != Some(bytes) || hash != Some(want) {
            return Err((
                Failure::Mismatch,
                format!("up: sent {bytes} bytes hash {want:016x}, server got {reply:?}"),
            ));
        }
        line.push_str(&format!(" up {bytes} {want:016x}"));
    }
    if direction != Direction::Up {
        let seed = seed ^ 0x5555_5555_5555_5555;
        conn.send_line(&format!("SOURCE {bytes} {seed}"))
            .map_err(at("SOURCE request"))?;
        let mut expected = Pattern::new(seed);
        let mut hasher = WordHash::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut want = vec![0u8; 1 << 16];
        let mut got_total = 0u64;
        // The greeting/line reader may hold the first bytes already.
        while got_total < bytes {
            let room =
                usize::try_from((bytes - got_total).min(buf.len() as u64)).unwrap_or(buf.len());
            let got = conn
                .reader
                .read(&mut buf[..room])
                .map_err(|e| (e.into(), format!("down at byte {got_total}")))?;
            if got == 0 {
                return Err((
                    Failure::Eof,
                    format!("down: EOF after {got_total} of {bytes} bytes"),
                ));
            }
            expected.fill(&mut want[..got]);
            if buf[..got] != want[..got] {
                let i = buf[..got]
                    .iter()
                    .zip(&want[..got])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err((
                    Failure::Mismatch,
                    format!("down: byte {} differs", got_total + i as u64),
                ));
            }
            hasher.update(&buf[..got]);
            got_total += got as u64;
        }
        line.push_str(&format!(" down {bytes} {:016x}", hasher.finish()));
    }
    Ok(line)
}
