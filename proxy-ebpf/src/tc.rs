//! Per-packet load balancing (tc) for traffic the socket programs never see:
//! NodePorts, ExternalIPs and LoadBalancer IPs reached from outside the node, ClusterIP
//! traffic routed in from another host, and pods that are not in the attached cgroup.
//!
//! - `tc_ingress` runs on the external interfaces and on pod-facing ones. A packet of a
//!   tracked flow (either direction) is rewritten with the tuple its `CONNTRACK` entry
//!   holds and sent on with a FIB lookup and redirect. A packet that opens a flow to a
//!   frontend gets a backend (ClientIP affinity, source ranges, no-backend drop), is
//!   DNATed, and also SNATed to the node's address on that interface when the backend
//!   is reached back through the interface the packet came in on (a remote backend, or
//!   a pod reaching itself): only then would its replies bypass us.
//! - `tc_egress` runs on the external interfaces and rewrites replies of node-local
//!   backends that the stack routed out (when the pod-facing side has no program). It
//!   also balances services for node processes outside the attached cgroup.
//!
//! No window tracking: any segment of a tracked flow is translated, so a segment
//! netfilter would call INVALID never leaves with the backend's address.

// Map helpers take `impl Borrow`: passing references keeps the big values (conntrack
// entries live in per-CPU scratch) off the 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT,
        bpf_fib_lookup as FibParams, bpf_redir_neigh,
    },
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns,
        generated::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    },
    macros::classifier,
    programs::TcContext,
};
use proxy_common::{
    Addr, AffinityValue, CT_F_REPLY, CT_F_SNAT, ClientAffinityKey, CtEntry, CtKey,
    FRONTEND_F_AFFINITY, FRONTEND_F_SOURCE_RANGES, Frontend, IFACE_F_EXTERNAL, SourceRangeKey,
    TcConfig, counter, ct_state, proto, scope,
};

use crate::maps::{CLIENT_AFFINITY, CONNTRACK, IFACES, SOURCE_RANGES, count, scratch};
use crate::packet::{self, Packet};
use crate::{ct, lb};

// The bindings' types for these differ between targets.
#[allow(clippy::unnecessary_cast)]
const PASS: i32 = TC_ACT_OK as i32;
#[allow(clippy::unnecessary_cast)]
const DROP: i32 = TC_ACT_SHOT as i32;
#[allow(clippy::unnecessary_cast)]
const FIB_SUCCESS: i64 = BPF_FIB_LKUP_RET_SUCCESS as i64;
#[allow(clippy::unnecessary_cast)]
const FIB_NO_NEIGH: i64 = BPF_FIB_LKUP_RET_NO_NEIGH as i64;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Ports tried for SNAT: the client's own, then random ones from the configured range.
const SNAT_TRIES: u32 = 6;

#[classifier]
pub fn tc_ingress(mut ctx: TcContext) -> i32 {
    ingress(&mut ctx)
}

#[classifier]
pub fn tc_egress(mut ctx: TcContext) -> i32 {
    egress(&mut ctx)
}

#[inline(always)]
fn ingress(ctx: &mut TcContext) -> i32 {
    let Some(p) = packet::parse(ctx) else {
        return PASS;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let cfg = ct::config();
    // SAFETY: reading a field of the context the kernel gave us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };

    if let Some(e) = CONNTRACK.get_ptr_mut(p.key) {
        // SAFETY: copied out; the pointer stays valid for this program run.
        let entry = unsafe { *e };
        if !restarts(&cfg, &entry, &p, now) {
            ct::touch(e, p.key.proto, p.tcp_flags, ctx.len(), now);
            count(counter::CT_TRANSLATED);
            return translate_and_forward(ctx, &p, &nat_tuple(&entry, p.key.proto));
        }
    }
    if !p.may_open() {
        return PASS;
    }
    // SAFETY: copied out at once.
    let Some(iface) = (unsafe { IFACES.get(ifindex) }).copied() else {
        return PASS;
    };
    let fe = if iface.flags & IFACE_F_EXTERNAL != 0 {
        // From outside: the external frontends, then ClusterIPs routed to this node.
        match lb::frontend(p.key.daddr, p.key.dport_be, p.key.proto, scope::EXTERNAL) {
            Some(fe) => Some(fe),
            None => lb::frontend(p.key.daddr, p.key.dport_be, p.key.proto, scope::INTERNAL),
        }
    } else {
        lb::frontend(p.key.daddr, p.key.dport_be, p.key.proto, scope::INTERNAL)
    };
    match fe {
        Some(fe) => open(ctx, &p, &fe, &cfg, ifindex, now, true),
        None => PASS,
    }
}

#[inline(always)]
fn egress(ctx: &mut TcContext) -> i32 {
    let Some(p) = packet::parse(ctx) else {
        return PASS;
    };
    let Some(e) = CONNTRACK.get_ptr_mut(p.key) else {
        return egress_open(ctx, &p);
    };
    // SAFETY: copied out; the pointer stays valid for this program run.
    let entry = unsafe { *e };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    ct::touch(e, p.key.proto, p.tcp_flags, ctx.len(), now);
    count(counter::CT_TRANSLATED);
    let to = nat_tuple(&entry, p.key.proto);
    if entry.flags & CT_F_REPLY == 0 {
        // A node process's flow (see `egress_open`): the backend may be elsewhere.
        return translate_and_forward(ctx, &p, &to);
    }
    // A reply the stack already routed toward the client.
    if packet::rewrite(ctx, &p, &to).is_err() {
        return DROP;
    }
    PASS
}

/// A node process outside the attached cgroup reaching a service: its packet leaves
/// with the node's own address, so replies come back to us without SNAT.
#[inline(always)]
fn egress_open(ctx: &mut TcContext, p: &Packet) -> i32 {
    if !p.may_open() {
        return PASS;
    }
    // SAFETY: reading a field of the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: copied out at once.
    let Some(iface) = (unsafe { IFACES.get(ifindex) }).copied() else {
        return PASS;
    };
    let own = if p.key.saddr.is_v4() {
        iface.v4
    } else {
        iface.v6
    };
    if own != p.key.saddr {
        return PASS;
    }
    let Some(fe) = lb::frontend(p.key.daddr, p.key.dport_be, p.key.proto, scope::INTERNAL) else {
        return PASS;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    open(ctx, p, &fe, &ct::config(), ifindex, now, false)
}

/// Whether a packet hitting the forward leg `e` starts a new flow instead: a SYN or
/// datagram after the flow expired, a SYN reusing the ports of a closed connection, or
/// a datagram whose backend left the service (kube-proxy clears such UDP entries).
#[inline(always)]
fn restarts(cfg: &TcConfig, e: &CtEntry, p: &Packet, now: u64) -> bool {
    if e.flags & CT_F_REPLY != 0 || !p.may_open() {
        return false;
    }
    if ct::expired(cfg, e, p.key.proto, now) {
        return true;
    }
    if p.key.proto == proto::TCP {
        e.state == ct_state::CLOSING
    } else {
        !lb::is_member(e.service_id, e.backend_id)
    }
}

/// The tuple a leg's packets are rewritten to.
#[inline(always)]
fn nat_tuple(e: &CtEntry, l4proto: u8) -> CtKey {
    CtKey {
        saddr: e.nat_saddr,
        daddr: e.nat_daddr,
        sport_be: e.nat_sport_be,
        dport_be: e.nat_dport_be,
        proto: l4proto,
        _pad: [0; 3],
    }
}

/// Opens a flow from `p` to frontend `fe`: picks the backend, decides on SNAT (when
/// `may_snat`), writes both conntrack legs, then translates and forwards the packet.
#[inline(always)]
fn open(
    ctx: &mut TcContext,
    p: &Packet,
    fe: &Frontend,
    cfg: &TcConfig,
    ifindex: u32,
    now: u64,
    may_snat: bool,
) -> i32 {
    if fe.backend_count == 0 {
        count(counter::NAT_NO_BACKEND);
        return DROP;
    }
    if fe.flags & FRONTEND_F_SOURCE_RANGES != 0 && !source_allowed(fe.service_id, &p.key.saddr) {
        count(counter::NAT_SOURCE_DENIED);
        return DROP;
    }

    let affinity = fe.flags & FRONTEND_F_AFFINITY != 0;
    let aff_key = ClientAffinityKey {
        client: p.key.saddr,
        service_id: fe.service_id,
        _pad: 0,
    };
    let remembered = if affinity {
        // SAFETY: the value is only read.
        lb::remembered(unsafe { CLIENT_AFFINITY.get(&aff_key) }, fe, now)
    } else {
        None
    };
    let (backend_id, be) = match remembered {
        Some(c) => {
            count(counter::CLIENT_AFFINITY_HIT);
            c
        }
        // SAFETY: helper without preconditions.
        None => match lb::pick(fe, unsafe { bpf_get_prandom_u32() }) {
            Some(c) => c,
            None => return PASS,
        },
    };
    if affinity {
        let v = AffinityValue {
            last_used_ns: now,
            backend_id,
            _pad: 0,
        };
        // An LRU insert only fails on a kernel error; the flow still proceeds.
        let _ = CLIENT_AFFINITY.insert(&aff_key, &v, 0);
    }

    let mut fwd = CtKey {
        saddr: p.key.saddr,
        daddr: be.addr,
        sport_be: p.key.sport_be,
        dport_be: be.port_be,
        proto: p.key.proto,
        _pad: [0; 3],
    };
    let Some(s) = scratch() else {
        return PASS;
    };
    // Would the backend's replies come back through this interface? Then only a source
    // of ours brings them back to us (remote backend; a pod reaching itself).
    let rc = fib_lookup(ctx, &mut s.fib, &fwd, ifindex);
    let routed = rc == FIB_SUCCESS || rc == FIB_NO_NEIGH;
    let snat = may_snat && routed && s.fib.ifindex == ifindex;
    if snat {
        // SAFETY: copied out at once.
        let out = unsafe { IFACES.get(ifindex) }.copied().unwrap_or_default();
        let addr = if fwd.saddr.is_v4() { out.v4 } else { out.v6 };
        if addr == Addr::default() {
            count(counter::NAT_NO_SNAT_ADDR);
            return DROP;
        }
        fwd.saddr = addr;
        match snat_port(&fwd, &p.key, cfg, now) {
            Some(port) => fwd.sport_be = port,
            None => {
                count(counter::NAT_SNAT_EXHAUSTED);
                return DROP;
            }
        }
    }

    let state = if p.key.proto == proto::TCP {
        ct_state::OPENING
    } else {
        ct_state::ESTABLISHED
    };
    let snat_flag = if snat { CT_F_SNAT } else { 0 };
    let f = &mut s.fwd;
    f.nat_saddr = fwd.saddr;
    f.nat_daddr = fwd.daddr;
    f.nat_sport_be = fwd.sport_be;
    f.nat_dport_be = fwd.dport_be;
    f.flags = snat_flag;
    f.state = state;
    f._pad = [0; 2];
    f.backend_id = backend_id;
    f.service_id = fe.service_id;
    f.created_ns = now;
    f.last_seen_ns = now;
    f.packets = 1;
    f.bytes = u64::from(ctx.len());
    let r = &mut s.rev;
    r.nat_saddr = p.key.daddr;
    r.nat_daddr = p.key.saddr;
    r.nat_sport_be = p.key.dport_be;
    r.nat_dport_be = p.key.sport_be;
    r.flags = CT_F_REPLY | snat_flag;
    r.state = state;
    r._pad = [0; 2];
    r.backend_id = backend_id;
    r.service_id = fe.service_id;
    r.created_ns = now;
    r.last_seen_ns = now;
    r.packets = 0;
    r.bytes = 0;
    let rev_key = fwd.reversed();
    // The reply leg first: a reply can never find a forward leg without its partner.
    if CONNTRACK.insert(&rev_key, &s.rev, 0).is_err() {
        count(counter::CT_FULL);
        return DROP;
    }
    if CONNTRACK.insert(&p.key, &s.fwd, 0).is_err() {
        let _ = CONNTRACK.remove(&rev_key);
        count(counter::CT_FULL);
        return DROP;
    }
    count(counter::CT_NEW);
    translate_and_forward(ctx, p, &fwd)
}

/// Whether `loadBalancerSourceRanges` of service `service_id` admit `saddr`.
#[inline(always)]
fn source_allowed(service_id: u32, saddr: &Addr) -> bool {
    let key = aya_ebpf::maps::lpm_trie::Key::new(
        160,
        SourceRangeKey {
            service_id_be: service_id.to_be(),
            addr: *saddr,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

/// A source port for SNAT to `fwd.saddr`: the client's own if the reply tuple is free,
/// else a random one from the configured range.
#[inline(always)]
fn snat_port(fwd: &CtKey, client: &CtKey, cfg: &TcConfig, now: u64) -> Option<u16> {
    let span = u32::from(cfg.snat_port_max.saturating_sub(cfg.snat_port_min)) + 1;
    let mut i = 0;
    while i < SNAT_TRIES {
        let port = if i == 0 {
            fwd.sport_be
        } else {
            // SAFETY: helper without preconditions.
            let r = unsafe { bpf_get_prandom_u32() } % span;
            (cfg.snat_port_min + r as u16).to_be()
        };
        let reply = CtKey {
            saddr: fwd.daddr,
            daddr: fwd.saddr,
            sport_be: fwd.dport_be,
            dport_be: port,
            proto: fwd.proto,
            _pad: [0; 3],
        };
        // SAFETY: copied out at once.
        match unsafe { CONNTRACK.get(&reply) } {
            None => return Some(port),
            Some(e) => {
                // Free again, or the same client flow starting over.
                if ct::expired(cfg, e, fwd.proto, now)
                    || (e.nat_daddr == client.saddr && e.nat_dport_be == client.sport_be)
                {
                    return Some(port);
                }
            }
        }
        i += 1;
    }
    None
}

/// Rewrites the packet to `to` and sends it where the FIB says `to.daddr` is.
#[inline(always)]
fn translate_and_forward(ctx: &mut TcContext, p: &Packet, to: &CtKey) -> i32 {
    if packet::rewrite(ctx, p, to).is_err() {
        return DROP;
    }
    // SAFETY: reading a field of the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(s) = scratch() else {
        return PASS;
    };
    let fib = &mut s.fib;
    let rc = fib_lookup(ctx, fib, to, ifindex);
    if rc == FIB_SUCCESS {
        if packet::set_macs(ctx, &fib.dmac, &fib.smac).is_err() {
            return DROP;
        }
        // SAFETY: plain helper call.
        return unsafe { bpf_redirect(fib.ifindex, 0) } as i32;
    }
    if rc == FIB_NO_NEIGH {
        // The kernel resolves the neighbour (the FIB left the next hop in *_dst).
        // SAFETY: union fields written by the kernel for this family.
        let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
        if to.daddr.is_v4() {
            nh.nh_family = u32::from(AF_INET);
            nh.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
        } else {
            nh.nh_family = u32::from(AF_INET6);
            nh.__bindgen_anon_1.ipv6_nh = unsafe { fib.__bindgen_anon_4.ipv6_dst };
        }
        // SAFETY: `nh` on our stack, size given.
        return unsafe {
            bpf_redirect_neigh(
                fib.ifindex,
                &mut nh,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        } as i32;
    }
    // Local delivery, or no route: the stack knows best.
    count(counter::FIB_PASS);
    PASS
}

/// Looks up where a packet with tuple `t` arriving on `ifindex` goes; `f` holds the
/// answer (egress interface, MACs, next hop).
#[inline(always)]
fn fib_lookup(ctx: &TcContext, f: &mut FibParams, t: &CtKey, ifindex: u32) -> i64 {
    // SAFETY: an all-zero bpf_fib_lookup is valid input.
    *f = unsafe { core::mem::zeroed() };
    f.l4_protocol = t.proto;
    f.sport = t.sport_be;
    f.dport = t.dport_be;
    f.ifindex = ifindex;
    match (t.saddr.v4_be(), t.daddr.v4_be()) {
        (Some(s), Some(d)) => {
            f.family = AF_INET;
            f.__bindgen_anon_3.ipv4_src = s;
            f.__bindgen_anon_4.ipv4_dst = d;
        }
        _ => {
            f.family = AF_INET6;
            f.__bindgen_anon_3.ipv6_src = t.saddr.0;
            f.__bindgen_anon_4.ipv6_dst = t.daddr.0;
        }
    }
    // SAFETY: `f` is a valid bpf_fib_lookup, size given.
    unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            f,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    }
}
