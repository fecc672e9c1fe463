//! PKTGEN and CHECK for the data-path tests: Ethernet frames built byte by byte, and
//! read back with every checksum recomputed from scratch (never with the kernel's
//! incremental helpers the programs use, so a wrong incremental update shows).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub type Mac = [u8; 6];

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// The Ethernet addresses of a frame, source and destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Macs {
    pub src: Mac,
    pub dst: Mac,
}

/// A TCP segment or UDP datagram, before the IP layer.
#[derive(Clone, Debug)]
pub struct L4 {
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (ignored for UDP).
    pub flags: u8,
    /// TCP sequence number.
    pub seq: u32,
    /// TCP acknowledgment number (sent with ACK only).
    pub ack: u32,
    pub payload: Vec<u8>,
}

/// The sequence number every segment carries unless a test sets one: both sides use
/// it, so a default ACK (`SEQ + 1`) acknowledges a default SYN-ACK, and a default
/// handshake is a valid one.
pub const SEQ: u32 = 0x0102_0304;

impl L4 {
    pub fn tcp(sport: u16, dport: u16, flags: u8) -> Self {
        L4 {
            proto: TCP,
            sport,
            dport,
            flags,
            seq: SEQ,
            ack: SEQ.wrapping_add(1),
            payload: Vec::new(),
        }
    }

    pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Self {
        L4 {
            proto: UDP,
            sport,
            dport,
            flags: 0,
            seq: 0,
            ack: 0,
            payload: payload.to_vec(),
        }
    }

    /// The header and payload, with the checksum over `src`/`dst`'s pseudo-header.
    pub fn bytes(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.sport.to_be_bytes());
        b.extend_from_slice(&self.dport.to_be_bytes());
        let csum_at = if self.proto == TCP {
            b.extend_from_slice(&self.seq.to_be_bytes());
            let ack = if self.flags & ACK != 0 { self.ack } else { 0 };
            b.extend_from_slice(&ack.to_be_bytes());
            b.push(5 << 4); // data offset: 20 bytes, no options
            b.push(self.flags);
            b.extend_from_slice(&64240u16.to_be_bytes()); // window
            b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
            16
        } else {
            let len = u16::try_from(8 + self.payload.len()).expect("a small datagram");
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            6
        };
        b.extend_from_slice(&self.payload);
        let c = !fold(pseudo_sum(src, dst, self.proto, b.len()) + sum(&b));
        b[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        b
    }
}

/// An IPv4 packet carrying `l4_proto` `payload`, with `options` (a multiple of 4
/// bytes) and the raw flags/fragment-offset field.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    l4_proto: u8,
    options: &[u8],
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "IPv4 options come in words");
    let hlen = 20 + options.len();
    let total = u16::try_from(hlen + payload.len()).expect("a small packet");
    let mut b = vec![0x40 | (hlen / 4) as u8, 0];
    b.extend_from_slice(&total.to_be_bytes());
    b.extend_from_slice(&0x1234u16.to_be_bytes()); // id
    b.extend_from_slice(&frag.to_be_bytes());
    b.extend_from_slice(&[64, l4_proto, 0, 0]); // ttl, protocol, checksum
    b.extend_from_slice(&src.octets());
    b.extend_from_slice(&dst.octets());
    b.extend_from_slice(options);
    let c = !fold(sum(&b));
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// An IPv6 packet whose first next-header is `next`, carrying `payload` (which holds
/// any extension headers).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("a small packet");
    let mut b = vec![0x60, 0, 0, 0];
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&[next, 64]);
    b.extend_from_slice(&src.octets());
    b.extend_from_slice(&dst.octets());
    b.extend_from_slice(payload);
    b
}

/// An IP packet of the family of `src` and `dst` carrying `l4`.
pub fn ip(src: IpAddr, dst: IpAddr, l4: &L4) -> Vec<u8> {
    let seg = l4.bytes(src, dst);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(s, d, l4.proto, &[], 0, &seg),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(s, d, l4.proto, &seg),
        _ => panic!("mixed families: {src} -> {dst}"),
    }
}

/// An ICMP (IPv4) or ICMPv6 message from `src` to `dst`. For an error, `body` is the
/// quoted IP packet (cut as routers do) and `rest` the 4 bytes after the checksum (the
/// MTU of "packet too big" / "fragmentation needed"); for an echo, identifier and
/// sequence number, then the data.
pub fn icmp(src: IpAddr, dst: IpAddr, ty: u8, code: u8, rest: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest.to_be_bytes());
    m.extend_from_slice(body);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let c = !fold(sum(&m));
            m[2..4].copy_from_slice(&c.to_be_bytes());
            ipv4(s, d, ICMP, &[], 0, &m)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let c = !fold(pseudo_sum(src, dst, ICMPV6, m.len()) + sum(&m));
            m[2..4].copy_from_slice(&c.to_be_bytes());
            ipv6(s, d, ICMPV6, &m)
        }
        _ => panic!("mixed families: {src} -> {dst}"),
    }
}

/// An Ethernet frame around IP packet `ip`.
pub fn eth(macs: Macs, ip: &[u8]) -> Vec<u8> {
    let ethertype = match ip.first().map(|b| b >> 4) {
        Some(4) => ETH_P_IP,
        Some(6) => ETH_P_IPV6,
        _ => panic!("not an IP packet"),
    };
    let mut f = Vec::with_capacity(ETH_HLEN + ip.len());
    f.extend_from_slice(&macs.dst);
    f.extend_from_slice(&macs.src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

// --- CHECK --------------------------------------------------------------------------

/// What a test reads back from a frame; building it checks every checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub macs: Macs,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The transport protocol (TCP, UDP, ICMP or ICMPv6).
    pub proto: u8,
    /// TCP/UDP ports; for an ICMP error, those of the quoted packet.
    pub sport: u16,
    pub dport: u16,
    /// For an ICMP error: the quoted packet's addresses.
    pub inner: Option<(IpAddr, IpAddr)>,
}

/// Parses an Ethernet frame with IPv4 (no fragments) or IPv6 (no extension headers)
/// and TCP, UDP or an ICMP error, panicking on any wrong checksum: the IPv4 header's,
/// the transport's over its pseudo-header, ICMP's, and a quoted IPv4 header's.
pub fn check(frame: &[u8]) -> Seen {
    let macs = Macs {
        dst: frame[0..6].try_into().expect("6 bytes"),
        src: frame[6..12].try_into().expect("6 bytes"),
    };
    let ip = &frame[ETH_HLEN..];
    let (src, dst, proto, l4) = split_ip(ip);
    let mut seen = Seen {
        macs,
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
        inner: None,
    };
    match proto {
        TCP | UDP => {
            let s = fold(pseudo_sum(src, dst, proto, l4.len()) + sum(l4));
            assert_eq!(s, 0xffff, "bad {proto} checksum in {frame:02x?}");
            seen.sport = be16(l4, 0);
            seen.dport = be16(l4, 2);
        }
        ICMP | ICMPV6 => {
            let pseudo = if proto == ICMPV6 {
                pseudo_sum(src, dst, proto, l4.len())
            } else {
                0
            };
            assert_eq!(fold(pseudo + sum(l4)), 0xffff, "bad ICMP checksum");
            let quoted = &l4[8..];
            let (isrc, idst, _, il4) = split_ip_quoted(quoted);
            seen.inner = Some((isrc, idst));
            seen.sport = be16(il4, 0);
            seen.dport = be16(il4, 2);
        }
        p => panic!("unexpected protocol {p}"),
    }
    seen
}

/// Source, destination, protocol and transport bytes of an IP packet whose lengths
/// are right, checking the IPv4 header checksum.
fn split_ip(ip: &[u8]) -> (IpAddr, IpAddr, u8, &[u8]) {
    match ip[0] >> 4 {
        4 => {
            let hlen = usize::from(ip[0] & 0x0f) * 4;
            assert_eq!(fold(sum(&ip[..hlen])), 0xffff, "bad IPv4 header checksum");
            let total = usize::from(be16(ip, 2));
            assert_eq!(total, ip.len(), "IPv4 total length");
            assert_eq!(be16(ip, 6) & 0x3fff, 0, "a fragment");
            (v4(&ip[12..16]), v4(&ip[16..20]), ip[9], &ip[hlen..total])
        }
        6 => {
            let len = usize::from(be16(ip, 4));
            assert_eq!(len + 40, ip.len(), "IPv6 payload length");
            (v6(&ip[8..24]), v6(&ip[24..40]), ip[6], &ip[40..])
        }
        v => panic!("IP version {v}"),
    }
}

/// Like [`split_ip`] for a packet quoted in an ICMP error, which is cut short: only
/// the IPv4 header checksum can be checked.
fn split_ip_quoted(ip: &[u8]) -> (IpAddr, IpAddr, u8, &[u8]) {
    match ip[0] >> 4 {
        4 => {
            let hlen = usize::from(ip[0] & 0x0f) * 4;
            assert_eq!(fold(sum(&ip[..hlen])), 0xffff, "bad quoted IPv4 checksum");
            (v4(&ip[12..16]), v4(&ip[16..20]), ip[9], &ip[hlen..])
        }
        _ => (v6(&ip[8..24]), v6(&ip[24..40]), ip[6], &ip[40..]),
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn v4(b: &[u8]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

fn v6(b: &[u8]) -> IpAddr {
    let o: [u8; 16] = b.try_into().expect("16 bytes");
    IpAddr::V6(Ipv6Addr::from(o))
}

// --- the Internet checksum (RFC 1071) ------------------------------------------------

/// The one's-complement sum of `b` as big-endian 16-bit words, not yet folded.
pub fn sum(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The sum of the TCP/UDP/ICMPv6 pseudo-header.
fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let addrs = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => [s.octets().to_vec(), d.octets().to_vec()].concat(),
        (IpAddr::V6(s), IpAddr::V6(d)) => [s.octets().to_vec(), d.octets().to_vec()].concat(),
        _ => panic!("mixed families"),
    };
    let len = u32::try_from(len).expect("a small packet");
    sum(&addrs) + u32::from(proto) + (len >> 16) + (len & 0xffff)
}
