//! The tc data plane's connection table, seen from user space: `proxyctl conntrack`
//! lists its flows, and the agent's garbage collector deletes the flows that went idle.
//!
//! `CONNTRACK` holds two entries per flow (see [`proxy_common::CtEntry`]):
//! - the forward leg, keyed by the client's tuple (client -> frontend), whose `nat_*`
//!   tuple is the packet after translation (client or SNAT address -> backend);
//! - the reply leg ([`CT_F_REPLY`]), keyed by the backend's reply tuple, whose `nat_*`
//!   tuple is what replies are rewritten to (frontend -> client).
//!
//! Each leg names the other: `CtKey { its nat tuple }.reversed()`. Legs that name each
//! other form a flow; a leg whose partner is missing (or belongs to another flow) is an
//! orphan, shown and collected on its own.
//!
//! The table is a plain hash map, not an LRU (an evicted live flow would leak replies
//! with the backend's address), so nothing but this collector removes idle flows.
//! The decisions are pure functions of the entries, the clock and [`TcConfig`]
//! ([`plan_gc`]), tested without a kernel; [`gc`] applies them through [`CtTable`].

use std::borrow::BorrowMut;
use std::collections::HashMap as StdHashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use proxy_common::{Addr, CT_F_REPLY, CT_F_SNAT, CtEntry, CtKey, ServiceName, TcConfig, maps};
use tracing::{debug, info, warn};

use crate::model::Protocol;
use crate::observe::metrics::Metrics;

/// Reading or collecting the connection table failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// A pinned map could not be opened.
    #[error("opening {} (is the agent running with this --bpffs?)", path.display())]
    Open {
        /// The pin.
        path: PathBuf,
        /// The failure (`NotFound` when nothing is pinned there yet).
        #[source]
        source: MapError,
    },
    /// A map operation failed.
    #[error("{op} on map {name}")]
    Map {
        /// What was done.
        op: &'static str,
        /// The map's name.
        name: &'static str,
        /// The failure.
        #[source]
        source: MapError,
    },
}

impl ConntrackError {
    /// The map is not pinned (yet): the data plane has not created it.
    pub fn is_missing(&self) -> bool {
        matches!(self, ConntrackError::Open { source: MapError::SyscallError(s), .. }
            if s.io_error.kind() == std::io::ErrorKind::NotFound)
    }
}

/// A flow's connection state, the most advanced of its legs'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowState {
    /// TCP handshake not finished.
    Opening,
    /// TCP established; UDP always.
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
}

/// One pass of the collector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Entries read.
    pub scanned: usize,
    /// Entries deleted.
    pub deleted: usize,
    /// Entries left (scanned - deleted; flows created during the pass are not counted).
    pub live: usize,
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
/// (`service` is left empty: see [`read`]).
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

/// The connection table as the collector needs it: the pinned map, or a plain map in
/// tests.
pub trait CtTable {
    /// A snapshot of every entry.
    fn entries(&self) -> Result<Vec<(CtKey, CtEntry)>, MapError>;
    /// One entry, if present.
    fn get(&self, key: &CtKey) -> Result<Option<CtEntry>, MapError>;
    /// Deletes an entry; false if it was already gone.
    fn remove(&mut self, key: &CtKey) -> Result<bool, MapError>;
}

fn not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound)
        || matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

impl<T: BorrowMut<MapData>> CtTable for HashMap<T, CtKey, CtEntry> {
    fn entries(&self) -> Result<Vec<(CtKey, CtEntry)>, MapError> {
        // Entries deleted by the data plane while we walk are skipped by the iterator.
        self.iter().collect()
    }

    fn get(&self, key: &CtKey) -> Result<Option<CtEntry>, MapError> {
        match HashMap::get(self, key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn remove(&mut self, key: &CtKey) -> Result<bool, MapError> {
        match HashMap::remove(self, key) {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// One collection: snapshots the table, plans with [`plan_gc`], and deletes. Each
/// entry is re-read just before it is deleted and kept if it changed since the
/// snapshot (a packet arrived, or a new flow took the tuple), together with the rest
/// of its group; a pair left half-deleted that way is an orphan for the next pass.
pub fn gc(
    table: &mut impl CtTable,
    now_ns: u64,
    config: &TcConfig,
) -> Result<GcStats, ConntrackError> {
    let map_err = |op| {
        move |source| ConntrackError::Map {
            op,
            name: maps::CONNTRACK,
            source,
        }
    };
    let entries = table.entries().map_err(map_err("reading"))?;
    let mut deleted = 0;
    for group in plan_gc(&entries, now_ns, config) {
        for (key, seen) in group {
            if table.get(&key).map_err(map_err("lookup"))? != Some(seen) {
                break;
            }
            if table.remove(&key).map_err(map_err("delete"))? {
                deleted += 1;
            }
        }
    }
    Ok(GcStats {
        scanned: entries.len(),
        deleted,
        live: entries.len().saturating_sub(deleted),
    })
}

fn open(bpffs: &Path, name: &'static str) -> Result<Map, ConntrackError> {
    let path = bpffs.join("maps").join(name);
    let data = MapData::from_pin(&path).map_err(|source| ConntrackError::Open { path, source })?;
    Map::from_map_data(data).map_err(|source| ConntrackError::Map {
        op: "opening",
        name,
        source,
    })
}

fn open_table(bpffs: &Path) -> Result<HashMap<MapData, CtKey, CtEntry>, ConntrackError> {
    HashMap::try_from(open(bpffs, maps::CONNTRACK)?).map_err(|source| ConntrackError::Map {
        op: "opening",
        name: maps::CONNTRACK,
        source,
    })
}

/// The data plane's timeouts (`TC_CONFIG[0]`).
pub fn read_config(bpffs: &Path) -> Result<TcConfig, ConntrackError> {
    let err = |op| {
        move |source| ConntrackError::Map {
            op,
            name: maps::TC_CONFIG,
            source,
        }
    };
    let array: Array<MapData, TcConfig> =
        Array::try_from(open(bpffs, maps::TC_CONFIG)?).map_err(err("opening"))?;
    array.get(&0, 0).map_err(err("reading"))
}

/// The tracked flows, with service names, sorted by service, frontend and client.
/// Without a readable `TC_CONFIG`, nothing is shown as expired.
pub fn read(bpffs: &Path) -> Result<Vec<Flow>, ConntrackError> {
    let table = open_table(bpffs)?;
    let config = read_config(bpffs).unwrap_or_default();
    let entries = table.entries().map_err(|source| ConntrackError::Map {
        op: "reading",
        name: maps::CONNTRACK,
        source,
    })?;
    let mut out = flows(&entries, monotonic_ns(), &config);
    // Names are for operators only; a missing map leaves them empty.
    let names: Option<HashMap<MapData, u32, ServiceName>> = open(bpffs, maps::SVC_NAMES)
        .ok()
        .and_then(|m| HashMap::try_from(m).ok());
    if let Some(names) = names {
        let mut cache: StdHashMap<u32, String> = StdHashMap::new();
        for f in &mut out {
            f.service = cache
                .entry(f.service_id)
                .or_insert_with(|| {
                    names
                        .get(&f.service_id, 0)
                        .map(|n| n.as_str().to_owned())
                        .unwrap_or_default()
                })
                .clone();
        }
    }
    out.sort_by(|a, b| {
        (&a.service, a.frontend, a.client, a.backend)
            .cmp(&(&b.service, b.frontend, b.client, b.backend))
    });
    Ok(out)
}

/// One collection on the pinned maps; `None` while they are not pinned yet.
pub fn gc_pinned(bpffs: &Path) -> Result<Option<GcStats>, ConntrackError> {
    let config = match read_config(bpffs) {
        Err(e) if e.is_missing() => return Ok(None),
        r => r?,
    };
    let mut table = match open_table(bpffs) {
        Err(e) if e.is_missing() => return Ok(None),
        r => r?,
    };
    gc(&mut table, monotonic_ns(), &config).map(Some)
}

/// Runs [`gc_pinned`] every `interval` on a blocking thread, from now until the task is
/// aborted, and records each pass in `metrics`. Maps that are not pinned yet are
/// waited for; a failing pass is logged (once per distinct error) and counted, never
/// fatal. An `interval` of zero disables collection. Must be called within a Tokio
/// runtime.
pub fn spawn_gc(
    bpffs: PathBuf,
    interval: Duration,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if interval.is_zero() {
            info!("conntrack garbage collection disabled (interval 0)");
            return;
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The last problem reported, so that a persisting one is logged once.
        let mut problem: Option<(String, bool)> = None;
        loop {
            tick.tick().await;
            let path = bpffs.clone();
            let started = Instant::now();
            let outcome = tokio::task::spawn_blocking(move || gc_pinned(&path)).await;
            // (message, whether it is a failure rather than "not there yet")
            let now_problem = match outcome {
                Ok(Ok(Some(stats))) => {
                    let elapsed = started.elapsed();
                    metrics.conntrack_gc_runs.inc();
                    metrics.conntrack_gc_deleted.inc_by(stats.deleted as u64);
                    metrics
                        .conntrack_entries
                        .set(i64::try_from(stats.live).unwrap_or(i64::MAX));
                    metrics.conntrack_gc_duration.observe(elapsed.as_secs_f64());
                    debug!(
                        scanned = stats.scanned,
                        deleted = stats.deleted,
                        live = stats.live,
                        elapsed_ms = elapsed.as_millis(),
                        "conntrack garbage collected"
                    );
                    None
                }
                Ok(Ok(None)) => Some(("the connection table is not pinned yet".to_owned(), false)),
                Ok(Err(e)) => {
                    metrics.conntrack_gc_errors.inc();
                    Some((format!("{:#}", anyhow::Error::new(e)), true))
                }
                Err(e) => {
                    metrics.conntrack_gc_errors.inc();
                    Some((format!("the collection task failed: {e}"), true))
                }
            };
            match (&now_problem, &problem) {
                (Some(p), Some(last)) if p == last => {}
                (Some((p, true)), _) => warn!(
                    bpffs = %bpffs.display(),
                    "conntrack garbage collection failed: {p}; retrying every {interval:?}"
                ),
                (Some((p, false)), _) => info!(
                    bpffs = %bpffs.display(),
                    "conntrack garbage collection waits: {p}"
                ),
                (None, Some(_)) => info!("conntrack garbage collection running"),
                (None, None) => {}
            }
            problem = now_problem;
        }
    })
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use proxy_common::{ct_state, proto};

    use super::*;

    const S: u64 = 1_000_000_000;

    fn config() -> TcConfig {
        TcConfig {
            tcp_opening_s: 60,
            tcp_established_s: 3600,
            tcp_closing_s: 10,
            udp_s: 30,
            ..TcConfig::default()
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn key(src: SocketAddr, dst: SocketAddr, proto: u8) -> CtKey {
        CtKey {
            saddr: src.ip().into(),
            daddr: dst.ip().into(),
            sport_be: src.port().to_be(),
            dport_be: dst.port().to_be(),
            proto,
            _pad: [0; 3],
        }
    }

    fn entry(src: SocketAddr, dst: SocketAddr, flags: u8, state: u8, last_seen_s: u64) -> CtEntry {
        CtEntry {
            nat_saddr: src.ip().into(),
            nat_daddr: dst.ip().into(),
            nat_sport_be: src.port().to_be(),
            nat_dport_be: dst.port().to_be(),
            flags,
            state,
            service_id: 7,
            backend_id: 3,
            created_ns: 100 * S,
            last_seen_ns: last_seen_s * S,
            packets: 0,
            bytes: 0,
            ..CtEntry::default()
        }
    }

    /// The two entries the data plane writes for one flow: forward leg first.
    struct Legs2 {
        proto: u8,
        client: SocketAddr,
        frontend: SocketAddr,
        backend: SocketAddr,
        snat: Option<SocketAddr>,
        state: u8,
        fwd_seen_s: u64,
        rep_seen_s: u64,
    }

    impl Legs2 {
        fn tcp(client: &str, frontend: &str, backend: &str) -> Self {
            Legs2 {
                proto: proto::TCP,
                client: sa(client),
                frontend: sa(frontend),
                backend: sa(backend),
                snat: None,
                state: ct_state::ESTABLISHED,
                fwd_seen_s: 1000,
                rep_seen_s: 1000,
            }
        }

        fn entries(&self) -> [(CtKey, CtEntry); 2] {
            let snat_flag = if self.snat.is_some() { CT_F_SNAT } else { 0 };
            let seen_by_backend = self.snat.unwrap_or(self.client);
            let mut fwd = entry(
                seen_by_backend,
                self.backend,
                snat_flag,
                self.state,
                self.fwd_seen_s,
            );
            (fwd.packets, fwd.bytes) = (12, 1200);
            let mut rep = entry(
                self.frontend,
                self.client,
                CT_F_REPLY | snat_flag,
                self.state,
                self.rep_seen_s,
            );
            (rep.packets, rep.bytes) = (10, 9000);
            [
                (key(self.client, self.frontend, self.proto), fwd),
                (key(self.backend, seen_by_backend, self.proto), rep),
            ]
        }
    }

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
            (proto::UDP, ct_state::ESTABLISHED, 30),
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

    /// A table in memory; `touch` simulates a packet arriving on that key between the
    /// collector's snapshot and its delete.
    #[derive(Default)]
    struct Fake {
        map: StdHashMap<CtKey, CtEntry>,
        touch: Option<CtKey>,
        removes: usize,
    }

    impl CtTable for Fake {
        fn entries(&self) -> Result<Vec<(CtKey, CtEntry)>, MapError> {
            Ok(self.map.iter().map(|(k, v)| (*k, *v)).collect())
        }

        fn get(&self, key: &CtKey) -> Result<Option<CtEntry>, MapError> {
            let mut e = self.map.get(key).copied();
            if self.touch == Some(*key)
                && let Some(e) = e.as_mut()
            {
                e.last_seen_ns += 1;
                e.packets += 1;
            }
            Ok(e)
        }

        fn remove(&mut self, key: &CtKey) -> Result<bool, MapError> {
            self.removes += 1;
            Ok(self.map.remove(key).is_some())
        }
    }

    #[test]
    fn gc_deletes_expired_flows_and_orphans_and_keeps_live_ones() {
        let cfg = config();
        let old = |c: &str| Legs2 {
            fwd_seen_s: 0,
            rep_seen_s: 0,
            ..Legs2::tcp(c, "192.0.2.10:30080", "10.244.1.5:8080")
        };
        let mut t = Fake::default();
        t.map.extend(old("203.0.113.1:1000").entries());
        t.map.extend(
            Legs2::tcp("203.0.113.2:1000", "192.0.2.10:30080", "10.244.1.5:8080").entries(),
        );
        t.map.extend([old("203.0.113.3:1000").entries()[1]]);
        let stats = gc(&mut t, 3700 * S, &cfg).unwrap();
        assert_eq!(
            stats,
            GcStats {
                scanned: 5,
                deleted: 3,
                live: 2
            }
        );
        assert_eq!(t.map.len(), 2);
        let f = flows(&t.entries().unwrap(), 3700 * S, &cfg);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].client, sa("203.0.113.2:1000"));
        // Nothing left to do.
        assert_eq!(gc(&mut t, 3700 * S, &cfg).unwrap().deleted, 0);
    }

    #[test]
    fn gc_keeps_an_entry_that_changed_since_the_snapshot_and_the_rest_of_its_flow() {
        let cfg = config();
        let l = Legs2 {
            fwd_seen_s: 0,
            rep_seen_s: 0,
            ..Legs2::tcp("203.0.113.1:1000", "192.0.2.10:30080", "10.244.1.5:8080")
        };
        let [fwd, rep] = l.entries();
        // A packet on the forward leg: nothing of the flow is deleted.
        let mut t = Fake {
            touch: Some(fwd.0),
            ..Fake::default()
        };
        t.map.extend([fwd, rep]);
        assert_eq!(gc(&mut t, 3700 * S, &cfg).unwrap().deleted, 0);
        assert_eq!((t.map.len(), t.removes), (2, 0));
        // A packet on the reply leg after the forward leg went: the reply leg stays,
        // an orphan for the next pass to judge.
        let mut t = Fake {
            touch: Some(rep.0),
            ..Fake::default()
        };
        t.map.extend([fwd, rep]);
        let stats = gc(&mut t, 3700 * S, &cfg).unwrap();
        assert_eq!((stats.deleted, stats.live), (1, 1));
        assert!(t.map.contains_key(&rep.0));
    }

    #[tokio::test]
    async fn the_collector_waits_for_missing_pins_without_counting_errors() {
        let m = Metrics::new(|_| {});
        let task = spawn_gc(
            PathBuf::from("/nonexistent/proxy-agent"),
            Duration::from_millis(5),
            Arc::clone(&m),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished());
        task.abort();
        assert_eq!(
            (m.conntrack_gc_runs.get(), m.conntrack_gc_errors.get()),
            (0, 0)
        );
        // Zero disables it rather than panicking in tokio's interval.
        let task = spawn_gc(PathBuf::from("/nonexistent"), Duration::ZERO, m);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
