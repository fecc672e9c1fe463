//! Packet parsing and header rewriting for the tc programs. Every read and write goes
//! through `bpf_skb_load_bytes` / `bpf_skb_store_bytes`, which bounds-check against the
//! packet, and checksums are updated incrementally with the kernel's helpers (which
//! also keep GSO and checksum-offloaded packets right).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use proxy_common::{Addr, CtKey, proto};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// Offsets in the IPv4 header.
const IP4_CSUM: usize = ETH_HLEN + 10;
const IP4_SADDR: usize = ETH_HLEN + 12;
const IP4_DADDR: usize = ETH_HLEN + 16;
/// Offsets in the IPv6 header.
const IP6_SADDR: usize = ETH_HLEN + 8;
const IP6_DADDR: usize = ETH_HLEN + 24;
const IP6_HLEN: usize = 40;

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
}

impl Packet {
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

/// Parses Ethernet + IPv4/IPv6 + TCP/UDP. Fragments, IPv6 extension headers and other
/// protocols are not for us (`None`).
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Option<Packet> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let (saddr, daddr, l4proto, l4_off) = if ethertype == ETH_P_IP {
        let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ihl < 20 {
            return None;
        }
        // More-fragments flag or a fragment offset: ports are not in every fragment.
        let frag = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).ok()?);
        if frag & 0x3fff != 0 {
            return None;
        }
        let p: u8 = ctx.load(ETH_HLEN + 9).ok()?;
        let s: u32 = ctx.load(IP4_SADDR).ok()?;
        let d: u32 = ctx.load(IP4_DADDR).ok()?;
        (Addr::from_v4_be(s), Addr::from_v4_be(d), p, ETH_HLEN + ihl)
    } else if ethertype == ETH_P_IPV6 {
        let p: u8 = ctx.load(ETH_HLEN + 6).ok()?;
        let s: [u32; 4] = ctx.load(IP6_SADDR).ok()?;
        let d: [u32; 4] = ctx.load(IP6_DADDR).ok()?;
        (Addr(s), Addr(d), p, ETH_HLEN + IP6_HLEN)
    } else {
        return None;
    };
    if l4proto != proto::TCP && l4proto != proto::UDP {
        return None;
    }
    let ports: [u16; 2] = ctx.load(l4_off).ok()?;
    let tcp_flags = if l4proto == proto::TCP {
        ctx.load::<u8>(l4_off + 13).ok()?
    } else {
        0
    };
    Some(Packet {
        key: CtKey {
            saddr,
            daddr,
            sport_be: ports[0],
            dport_be: ports[1],
            proto: l4proto,
            _pad: [0; 3],
        },
        l4_off,
        tcp_flags,
    })
}

/// Rewrites the packet's tuple to `to` (same family), fixing the IPv4 header checksum
/// and the TCP/UDP checksum.
#[inline(always)]
pub fn rewrite(ctx: &mut TcContext, p: &Packet, to: &CtKey) -> Result<(), i64> {
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
            let mut o = old.0;
            let mut n = new.0;
            // SAFETY: two 16-byte stack buffers, sizes given.
            let diff = unsafe { bpf_csum_diff(o.as_mut_ptr(), 16, n.as_mut_ptr(), 16, 0) };
            if diff < 0 {
                return Err(diff);
            }
            ctx.l4_csum_replace(p.csum_off(), 0, diff as u64, l4)?;
            ctx.store(if src { IP6_SADDR } else { IP6_DADDR }, &n, 0)
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

/// Sets the Ethernet destination and source addresses.
#[inline(always)]
pub fn set_macs(ctx: &mut TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), i64> {
    ctx.store(0, dst, 0)?;
    ctx.store(6, src, 0)
}
