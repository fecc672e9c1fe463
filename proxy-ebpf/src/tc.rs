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
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "references keep big values off the 512-byte stack"
)]

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup as FibParams, bpf_redir_neigh, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::{
        bpf_get_prandom_u32,
        generated::{
            bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_sk_lookup_udp, bpf_sk_release,
            bpf_skc_lookup_tcp,
        },
    },
    macros::classifier,
    programs::TcContext,
};
use proxy_common::{
    Addr, AffinityValue, CT_F_REPLY, CT_F_SNAT, ClientAffinityKey, CtEntry, CtKey,
    FRONTEND_F_AFFINITY, FRONTEND_F_SOURCE_RANGES, FrontendValue, IFACE_F_EXTERNAL, SourceRangeKey,
    counter, ct_state, proto, scope,
};

use crate::maps::{
    CLIENT_AFFINITY, CONNTRACK, CT_OPEN, IFACES, SOURCE_RANGES, Scratch, count, scratch,
};
use crate::monitor::{self, Subject};
use crate::packet::{self, Packet};
use crate::too_big::{self, Answer};
use crate::{ct, fib, lb, stats};

// The bindings' types for these differ between targets.
#[allow(
    clippy::unnecessary_cast,
    reason = "the bindings' types differ between targets"
)]
const PASS: i32 = TC_ACT_OK as i32;
#[allow(
    clippy::unnecessary_cast,
    reason = "the bindings' types differ between targets"
)]
const DROP: i32 = TC_ACT_SHOT as i32;
#[allow(
    clippy::unnecessary_cast,
    reason = "the bindings' types differ between targets"
)]
const FIB_SUCCESS: i64 = BPF_FIB_LKUP_RET_SUCCESS as i64;
#[allow(
    clippy::unnecessary_cast,
    reason = "the bindings' types differ between targets"
)]
const FIB_NO_NEIGH: i64 = BPF_FIB_LKUP_RET_NO_NEIGH as i64;
#[allow(
    clippy::unnecessary_cast,
    reason = "the bindings' types differ between targets"
)]
const FIB_FRAG_NEEDED: i64 = BPF_FIB_LKUP_RET_FRAG_NEEDED as i64;
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

/// The floor of per-packet cost on this machine, for `cargo xtask bench pkt`: a program
/// that does nothing, attached beside ours and measured with the same run-time
/// statistics. Never attached by the agent. It hands the packet to the next program
/// (`TC_ACT_UNSPEC` is TCX_NEXT), so the ones it is measured beside still run.
#[classifier]
pub fn tc_floor(_ctx: TcContext) -> i32 {
    aya_ebpf::bindings::TC_ACT_UNSPEC
}

#[inline(always)]
fn ingress(ctx: &mut TcContext) -> i32 {
    let Some(s) = scratch() else {
        return PASS;
    };
    if !packet::parse(ctx, &mut s.pkt) {
        return icmp_error(ctx, s, true);
    }
    // SAFETY: reading a field of the context the kernel gave us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };

    // Assured flows first: the established path is one lookup. (The clock is read
    // only for a tracked flow: `open` reads its own.)
    if let Some(e) = CONNTRACK.get_ptr_mut(&s.pkt.key) {
        let now = s.pkt.clock();
        // SAFETY: the value stays valid for this program run; read in place (no copy:
        // stack space is scarce) before `touch` writes to it.
        let keep = unsafe { !restarts(&*e, &s.pkt, now) };
        if keep {
            // SAFETY: as above.
            unsafe { ct::set_nat_tuple(&mut s.to, &*e, s.pkt.key.proto) };
            ct::touch(e, s.pkt.key.proto, s.pkt.tcp_flags, ctx.len(), now, true);
            count(counter::CT_TRANSLATED);
            return translate_and_forward(ctx, s, true);
        }
        // SAFETY: as above.
        ct::forget_assured(s, unsafe { &*e });
    } else if let Some(o) = CT_OPEN.get_ptr_mut(&s.pkt.key) {
        let now = s.pkt.clock();
        // SAFETY: as above.
        let keep = unsafe { !restarts(&(*o).ct, &s.pkt, now) };
        if keep {
            ct::track_unassured(ctx, s, o, now);
            count(counter::CT_TRANSLATED);
            return translate_and_forward(ctx, s, true);
        }
        // SAFETY: as above.
        ct::forget_unassured(s, unsafe { &(*o).ct });
    }
    if !s.pkt.may_open() {
        return PASS;
    }
    // SAFETY: one field read.
    let Some(flags) = (unsafe { IFACES.get(ifindex) }).map(|i| i.flags) else {
        return PASS;
    };
    let k = &s.pkt.key;
    let fe = if flags & IFACE_F_EXTERNAL != 0 {
        // From outside: the external frontends, then ClusterIPs routed to this node.
        match lb::frontend(k.daddr, k.dport_be, k.proto, scope::EXTERNAL) {
            Some(fe) => Some(fe),
            None => lb::frontend(k.daddr, k.dport_be, k.proto, scope::INTERNAL),
        }
    } else {
        lb::frontend(k.daddr, k.dport_be, k.proto, scope::INTERNAL)
    };
    match fe {
        Some(fe) => open(ctx, s, &fe, ifindex, true),
        None => PASS,
    }
}

#[inline(always)]
fn egress(ctx: &mut TcContext) -> i32 {
    let Some(s) = scratch() else {
        return PASS;
    };
    if !packet::parse(ctx, &mut s.pkt) {
        return icmp_error(ctx, s, false);
    }
    let reply = if let Some(e) = CONNTRACK.get_ptr_mut(&s.pkt.key) {
        let now = s.pkt.clock();
        // SAFETY: the value stays valid for this program run; read before `touch`.
        unsafe { ct::set_nat_tuple(&mut s.to, &*e, s.pkt.key.proto) };
        ct::touch(e, s.pkt.key.proto, s.pkt.tcp_flags, ctx.len(), now, true);
        // SAFETY: as above.
        unsafe { (*e).flags & CT_F_REPLY != 0 }
    } else if let Some(o) = CT_OPEN.get_ptr_mut(&s.pkt.key) {
        let now = s.pkt.clock();
        ct::track_unassured(ctx, s, o, now);
        // SAFETY: as above (still valid if the flow just moved to CONNTRACK).
        unsafe { (*o).ct.flags & CT_F_REPLY != 0 }
    } else {
        return egress_open(ctx, s);
    };
    count(counter::CT_TRANSLATED);
    if !reply {
        // A node process's flow (see `egress_open`): the backend may be elsewhere.
        return translate_and_forward(ctx, s, false);
    }
    // A reply the stack already routed toward the client.
    if packet::rewrite(ctx, &s.pkt, &s.to).is_err() {
        return dropped(ctx, s, counter::REPLY_REWRITE_FAILED, false, 0);
    }
    PASS
}

/// Drops the packet in `s.pkt`: counts `reason` and tells `proxyctl monitor`.
#[inline(always)]
fn dropped(ctx: &TcContext, s: &Scratch, reason: u32, at_ingress: bool, service_id: u32) -> i32 {
    monitor::drop(
        reason,
        &Subject {
            hook: hook(at_ingress),
            // SAFETY: reading a field of the context the kernel gave us.
            ifindex: unsafe { (*ctx.skb.skb).ifindex },
            service_id,
            backend_id: 0,
            tuple: &s.pkt.key,
            to: None,
        },
    );
    DROP
}

#[inline(always)]
fn hook(at_ingress: bool) -> u8 {
    if at_ingress {
        proxy_common::monitor::HOOK_TC_INGRESS
    } else {
        proxy_common::monitor::HOOK_TC_EGRESS
    }
}

/// An ICMP error about a tracked flow (port unreachable from a backend, "fragmentation
/// needed" / "packet too big" from a router or from this node's own stack) is
/// translated like the flow's packets in its direction, so the sender's socket learns
/// of it: path MTU discovery and ECONNREFUSED keep working through the NAT.
// Not inlined (here, `open` and `translate_and_forward`): as separate BPF functions
// their stack frames do not add up inside the program's 512 bytes.
#[inline(never)]
fn icmp_error(ctx: &mut TcContext, s: &mut Scratch, at_ingress: bool) -> i32 {
    let e = &mut s.icmp;
    if !packet::parse_icmp_error(ctx, e) {
        return PASS;
    }
    // The error travels opposite to the quoted packet, as that packet's replies do.
    let Some(entry) = ct::lookup(&e.inner.reversed()) else {
        return PASS;
    };
    let t = &mut s.key;
    ct::set_nat_tuple(t, entry, e.inner.proto);
    // Sent by the quoted packet's destination itself: it speaks for that address.
    let src = if e.outer_src == e.inner.daddr {
        t.saddr
    } else {
        e.outer_src
    };
    let dst_changed = t.daddr != e.outer_dst;
    if packet::set_icmp_addr(ctx, e, packet::OUTER_SRC, &src) != 0
        || packet::set_icmp_addr(ctx, e, packet::OUTER_DST, &t.daddr) != 0
        || packet::set_icmp_addr(ctx, e, packet::INNER_SRC, &t.daddr) != 0
        || packet::set_icmp_addr(ctx, e, packet::INNER_DST, &t.saddr) != 0
        || packet::set_icmp_ports(ctx, e, t.dport_be, t.sport_be).is_err()
    {
        // Possibly half rewritten: never let it out.
        count(counter::ICMP_REWRITE_FAILED);
        return DROP;
    }
    count(counter::ICMP_TRANSLATED);
    if !at_ingress && !dst_changed {
        return PASS;
    }
    s.to = CtKey {
        saddr: src,
        daddr: s.key.daddr,
        sport_be: 0,
        dport_be: 0,
        proto: if src.is_v4() { 1 } else { 58 },
        _pad: [0; 3],
    };
    let len = packet::ip_len(ctx, src.is_v4());
    forward(ctx, s, len, fib::now())
}

/// A node process outside the attached cgroup reaching a service: its packet leaves
/// with the node's own address, so replies come back to us without SNAT.
#[inline(always)]
fn egress_open(ctx: &mut TcContext, s: &mut Scratch) -> i32 {
    let k = &s.pkt.key;
    if !s.pkt.may_open() {
        return PASS;
    }
    // SAFETY: reading a field of the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: read in place.
    let own = match unsafe { IFACES.get(ifindex) } {
        Some(i) if k.saddr.is_v4() => i.v4 == k.saddr,
        Some(i) => i.v6 == k.saddr,
        None => false,
    };
    if !own {
        return PASS;
    }
    let Some(fe) = lb::frontend(k.daddr, k.dport_be, k.proto, scope::INTERNAL) else {
        return PASS;
    };
    open(ctx, s, &fe, ifindex, false)
}

/// Whether a packet hitting the forward leg `e` starts a new flow instead: a SYN or
/// datagram after the flow expired, a SYN reusing the ports of a closed connection, or
/// a datagram whose backend left the service (kube-proxy clears such UDP entries).
/// (The settings are read only for a packet that may open a flow: most packets of an
/// established flow need not touch them.)
#[inline(always)]
fn restarts(e: &CtEntry, p: &Packet, now: u64) -> bool {
    if e.flags & CT_F_REPLY != 0 || !p.may_open() {
        return false;
    }
    if ct::expired(ct::config(), e, p.key.proto, now) {
        return true;
    }
    if p.key.proto == proto::TCP {
        e.state == ct_state::CLOSING
    } else {
        !lb::is_member(e.service_id, e.backend_id)
    }
}

/// Opens a flow from the packet in `s.pkt` to frontend `fe`: picks the backend,
/// decides on SNAT (when `may_snat`: at ingress), writes both legs to the unassured
/// table, then translates and forwards the packet.
#[inline(never)]
fn open(
    ctx: &mut TcContext,
    s: &mut Scratch,
    fe: &FrontendValue,
    ifindex: u32,
    may_snat: bool,
) -> i32 {
    let now = s.pkt.clock();
    let p = &s.pkt;
    if fe.backend_count == 0 {
        return dropped(ctx, s, counter::NAT_NO_BACKEND, may_snat, fe.service_id);
    }
    if fe.flags & FRONTEND_F_SOURCE_RANGES != 0 && !source_allowed(fe.service_id, &p.key.saddr) {
        return dropped(ctx, s, counter::NAT_SOURCE_DENIED, may_snat, fe.service_id);
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
        if CLIENT_AFFINITY.insert(&aff_key, &v, 0).is_err() {
            count(counter::CLIENT_AFFINITY_INSERT_FAILED);
        }
    }

    // The translated tuple, built in place.
    s.to = CtKey {
        saddr: p.key.saddr,
        daddr: be.addr,
        sport_be: p.key.sport_be,
        dport_be: be.port_be,
        proto: p.key.proto,
        _pad: [0; 3],
    };
    // Would the backend's replies come back through this interface? Then only a source
    // of ours brings them back to us (remote backend; a pod reaching itself).
    let rc = route(ctx, s, ifindex);
    let routed = rc == FIB_SUCCESS || rc == FIB_NO_NEIGH;
    let snat = may_snat && routed && s.fib.ifindex == ifindex;
    if snat {
        // SAFETY: one field copied out.
        let addr = match unsafe { IFACES.get(ifindex) } {
            Some(i) if s.to.saddr.is_v4() => i.v4,
            Some(i) => i.v6,
            None => Addr::default(),
        };
        if addr == Addr::default() {
            return dropped(ctx, s, counter::NAT_NO_SNAT_ADDR, may_snat, fe.service_id);
        }
        s.to.saddr = addr;
        match snat_port(ctx, &s.to, &s.pkt.key, now, &mut s.key, &mut s.tuple) {
            Some(port) => s.to.sport_be = port,
            None => {
                return dropped(ctx, s, counter::NAT_SNAT_EXHAUSTED, may_snat, fe.service_id);
            }
        }
    }

    // Looked up once: the flow's packets count through the id its entries carry.
    let stats_id = stats::id(fe.service_id, backend_id);
    let p = &s.pkt;
    let state = ct_state::OPENING;
    let snat_flag = if snat { CT_F_SNAT } else { 0 };
    s.fwd.ack_next = 0;
    s.fwd._pad = 0;
    s.rev.ack_next = 0;
    s.rev._pad = 0;
    let f = &mut s.fwd.ct;
    f.nat_saddr = s.to.saddr;
    f.nat_daddr = s.to.daddr;
    f.nat_sport_be = s.to.sport_be;
    f.nat_dport_be = s.to.dport_be;
    f.flags = snat_flag;
    f.state = state;
    f.set_stats_id(stats_id);
    f.backend_id = backend_id;
    f.service_id = fe.service_id;
    f.created_ns = now;
    f.last_seen_ns = now;
    f.packets = 1;
    f.bytes = u64::from(ctx.len());
    let r = &mut s.rev.ct;
    r.nat_saddr = p.key.daddr;
    r.nat_daddr = p.key.saddr;
    r.nat_sport_be = p.key.dport_be;
    r.nat_dport_be = p.key.sport_be;
    r.flags = CT_F_REPLY | snat_flag;
    r.state = state;
    r.set_stats_id(stats_id);
    r.backend_id = backend_id;
    r.service_id = fe.service_id;
    r.created_ns = now;
    r.last_seen_ns = now;
    r.packets = 0;
    r.bytes = 0;
    s.key = s.to.reversed();
    // Whatever held this reply tuple (an unassured flow, an expired one) goes whole:
    // left in place, its legs would shadow or be mistaken for the new flow's.
    ct::evict_reply(&s.key);
    // The reply leg first: a reply can never find a forward leg without its partner.
    // An LRU makes room by evicting; an error here is the kernel's, not a full table.
    if let Err(e) = CT_OPEN.insert(&s.key, &s.rev, 0) {
        return dropped(ctx, s, ct::insert_error(e), may_snat, fe.service_id);
    }
    if let Err(e) = CT_OPEN.insert(&s.pkt.key, &s.fwd, 0) {
        if CT_OPEN.remove(&s.key).is_err() {
            count(counter::CT_ROLLBACK_FAILED);
        }
        return dropped(ctx, s, ct::insert_error(e), may_snat, fe.service_id);
    }
    count(counter::CT_NEW);
    stats::flow_opened(&s.fwd.ct, ctx.len());
    // Compiled in, verified away unless the agent runs with --bpf-log-level debug or
    // trace (AYA_LOG_LEVEL is a load-time constant: the verifier prunes the branch).
    aya_log_ebpf::debug!(
        ctx,
        "tc: new flow to service {} backend {} (snat {})",
        fe.service_id,
        backend_id,
        u8::from(snat)
    );
    monitor::trace(
        counter::CT_NEW,
        &Subject {
            hook: hook(may_snat),
            ifindex,
            service_id: fe.service_id,
            backend_id,
            tuple: &s.pkt.key,
            to: Some(&s.to),
        },
    );
    translate_and_forward(ctx, s, may_snat)
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
/// else a random one from the configured range. Free means: no assured flow that is
/// still live holds it, and no socket of this node would receive the backend's replies
/// on it. An unassured flow yields its port (`open` evicts it, as the LRU would): under
/// a flood, spoofed flows would otherwise hold every port toward a remote backend.
#[inline(always)]
fn snat_port(
    ctx: &TcContext,
    fwd: &CtKey,
    client: &CtKey,
    now: u64,
    reply: &mut CtKey,
    tuple: &mut bpf_sock_tuple,
) -> Option<u16> {
    let cfg = ct::config();
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
        *reply = fwd.reversed();
        reply.dport_be = port;
        // SAFETY: only read.
        let free = match unsafe { CONNTRACK.get(&*reply) } {
            None => true,
            // Expired, or this very flow starting over (same client and frontend).
            Some(e) => {
                ct::expired(cfg, e, fwd.proto, now)
                    || (e.nat_daddr == client.saddr
                        && e.nat_dport_be == client.sport_be
                        && e.nat_saddr == client.daddr
                        && e.nat_sport_be == client.dport_be)
            }
        };
        if free && !local_socket(ctx, reply, tuple) {
            return Some(port);
        }
        i += 1;
    }
    None
}

/// Whether a socket of this node would receive packets with tuple `t` (its own
/// connection to the backend from that port, or a listener on it).
#[inline(always)]
fn local_socket(ctx: &TcContext, t: &CtKey, tuple: &mut bpf_sock_tuple) -> bool {
    let size = match (t.saddr.v4_be(), t.daddr.v4_be()) {
        (Some(s), Some(d)) => {
            tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: s,
                daddr: d,
                sport: t.sport_be,
                dport: t.dport_be,
            };
            core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
        }
        _ => {
            tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                saddr: t.saddr.0,
                daddr: t.daddr.0,
                sport: t.sport_be,
                dport: t.dport_be,
            };
            core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
        }
    };
    // The socket lookup helpers look in the packet's own network namespace for -1.
    let netns = u64::MAX;
    // SAFETY: tuple on our stack with its size; a returned socket is released below.
    let sk = unsafe {
        if t.proto == proto::TCP {
            bpf_skc_lookup_tcp(ctx.skb.skb as *mut _, tuple, size as u32, netns, 0)
        } else {
            bpf_sk_lookup_udp(ctx.skb.skb as *mut _, tuple, size as u32, netns, 0)
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: releasing the reference the lookup took.
    unsafe { bpf_sk_release(sk as *mut _) };
    true
}

/// Rewrites the packet in `s.pkt` to `s.to` and sends it where the FIB says
/// `s.to.daddr` is. At ingress, a packet too big for that route is answered with the
/// ICMP error path MTU discovery needs instead (see [`too_big`]).
#[inline(never)]
fn translate_and_forward(ctx: &mut TcContext, s: &mut Scratch, at_ingress: bool) -> i32 {
    // The route is asked for before the rewrite, so that a too-big packet can still be
    // quoted as its sender sent it. (Its length does not change.)
    let len = packet::seg_len(ctx, &s.pkt);
    let now = s.pkt.clock();
    let hop = next_hop(ctx, s, len, now);
    if at_ingress && matches!(hop, Hop::TooBig) {
        // SAFETY: the union field the kernel writes with FRAG_NEEDED.
        let mtu = unsafe { s.fib.__bindgen_anon_1.mtu_result };
        match too_big::answer(ctx, &s.pkt.key, s.pkt.l4_off, u32::from(mtu)) {
            Answer::Sent(verdict) => {
                count(counter::ICMP_TOO_BIG_SENT);
                return verdict;
            }
            Answer::Failed => {
                return dropped(ctx, s, counter::ICMP_TOO_BIG_FAILED, at_ingress, 0);
            }
            Answer::Declined => {}
        }
    }
    if packet::rewrite(ctx, &s.pkt, &s.to).is_err() {
        // Possibly half rewritten: never let it out.
        return dropped(ctx, s, counter::REWRITE_FAILED, at_ingress, 0);
    }
    send(ctx, s, hop)
}

/// Sends the packet, already carrying tuple `s.to`, where the FIB says `s.to.daddr`
/// is. `tot_len` is what the route's MTU is checked against; `now` is `fib::now()`.
#[inline(always)]
fn forward(ctx: &mut TcContext, s: &mut Scratch, tot_len: u16, now: u64) -> i32 {
    let hop = next_hop(ctx, s, tot_len, now);
    send(ctx, s, hop)
}

/// Where a packet goes next.
enum Hop {
    /// As the FIB cache remembers.
    Cached(&'static fib::Route),
    /// As the FIB answered in `s.fib`.
    Found,
    /// To the next hop in `s.fib`, whose neighbour the kernel must resolve.
    Neigh,
    /// Nowhere as it is: too big for the route (whose MTU is in `s.fib`).
    TooBig,
    /// To the stack: local delivery, or no route.
    Stack,
}

/// The next hop of a packet of `tot_len` bytes (one segment of a GSO packet) with
/// tuple `s.to`, from the FIB cache (see `fib`) or else the FIB.
#[inline(always)]
fn next_hop(ctx: &TcContext, s: &mut Scratch, tot_len: u16, now: u64) -> Hop {
    // SAFETY: reading a field of the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if let Some(r) = fib::cached(&s.to, ifindex, tot_len, now) {
        return Hop::Cached(r);
    }
    let fib = &mut s.fib;
    let rc = fib_lookup(ctx, fib, &s.to, ifindex, tot_len);
    if rc == FIB_SUCCESS {
        fib::remember(
            &s.to,
            ifindex,
            tot_len,
            fib.ifindex,
            &fib.dmac,
            &fib.smac,
            now,
        );
        Hop::Found
    } else if rc == FIB_NO_NEIGH {
        Hop::Neigh
    } else if rc == FIB_FRAG_NEEDED {
        Hop::TooBig
    } else {
        Hop::Stack
    }
}

/// Sends the packet to `hop`.
#[inline(always)]
fn send(ctx: &mut TcContext, s: &mut Scratch, hop: Hop) -> i32 {
    let fib = &mut s.fib;
    match hop {
        Hop::Cached(r) => redirect(ctx, &r.macs, r.out_ifindex),
        Hop::Found => {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&fib.dmac);
            macs[6..].copy_from_slice(&fib.smac);
            redirect(ctx, &macs, fib.ifindex)
        }
        Hop::Neigh => {
            // The kernel resolves the neighbour (the FIB left the next hop in *_dst).
            // SAFETY: all-zero is a valid bpf_redir_neigh; its fields are set below.
            let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
            if s.to.daddr.is_v4() {
                nh.nh_family = u32::from(AF_INET);
                // SAFETY: the kernel wrote this union field for this family.
                nh.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
            } else {
                nh.nh_family = u32::from(AF_INET6);
                // SAFETY: the kernel wrote this union field for this family.
                nh.__bindgen_anon_1.ipv6_nh = unsafe { fib.__bindgen_anon_4.ipv6_dst };
            }
            // SAFETY: `nh` on our stack, size given.
            let verdict = unsafe {
                bpf_redirect_neigh(
                    fib.ifindex,
                    &mut nh,
                    core::mem::size_of::<bpf_redir_neigh>() as i32,
                    0,
                )
            };
            verdict as i32
        }
        // Local delivery, no route, or too big for the route (an ICMP error itself, a
        // packet leaving the node, or one `too_big` declined): the stack knows best.
        Hop::TooBig | Hop::Stack => {
            count(counter::FIB_PASS);
            PASS
        }
    }
}

/// Where the FIB sends `s.to` arriving on `ifindex` (`open` decides on SNAT by it):
/// its return code, the answer in `s.fib`. Asked with the packet's length, so that a
/// success is also the answer `forward` needs next: remembered in the FIB cache, the
/// flow's first packet asks the FIB once, not twice. (The MTU check only adds a failure:
/// a packet too big for the route is asked about again without it, as the decision
/// needs the route itself.)
#[inline(always)]
fn route(ctx: &TcContext, s: &mut Scratch, ifindex: u32) -> i64 {
    let len = packet::seg_len(ctx, &s.pkt);
    let rc = fib_lookup(ctx, &mut s.fib, &s.to, ifindex, len);
    if rc == FIB_SUCCESS {
        let now = s.pkt.clock();
        let f = &s.fib;
        fib::remember(&s.to, ifindex, len, f.ifindex, &f.dmac, &f.smac, now);
    } else if rc == FIB_FRAG_NEEDED {
        return fib_lookup(ctx, &mut s.fib, &s.to, ifindex, 0);
    }
    rc
}

/// Sets the packet's MACs (`macs`: destination then source) and redirects it out of
/// `ifindex`.
#[inline(always)]
fn redirect(ctx: &mut TcContext, macs: &[u8; 12], ifindex: u32) -> i32 {
    if packet::set_macs(ctx, macs).is_err() {
        count(counter::MAC_REWRITE_FAILED);
        return DROP;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Looks up where a packet with tuple `t` arriving on `ifindex` goes; `f` holds the
/// answer (egress interface, MACs, next hop). `tot_len` 0 skips the MTU check.
#[inline(always)]
fn fib_lookup(ctx: &TcContext, f: &mut FibParams, t: &CtKey, ifindex: u32, tot_len: u16) -> i64 {
    // All-zero is valid input. Zeroed a word at a time: `mem::zeroed()` compiles to a
    // call of the BPF `memset`, a loop over its 64 bytes.
    const WORDS: usize = core::mem::size_of::<FibParams>() / 4;
    const _: () = assert!(
        WORDS * 4 == core::mem::size_of::<FibParams>() && core::mem::align_of::<FibParams>() == 4
    );
    let words = core::ptr::from_mut(f).cast::<u32>();
    let mut i = 0;
    while i < WORDS {
        // SAFETY: within `*f`, which is 4-aligned; volatile keeps the stores from being
        // merged back into a memset.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    // With a length the FIB checks it against the route's MTU (for GSO packets the
    // kernel checks the segments instead).
    f.__bindgen_anon_1.tot_len = tot_len;
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
