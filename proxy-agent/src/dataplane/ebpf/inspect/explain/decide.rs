//! The decision, as a pure function of the map contents that matter for one flow
//! ([`FlowMaps`]): the same lookups, in the same order, with the same rules as
//! `proxy-ebpf` (`sock.rs` `select` for the socket layer; `tc.rs` `ingress`,
//! `restarts` and `open`, with `lb.rs` and `ct.rs`, for traffic from outside).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use proxy_common as pc;
use proxy_common::{
    Addr, AffinityKey, AffinityValue, Backend, ClientAffinityKey, CtEntry, CtKey, SlotKey,
    TcConfig, ct_state, proto, scope,
};

use super::view::{
    Candidate, Check, Choice, Explanation, FlowPath, MatchedFrontend, Outcome, Verdict,
};
use crate::dataplane::ebpf::conntrack::FlowState;
use crate::dataplane::ebpf::keys::{backend_addr, kind_of, model_frontend};
use crate::model::Protocol;

/// The flow asked about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// The client's address.
    pub source: IpAddr,
    /// The client's port, when asked about one tuple (external: a tracked flow).
    pub source_port: Option<u16>,
    /// The destination.
    pub destination: SocketAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// Which programs see it.
    pub path: FlowPath,
    /// The client pod's network-namespace cookie (the socket layer's affinity key),
    /// or why it is not known.
    pub netns: ClientNetns,
}

/// The client pod's identity at the socket layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientNetns {
    /// Its cookie, and where it was found (a path).
    Known {
        /// `SO_NETNS_COOKIE`, as `bpf_get_netns_cookie()` returns it.
        cookie: u64,
        /// The namespace's path.
        from: String,
    },
    /// Not looked for (not needed), or not found: why.
    Unknown(String),
}

/// The map contents one flow's decision reads, copied out of the kernel (or written
/// by a test). Maps the decision may not need are only as complete as the reader
/// made them: every frontend and node address, and for the frontends at the
/// destination their slots, backends, memberships, source ranges and the client's
/// affinities; the connection-table legs of the flow's tuple.
#[derive(Clone, Debug, Default)]
pub struct FlowMaps {
    /// `FRONTENDS`.
    pub frontends: HashMap<pc::FrontendKey, pc::FrontendValue>,
    /// `SVC_NAMES`, as text.
    pub names: HashMap<u32, String>,
    /// `NODE_ADDRS`.
    pub node_addrs: HashSet<Addr>,
    /// `SLOTS`.
    pub slots: HashMap<SlotKey, u32>,
    /// `BACKENDS`.
    pub backends: HashMap<u32, Backend>,
    /// `AFFINITY_MATCH`: `(service id, backend id)`.
    pub members: HashSet<(u32, u32)>,
    /// `SOURCE_RANGES`, by service id.
    pub source_ranges: HashMap<u32, Vec<IpNetwork>>,
    /// `AFFINITY` (socket layer).
    pub affinity: HashMap<AffinityKey, AffinityValue>,
    /// `CLIENT_AFFINITY` (tc).
    pub client_affinity: HashMap<ClientAffinityKey, AffinityValue>,
    /// `CONNTRACK` (assured flows).
    pub conntrack: HashMap<CtKey, CtEntry>,
    /// `CT_OPEN` (unassured flows), their `ct` legs.
    pub ct_open: HashMap<CtKey, CtEntry>,
    /// `TC_CONFIG[0]` as the programs use it (their defaults until the agent writes it).
    pub config: TcConfig,
    /// `CLOCK_MONOTONIC` now, the programs' clock.
    pub now_ns: u64,
}

impl FlowMaps {
    /// `lb::frontend`: the exact key, else (for a node address) the unspecified one.
    fn frontend(
        &self,
        addr: Addr,
        port_be: u16,
        l4: u8,
        sc: u8,
    ) -> Option<(pc::FrontendKey, bool)> {
        let key = pc::FrontendKey {
            addr,
            port_be,
            proto: l4,
            scope: sc,
        };
        if self.frontends.contains_key(&key) {
            return Some((key, false));
        }
        if !self.node_addrs.contains(&addr) {
            return None;
        }
        let key = pc::FrontendKey {
            addr: unspecified_like(&addr),
            ..key
        };
        self.frontends.contains_key(&key).then_some((key, true))
    }

    /// `lb::is_member`.
    fn is_member(&self, service_id: u32, backend_id: u32) -> bool {
        self.members.contains(&(service_id, backend_id))
    }

    /// `lb::remembered`, with the reason when it does not pin.
    fn remembered(
        &self,
        v: Option<&AffinityValue>,
        fe: &pc::FrontendValue,
    ) -> Result<(SocketAddr, u64), String> {
        let Some(v) = v else {
            return Err("nothing remembered for this client".into());
        };
        let idle_ns = self.now_ns.wrapping_sub(v.last_used_ns);
        let idle_s = idle_ns / 1_000_000_000;
        if idle_ns > u64::from(fe.affinity_timeout_s) * 1_000_000_000 {
            return Err(format!(
                "the remembered backend (id {}) was last used {idle_s}s ago, past the timeout",
                v.backend_id
            ));
        }
        if !self.is_member(fe.service_id, v.backend_id) {
            return Err(format!(
                "the remembered backend (id {}) left the service",
                v.backend_id
            ));
        }
        match self.backends.get(&v.backend_id) {
            Some(b) => Ok((backend_addr(b), idle_s)),
            None => Err(format!(
                "the remembered backend (id {}) no longer exists",
                v.backend_id
            )),
        }
    }
}

/// `1 slot`, `3 slots`.
pub fn plural(n: u32, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `lb::unspecified_like`.
fn unspecified_like(addr: &Addr) -> Addr {
    if addr.is_v4() {
        Addr::from_v4_be(0)
    } else {
        Addr([0; 4])
    }
}

fn scope_name(sc: u8) -> &'static str {
    if sc == scope::EXTERNAL {
        "external"
    } else {
        "internal"
    }
}

/// The explanation being built.
struct Builder {
    x: Explanation,
}

impl Builder {
    fn check(&mut self, check: &'static str, outcome: Outcome, detail: impl Into<String>) {
        self.x.checks.push(Check {
            check,
            outcome,
            detail: detail.into(),
        });
    }

    fn end(mut self, verdict: Verdict, choice: Choice, reason: impl Into<String>) -> Explanation {
        self.x.verdict = verdict;
        self.x.choice = choice;
        self.x.reason = reason.into();
        self.x
    }
}

/// What the programs would do with the next connection of `q`, given `m`.
pub fn decide(q: &Query, m: &FlowMaps) -> Explanation {
    let l4 = q.protocol.number();
    let dst = Addr::from(q.destination.ip());
    let port_be = q.destination.port().to_be();
    let mut b = Builder {
        x: Explanation {
            source: match q.source_port {
                Some(p) => SocketAddr::new(q.source, p).to_string(),
                None => q.source.to_string(),
            },
            destination: q.destination,
            protocol: q.protocol.to_string(),
            path: q.path,
            frontend: None,
            checks: Vec::new(),
            candidates: Vec::new(),
            choice: Choice::None,
            verdict: Verdict::Passed,
            reason: String::new(),
            notes: Vec::new(),
        },
    };

    if q.path == FlowPath::External
        && let Some(choice) = tracked(&mut b, q, m, l4, dst, port_be)
    {
        let reason = match &choice {
            Choice::Conntrack { backend, .. } => {
                format!("translated to {backend}: the tracked flow of this tuple carries it")
            }
            _ => String::new(),
        };
        return b.end(Verdict::Translated, choice, reason);
    }
    if q.path == FlowPath::Pod {
        b.check(
            "conntrack",
            Outcome::Skip,
            "the socket programs keep no flow state: every connect() is decided anew",
        );
    }

    // The frontend: sock.rs looks up the internal scope; tc on an external interface
    // the external one, then ClusterIPs routed to this node.
    let scopes: &[u8] = match q.path {
        FlowPath::Pod => &[scope::INTERNAL],
        FlowPath::External => &[scope::EXTERNAL, scope::INTERNAL],
    };
    let Some((key, via_node)) = scopes
        .iter()
        .find_map(|sc| m.frontend(dst, port_be, l4, *sc))
    else {
        let wanted = scopes
            .iter()
            .map(|s| scope_name(*s))
            .collect::<Vec<_>>()
            .join(" or ");
        let node = if m.node_addrs.contains(&dst) {
            " (a node address: no NodePort on this port either)"
        } else {
            ""
        };
        b.check(
            "frontend",
            Outcome::Fail,
            format!(
                "no {wanted} frontend for {}/{}{node}",
                q.destination, q.protocol
            ),
        );
        near_misses(&mut b, m, dst, port_be, l4, scopes);
        return b.end(
            Verdict::Passed,
            Choice::None,
            format!(
                "not a service address here: the programs leave {}/{} untouched",
                q.destination, q.protocol
            ),
        );
    };
    let fe = m.frontends[&key];
    let shown = model_frontend(&key).map_or_else(|| format!("{key:?}"), |f| f.to_string());
    let service = m.names.get(&fe.service_id).cloned().unwrap_or_default();
    b.x.frontend = Some(MatchedFrontend {
        frontend: shown.clone(),
        kind: kind_of(fe.flags).to_string(),
        scope: scope_name(key.scope).to_owned(),
        service: service.clone(),
        service_id: fe.service_id,
        via_node_address: via_node,
        backend_count: fe.backend_count,
    });
    b.check(
        "frontend",
        Outcome::Pass,
        if via_node {
            format!(
                "{} is a node address: NodePort frontend {shown}",
                q.destination.ip()
            )
        } else {
            format!("{} {shown}", kind_of(fe.flags))
        },
    );

    let (refusal, refused) = match q.path {
        FlowPath::Pod => ("refused with ECONNREFUSED", Verdict::Refused),
        FlowPath::External => ("dropped", Verdict::Dropped),
    };
    if fe.backend_count == 0 {
        b.check(
            "backends",
            Outcome::Fail,
            "no usable endpoint: the agent programs the ready endpoints, else those \
             serving while terminating; this frontend has neither (none exist, none are \
             ready, or all are terminating and not serving)",
        );
        let why = if key.scope == scope::EXTERNAL
            && let Some((sibling, n)) = internal_sibling(m, &service, &key)
        {
            b.check(
                "traffic policy",
                Outcome::Fail,
                format!(
                    "externalTrafficPolicy: Local and no endpoint on this node: the \
                     service's internal frontend {sibling} has {}, none here",
                    plural(n, "backend")
                ),
            );
            "externalTrafficPolicy: Local and no endpoint of the service on this node"
        } else {
            "the service has no usable endpoint (none ready or serving while terminating)"
        };
        return b.end(refused, Choice::None, format!("{refusal}: {why}"));
    }
    b.check(
        "backends",
        Outcome::Pass,
        format!(
            "{}; the agent chose them by the traffic policy and endpoint conditions \
             (ready, else serving while terminating)",
            plural(fe.backend_count, "slot")
        ),
    );

    // Source ranges: tc checks them after the backend count; the socket layer not at all.
    if fe.flags & pc::FRONTEND_F_SOURCE_RANGES != 0 {
        let ranges = m
            .source_ranges
            .get(&fe.service_id)
            .cloned()
            .unwrap_or_default();
        let list = ranges
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        match q.path {
            FlowPath::Pod => b.check(
                "source ranges",
                Outcome::Skip,
                format!(
                    "loadBalancerSourceRanges ({list}) are enforced at tc, for clients \
                     outside the node; the socket layer does not check them"
                ),
            ),
            FlowPath::External => match ranges.iter().find(|n| n.contains(q.source)) {
                Some(n) => b.check(
                    "source ranges",
                    Outcome::Pass,
                    format!("{} is in {n}", q.source),
                ),
                None => {
                    b.check(
                        "source ranges",
                        Outcome::Fail,
                        format!("{} is in none of {list}", q.source),
                    );
                    return b.end(
                        Verdict::Dropped,
                        Choice::None,
                        format!(
                            "dropped: {} is outside the service's loadBalancerSourceRanges",
                            q.source
                        ),
                    );
                }
            },
        }
    } else {
        b.check(
            "source ranges",
            Outcome::Skip,
            "none: every source is allowed",
        );
    }

    let candidates = candidates(m, &fe);
    let missing = candidates.iter().filter(|c| c.is_none()).count();
    b.x.candidates = merge(&candidates);

    // Affinity, then a slot.
    let affinity = fe.flags & pc::FRONTEND_F_AFFINITY != 0;
    let mut unknown = None;
    if affinity {
        let remembered = match (q.path, &q.netns) {
            (FlowPath::Pod, ClientNetns::Known { cookie, from }) => {
                let k = AffinityKey {
                    netns_cookie: *cookie,
                    service_id: fe.service_id,
                    _pad: 0,
                };
                Some((
                    m.remembered(m.affinity.get(&k), &fe),
                    format!("pod netns {from} (cookie {cookie})"),
                ))
            }
            (FlowPath::Pod, ClientNetns::Unknown(why)) => {
                unknown = Some(why.clone());
                None
            }
            (FlowPath::External, _) => {
                let k = ClientAffinityKey {
                    client: Addr::from(q.source),
                    service_id: fe.service_id,
                    _pad: 0,
                };
                Some((
                    m.remembered(m.client_affinity.get(&k), &fe),
                    format!("client {}", q.source),
                ))
            }
        };
        match remembered {
            Some((Ok((backend, idle_s)), who)) => {
                b.check(
                    "affinity",
                    Outcome::Pin,
                    format!(
                        "ClientIP, timeout {}s: {who} was sent to {backend} {idle_s}s ago",
                        fe.affinity_timeout_s
                    ),
                );
                for c in &mut b.x.candidates {
                    c.chosen = c.backend == backend;
                }
                return b.end(
                    Verdict::Translated,
                    Choice::Affinity {
                        backend,
                        idle_s,
                        timeout_s: fe.affinity_timeout_s,
                    },
                    format!("translated to {backend}: ClientIP affinity pins it"),
                );
            }
            Some((Err(why), who)) => b.check(
                "affinity",
                Outcome::Pass,
                format!(
                    "ClientIP, timeout {}s: {why} ({who}); the next pick is remembered",
                    fe.affinity_timeout_s
                ),
            ),
            None => b.check(
                "affinity",
                Outcome::Unknown,
                format!(
                    "ClientIP, timeout {}s, remembered per client pod (network namespace): \
                     {}; pass --netns",
                    fe.affinity_timeout_s,
                    unknown
                        .as_deref()
                        .unwrap_or("the client's namespace is unknown")
                ),
            ),
        }
    } else {
        b.check("affinity", Outcome::Skip, "none");
    }

    let per = if q.path == FlowPath::Pod && l4 == proto::UDP {
        "socket cookie hash"
    } else {
        "connection"
    };
    if missing == candidates.len() {
        b.check(
            "slots",
            Outcome::Fail,
            "every slot is missing or names no backend (an update in flight, or drift)",
        );
        return b.end(
            Verdict::Passed,
            Choice::None,
            "left untranslated: no slot names a backend (counted as lb_backend_missing)",
        );
    }
    if missing > 0 {
        b.check(
            "slots",
            Outcome::Fail,
            format!(
                "{missing} of {} missing: a pick of one leaves that connection \
                 untranslated (an update in flight, or drift)",
                plural(candidates.len() as u32, "slot")
            ),
        );
    }
    let n = b.x.candidates.len();
    let choice = match unknown {
        Some(why) => Choice::Unknown { why },
        None => Choice::Random { per },
    };
    let how = match (&choice, per) {
        (Choice::Unknown { .. }, _) => {
            "a remembered affinity may pin it, else one is picked at random".to_owned()
        }
        (_, "connection") => "picked at random per connection".to_owned(),
        _ => "picked by the hash of the socket's cookie (one socket keeps its backend)".to_owned(),
    };
    b.end(
        Verdict::Translated,
        choice,
        format!(
            "translated to one of {}, {how}",
            plural(n as u32, "backend")
        ),
    )
}

/// The tc program's first step: a tracked flow of this tuple. `Some` when it decides
/// (the choice names its backend).
fn tracked(
    b: &mut Builder,
    q: &Query,
    m: &FlowMaps,
    l4: u8,
    dst: Addr,
    port_be: u16,
) -> Option<Choice> {
    let Some(sport) = q.source_port else {
        b.check(
            "conntrack",
            Outcome::Skip,
            "no source port given: a new connection from a fresh port opens a new flow \
             (give SRC as IP:PORT to check a tracked one)",
        );
        return None;
    };
    let key = CtKey {
        saddr: Addr::from(q.source),
        daddr: dst,
        sport_be: sport.to_be(),
        dport_be: port_be,
        proto: l4,
        _pad: [0; 3],
    };
    // CONNTRACK first; CT_OPEN only when it has nothing (tc.rs `ingress`).
    let (e, assured) = match m.conntrack.get(&key) {
        Some(e) => (e, true),
        None => match m.ct_open.get(&key) {
            Some(e) => (e, false),
            None => {
                b.check(
                    "conntrack",
                    Outcome::Pass,
                    "no tracked flow of this tuple: a new one opens",
                );
                return None;
            }
        },
    };
    let backend = SocketAddr::new(e.nat_daddr.ip(), u16::from_be(e.nat_dport_be));
    let state = FlowState::from_raw(e.state);
    // tc.rs `restarts`, for a packet that may open a flow (SYN, any datagram).
    let restart = if e.flags & pc::CT_F_REPLY != 0 {
        None
    } else if m.now_ns.wrapping_sub(e.last_seen_ns) > m.config.timeout_ns(l4, e.state) {
        Some("it has expired")
    } else if l4 == proto::TCP {
        (e.state == ct_state::CLOSING).then_some("it is closing")
    } else {
        (!m.is_member(e.service_id, e.backend_id)).then_some("its backend left the service")
    };
    let table = if assured { "assured" } else { "unassured" };
    if let Some(why) = restart {
        b.check(
            "conntrack",
            Outcome::Pass,
            format!(
                "a tracked flow of this tuple ({state}, {table}) to {backend}, but {why}: \
                 a new one replaces it"
            ),
        );
        return None;
    }
    b.check(
        "conntrack",
        Outcome::Pin,
        format!("a tracked flow of this tuple ({state}, {table}) goes to {backend}"),
    );
    // For the operator: the frontend the flow was opened on.
    if let Some((k, v)) = m
        .frontends
        .iter()
        .find(|(_, v)| v.service_id == e.service_id)
    {
        b.x.frontend = Some(MatchedFrontend {
            frontend: model_frontend(k).map_or_else(|| format!("{k:?}"), |f| f.to_string()),
            kind: kind_of(v.flags).to_string(),
            scope: scope_name(k.scope).to_owned(),
            service: m.names.get(&v.service_id).cloned().unwrap_or_default(),
            service_id: v.service_id,
            via_node_address: k.addr != dst,
            backend_count: v.backend_count,
        });
    }
    Some(Choice::Conntrack {
        backend,
        state: state.to_string(),
        assured,
    })
}

/// The backend of each slot `0..backend_count` (None: missing, or no such backend).
fn candidates(m: &FlowMaps, fe: &pc::FrontendValue) -> Vec<Option<SocketAddr>> {
    (0..fe.backend_count)
        .map(|slot| {
            let id = m.slots.get(&SlotKey {
                service_id: fe.service_id,
                slot,
            })?;
            m.backends.get(id).map(backend_addr)
        })
        .collect()
}

/// The distinct backends of the slots, in slot order, with their slot counts.
fn merge(slots: &[Option<SocketAddr>]) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for a in slots.iter().flatten() {
        match out.iter_mut().find(|c| c.backend == *a) {
            Some(c) => c.slots += 1,
            None => out.push(Candidate {
                backend: *a,
                slots: 1,
                chosen: false,
            }),
        }
    }
    out
}

/// An internal-scope frontend of the same service (by recorded name) with backends:
/// its form and count. Under `externalTrafficPolicy: Cluster` the external scope has
/// every endpoint the internal one has (which topology and `internalTrafficPolicy`
/// only narrow), so an empty external frontend beside it means `Local`.
fn internal_sibling(m: &FlowMaps, service: &str, key: &pc::FrontendKey) -> Option<(String, u32)> {
    if service.is_empty() {
        return None;
    }
    let mut found: Vec<(String, u32)> = m
        .frontends
        .iter()
        .filter(|(k, v)| {
            k.scope == scope::INTERNAL
                && k.proto == key.proto
                && k.addr.is_v4() == key.addr.is_v4()
                && v.backend_count > 0
                && m.names.get(&v.service_id).is_some_and(|n| n == service)
        })
        .map(|(k, v)| {
            (
                model_frontend(k).map_or_else(|| format!("{k:?}"), |f| f.to_string()),
                v.backend_count,
            )
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Notes naming the frontends at the destination address that the flow missed: on
/// other ports or protocols, or in a scope this path does not look up.
fn near_misses(b: &mut Builder, m: &FlowMaps, dst: Addr, port_be: u16, l4: u8, scopes: &[u8]) {
    let mut near: Vec<String> = m
        .frontends
        .keys()
        .filter(|k| {
            k.addr == dst || (m.node_addrs.contains(&dst) && k.addr == unspecified_like(&dst))
        })
        .filter(|k| !(k.port_be == port_be && k.proto == l4 && scopes.contains(&k.scope)))
        .filter_map(model_frontend)
        .map(|f| f.to_string())
        .collect();
    near.sort();
    if !near.is_empty() {
        b.x.notes
            .push(format!("frontends at this address: {}", near.join(", ")));
    }
}
