//! `flood`: a spoofed-source IPv4 SYN or UDP flood, for the connection-tracking tests
//! and benchmarks. Run it only inside a test namespace.
//!
//! ```text
//! flood --to ADDR:PORT --proto tcp|udp --sources CIDR --count N [--pps P] [--seed S]
//!       [--batch B] [--payload-len L]
//! ```
//!
//! Sends `N` packets through a raw socket (`IPPROTO_RAW`, so the IP header is ours),
//! `B` at a time with `sendmmsg`: TCP SYNs (with an MSS option, as a real client sends)
//! or UDP datagrams of `L` bytes, each from a different source: address inside `CIDR`
//! and source port (1024-65535) are drawn from a seeded permutation, so the `N` flows
//! are pseudo-random yet all distinct. At `P` packets/s (0: as fast as it can). Prints
//! `sent N secs S pps P` at the end; exits non-zero if the socket refused a packet for
//! another reason than a full buffer (which it waits out).

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(
    name = "flood",
    about = "Spoofed-source SYN/UDP flood for the kernel tests"
)]
struct Cli {
    /// Destination (an IPv4 NodePort).
    #[arg(long)]
    to: SocketAddrV4,
    #[arg(long, value_enum)]
    proto: Proto,
    /// Source range, e.g. 198.18.0.0/15.
    #[arg(long)]
    sources: Cidr,
    /// Packets (= distinct flows) to send.
    #[arg(long)]
    count: u64,
    /// Target packets per second; 0: as fast as possible.
    #[arg(long, default_value_t = 0)]
    pps: u64,
    /// Seed of the flow permutation (0: from the clock).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Packets per sendmmsg call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// UDP payload bytes.
    #[arg(long, default_value_t = 16)]
    payload_len: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
}

/// An IPv4 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cidr {
    base: Ipv4Addr,
    len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').ok_or("want ADDR/LEN")?;
        let base: Ipv4Addr = a.parse().map_err(|e| format!("{a}: {e}"))?;
        let len: u8 = l.parse().map_err(|e| format!("{l}: {e}"))?;
        if !(1..=30).contains(&len) {
            return Err(format!("prefix length {len}: want 1..=30"));
        }
        let mask = u32::MAX << (32 - len);
        Ok(Self {
            base: Ipv4Addr::from(u32::from(base) & mask),
            len,
        })
    }
}

/// The lowest source port drawn (below are the well-known ports).
const MIN_PORT: u16 = 1024;
/// IPv4 header, no options.
const IP_HDR: usize = 20;
/// TCP header with one MSS option.
const TCP_HDR: usize = 24;
const UDP_HDR: usize = 8;
/// Room for one packet; the payload is capped to fit.
const BUF: usize = 256;

/// Distinct pseudo-random `(source address, source port)` pairs inside a prefix: flow
/// `i` is a bijective scramble of `i + seed` over `host bits + 16` bits, split into a
/// host offset and a port; values with a port under 1024 or the prefix's first or last
/// address are skipped. [`Flows::next`] walks `i` upwards, so no pair repeats until the
/// whole space is used.
struct Flows {
    cidr: Cidr,
    bits: u32,
    seed: u64,
    i: u64,
}

impl Flows {
    fn new(cidr: Cidr, seed: u64) -> Self {
        let bits = u32::from(32 - cidr.len) + 16;
        Self {
            cidr,
            bits,
            seed,
            i: 0,
        }
    }

    /// Usable pairs: hosts (without the first and last) times ports from 1024.
    fn capacity(&self) -> u64 {
        let hosts = (1u64 << (32 - self.cidr.len)) - 2;
        hosts * u64::from(u16::MAX - MIN_PORT + 1)
    }

    fn next(&mut self) -> Option<(Ipv4Addr, u16)> {
        let space = 1u64 << self.bits;
        let mask = space - 1;
        let top = (1u64 << (32 - self.cidr.len)) - 1;
        while self.i < space {
            let x = scramble(self.i.wrapping_add(self.seed) & mask, self.bits);
            self.i += 1;
            let host = x >> 16;
            let port = (x & 0xffff) as u16;
            if port < MIN_PORT || host == 0 || host == top {
                continue;
            }
            let addr = u32::from(self.cidr.base) | host as u32;
            return Some((Ipv4Addr::from(addr), port));
        }
        None
    }
}

/// A bijection on `bits`-bit values (odd multiplications and xor-shifts, each
/// invertible mod 2^bits).
fn scramble(mut x: u64, bits: u32) -> u64 {
    let mask = (1u64 << bits) - 1;
    let half = bits / 2;
    x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) & mask;
    x ^= x >> half;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9) & mask;
    x ^= x >> half;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb) & mask;
    x ^ (x >> half)
}

/// splitmix64, for sequence numbers and IP ids.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What one packet carries.
#[derive(Clone, Copy, Debug)]
struct Spec<'a> {
    proto: Proto,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    ip_id: u16,
    /// TCP initial sequence number.
    seq: u32,
    /// UDP payload (ignored for TCP).
    payload: &'a [u8],
}

/// The one's-complement sum of `data` (as big-endian 16-bit words, an odd last byte
/// padded with zero) added to `sum`, not yet folded.
fn sum16(data: &[u8], mut sum: u32) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds a one's-complement sum and complements it: the Internet checksum.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The TCP/UDP pseudo-header sum for `len` transport bytes.
fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut ph = [0u8; 12];
    ph[0..4].copy_from_slice(&src.octets());
    ph[4..8].copy_from_slice(&dst.octets());
    ph[9] = proto;
    ph[10..12].copy_from_slice(&(len as u16).to_be_bytes());
    sum16(&ph, 0)
}

/// Writes the packet `spec` describes (IPv4 header, TCP SYN with MSS 1460 or UDP with
/// the payload, both checksums) at the start of `buf` and returns its length.
///
/// # Panics
/// If `buf` is too small for it.
fn build(buf: &mut [u8], spec: &Spec<'_>) -> usize {
    let (proto, l4_len) = match spec.proto {
        Proto::Tcp => (libc::IPPROTO_TCP as u8, TCP_HDR),
        Proto::Udp => (libc::IPPROTO_UDP as u8, UDP_HDR + spec.payload.len()),
    };
    let total = IP_HDR + l4_len;
    let pkt = &mut buf[..total];
    pkt.fill(0);
    let (ip, l4) = pkt.split_at_mut(IP_HDR);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&spec.ip_id.to_be_bytes());
    // Don't fragment, as real stacks send TCP; UDP without.
    if spec.proto == Proto::Tcp {
        ip[6] = 0x40;
    }
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&spec.src.octets());
    ip[16..20].copy_from_slice(&spec.dst.octets());
    let ip_sum = fold(sum16(ip, 0));
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    l4[0..2].copy_from_slice(&spec.sport.to_be_bytes());
    l4[2..4].copy_from_slice(&spec.dport.to_be_bytes());
    let sum_at = match spec.proto {
        Proto::Tcp => {
            l4[4..8].copy_from_slice(&spec.seq.to_be_bytes());
            l4[12] = ((TCP_HDR / 4) as u8) << 4;
            l4[13] = 0x02; // SYN
            l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
            l4[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
            16
        }
        Proto::Udp => {
            l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            l4[UDP_HDR..].copy_from_slice(spec.payload);
            6
        }
    };
    let mut sum = fold(sum16(l4, pseudo_sum(spec.src, spec.dst, proto, l4_len)));
    // In UDP a computed zero is sent as all ones (zero means "no checksum").
    if spec.proto == Proto::Udp && sum == 0 {
        sum = 0xffff;
    }
    l4[sum_at..sum_at + 2].copy_from_slice(&sum.to_be_bytes());
    total
}

fn raw_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // A deep send buffer, so a batch rarely waits for the previous one to drain.
    let size: libc::c_int = 4 << 20;
    // SAFETY: `size` outlives the call and the length matches. Failure only costs speed.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const size).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(fd)
}

/// Totals of one run.
struct Sent {
    packets: u64,
    /// Times the socket buffer was full and the sender waited.
    waits: u64,
}

fn flood(cli: &Cli) -> io::Result<Sent> {
    let fd = raw_socket()?;
    let seed = if cli.seed == 0 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    } else {
        cli.seed
    };
    let mut flows = Flows::new(cli.sources, seed);
    if cli.count > flows.capacity() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} holds only {} distinct flows",
                cli.sources.base,
                flows.capacity()
            ),
        ));
    }
    let batch = cli.batch.clamp(1, 1024);
    let payload = vec![b'x'; cli.payload_len.min(BUF - IP_HDR - UDP_HDR)];
    // SAFETY: an all-zero sockaddr_in is valid; its fields are set below.
    let mut dst: libc::sockaddr_in = unsafe { mem::zeroed() };
    dst.sin_family = libc::AF_INET as libc::sa_family_t;
    dst.sin_addr.s_addr = u32::from_ne_bytes(cli.to.ip().octets());
    let mut bufs = vec![[0u8; BUF]; batch];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: 0,
        })
        .collect();
    // SAFETY: an all-zero mmsghdr is valid; the pointers are set below.
    let mut msgs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_name = (&raw mut dst).cast();
        m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let mut sent = Sent {
        packets: 0,
        waits: 0,
    };
    while sent.packets < cli.count {
        let n = usize::try_from(cli.count - sent.packets).map_or(batch, |left| left.min(batch));
        for (k, (buf, iov)) in bufs.iter_mut().zip(iovs.iter_mut()).take(n).enumerate() {
            let (src, sport) = flows
                .next()
                .ok_or_else(|| io::Error::other("flows ran out"))?;
            let r = mix(seed ^ (sent.packets + k as u64));
            let spec = Spec {
                proto: cli.proto,
                src,
                dst: *cli.to.ip(),
                sport,
                dport: cli.to.port(),
                ip_id: r as u16,
                seq: (r >> 32) as u32,
                payload: &payload,
            };
            iov.iov_len = build(buf, &spec);
        }
        let mut done = 0;
        while done < n {
            // SAFETY: `msgs[done..n]` point at live iovecs, buffers and `dst`.
            let rc = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    msgs[done..].as_mut_ptr(),
                    (n - done) as libc::c_uint,
                    0,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => {
                        sent.waits += 1;
                        std::thread::sleep(Duration::from_micros(50));
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            done += rc as usize;
        }
        sent.packets += n as u64;
        if cli.pps > 0 {
            let due = Duration::from_secs_f64(sent.packets as f64 / cli.pps as f64);
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    Ok(sent)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let start = Instant::now();
    match flood(&cli) {
        Ok(sent) => {
            let secs = start.elapsed().as_secs_f64();
            let pps = sent.packets as f64 / secs.max(1e-9);
            if sent.waits > 0 {
                eprintln!(
                    "flood: waited {} times for a full socket buffer",
                    sent.waits
                );
            }
            println!("sent {} secs {secs:.3} pps {pps:.0}", sent.packets);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flood: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn spec(proto: Proto, payload: &[u8]) -> Spec<'_> {
        Spec {
            proto,
            src: Ipv4Addr::new(198, 18, 3, 7),
            dst: Ipv4Addr::new(192, 0, 2, 1),
            sport: 40_000,
            dport: 30_080,
            ip_id: 0x1234,
            seq: 0xdead_beef,
            payload,
        }
    }

    /// Verifying a checksum: the sum over the data with the checksum in it is 0xffff.
    fn verifies(data: &[u8], initial: u32) -> bool {
        fold(sum16(data, initial)) == 0
    }

    #[test]
    fn ip_checksum_matches_a_known_header() {
        // The worked example of the IPv4 header checksum (checksum field 0xb861).
        let hdr: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(fold(sum16(&hdr, 0)), 0xb861);
    }

    #[test]
    fn odd_length_data_is_padded_with_a_zero_byte() {
        assert_eq!(sum16(&[0x12, 0x34, 0x56], 0), 0x1234 + 0x5600);
    }

    #[test]
    fn a_syn_has_valid_checksums_and_the_fields_asked_for() {
        let mut buf = [0u8; BUF];
        let s = spec(Proto::Tcp, b"");
        let n = build(&mut buf, &s);
        let p = &buf[..n];
        assert_eq!(n, 44);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, n, "total length");
        assert_eq!(p[9], 6);
        assert_eq!(&p[12..16], &[198, 18, 3, 7]);
        assert_eq!(&p[16..20], &[192, 0, 2, 1]);
        assert!(verifies(&p[..20], 0), "IP header checksum");
        let tcp = &p[20..];
        assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 40_000);
        assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 30_080);
        assert_eq!(
            u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            0xdead_beef
        );
        assert_eq!(tcp[12] >> 4, 6, "data offset: 24 bytes");
        assert_eq!(tcp[13], 0x02, "SYN only");
        assert_eq!(&tcp[20..24], &[2, 4, 0x05, 0xb4], "MSS 1460");
        assert!(verifies(tcp, pseudo_sum(s.src, s.dst, 6, tcp.len())));
    }

    #[test]
    fn a_udp_datagram_has_valid_checksums_and_carries_the_payload() {
        let mut buf = [0u8; BUF];
        let s = spec(Proto::Udp, b"hello");
        let n = build(&mut buf, &s);
        let p = &buf[..n];
        assert_eq!(n, 20 + 8 + 5);
        assert_eq!(p[9], 17);
        assert!(verifies(&p[..20], 0), "IP header checksum");
        let udp = &p[20..];
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]), 13, "UDP length");
        assert_eq!(&udp[8..], b"hello");
        assert_ne!(u16::from_be_bytes([udp[6], udp[7]]), 0, "checksum present");
        assert!(verifies(udp, pseudo_sum(s.src, s.dst, 17, udp.len())));
    }

    /// RFC 1071 the plain way, over pseudo-header and segment laid end to end: a second
    /// implementation to check [`build`]'s against.
    fn reference_l4_checksum(p: &[u8]) -> u16 {
        let l4 = &p[20..];
        let mut v = Vec::new();
        v.extend_from_slice(&p[12..20]);
        v.extend_from_slice(&[0, p[9]]);
        v.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        v.extend_from_slice(l4);
        let at = if p[9] == 6 { 12 + 16 } else { 12 + 6 };
        v[at] = 0;
        v[at + 1] = 0;
        if v.len() % 2 == 1 {
            v.push(0);
        }
        let mut sum: u64 = 0;
        for w in v.chunks(2) {
            sum += u64::from(w[0]) * 256 + u64::from(w[1]);
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn transport_checksums_agree_with_a_reference_implementation() {
        let mut buf = [0u8; BUF];
        for (proto, payload, at) in [
            (Proto::Tcp, &b""[..], 36),
            (Proto::Udp, &b"odd"[..], 26),
            (Proto::Udp, &b"even"[..], 26),
        ] {
            for sport in [1024, 40_000, 65_535] {
                let n = build(
                    &mut buf,
                    &Spec {
                        sport,
                        ..spec(proto, payload)
                    },
                );
                let got = u16::from_be_bytes([buf[at], buf[at + 1]]);
                assert_eq!(got, reference_l4_checksum(&buf[..n]), "{proto:?} {sport}");
            }
        }
    }

    #[test]
    fn the_checksum_changes_with_every_field_it_covers() {
        let mut a = [0u8; BUF];
        let mut b = [0u8; BUF];
        let s = spec(Proto::Tcp, b"");
        build(&mut a, &s);
        build(&mut b, &Spec { sport: 40_001, ..s });
        assert_ne!(a[36..38], b[36..38], "TCP checksum covers the port");
        build(
            &mut b,
            &Spec {
                src: Ipv4Addr::new(198, 18, 3, 8),
                ..s
            },
        );
        assert_ne!(
            a[36..38],
            b[36..38],
            "TCP checksum covers the pseudo-header"
        );
        assert_ne!(a[10..12], b[10..12], "IP checksum covers the source");
    }

    #[test]
    fn flows_are_distinct_inside_the_prefix_with_high_ports() {
        let c = cidr("198.18.0.0/15");
        let mut flows = Flows::new(c, 42);
        let mut seen = HashSet::new();
        let (lo, hi) = (
            u32::from(Ipv4Addr::new(198, 18, 0, 0)),
            u32::from(Ipv4Addr::new(198, 19, 255, 255)),
        );
        let mut addrs = HashSet::new();
        for _ in 0..100_000 {
            let (a, p) = flows.next().unwrap();
            assert!((lo + 1..hi).contains(&u32::from(a)), "{a}");
            assert!(p >= MIN_PORT);
            assert!(seen.insert((a, p)), "{a}:{p} repeated");
            addrs.insert(a);
        }
        // Spread over the range rather than walking it: most flows have an address of
        // their own.
        assert!(addrs.len() > 50_000, "{} addresses", addrs.len());
    }

    #[test]
    fn a_small_prefix_yields_every_pair_once_then_runs_out() {
        let mut flows = Flows::new(cidr("10.0.0.0/30"), 7);
        let mut seen = HashSet::new();
        while let Some(f) = flows.next() {
            assert!(seen.insert(f));
        }
        assert_eq!(seen.len() as u64, flows.capacity());
        assert_eq!(flows.capacity(), 2 * 64_512);
    }

    #[test]
    fn cidrs_parse_and_mask_their_base() {
        assert_eq!(
            cidr("198.19.4.5/15"),
            Cidr {
                base: Ipv4Addr::new(198, 18, 0, 0),
                len: 15
            }
        );
        assert!("198.18.0.0".parse::<Cidr>().is_err());
        assert!("198.18.0.0/32".parse::<Cidr>().is_err());
    }
}
