//! Path MTU discovery through the NAT: a packet of a translated flow that is too big
//! for the route to its destination (the backend, or on the way back the client) is
//! answered here with the ICMP error its sender needs
//! ("fragmentation needed" / "packet too big"), quoting the packet as the sender sent
//! it.
//!
//! The stack cannot do it for us. For a SNATed flow the translated packet carries the
//! node's own address as its source, so the stack drops it as a martian (and its error
//! would go to the node itself); and an error about the translated packet would quote
//! a tuple the sender never used.
//!
//! The packet itself becomes the error, as Cilium does for its DSR replies: cut to its
//! IP header and the start of its TCP/UDP header, grown at the front by a new IP and
//! ICMP header, and sent back out of the interface it came in on, to the MAC it came
//! from. The answer is at most 122 bytes for a packet of more than 1280: no
//! amplification for a spoofed sender.

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    helpers::generated::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use proxy_common::{Addr, CtKey, proto};

use crate::maps::IFACES;
use crate::packet::{ETH_HLEN, IP6_HLEN, csum_add, csum_fold, linear_mut, read, write};

const IP4_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
/// IPv4 "don't fragment".
const IP4_DF: u16 = 0x4000;
const IPPROTO_ICMPV6: u32 = 58;

/// What became of a too-big packet.
pub enum Answer {
    /// Not answered and untouched: an IPv4 packet that may be fragmented (the stack's
    /// job), one with IP options, or one the kernel would not cut.
    Declined,
    /// Turned into the ICMP error; this is its verdict.
    Sent(i32),
    /// Cut, then a later step failed: only fit to be dropped.
    Failed,
}

/// Answers the packet in `ctx` (tuple `key` as its sender sent it, transport header at
/// `l4_off`) with "fragmentation needed" (IPv4) or "packet too big" (IPv6) for `mtu`,
/// back to the sender (`key.saddr`).
#[inline(always)]
pub fn answer(ctx: &mut TcContext, key: &CtKey, l4_off: usize, mtu: u32) -> Answer {
    let v4 = key.saddr.is_v4();
    if v4 {
        if l4_off != ETH_HLEN + IP4_HLEN {
            return Answer::Declined;
        }
        match ctx.load::<u16>(ETH_HLEN + 6) {
            Ok(frag) if u16::from_be(frag) & IP4_DF != 0 => {}
            _ => return Answer::Declined,
        }
    }
    // SAFETY: reading a field of the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // From this node, as a router answers: from the interface's own address, else (it
    // has none of the family) from the one the sender reached.
    // SAFETY: read in place.
    let src = match unsafe { IFACES.get(ifindex) } {
        Some(i) if v4 && is_set(&i.v4) => &i.v4,
        Some(i) if !v4 && is_set(&i.v6) => &i.v6,
        _ => &key.daddr,
    };
    match (v4, key.proto == proto::TCP) {
        (true, true) => reply::<false, 20>(ctx, key, src, mtu),
        (true, false) => reply::<false, 8>(ctx, key, src, mtu),
        (false, true) => reply::<true, 20>(ctx, key, src, mtu),
        (false, false) => reply::<true, 8>(ctx, key, src, mtu),
    }
}

/// Whether `a` is an address, not all zero. (Word by word: an array comparison would
/// become a call of the BPF `bcmp`.)
#[inline(always)]
fn is_set(a: &Addr) -> bool {
    a.0[0] | a.0[1] | a.0[2] | a.0[3] != 0
}

/// [`answer`] for one family (`V6`) and a quoted transport header of `L4` bytes (all
/// of TCP's fixed header, all of UDP's): constant lengths throughout, for the verifier.
// Not inlined: each is a BPF function of its own, whose frame stays out of the
// caller's 512 bytes.
#[inline(never)]
fn reply<const V6: bool, const L4: usize>(
    ctx: &mut TcContext,
    key: &CtKey,
    src: &Addr,
    mtu: u32,
) -> Answer {
    let ip_hlen = if V6 { IP6_HLEN } else { IP4_HLEN };
    let quote = ip_hlen + L4;
    let head = ip_hlen + ICMP_HLEN;
    let total = ETH_HLEN + head + quote;
    // Cut to the quote: the kernel then holds the packet linear, and no longer GSO.
    // SAFETY: plain helper call on our own packet.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + quote) as u32, 0) } != 0 {
        return Answer::Declined;
    }
    // Room for the new IP and ICMP headers, between the Ethernet header (which the
    // kernel moves to the front) and the quote.
    if ctx.adjust_room(head as i32, BPF_ADJ_ROOM_MAC, 0).is_err() {
        return Answer::Failed;
    }
    let Some(p) = linear_mut(ctx, 0, total) else {
        return Answer::Failed;
    };
    // Back to where it came from: the MACs swapped.
    let (dst4, dst2): (u32, u16) = (read(p, 0), read(p, 4));
    let (src4, src2): (u32, u16) = (read(p, 6), read(p, 10));
    write(p, 0, src4);
    write(p, 4, src2);
    write(p, 6, dst4);
    write(p, 10, dst2);
    let ip = ETH_HLEN;
    let icmp = ip + ip_hlen;
    if V6 {
        write(p, ip, u32::to_be(0x6000_0000));
        let payload = (ICMP_HLEN + quote) as u32;
        write(
            p,
            ip + 4,
            u32::to_be(payload << 16 | IPPROTO_ICMPV6 << 8 | 64),
        );
        let mut w = 0;
        while w < 4 {
            write(p, ip + 8 + 4 * w, src.0[w]);
            write(p, ip + 24 + 4 * w, key.saddr.0[w]);
            w += 1;
        }
        // Packet too big, code 0, then the MTU.
        write(p, icmp, u32::to_be(0x0200_0000));
        write(p, icmp + 4, u32::to_be(mtu));
    } else {
        // Version, IHL, precedence "internetwork control" (as Linux sends its errors).
        write(p, ip, u32::to_be(0x45c0_0000 | (head + quote) as u32));
        write(p, ip + 4, u32::to_be(u32::from(IP4_DF)));
        write(p, ip + 8, u32::to_be(0x4001_0000));
        write(p, ip + 12, src.0[3]);
        write(p, ip + 16, key.saddr.0[3]);
        let Some(sum) = sum(p, ip, IP4_HLEN, 0) else {
            return Answer::Failed;
        };
        write(p, ip + 10, csum_fold(sum));
        // Destination unreachable, fragmentation needed, then the next hop's MTU.
        write(p, icmp, u32::to_be(0x0304_0000));
        write(p, icmp + 4, u32::to_be(mtu & 0xffff));
    }
    // The quoted transport checksum, as a checksum offload still pending on the packet
    // would write it (see `offload_fixed_point`), so that the ICMP checksum below holds.
    let l4 = icmp + ICMP_HLEN + ip_hlen;
    let field = l4 + if L4 == 20 { 16 } else { 6 };
    write(p, field, 0u16);
    let Some(others) = sum(p, l4, L4, 0) else {
        return Answer::Failed;
    };
    write(p, field, offload_fixed_point(others));

    let region = ICMP_HLEN + quote;
    let mut seed = 0;
    if V6 {
        // The pseudo-header: both addresses, the length, the next header.
        let Some(addrs) = sum(p, ip + 8, 32, 0) else {
            return Answer::Failed;
        };
        seed = csum_add(
            csum_add(addrs, u32::to_be(region as u32)),
            u32::to_be(IPPROTO_ICMPV6),
        );
    }
    let Some(sum) = sum(p, icmp, region, seed) else {
        return Answer::Failed;
    };
    write(p, icmp + 2, csum_fold(sum));
    // SAFETY: reading a field of the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call.
    Answer::Sent(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// The 32-bit ones' complement sum of `len` bytes at `p + off` (a multiple of 4),
/// added to `seed`.
#[inline(always)]
fn sum(p: *mut u8, off: usize, len: usize, seed: u32) -> Option<u32> {
    // SAFETY: `p + off .. + len` lies within the bytes `linear_mut` checked; the helper
    // only reads them.
    let s = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            p.add(off).cast(),
            len as u32,
            seed,
        )
    };
    u32::try_from(s).ok()
}

/// The value for a quoted transport checksum field whose other bytes sum to `others`
/// (a 32-bit partial sum) that a checksum offload still pending on the packet
/// (`CHECKSUM_PARTIAL`, which GSO and GRO packets have) would write there itself: the
/// quote is the offload's whole span, from the transport header to the end, and it
/// writes `~(others + field)`. So the ICMP checksum holds whether or not it runs. The
/// fixed point `field = -(others + field)` is `field = -others / 2`, and halving a
/// 16-bit ones' complement number is rotating it right by one bit (`csum_fold` is
/// already the negated sum; ones' complement sums commute with byte order, so memory
/// order is fine). The datapath tests check it by running the offload on the output.
#[inline(always)]
fn offload_fixed_point(others: u32) -> u16 {
    csum_fold(others).rotate_right(1)
}
