//! Packet parsing and header rewriting for the tc programs. Every read and write goes
//! through `bpf_skb_load_bytes` / `bpf_skb_store_bytes`, which bounds-check against the
//! packet, and checksums are updated incrementally with the kernel's helpers (which
//! also keep GSO and checksum-offloaded packets right).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use proxy_common::{Addr, CtKey, counter, proto};

use crate::maps::count;

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// Offsets in the IPv4 header.
const IP4_CSUM: usize = ETH_HLEN + 10;
const IP4_SADDR: usize = ETH_HLEN + 12;
const IP4_DADDR: usize = ETH_HLEN + 16;
/// Offsets in the IPv6 header.
const IP6_SADDR: usize = ETH_HLEN + 8;
const IP6_DADDR: usize = ETH_HLEN + 24;
pub const IP6_HLEN: usize = 40;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A TCP or UDP packet the tc programs may translate.
pub struct Packet {
    /// Its tuple.
    pub key: CtKey,
    /// Offset of the TCP/UDP header.
    pub l4_off: usize,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// The headers (through the L4 header's fixed part) are in the linear data, and
    /// were read there.
    linear: bool,
    /// When `linear`: the IP length (for IPv6, with the fixed header).
    ip_len: u16,
    /// When `linear`: the L4 header's length (TCP data offset; 8 for UDP).
    l4_hlen: u16,
    /// [`Packet::clock`] once read; 0 before.
    now: u64,
}

impl Packet {
    /// The time this packet is handled at: `bpf_ktime_get_coarse_ns()`, read once. The
    /// clock of the connection table and of the FIB cache (a tick's resolution is
    /// plenty for their timeouts; the precise clock costs a serialised TSC read, a good
    /// part of a translated packet's cost).
    #[inline(always)]
    pub fn clock(&mut self) -> u64 {
        if self.now == 0 {
            self.now = crate::fib::now();
        }
        self.now
    }

    /// A TCP SYN without ACK, or any UDP datagram: a packet that may open a flow.
    #[inline(always)]
    pub fn may_open(&self) -> bool {
        self.key.proto == proto::UDP || self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    fn csum_off(&self) -> usize {
        if self.key.proto == proto::TCP {
            self.l4_off + 16
        } else {
            self.l4_off + 6
        }
    }

    fn l4_flags(&self) -> u64 {
        // An IPv4 UDP checksum of 0 means "none" and must stay 0.
        if self.key.proto == proto::UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        }
    }
}

/// Parses Ethernet + IPv4/IPv6 + TCP/UDP into `p`. Fragments, IPv6 extension headers
/// and other protocols are not for us (false); so is a TCP/UDP header cut short, which
/// we could not rewrite whole. The first three are counted, as the packet may belong
/// to a service and goes to the stack untranslated.
// Not inlined, and filling `p` in place: its frame stays out of the callers' 512 bytes.
#[inline(never)]
pub fn parse(ctx: &TcContext, p: &mut Packet) -> bool {
    // The headers are nearly always in the linear data, read in place; else (or when
    // anything there is short) the helpers read them, and decide.
    let r = match parse_linear(ctx, p) {
        Some(r) => r,
        None => parse_packet(ctx, p),
    };
    match r {
        Ok(()) => {
            p.now = 0;
            true
        }
        Err(Unparsed::NotOurs) => false,
        Err(Unparsed::Counted(reason)) => {
            count(reason);
            false
        }
    }
}

/// `*d = *s`, a word at a time. (A plain assignment between memory LLVM cannot prove
/// apart, such as scratch space and a map value, compiles to a call of the BPF
/// `memmove`, a loop over bytes.)
#[inline(always)]
pub fn copy_addr(d: &mut Addr, s: &Addr) {
    let mut i = 0;
    while i < 4 {
        // SAFETY: an element of `s`; volatile keeps the copies from being merged back.
        d.0[i] = unsafe { core::ptr::read_volatile(&raw const s.0[i]) };
        i += 1;
    }
}

/// Sets `k` to the tuple given, its padding zero. (The three padding bytes of a struct
/// literal compile to a call of the BPF `memset`, a loop over bytes: the protocol and
/// its padding are written as one word instead.)
#[inline(always)]
pub fn set_tuple(
    k: &mut CtKey,
    saddr: &Addr,
    daddr: &Addr,
    sport_be: u16,
    dport_be: u16,
    l4proto: u8,
) {
    const _: () =
        assert!(core::mem::offset_of!(CtKey, proto) == 36 && core::mem::size_of::<CtKey>() == 40);
    copy_addr(&mut k.saddr, saddr);
    copy_addr(&mut k.daddr, daddr);
    k.sport_be = sport_be;
    k.dport_be = dport_be;
    // SAFETY: bytes 36..40 of the repr(C) key are `proto` then `_pad`, 4-aligned (the
    // key holds u32 arrays); BPF is little-endian, so the low byte is `proto`.
    unsafe {
        core::ptr::from_mut(k)
            .cast::<u8>()
            .add(36)
            .cast::<u32>()
            .write(u32::from(l4proto));
    }
}

/// Why [`parse`] gave up.
enum Unparsed {
    /// Not TCP/UDP over IP: nothing to count.
    NotOurs,
    /// Possibly a service's packet, passed untranslated: this counter says why.
    Counted(u32),
}

const TRUNCATED: Unparsed = Unparsed::Counted(counter::TRUNCATED);

/// The smallest header the rewrite may touch: through the TCP checksum (a TCP header
/// is at least 20 bytes), the whole UDP header.
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;

/// IPv6 extension headers (RFC 8200 section 4, plus AH): hop-by-hop, routing,
/// fragment, destination options, authentication.
#[inline(always)]
fn is_ipv6_ext(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 60 | 51)
}

/// `len` bytes at `off` of the packet, if the linear data holds them. (`off` is at most
/// the offset of an L4 header after IPv4 options; the bound is the verifier's.)
#[inline(always)]
fn linear(ctx: &TcContext, off: usize, len: usize) -> Option<*const u8> {
    if off > ETH_HLEN + 60 {
        return None;
    }
    let start = ctx.data();
    if start + off + len > ctx.data_end() {
        return None;
    }
    Some((start + off) as *const u8)
}

/// A `T` read in place at `at` (no alignment assumed).
#[inline(always)]
pub fn read<T: Copy>(at: *const u8, off: usize) -> T {
    // SAFETY: callers pass a pointer from `linear` with `off + size_of::<T>()` within the
    // bytes it checked.
    unsafe { at.add(off).cast::<T>().read_unaligned() }
}

/// [`parse_packet`] on the linear data, with direct reads instead of helper calls:
/// `None` when the bytes it needs are not all there (then the helpers decide, so the
/// outcome never depends on where the kernel put the bytes).
#[inline(always)]
fn parse_linear(ctx: &TcContext, p: &mut Packet) -> Option<Result<(), Unparsed>> {
    let eth = linear(ctx, 0, ETH_HLEN)?;
    let ethertype = u16::from_be(read::<u16>(eth, 12));
    let (l4proto, l4_off) = if ethertype == ETH_P_IP {
        // The fixed part of the header: options are skipped, never read.
        let ip = linear(ctx, ETH_HLEN, 20)?;
        let vihl: u8 = read(ip, 0);
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ihl < 20 {
            return Some(Err(Unparsed::NotOurs));
        }
        if u16::from_be(read::<u16>(ip, 6)) & 0x3fff != 0 {
            return Some(Err(Unparsed::Counted(counter::FRAGMENT_PASSED)));
        }
        let s: u32 = read(ip, 12);
        let d: u32 = read(ip, 16);
        p.key.saddr = Addr::from_v4_be(s);
        p.key.daddr = Addr::from_v4_be(d);
        p.ip_len = u16::from_be(read(ip, 2));
        (read::<u8>(ip, 9), ETH_HLEN + ihl)
    } else if ethertype == ETH_P_IPV6 {
        let ip = linear(ctx, ETH_HLEN, IP6_HLEN)?;
        let next: u8 = read(ip, 6);
        if is_ipv6_ext(next) {
            return Some(Err(Unparsed::Counted(counter::IPV6_EXT_PASSED)));
        }
        let mut i = 0;
        while i < 4 {
            p.key.saddr.0[i] = read(ip, 8 + 4 * i);
            p.key.daddr.0[i] = read(ip, 24 + 4 * i);
            i += 1;
        }
        p.ip_len = u16::from_be(read(ip, 4)).saturating_add(IP6_HLEN as u16);
        (next, ETH_HLEN + IP6_HLEN)
    } else {
        return Some(Err(Unparsed::NotOurs));
    };
    let l4_hlen = if l4proto == proto::TCP {
        TCP_HLEN
    } else if l4proto == proto::UDP {
        UDP_HLEN
    } else {
        return Some(Err(Unparsed::NotOurs));
    };
    let l4 = linear(ctx, l4_off, l4_hlen)?;
    let (tcp_flags, hlen) = if l4proto == proto::TCP {
        (read(l4, 13), u16::from(read::<u8>(l4, 12) >> 4) * 4)
    } else {
        (0, UDP_HLEN as u16)
    };
    p.l4_hlen = hlen;
    p.linear = true;
    p.key.sport_be = read(l4, 0);
    p.key.dport_be = read(l4, 2);
    // SAFETY: as in `set_tuple`: `proto` and its padding as one word.
    unsafe {
        core::ptr::from_mut(&mut p.key)
            .cast::<u8>()
            .add(36)
            .cast::<u32>()
            .write(u32::from(l4proto));
    }
    p.l4_off = l4_off;
    p.tcp_flags = tcp_flags;
    Some(Ok(()))
}

#[inline(always)]
fn parse_packet(ctx: &TcContext, p: &mut Packet) -> Result<(), Unparsed> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).map_err(|_| Unparsed::NotOurs)?);
    let (saddr, daddr, l4proto, l4_off) = if ethertype == ETH_P_IP {
        let vihl: u8 = ctx.load(ETH_HLEN).map_err(|_| TRUNCATED)?;
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ihl < 20 {
            return Err(Unparsed::NotOurs);
        }
        // More-fragments flag or a fragment offset: ports are not in every fragment.
        let frag = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).map_err(|_| TRUNCATED)?);
        if frag & 0x3fff != 0 {
            return Err(Unparsed::Counted(counter::FRAGMENT_PASSED));
        }
        let p: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| TRUNCATED)?;
        let s: u32 = ctx.load(IP4_SADDR).map_err(|_| TRUNCATED)?;
        let d: u32 = ctx.load(IP4_DADDR).map_err(|_| TRUNCATED)?;
        (Addr::from_v4_be(s), Addr::from_v4_be(d), p, ETH_HLEN + ihl)
    } else if ethertype == ETH_P_IPV6 {
        let p: u8 = ctx.load(ETH_HLEN + 6).map_err(|_| TRUNCATED)?;
        let s: [u32; 4] = ctx.load(IP6_SADDR).map_err(|_| TRUNCATED)?;
        let d: [u32; 4] = ctx.load(IP6_DADDR).map_err(|_| TRUNCATED)?;
        if is_ipv6_ext(p) {
            return Err(Unparsed::Counted(counter::IPV6_EXT_PASSED));
        }
        (Addr(s), Addr(d), p, ETH_HLEN + IP6_HLEN)
    } else {
        return Err(Unparsed::NotOurs);
    };
    let l4_hlen = if l4proto == proto::TCP {
        TCP_HLEN
    } else if l4proto == proto::UDP {
        UDP_HLEN
    } else {
        return Err(Unparsed::NotOurs);
    };
    // A plain length check (no helper call): a segment too short to rewrite whole
    // would be dropped half translated, after its flow had been tracked.
    if (ctx.len() as usize) < l4_off + l4_hlen {
        return Err(TRUNCATED);
    }
    let ports: [u16; 2] = ctx.load(l4_off).map_err(|_| TRUNCATED)?;
    let tcp_flags = if l4proto == proto::TCP {
        ctx.load::<u8>(l4_off + 13).map_err(|_| TRUNCATED)?
    } else {
        0
    };
    set_tuple(&mut p.key, &saddr, &daddr, ports[0], ports[1], l4proto);
    p.l4_off = l4_off;
    p.tcp_flags = tcp_flags;
    p.linear = false;
    Ok(())
}

/// The TCP sequence and acknowledgment numbers of `p` (host order). Read only while
/// a flow's handshake is proven, never on the established path.
#[inline(always)]
pub fn tcp_seq_ack(ctx: &TcContext, p: &Packet) -> Option<(u32, u32)> {
    let w: [u32; 2] = ctx.load(p.l4_off + 4).ok()?;
    Some((u32::from_be(w[0]), u32::from_be(w[1])))
}

/// Rewrites the packet's tuple to `to` (same family), fixing the IPv4 header checksum
/// and the TCP/UDP checksum.
#[inline(always)]
pub fn rewrite(ctx: &mut TcContext, p: &Packet, to: &CtKey) -> Result<(), i64> {
    if p.linear {
        rewrite_linear(ctx, p, to)
    } else {
        rewrite_helpers(ctx, p, to)
    }
}

/// [`rewrite`] with the helpers for every write.
#[inline(always)]
fn rewrite_helpers(ctx: &mut TcContext, p: &Packet, to: &CtKey) -> Result<(), i64> {
    let from = &p.key;
    if from.saddr != to.saddr {
        set_addr(ctx, p, &from.saddr, &to.saddr, true)?;
    }
    if from.daddr != to.daddr {
        set_addr(ctx, p, &from.daddr, &to.daddr, false)?;
    }
    if from.sport_be != to.sport_be {
        set_port(ctx, p, 0, from.sport_be, to.sport_be)?;
    }
    if from.dport_be != to.dport_be {
        set_port(ctx, p, 2, from.dport_be, to.dport_be)?;
    }
    Ok(())
}

/// [`rewrite`] for headers in the linear data: the TCP/UDP checksum by the helpers,
/// which know the skb's checksum state (offloaded, complete), in the same steps as
/// [`rewrite_helpers`] takes; the fields and the IPv4 header checksum written in place,
/// with the arithmetic of the kernel's `csum_replace4`. The same bytes as
/// [`rewrite_helpers`] writes, with two to four helper calls fewer.
#[inline(always)]
fn rewrite_linear(ctx: &mut TcContext, p: &Packet, to: &CtKey) -> Result<(), i64> {
    let from = &p.key;
    let (s_changed, d_changed) = (from.saddr != to.saddr, from.daddr != to.daddr);
    let v4 = from.saddr.is_v4();
    // The agent never pairs families; refuse rather than corrupt.
    if (s_changed && to.saddr.is_v4() != v4) || (d_changed && to.daddr.is_v4() != v4) {
        return Err(-22);
    }
    let pseudo = p.l4_flags() | u64::from(BPF_F_PSEUDO_HDR);
    // The checksum helpers first: they may move the packet's data.
    if s_changed {
        l4_addr_csum(ctx, p, &from.saddr, &to.saddr, pseudo)?;
    }
    if d_changed {
        l4_addr_csum(ctx, p, &from.daddr, &to.daddr, pseudo)?;
    }
    let l4 = p.l4_flags() | 2;
    if from.sport_be != to.sport_be {
        ctx.l4_csum_replace(
            p.csum_off(),
            u64::from(from.sport_be),
            u64::from(to.sport_be),
            l4,
        )?;
    }
    if from.dport_be != to.dport_be {
        ctx.l4_csum_replace(
            p.csum_off(),
            u64::from(from.dport_be),
            u64::from(to.dport_be),
            l4,
        )?;
    }
    // Parse found these in the linear data, and the helpers keep the linear length.
    let ports = linear_mut(ctx, p.l4_off, 4).ok_or(-14i64)?;
    if v4 {
        let hdr = linear_mut(ctx, 0, ETH_HLEN + 20).ok_or(-14i64)?;
        let mut check: u16 = read(hdr, IP4_CSUM);
        if s_changed {
            let (o, n) = (from.saddr.0[3], to.saddr.0[3]);
            check = csum_replace4(check, o, n);
            write(hdr, IP4_SADDR, n);
        }
        if d_changed {
            let (o, n) = (from.daddr.0[3], to.daddr.0[3]);
            check = csum_replace4(check, o, n);
            write(hdr, IP4_DADDR, n);
        }
        write(hdr, IP4_CSUM, check);
    } else {
        let hdr = linear_mut(ctx, 0, ETH_HLEN + IP6_HLEN).ok_or(-14i64)?;
        let mut i = 0;
        while i < 4 {
            if s_changed {
                write(hdr, IP6_SADDR + 4 * i, to.saddr.0[i]);
            }
            if d_changed {
                write(hdr, IP6_DADDR + 4 * i, to.daddr.0[i]);
            }
            i += 1;
        }
    }
    write(ports, 0, to.sport_be);
    write(ports, 2, to.dport_be);
    Ok(())
}

/// The TCP/UDP checksum update for an address change (pseudo-header), as
/// [`set_addr`] makes it.
#[inline(always)]
fn l4_addr_csum(
    ctx: &mut TcContext,
    p: &Packet,
    old: &Addr,
    new: &Addr,
    flags: u64,
) -> Result<(), i64> {
    if old.is_v4() {
        let (o, n) = (old.0[3], new.0[3]);
        ctx.l4_csum_replace(p.csum_off(), u64::from(o), u64::from(n), flags | 4)
    } else {
        let diff = csum_diff(old, new)?;
        ctx.l4_csum_replace(p.csum_off(), 0, diff, flags)
    }
}

/// The kernel's `csum_add`: 32-bit ones' complement addition.
#[inline(always)]
pub fn csum_add(a: u32, b: u32) -> u32 {
    let r = a.wrapping_add(b);
    r.wrapping_add(u32::from(r < b))
}

/// The kernel's `csum_fold`.
#[inline(always)]
pub fn csum_fold(c: u32) -> u16 {
    let s = (c & 0xffff) + (c >> 16);
    let s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// The kernel's `csum_replace4` (what `bpf_l3_csum_replace` does with size 4): the
/// checksum `check` after the 32-bit word `from` became `to`.
#[inline(always)]
fn csum_replace4(check: u16, from: u32, to: u32) -> u16 {
    let tmp = csum_add(!u32::from(check), !from);
    csum_fold(csum_add(tmp, to))
}

/// [`linear`], for writing in place.
#[inline(always)]
pub fn linear_mut(ctx: &TcContext, off: usize, len: usize) -> Option<*mut u8> {
    linear(ctx, off, len).map(|p| p.cast_mut())
}

/// Writes `v` in place at `at + off` (no alignment assumed).
#[inline(always)]
pub fn write<T: Copy>(at: *mut u8, off: usize, v: T) {
    // SAFETY: callers pass a pointer from `linear_mut` with `off + size_of::<T>()` within
    // the bytes it checked.
    unsafe { at.add(off).cast::<T>().write_unaligned(v) }
}

/// Sets the Ethernet destination and source MACs (`macs`: destination first).
#[inline(always)]
pub fn set_macs(ctx: &mut TcContext, macs: &[u8; 12]) -> Result<(), i64> {
    match linear_mut(ctx, 0, ETH_HLEN) {
        Some(eth) => {
            let mut i = 0;
            while i < 12 {
                // SAFETY: byte `i` of `macs`; volatile keeps the copies from being merged
                // into a call of the BPF `memmove`, a loop over bytes.
                write(eth, i, unsafe {
                    core::ptr::read_volatile(&raw const macs[i])
                });
                i += 1;
            }
            Ok(())
        }
        None => ctx.store(0, macs, 0),
    }
}

#[inline(always)]
fn set_addr(ctx: &mut TcContext, p: &Packet, old: &Addr, new: &Addr, src: bool) -> Result<(), i64> {
    let l4 = p.l4_flags() | u64::from(BPF_F_PSEUDO_HDR);
    match (old.v4_be(), new.v4_be()) {
        (Some(o), Some(n)) => {
            ctx.l4_csum_replace(p.csum_off(), u64::from(o), u64::from(n), l4 | 4)?;
            ctx.l3_csum_replace(IP4_CSUM, u64::from(o), u64::from(n), 4)?;
            ctx.store(if src { IP4_SADDR } else { IP4_DADDR }, &n, 0)
        }
        (None, None) => {
            let diff = csum_diff(old, new)?;
            ctx.l4_csum_replace(p.csum_off(), 0, diff, l4)?;
            ctx.store(if src { IP6_SADDR } else { IP6_DADDR }, &new.0, 0)
        }
        // The agent never pairs families; refuse rather than corrupt.
        _ => Err(-22),
    }
}

#[inline(always)]
fn set_port(ctx: &mut TcContext, p: &Packet, off: usize, old: u16, new: u16) -> Result<(), i64> {
    ctx.l4_csum_replace(
        p.csum_off(),
        u64::from(old),
        u64::from(new),
        p.l4_flags() | 2,
    )?;
    ctx.store(p.l4_off + off, &new, 0)
}

/// The checksum difference between two IPv6 addresses, read in place (no copies: stack
/// space is scarce).
#[inline(always)]
fn csum_diff(old: &Addr, new: &Addr) -> Result<u64, i64> {
    // SAFETY: both point to 16 readable bytes; the helper only reads them.
    let diff = unsafe {
        bpf_csum_diff(
            old.0.as_ptr() as *mut u32,
            16,
            new.0.as_ptr() as *mut u32,
            16,
            0,
        )
    };
    if diff < 0 { Err(diff) } else { Ok(diff as u64) }
}

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const ICMP_HLEN: usize = 8;

/// An ICMP error (destination unreachable, time exceeded, parameter problem, packet too
/// big) about a TCP or UDP packet: enough to translate it like the flow it is about.
#[derive(Default)]
pub struct IcmpError {
    /// The outer header's source.
    pub outer_src: Addr,
    /// The outer header's destination.
    pub outer_dst: Addr,
    /// The tuple of the quoted packet, as it was sent.
    pub inner: CtKey,
    icmp_off: u32,
    inner_l3_off: u32,
    inner_l4_off: u32,
}

/// Parses an ICMP or ICMPv6 error quoting a TCP/UDP packet into `e`.
// Not inlined, and filling `e` in place: its frame stays out of the callers' 512 bytes.
#[inline(never)]
pub fn parse_icmp_error(ctx: &TcContext, e: &mut IcmpError) -> bool {
    parse_icmp(ctx, e).is_some()
}

#[inline(always)]
fn parse_icmp(ctx: &TcContext, e: &mut IcmpError) -> Option<()> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let (icmp_off, inner_l4_off, l4proto) = if ethertype == ETH_P_IP {
        let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ihl < 20 || ctx.load::<u8>(ETH_HLEN + 9).ok()? != IPPROTO_ICMP {
            return None;
        }
        let icmp_off = ETH_HLEN + ihl;
        // Destination unreachable, time exceeded, parameter problem.
        let ty: u8 = ctx.load(icmp_off).ok()?;
        if ty != 3 && ty != 11 && ty != 12 {
            return None;
        }
        let inner = icmp_off + ICMP_HLEN;
        let ivihl: u8 = ctx.load(inner).ok()?;
        let iihl = usize::from(ivihl & 0x0f) * 4;
        if ivihl >> 4 != 4 || iihl < 20 {
            return None;
        }
        e.outer_src = Addr::from_v4_be(ctx.load(IP4_SADDR).ok()?);
        e.outer_dst = Addr::from_v4_be(ctx.load(IP4_DADDR).ok()?);
        e.inner.saddr = Addr::from_v4_be(ctx.load(inner + 12).ok()?);
        e.inner.daddr = Addr::from_v4_be(ctx.load(inner + 16).ok()?);
        (icmp_off, inner + iihl, ctx.load::<u8>(inner + 9).ok()?)
    } else if ethertype == ETH_P_IPV6 {
        if ctx.load::<u8>(ETH_HLEN + 6).ok()? != IPPROTO_ICMPV6 {
            return None;
        }
        let icmp_off = ETH_HLEN + IP6_HLEN;
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        let ty: u8 = ctx.load(icmp_off).ok()?;
        if !(1..=4).contains(&ty) {
            return None;
        }
        let inner = icmp_off + ICMP_HLEN;
        e.outer_src = Addr(ctx.load(IP6_SADDR).ok()?);
        e.outer_dst = Addr(ctx.load(IP6_DADDR).ok()?);
        e.inner.saddr = Addr(ctx.load(inner + 8).ok()?);
        e.inner.daddr = Addr(ctx.load(inner + 24).ok()?);
        (icmp_off, inner + IP6_HLEN, ctx.load::<u8>(inner + 6).ok()?)
    } else {
        return None;
    };
    if l4proto != proto::TCP && l4proto != proto::UDP {
        return None;
    }
    let ports: [u16; 2] = ctx.load(inner_l4_off).ok()?;
    e.inner.sport_be = ports[0];
    e.inner.dport_be = ports[1];
    e.inner.proto = l4proto;
    e.inner._pad = [0; 3];
    e.icmp_off = icmp_off as u32;
    e.inner_l3_off = (icmp_off + ICMP_HLEN) as u32;
    e.inner_l4_off = inner_l4_off as u32;
    Some(())
}

/// Which address of an ICMP error [`set_icmp_addr`] rewrites.
pub const OUTER_SRC: u32 = 0;
pub const OUTER_DST: u32 = 1;
pub const INNER_SRC: u32 = 2;
pub const INNER_DST: u32 = 3;

/// Rewrites one address of an ICMP error, keeping the outer, quoted-IPv4 and ICMP
/// checksums right. (A quoted IPv4 header is self-checksummed, so its address changes
/// leave the ICMPv4 checksum alone; ICMPv6 covers everything, pseudo-header included.)
#[inline(never)]
pub fn set_icmp_addr(ctx: &mut TcContext, e: &IcmpError, which: u32, new: &Addr) -> i64 {
    let (old, outer) = match which {
        OUTER_SRC => (e.outer_src, true),
        OUTER_DST => (e.outer_dst, true),
        INNER_SRC => (e.inner.saddr, false),
        _ => (e.inner.daddr, false),
    };
    if old == *new {
        return 0;
    }
    let second = usize::from(which & 1 == 1);
    let inner_l3 = e.inner_l3_off as usize;
    let r = match (old.v4_be(), new.v4_be()) {
        (Some(o), Some(n)) => {
            let (field, l3csum) = if outer {
                (IP4_SADDR + second * 4, IP4_CSUM)
            } else {
                (inner_l3 + 12 + second * 4, inner_l3 + 10)
            };
            ctx.l3_csum_replace(l3csum, u64::from(o), u64::from(n), 4)
                .and_then(|()| ctx.store(field, &n, 0))
        }
        (None, None) => {
            let diff = match csum_diff(&old, new) {
                Ok(d) => d,
                Err(e) => return e,
            };
            let (field, pseudo) = if outer {
                (IP6_SADDR + second * 16, u64::from(BPF_F_PSEUDO_HDR))
            } else {
                (inner_l3 + 8 + second * 16, 0)
            };
            ctx.l4_csum_replace(e.icmp_off as usize + 2, 0, diff, pseudo)
                .and_then(|()| ctx.store(field, &new.0, 0))
        }
        _ => Err(-22),
    };
    match r {
        Ok(()) => 0,
        Err(e) => e,
    }
}

/// Rewrites the quoted packet's ports of an ICMP error.
#[inline(always)]
pub fn set_icmp_ports(
    ctx: &mut TcContext,
    e: &IcmpError,
    sport_be: u16,
    dport_be: u16,
) -> Result<(), i64> {
    let csum = e.icmp_off as usize + 2;
    let l4 = e.inner_l4_off as usize;
    if e.inner.sport_be != sport_be {
        ctx.l4_csum_replace(csum, u64::from(e.inner.sport_be), u64::from(sport_be), 2)?;
        ctx.store(l4, &sport_be, 0)?;
    }
    if e.inner.dport_be != dport_be {
        ctx.l4_csum_replace(csum, u64::from(e.inner.dport_be), u64::from(dport_be), 2)?;
        ctx.store(l4 + 2, &dport_be, 0)?;
    }
    Ok(())
}

/// The IP length of each packet this one puts on the wire, for the FIB's MTU check:
/// the length of one segment for a GSO packet (as the kernel's forwarding path checks
/// it), else the IP length.
#[inline(always)]
pub fn seg_len(ctx: &TcContext, p: &Packet) -> u16 {
    // SAFETY: reading a field of the context the kernel gave us.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        if p.linear {
            return p.ip_len;
        }
        return ip_len(ctx, p.key.saddr.is_v4());
    }
    let l4_hdr = if p.linear {
        u32::from(p.l4_hlen)
    } else if p.key.proto == proto::TCP {
        ctx.load::<u8>(p.l4_off + 12)
            .map(|doff| u32::from(doff >> 4) * 4)
            .unwrap_or(20)
    } else {
        8
    };
    let len = (p.l4_off - ETH_HLEN) as u32 + l4_hdr + gso_size;
    u16::try_from(len).unwrap_or(u16::MAX)
}

/// The IP length of the packet (for the FIB's MTU check).
#[inline(always)]
pub fn ip_len(ctx: &TcContext, v4: bool) -> u16 {
    if v4 {
        ctx.load::<u16>(ETH_HLEN + 2).map(u16::from_be).unwrap_or(0)
    } else {
        ctx.load::<u16>(ETH_HLEN + 4)
            .map(|l| u16::from_be(l).saturating_add(IP6_HLEN as u16))
            .unwrap_or(0)
    }
}
