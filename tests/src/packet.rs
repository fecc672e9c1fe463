//! Raw TCP segments for the conntrack-INVALID tests: capture a flow's segments with an
//! `AF_PACKET` socket, forge one (e.g. far outside the window) and inject it through a
//! raw socket. Call these inside a test namespace with [`crate::Netns::run`].

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::{Netns, tool};

/// Sum of the `invalid` counters of `conntrack -S` in `ns`.
pub fn conntrack_invalid(ns: &Netns) -> u64 {
    let out = ns.exec(&[&tool("conntrack").to_string_lossy(), "-S"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("invalid="))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// A TCP/IPv4 segment seen by a capture socket (or to inject).
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// TCP flags (`TCP_*`).
    pub flags: u8,
    /// Receive window.
    pub window: u16,
    /// Payload bytes.
    pub payload_len: u32,
}

/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;
/// TCP PSH flag.
pub const TCP_PSH: u8 = 0x08;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an IPv4 packet (no link header) carrying TCP.
pub fn parse_segment(p: &[u8]) -> Option<Segment> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 6 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(be16(p, 2)).min(p.len());
    let tcp = p.get(ihl..total)?;
    if tcp.len() < 20 {
        return None;
    }
    let doff = usize::from(tcp[12] >> 4) * 4;
    Some(Segment {
        src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        sport: be16(tcp, 0),
        dport: be16(tcp, 2),
        seq: be32(tcp, 4),
        ack: be32(tcp, 8),
        flags: tcp[13],
        window: be16(tcp, 14),
        payload_len: u32::try_from(tcp.len().saturating_sub(doff)).expect("fits"),
    })
}

/// An `AF_PACKET` socket (cooked, `ETH_P_ALL`: only those also see outgoing packets) for every interface of the calling thread's
/// namespace, with a 100 ms receive timeout.
pub fn capture_socket() -> OwnedFd {
    let proto = i32::from(u16::try_from(libc::ETH_P_ALL).expect("fits").to_be());
    // SAFETY: plain syscalls; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto) };
    assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: tv outlives the call; the size matches.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            u32::try_from(mem::size_of::<libc::timeval>()).expect("fits"),
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
    fd
}

/// Reads segments until `pred` accepts one or `timeout` passes.
pub fn capture_until(
    fd: &OwnedFd,
    timeout: Duration,
    pred: impl Fn(&Segment) -> bool,
) -> Option<Segment> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else { continue };
        if let Some(seg) = parse_segment(&buf[..n])
            && pred(&seg)
        {
            return Some(seg);
        }
    }
    None
}

/// The Internet checksum of the concatenated `chunks`.
fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let bytes: Vec<u8> = chunks.concat();
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded to 16 bits")
}

/// Sends one hand-made TCP segment through a raw socket of the calling thread's namespace.
pub fn inject(seg: &Segment, payload: &[u8]) {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&seg.sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&seg.dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seg.seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&seg.ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = seg.flags;
    tcp[14..16].copy_from_slice(&seg.window.to_be_bytes());
    tcp.extend_from_slice(payload);
    let tcp_len = u16::try_from(tcp.len()).expect("fits");
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&seg.src.octets());
    pseudo.extend_from_slice(&seg.dst.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&tcp_len.to_be_bytes());
    let sum = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20 + tcp_len).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&seg.src.octets());
    ip[16..20].copy_from_slice(&seg.dst.octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&tcp);

    // SAFETY: plain syscall; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut to: libc::sockaddr_in = unsafe { mem::zeroed() };
    to.sin_family = libc::sa_family_t::try_from(libc::AF_INET).expect("fits");
    to.sin_addr.s_addr = u32::from_ne_bytes(seg.dst.octets());
    // SAFETY: buffers valid for their lengths.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            ip.as_ptr().cast(),
            ip.len(),
            0,
            (&raw const to).cast(),
            u32::try_from(mem::size_of::<libc::sockaddr_in>()).expect("fits"),
        )
    };
    assert_eq!(
        usize::try_from(n).ok(),
        Some(ip.len()),
        "sendto: {}",
        io::Error::last_os_error()
    );
}

/// The newest data segment `src:sport` sent that `capture` has seen (waiting up to 5 s
/// for the first). Its `seq + payload_len` is the sender's next sequence number and its
/// `ack` the sender's next expected one.
///
/// # Panics
/// If none is captured.
pub fn newest_data_segment(capture: &OwnedFd, src: Ipv4Addr, sport: u16) -> Segment {
    let from = |s: &Segment| s.src == src && s.sport == sport && s.payload_len > 0;
    let mut newest = capture_until(capture, Duration::from_secs(5), from)
        .unwrap_or_else(|| panic!("no data segment from {src}:{sport} captured"));
    // Take the newest one queued, should the test have been slow.
    while let Some(newer) = capture_until(capture, Duration::from_millis(50), from) {
        newest = newer;
    }
    newest
}

impl Segment {
    /// The next segment of this flow from the same sender, but a quarter of the sequence
    /// space past its window: what netfilter conntrack classifies INVALID.
    pub fn out_of_window(&self) -> Segment {
        Segment {
            seq: self
                .seq
                .wrapping_add(self.payload_len)
                .wrapping_add(0x4000_0000),
            flags: TCP_ACK | TCP_PSH,
            ..*self
        }
    }
}
