//! Socket-level load balancing (cgroup sock_addr hooks).
//!
//! connect()/sendmsg() to a VIP are rewritten to a backend before the kernel routes
//! anything, so ClusterIP traffic carries the backend's address from its first packet
//! and is never NATed per packet (netfilter conntrack never has a translation it could
//! fail to apply). getpeername() and UDP recvmsg() map the backend back to the VIP
//! through `REV_SOCK`, so applications see the address they asked for.
//!
//! Hooks only refuse a connection for "service exists but has no backend"; anything
//! else (unknown address, a slot missing during an update) passes untouched.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        generated::bpf_set_retval,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use proxy_common::{
    Addr, AffinityKey, AffinityValue, Backend, CtKey, FRONTEND_F_AFFINITY, RevSockKey,
    RevSockValue, counter, proto, scope,
};

use crate::maps::{AFFINITY, REV_SOCK, count};
use crate::monitor::{self, Subject};
use crate::{lb, stats};

/// sock_addr hooks: 1 lets the call proceed, 0 fails it (with the errno set through
/// bpf_set_retval, EPERM otherwise).
const ALLOW: i32 = 1;
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

enum Verdict {
    /// Not a service address: leave it alone.
    Pass,
    /// A service with no usable backend: fail the call at once.
    Refuse,
    /// Send to this backend instead.
    Rewrite(Backend),
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    fwd4(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    fwd4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    fwd6(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    fwd6(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    rev4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    rev4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    rev6(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    rev6(&ctx);
    ALLOW
}

// --- forward: VIP -> backend -------------------------------------------------------

#[inline(always)]
fn fwd4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid context; fields are read one at a time with
    // their own width, as the verifier requires for context access.
    let (ip, port, protocol) = unsafe {
        (
            read_volatile(addr_of!((*sa).user_ip4)),
            read_volatile(addr_of!((*sa).user_port)),
            read_volatile(addr_of!((*sa).protocol)),
        )
    };
    match select(ctx, Addr::from_v4_be(ip), port as u16, protocol) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse => refuse(),
        Verdict::Rewrite(be) => match be.addr.v4_be() {
            Some(be_ip) => {
                // SAFETY: as above; user_ip4 and user_port are writable in these hooks.
                unsafe {
                    write_volatile(addr_of_mut!((*sa).user_ip4), be_ip);
                    write_volatile(addr_of_mut!((*sa).user_port), u32::from(be.port_be));
                }
                ALLOW
            }
            // An IPv6 backend behind an IPv4 VIP cannot be expressed; the agent never
            // programs one.
            None => ALLOW,
        },
    }
}

#[inline(always)]
fn fwd6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: see fwd4.
    let (vip, port, protocol) = unsafe {
        (
            read_ip6(sa),
            read_volatile(addr_of!((*sa).user_port)),
            read_volatile(addr_of!((*sa).protocol)),
        )
    };
    match select(ctx, vip, port as u16, protocol) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse => refuse(),
        Verdict::Rewrite(be) => {
            // The backend has the VIP's family, so an IPv4-mapped VIP (an IPv6 socket
            // talking IPv4) gets an IPv4-mapped backend.
            // SAFETY: see fwd4.
            unsafe {
                write_ip6(sa, &be.addr);
                write_volatile(addr_of_mut!((*sa).user_port), u32::from(be.port_be));
            }
            ALLOW
        }
    }
}

#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: plain helper call, allowed in connect and sendmsg hooks.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    DENY
}

/// Picks the backend for a connect()/sendmsg() to `vip:port_be` and records the
/// reverse mapping for getpeername()/recvmsg().
#[inline(always)]
fn select(ctx: &SockAddrContext, vip: Addr, port_be: u16, protocol: u32) -> Verdict {
    let proto = match protocol {
        6 => proto::TCP,
        17 => proto::UDP,
        _ => return Verdict::Pass,
    };
    let Some(fe) = lb::frontend(vip, port_be, proto, scope::INTERNAL) else {
        return Verdict::Pass;
    };
    if fe.backend_count == 0 {
        let tuple = vip_tuple(vip, port_be, proto);
        monitor::drop(
            counter::LB_NO_BACKEND,
            &subject(fe.service_id, 0, &tuple, None),
        );
        return Verdict::Refuse;
    }

    let affinity = fe.flags & FRONTEND_F_AFFINITY != 0;
    let aff_key = AffinityKey {
        netns_cookie: if affinity {
            // SAFETY: helper valid for sock_addr programs, on the program's context.
            unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
        } else {
            0
        },
        service_id: fe.service_id,
        _pad: 0,
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };

    let remembered = if affinity {
        // SAFETY: the value is only read.
        lb::remembered(unsafe { AFFINITY.get(aff_key) }, &fe, now)
    } else {
        None
    };
    let (backend_id, be) = match remembered {
        Some(c) => {
            count(counter::AFFINITY_HIT);
            c
        }
        None => {
            // TCP: a random slot per connection. UDP: the socket's cookie, so that an
            // unconnected socket keeps talking to one backend.
            let seed = if proto == proto::UDP {
                hash64(cookie)
            } else {
                // SAFETY: helper without preconditions.
                unsafe { bpf_get_prandom_u32() }
            };
            match lb::pick(&fe, seed) {
                Some(c) => c,
                None => return Verdict::Pass,
            }
        }
    };

    if affinity {
        let v = AffinityValue {
            last_used_ns: now,
            backend_id,
            _pad: 0,
        };
        // An LRU insert only fails on a kernel error; the connection still proceeds.
        if AFFINITY.insert(aff_key, v, 0).is_err() {
            count(counter::AFFINITY_INSERT_FAILED);
        }
    }

    let rk = RevSockKey {
        cookie,
        addr: be.addr,
        port_be: be.port_be,
        _pad: [0; 6],
    };
    let rv = RevSockValue {
        addr: vip,
        port_be,
        proto,
        _pad: 0,
        service_id: fe.service_id,
    };
    if REV_SOCK.insert(rk, rv, 0).is_err() {
        count(counter::REV_UPDATE_FAILED);
    }
    count(counter::LB_TRANSLATED);
    stats::sock_connection(fe.service_id, backend_id);
    // Verified away unless --bpf-log-level is debug or trace (see tc.rs).
    aya_log_ebpf::debug!(
        ctx,
        "sock: connection to service {} sent to backend {}",
        fe.service_id,
        backend_id
    );
    let tuple = vip_tuple(vip, port_be, proto);
    let to = vip_tuple(be.addr, be.port_be, proto);
    monitor::trace(
        counter::LB_TRANSLATED,
        &subject(fe.service_id, backend_id, &tuple, Some(&to)),
    );
    Verdict::Rewrite(be)
}

/// A tuple with only a destination: what the socket hooks know of a connection.
#[inline(always)]
fn vip_tuple(daddr: Addr, dport_be: u16, proto: u8) -> CtKey {
    CtKey {
        saddr: Addr::default(),
        daddr,
        sport_be: 0,
        dport_be,
        proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn subject<'a>(
    service_id: u32,
    backend_id: u32,
    tuple: &'a CtKey,
    to: Option<&'a CtKey>,
) -> Subject<'a> {
    Subject {
        hook: proxy_common::monitor::HOOK_SOCK,
        ifindex: 0,
        service_id,
        backend_id,
        tuple,
        to,
    }
}

/// A cheap 64 -> 32 bit mix (Fibonacci hashing): socket cookies are sequential, so a
/// plain modulo would stripe consecutive sockets across backends in lockstep.
#[inline(always)]
fn hash64(x: u64) -> u32 {
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
}

// --- reverse: backend -> VIP ---------------------------------------------------------

#[inline(always)]
fn rev4(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: see fwd4.
    let (ip, port) = unsafe {
        (
            read_volatile(addr_of!((*sa).user_ip4)),
            read_volatile(addr_of!((*sa).user_port)),
        )
    };
    if let Some(v) = reverse(ctx, Addr::from_v4_be(ip), port as u16)
        && let Some(vip) = v.addr.v4_be()
    {
        // SAFETY: see fwd4.
        unsafe {
            write_volatile(addr_of_mut!((*sa).user_ip4), vip);
            write_volatile(addr_of_mut!((*sa).user_port), u32::from(v.port_be));
        }
    }
}

#[inline(always)]
fn rev6(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: see fwd4.
    let (ip, port) = unsafe { (read_ip6(sa), read_volatile(addr_of!((*sa).user_port))) };
    if let Some(v) = reverse(ctx, ip, port as u16) {
        // SAFETY: see fwd4.
        unsafe {
            write_ip6(sa, &v.addr);
            write_volatile(addr_of_mut!((*sa).user_port), u32::from(v.port_be));
        }
    }
}

/// The VIP a socket asked for when it reached `addr:port_be`, if that service still
/// exists with the same identity.
#[inline(always)]
fn reverse(ctx: &SockAddrContext, addr: Addr, port_be: u16) -> Option<RevSockValue> {
    let key = RevSockKey {
        // SAFETY: helper valid for sock_addr programs.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr,
        port_be,
        _pad: [0; 6],
    };
    // SAFETY: copied out at once.
    let v = unsafe { REV_SOCK.get(key) }.copied()?;
    let fe = lb::frontend(v.addr, v.port_be, v.proto, scope::INTERNAL)?;
    if fe.service_id != v.service_id {
        return None;
    }
    count(counter::REV_TRANSLATED);
    Some(v)
}

// --- context access -------------------------------------------------------------------

/// Reads `user_ip6` one 32-bit word at a time (wider context loads are rejected).
#[inline(always)]
unsafe fn read_ip6(sa: *mut bpf_sock_addr) -> Addr {
    // SAFETY: `sa` is the context the kernel passed the program (the caller's contract).
    unsafe {
        Addr([
            read_volatile(addr_of!((*sa).user_ip6[0])),
            read_volatile(addr_of!((*sa).user_ip6[1])),
            read_volatile(addr_of!((*sa).user_ip6[2])),
            read_volatile(addr_of!((*sa).user_ip6[3])),
        ])
    }
}

/// Writes `user_ip6` one 32-bit word at a time.
#[inline(always)]
unsafe fn write_ip6(sa: *mut bpf_sock_addr, a: &Addr) {
    // SAFETY: `sa` is the context the kernel passed the program (the caller's contract).
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), a.0[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), a.0[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), a.0[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), a.0[3]);
    }
}
