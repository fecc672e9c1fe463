//! The flows of a snapshot of the connection table, and which of them the collector
//! deletes: pure functions of the entries, the clock and [`TcConfig`], tested without a
//! kernel.

use std::collections::HashMap as StdHashMap;
use std::fmt;
use std::net::SocketAddr;

use proxy_common::{Addr, CT_F_REPLY, CT_F_SNAT, CtEntry, CtKey, TcConfig};

use crate::model::Protocol;

/// A flow's connection state, the most advanced of its legs'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowState {
    /// Not assured: TCP handshake not proven, UDP not two-way.
    Opening,
    /// Assured, or proven but left in the unassured table because the assured one
    /// was full.
    Established,
    /// TCP FIN or RST seen.
    Closing,
}

impl FlowState {
    /// The state of a [`proxy_common::ct_state`] value; unknown values count as
    /// closing, as [`TcConfig::timeout_ns`] times them.
    pub fn from_raw(state: u8) -> Self {
        match state {
            proxy_common::ct_state::OPENING => FlowState::Opening,
            proxy_common::ct_state::ESTABLISHED => FlowState::Established,
            _ => FlowState::Closing,
        }
    }
}

impl fmt::Display for FlowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlowState::Opening => "opening",
            FlowState::Established => "established",
            FlowState::Closing => "closing",
        })
    }
}

/// Which of a flow's two entries exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Legs {
    /// Both legs, naming each other.
    Both,
    /// Only the forward (client -> backend) leg.
    ForwardOnly,
    /// Only the reply (backend -> client) leg.
    ReplyOnly,
}

/// One tracked flow.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Flow {
    /// `TCP` or `UDP` (the number for anything else).
    pub protocol: String,
    /// The client's address and port.
    pub client: SocketAddr,
    /// What the client connected to: a NodePort (node address), ExternalIP or
    /// LoadBalancer IP, or a ClusterIP.
    pub frontend: SocketAddr,
    /// The backend the flow goes to.
    pub backend: SocketAddr,
    /// The source the backend sees, when the flow is source-NATed to a node address
    /// (remote backend); otherwise the backend sees the client.
    pub snat: Option<SocketAddr>,
    /// Connection state.
    pub state: FlowState,
    /// The frontend's service id.
    pub service_id: u32,
    /// `namespace/name:port` of the service ("" if unknown).
    pub service: String,
    /// Seconds since the last packet in either direction.
    pub idle_s: u64,
    /// Seconds since the flow was created.
    pub age_s: u64,
    /// Packets client -> backend (forward leg).
    pub packets_in: u64,
    /// Packets backend -> client (reply leg).
    pub packets_out: u64,
    /// Bytes client -> backend.
    pub bytes_in: u64,
    /// Bytes backend -> client.
    pub bytes_out: u64,
    /// Idle past its timeout: the next collection deletes it (with both legs, only
    /// once both are past theirs).
    pub expired: bool,
    /// Which entries exist; anything but `both` is an orphan.
    pub legs: Legs,
    /// In the table of assured flows, which never evicts; else in the unassured
    /// table, where new flows may evict it.
    pub assured: bool,
}

/// Entries to delete together, with the values they were judged on: a flow's two
/// legs (forward first), or one orphan leg.
pub type GcGroup = Vec<(CtKey, CtEntry)>;

fn socket(addr: Addr, port_be: u16) -> SocketAddr {
    SocketAddr::new(addr.ip(), u16::from_be(port_be))
}

fn is_reply(e: &CtEntry) -> bool {
    e.flags & CT_F_REPLY != 0
}

fn protocol_name(proto: u8) -> String {
    Protocol::from_number(proto)
        .map(|p| p.to_string())
        .unwrap_or_else(|| proto.to_string())
}

/// The key of the other leg of the flow `(key, entry)` belongs to.
pub fn other_leg(key: &CtKey, entry: &CtEntry) -> CtKey {
    CtKey {
        saddr: entry.nat_saddr,
        daddr: entry.nat_daddr,
        sport_be: entry.nat_sport_be,
        dport_be: entry.nat_dport_be,
        proto: key.proto,
        _pad: [0; 3],
    }
    .reversed()
}

/// Whether one leg is idle past the timeout of its protocol and state. A zero timeout
/// means "not configured" (`TC_CONFIG` not written yet): such a leg never expires here,
/// so a collector running before the agent configured the data plane deletes nothing.
pub fn leg_expired(key: &CtKey, entry: &CtEntry, now_ns: u64, config: &TcConfig) -> bool {
    let timeout = config.timeout_ns(key.proto, entry.state);
    timeout != 0 && now_ns.saturating_sub(entry.last_seen_ns) > timeout
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    Pair { forward: usize, reply: usize },
    Orphan(usize),
}

/// Pairs legs that name each other; every other entry is an orphan.
fn group(entries: &[(CtKey, CtEntry)]) -> Vec<Group> {
    let index: StdHashMap<CtKey, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (*k, i))
        .collect();
    let mut paired = vec![false; entries.len()];
    let mut out = Vec::new();
    for (i, (k, e)) in entries.iter().enumerate() {
        if is_reply(e) {
            continue;
        }
        let partner = index.get(&other_leg(k, e)).copied().filter(|&j| {
            let (rk, re) = &entries[j];
            // Mutual: a reply leg left by an older flow on a reused tuple names
            // another forward leg and is not this flow's.
            is_reply(re) && !paired[j] && other_leg(rk, re) == *k
        });
        if let Some(j) = partner {
            paired[i] = true;
            paired[j] = true;
            out.push(Group::Pair {
                forward: i,
                reply: j,
            });
        }
    }
    out.extend(
        paired
            .iter()
            .enumerate()
            .filter(|(_, p)| !**p)
            .map(|(i, _)| Group::Orphan(i)),
    );
    out
}

fn group_expired(entries: &[(CtKey, CtEntry)], g: Group, now_ns: u64, config: &TcConfig) -> bool {
    let exp = |i: usize| leg_expired(&entries[i].0, &entries[i].1, now_ns, config);
    match g {
        // Both legs: a flow whose replies still flow is alive even if the client is
        // quiet (and the other way round).
        Group::Pair { forward, reply } => exp(forward) && exp(reply),
        Group::Orphan(i) => exp(i),
    }
}

fn flow_of(entries: &[(CtKey, CtEntry)], g: Group, now_ns: u64, config: &TcConfig) -> Flow {
    let secs = |ns: u64| ns / 1_000_000_000;
    let idle = |e: &CtEntry| now_ns.saturating_sub(e.last_seen_ns);
    let expired = group_expired(entries, g, now_ns, config);
    match g {
        Group::Pair { forward, reply } => {
            let (fk, fe) = &entries[forward];
            let (_, re) = &entries[reply];
            Flow {
                protocol: protocol_name(fk.proto),
                client: socket(fk.saddr, fk.sport_be),
                frontend: socket(fk.daddr, fk.dport_be),
                backend: socket(fe.nat_daddr, fe.nat_dport_be),
                snat: ((fe.flags | re.flags) & CT_F_SNAT != 0)
                    .then(|| socket(fe.nat_saddr, fe.nat_sport_be)),
                state: FlowState::from_raw(fe.state).max(FlowState::from_raw(re.state)),
                service_id: fe.service_id,
                service: String::new(),
                idle_s: secs(idle(fe).min(idle(re))),
                age_s: secs(now_ns.saturating_sub(fe.created_ns.min(re.created_ns))),
                packets_in: fe.packets,
                packets_out: re.packets,
                bytes_in: fe.bytes,
                bytes_out: re.bytes,
                expired,
                legs: Legs::Both,
                assured: false,
            }
        }
        Group::Orphan(i) => {
            let (k, e) = &entries[i];
            let mut flow = Flow {
                protocol: protocol_name(k.proto),
                client: socket(k.saddr, k.sport_be),
                frontend: socket(k.daddr, k.dport_be),
                backend: socket(e.nat_daddr, e.nat_dport_be),
                snat: (e.flags & CT_F_SNAT != 0).then(|| socket(e.nat_saddr, e.nat_sport_be)),
                state: FlowState::from_raw(e.state),
                service_id: e.service_id,
                service: String::new(),
                idle_s: secs(idle(e)),
                age_s: secs(now_ns.saturating_sub(e.created_ns)),
                packets_in: e.packets,
                packets_out: 0,
                bytes_in: e.bytes,
                bytes_out: 0,
                expired,
                legs: Legs::ForwardOnly,
                assured: false,
            };
            if is_reply(e) {
                // Keyed backend -> client-or-SNAT; rewritten to frontend -> client.
                flow.client = socket(e.nat_daddr, e.nat_dport_be);
                flow.frontend = socket(e.nat_saddr, e.nat_sport_be);
                flow.backend = socket(k.saddr, k.sport_be);
                flow.snat = (e.flags & CT_F_SNAT != 0).then(|| socket(k.daddr, k.dport_be));
                (flow.packets_in, flow.packets_out) = (0, e.packets);
                (flow.bytes_in, flow.bytes_out) = (0, e.bytes);
                flow.legs = Legs::ReplyOnly;
            }
            flow
        }
    }
}

/// The flows of a snapshot of the table, sorted by frontend, client and backend
/// (`service` is left empty: the reader fills it in).
pub fn flows(entries: &[(CtKey, CtEntry)], now_ns: u64, config: &TcConfig) -> Vec<Flow> {
    let mut out: Vec<Flow> = group(entries)
        .into_iter()
        .map(|g| flow_of(entries, g, now_ns, config))
        .collect();
    out.sort_by_key(|f| (f.frontend, f.client, f.backend));
    out
}

/// What the collector deletes from a snapshot: each flow whose two legs are both idle
/// past their state's timeout, and each orphan leg idle past its own.
pub fn plan_gc(entries: &[(CtKey, CtEntry)], now_ns: u64, config: &TcConfig) -> Vec<GcGroup> {
    group(entries)
        .into_iter()
        .filter(|g| group_expired(entries, *g, now_ns, config))
        .map(|g| match g {
            Group::Pair { forward, reply } => vec![entries[forward], entries[reply]],
            Group::Orphan(i) => vec![entries[i]],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use proxy_common::{ct_state, proto};

    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn the_legs_name_each_other() {
        let [(fk, fe), (rk, re)] =
            Legs2::tcp("203.0.113.7:40001", "192.0.2.10:30080", "10.244.1.5:8080").entries();
        assert_eq!(other_leg(&fk, &fe), rk);
        assert_eq!(other_leg(&rk, &re), fk);
    }

    #[test]
    fn a_snat_flow_is_one_row_with_both_directions() {
        let mut l = Legs2::tcp("203.0.113.7:40001", "192.0.2.10:30080", "10.244.1.5:8080");
        l.snat = Some(sa("192.0.2.10:61000"));
        l.fwd_seen_s = 1000;
        l.rep_seen_s = 1004;
        let e = l.entries();
        // The reply leg first: pairing does not depend on the order the map walks in.
        let flows = flows(&[e[1], e[0]], 1010 * S, &config());
        assert_eq!(
            flows,
            vec![Flow {
                protocol: "TCP".into(),
                client: l.client,
                frontend: l.frontend,
                backend: l.backend,
                snat: Some(sa("192.0.2.10:61000")),
                state: FlowState::Established,
                service_id: 7,
                service: String::new(),
                idle_s: 6,
                age_s: 910,
                packets_in: 12,
                packets_out: 10,
                bytes_in: 1200,
                bytes_out: 9000,
                expired: false,
                legs: Legs::Both,
                assured: false,
            }]
        );
    }

    #[test]
    fn a_flow_to_a_local_backend_keeps_the_client_address_and_ipv6_works() {
        let l = Legs2 {
            proto: proto::UDP,
            ..Legs2::tcp(
                "[2001:db8::7]:5353",
                "[2001:db8::10]:53",
                "[fd00:244::5]:5353",
            )
        };
        let f = &flows(&l.entries(), 1001 * S, &config())[0];
        assert_eq!(
            (f.protocol.as_str(), f.snat, f.legs),
            ("UDP", None, Legs::Both)
        );
        assert_eq!(
            (f.client, f.frontend, f.backend),
            (l.client, l.frontend, l.backend)
        );
    }

    #[test]
    fn the_state_shown_is_the_most_advanced_leg() {
        let l = Legs2::tcp("203.0.113.7:40001", "192.0.2.10:30080", "10.244.1.5:8080");
        let mut e = l.entries();
        e[1].1.state = ct_state::CLOSING;
        assert_eq!(flows(&e, 1000 * S, &config())[0].state, FlowState::Closing);
        e[0].1.state = ct_state::OPENING;
        e[1].1.state = ct_state::OPENING;
        assert_eq!(flows(&e, 1000 * S, &config())[0].state, FlowState::Opening);
    }

    #[test]
    fn unpaired_legs_are_reported_from_either_side() {
        let mut l = Legs2::tcp("203.0.113.7:40001", "192.0.2.10:30080", "10.244.1.5:8080");
        l.snat = Some(sa("192.0.2.10:61000"));
        let [fwd, rep] = l.entries();
        for (only, legs, pkts) in [
            (fwd, Legs::ForwardOnly, (12, 0)),
            (rep, Legs::ReplyOnly, (0, 10)),
        ] {
            let f = &flows(&[only], 1000 * S, &config())[0];
            assert_eq!(f.legs, legs);
            assert_eq!(
                (f.client, f.frontend, f.backend),
                (l.client, l.frontend, l.backend),
                "{legs:?}"
            );
            assert_eq!(f.snat, l.snat, "{legs:?}");
            assert_eq!((f.packets_in, f.packets_out), pkts);
        }
    }

    #[test]
    fn a_reply_leg_that_names_another_flow_is_not_paired() {
        // Flow A's reply tuple was taken over by flow B (a reused SNAT port); A's
        // forward leg points at it, but it points back at B's forward leg.
        let a = Legs2 {
            snat: Some(sa("192.0.2.10:61000")),
            ..Legs2::tcp("203.0.113.7:40001", "192.0.2.10:30080", "10.244.1.5:8080")
        };
        let b = Legs2 {
            snat: Some(sa("192.0.2.10:61000")),
            ..Legs2::tcp("198.51.100.9:5000", "192.0.2.10:30080", "10.244.1.5:8080")
        };
        let [a_fwd, _] = a.entries();
        let [_, b_rep] = b.entries();
        assert_eq!(other_leg(&a_fwd.0, &a_fwd.1), b_rep.0);
        assert_ne!(other_leg(&b_rep.0, &b_rep.1), a_fwd.0);
        let mut legs: Vec<Legs> = flows(&[a_fwd, b_rep], 1000 * S, &config())
            .iter()
            .map(|f| f.legs)
            .collect();
        legs.sort_by_key(|l| format!("{l:?}"));
        assert_eq!(legs, vec![Legs::ForwardOnly, Legs::ReplyOnly]);
    }

    #[test]
    fn a_flow_is_collected_only_when_both_legs_are_idle_past_their_timeouts() {
        let cfg = config();
        let mut l = Legs2::tcp("203.0.113.7:40001", "192.0.2.10:30080", "10.244.1.5:8080");
        l.fwd_seen_s = 0;
        l.rep_seen_s = 0;
        // Established: 3600 s.
        assert!(
            plan_gc(&l.entries(), 3600 * S, &cfg).is_empty(),
            "at the timeout"
        );
        let plan = plan_gc(&l.entries(), 3601 * S, &cfg);
        assert_eq!(plan.len(), 1);
        let keys: Vec<CtKey> = plan[0].iter().map(|(k, _)| *k).collect();
        let e = l.entries();
        assert_eq!(keys, vec![e[0].0, e[1].0], "forward leg first");
        assert!(flows(&e, 3601 * S, &cfg)[0].expired);

        // The backend still talks (server push): the flow lives.
        l.rep_seen_s = 3000;
        assert!(plan_gc(&l.entries(), 3601 * S, &cfg).is_empty());
        assert!(!flows(&l.entries(), 3601 * S, &cfg)[0].expired);
        // And the other way round.
        (l.fwd_seen_s, l.rep_seen_s) = (3000, 0);
        assert!(plan_gc(&l.entries(), 3601 * S, &cfg).is_empty());
    }

    #[test]
    fn each_state_and_protocol_has_its_own_timeout() {
        let cfg = config();
        for (proto, state, timeout_s) in [
            (proto::TCP, ct_state::OPENING, 60),
            (proto::TCP, ct_state::ESTABLISHED, 3600),
            (proto::TCP, ct_state::CLOSING, 10),
            // UDP: unassured (no reply, or none after it), then assured.
            (proto::UDP, ct_state::OPENING, 30),
            (proto::UDP, ct_state::ESTABLISHED, 120),
        ] {
            let l = Legs2 {
                proto,
                state,
                fwd_seen_s: 0,
                rep_seen_s: 0,
                ..Legs2::tcp("203.0.113.7:40001", "192.0.2.10:30080", "10.244.1.5:8080")
            };
            assert!(
                plan_gc(&l.entries(), timeout_s * S, &cfg).is_empty(),
                "{proto}/{state}"
            );
            assert_eq!(
                plan_gc(&l.entries(), (timeout_s + 1) * S, &cfg).len(),
                1,
                "{proto}/{state}"
            );
        }
    }

    #[test]
    fn the_legs_of_a_closing_flow_are_timed_by_their_own_state() {
        // FIN seen on the forward leg only: it is timed as closing (10 s), the reply
        // leg as established (3600 s); the flow goes when both are past.
        let cfg = config();
        let l = Legs2 {
            fwd_seen_s: 0,
            rep_seen_s: 0,
            ..Legs2::tcp("203.0.113.7:40001", "192.0.2.10:30080", "10.244.1.5:8080")
        };
        let mut e = l.entries();
        e[0].1.state = ct_state::CLOSING;
        assert!(plan_gc(&e, 100 * S, &cfg).is_empty());
        assert_eq!(plan_gc(&e, 3601 * S, &cfg).len(), 1);
    }

    #[test]
    fn an_orphan_leg_is_collected_once_expired() {
        let cfg = config();
        let l = Legs2 {
            fwd_seen_s: 0,
            rep_seen_s: 0,
            ..Legs2::tcp("203.0.113.7:40001", "192.0.2.10:30080", "10.244.1.5:8080")
        };
        let [_, rep] = l.entries();
        assert!(plan_gc(&[rep], 3600 * S, &cfg).is_empty());
        assert_eq!(plan_gc(&[rep], 3601 * S, &cfg), vec![vec![rep]]);
    }

    #[test]
    fn an_unconfigured_data_plane_has_nothing_collected() {
        let l = Legs2 {
            fwd_seen_s: 0,
            rep_seen_s: 0,
            ..Legs2::tcp("203.0.113.7:40001", "192.0.2.10:30080", "10.244.1.5:8080")
        };
        let e = l.entries();
        assert!(plan_gc(&e, u64::MAX, &TcConfig::default()).is_empty());
        assert!(!flows(&e, u64::MAX, &TcConfig::default())[0].expired);
    }

    #[test]
    fn a_clock_behind_the_entries_counts_as_idle_zero() {
        let l = Legs2::tcp("203.0.113.7:40001", "192.0.2.10:30080", "10.244.1.5:8080");
        let f = &flows(&l.entries(), 0, &config())[0];
        assert_eq!((f.idle_s, f.age_s, f.expired), (0, 0, false));
    }
}
