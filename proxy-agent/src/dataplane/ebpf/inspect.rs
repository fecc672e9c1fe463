//! The read-only views `proxyctl` shows, straight from the pinned maps: what the kernel
//! actually holds, independent of the agent process. The services are read with the
//! same code the agent adopts them with ([`super::tables::read_back`]).

use std::collections::{BTreeMap, HashMap as StdHashMap};
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use aya::maps::{HashMap, MapData};
use proxy_common::{AffinityKey, AffinityMatchKey, AffinityValue, ServiceName, maps};

use super::conntrack::FlowState;
use super::conntrack::{self, Flow, gc::CtTable};
use super::keys::{affinity_of, backend_addr, kind_of, model_frontend};
use super::pins;
use super::stats::{self, Totals};
use super::tables::{Held, MapTables, read_back};
pub use crate::dataplane::listing::ServiceView;
use crate::dataplane::listing::{EBPF_SCHEDULER, EndpointState, EndpointView, TrafficStats};
use crate::model::Scope;

pub mod explain;

/// Whether a data plane pinned its maps under `bpffs` (what `proxyctl --mode auto`
/// looks for).
pub fn pinned(bpffs: &Path) -> bool {
    pins::map_path(bpffs, maps::FRONTENDS).exists()
}

/// Lists the programmed services, sorted by frontend, with the tc path's flows counted
/// per backend.
pub fn list(bpffs: &Path) -> anyhow::Result<Vec<ServiceView>> {
    let tables = MapTables::from_pins(bpffs)?;
    let held = read_back(&tables).context("reading the service maps")?;
    // The table is read in batches (a few syscalls for thousands of flows), so the
    // counts cost little; a data plane without one shows no counts rather than failing.
    let flows = conntrack(bpffs).map(|f| flow_counts(&f)).ok();
    // Likewise the statistics: a data plane that predates them shows none.
    let stats = stats::read(bpffs).context("reading the statistics")?;
    Ok(views(&held, flows.as_ref(), stats.as_ref()))
}

/// Statistics per membership, as [`stats::read`] gives them.
pub type MemberStats = StdHashMap<AffinityMatchKey, Totals>;

/// A membership's totals as the listing shows them: the packets and bytes only if the
/// socket programs balanced none of its connections (they see no packets).
fn traffic(t: &Totals) -> TrafficStats {
    let seen = |n: u64| (t.sock_connections == 0).then_some(n);
    TrafficStats {
        connections: t.sock_connections.saturating_add(t.connections),
        packets_in: seen(t.packets_in),
        packets_out: seen(t.packets_out),
        bytes_in: seen(t.bytes_in),
        bytes_out: seen(t.bytes_out),
    }
}

/// Established and other live flows, by service id and backend.
pub type FlowCounts = BTreeMap<(u32, SocketAddr), (u32, u32)>;

/// The live (not expired) tc flows of `flows` counted per service and backend:
/// established ones as active, opening and closing ones as inactive, as IPVS counts.
pub fn flow_counts(flows: &[Flow]) -> FlowCounts {
    let mut out = FlowCounts::new();
    for f in flows.iter().filter(|f| !f.expired) {
        let (active, inactive) = out.entry((f.service_id, f.backend)).or_default();
        match f.state {
            FlowState::Established => *active += 1,
            FlowState::Opening | FlowState::Closing => *inactive += 1,
        }
    }
    out
}

/// The backends of frontend `service_id` in slot order, weighted by their slots, then
/// the backends only `flows` still names (draining). Only the tc path tracks flows,
/// and it alone serves the external scope: an internal frontend's connections are
/// translated at `connect()` and its counts are unknown (`None`).
fn endpoints(
    held: &Held,
    slots: &[Option<u32>],
    service_id: u32,
    flows: Option<&FlowCounts>,
    stats: Option<&MemberStats>,
) -> Vec<EndpointView> {
    let mut out: Vec<EndpointView> = Vec::new();
    for (backend_id, address) in slots
        .iter()
        .flatten()
        .filter_map(|id| held.backends.get(id).map(|b| (*id, backend_addr(b))))
    {
        match out.iter_mut().find(|e| e.address == address) {
            Some(e) => e.weight += 1,
            None => out.push(EndpointView {
                address,
                weight: 1,
                state: EndpointState::Serving,
                active_connections: None,
                inactive_connections: None,
                stats: stats
                    .and_then(|s| {
                        s.get(&AffinityMatchKey {
                            service_id,
                            backend_id,
                        })
                    })
                    .map(traffic),
                rate: None,
            }),
        }
    }
    let Some(flows) = flows else {
        return out;
    };
    for e in &mut out {
        let (active, inactive) = flows
            .get(&(service_id, e.address))
            .copied()
            .unwrap_or_default();
        (e.active_connections, e.inactive_connections) = (Some(active), Some(inactive));
    }
    // `0.0.0.0:0` is the least address (IPv4 sorts before IPv6): the range starts
    // at this service's first backend.
    let least = SocketAddr::from(([0u8; 4], 0));
    let gone: Vec<EndpointView> = flows
        .range((service_id, least)..)
        .take_while(|((sid, _), _)| *sid == service_id)
        .filter(|((_, address), _)| !out.iter().any(|e| e.address == *address))
        .map(|((_, address), (active, inactive))| EndpointView {
            address: *address,
            weight: 0,
            state: EndpointState::Draining,
            active_connections: Some(*active),
            inactive_connections: Some(*inactive),
            // Its membership, and so its statistics, went with it.
            stats: None,
            rate: None,
        })
        .collect();
    out.extend(gone);
    out
}

/// The views of what [`read_back`] found, with the connections of `flows` (counted
/// for external-scope frontends only). Slots that are missing or name no backend (an
/// update in flight, or drift) are left out.
fn views(held: &Held, flows: Option<&FlowCounts>, stats: Option<&MemberStats>) -> Vec<ServiceView> {
    let mut out = Vec::new();
    for f in &held.frontends {
        let Some(frontend) = model_frontend(&f.key) else {
            continue;
        };
        let fe = f.value;
        let endpoints = endpoints(
            held,
            &f.slots,
            fe.service_id,
            flows.filter(|_| frontend.scope == Scope::External),
            stats,
        );
        out.push((
            frontend,
            ServiceView {
                service: f.name.clone().unwrap_or_default(),
                frontend: frontend.to_string(),
                ip: frontend.ip,
                port: frontend.port,
                protocol: frontend.protocol.to_string(),
                scheduler: EBPF_SCHEDULER.to_owned(),
                kind: kind_of(fe.flags).to_string(),
                scope: match frontend.scope {
                    Scope::Internal => "internal",
                    Scope::External => "external",
                }
                .to_owned(),
                service_id: fe.service_id,
                affinity_timeout_s: affinity_of(&fe),
                // The flag is what the programs check; ranges without it are not enforced.
                source_ranges: if fe.flags & proxy_common::FRONTEND_F_SOURCE_RANGES != 0 {
                    f.source_ranges.clone()
                } else {
                    Vec::new()
                },
                backends: f
                    .slots
                    .iter()
                    .flatten()
                    .filter_map(|id| held.backends.get(id))
                    .map(backend_addr)
                    .collect(),
                // The frontend's traffic is its backends': a backend that left
                // takes its counts with it.
                stats: stats
                    .map(|_| TrafficStats::sum(endpoints.iter().filter_map(|e| e.stats.as_ref()))),
                endpoints,
                rate: None,
                ipvs: None,
            },
        ));
    }
    out.sort_by_key(|(f, _)| *f);
    out.into_iter().map(|(_, v)| v).collect()
}

/// The data plane's per-CPU event counters, summed over CPUs, by name.
pub fn counters(bpffs: &Path) -> anyhow::Result<Vec<(&'static str, u64)>> {
    Ok(super::counters::read(bpffs)?)
}

/// One remembered ClientIP affinity.
#[derive(Debug, serde::Serialize)]
pub struct AffinityView {
    /// The client's network-namespace cookie (one per pod).
    pub client_netns_cookie: u64,
    /// `namespace/name:port` of the service ("" if unknown).
    pub service: String,
    /// The backend the client is pinned to ("" if the backend is gone).
    pub backend: String,
    /// Seconds since the client last used it.
    pub idle_s: u64,
}

/// The remembered ClientIP affinities (an LRU map: entries outlive their timeout until
/// evicted, and are ignored once stale).
pub fn affinities(bpffs: &Path) -> anyhow::Result<Vec<AffinityView>> {
    let map: HashMap<MapData, AffinityKey, AffinityValue> = pins::open(bpffs, maps::AFFINITY)?;
    let tables = MapTables::from_pins(bpffs)?;
    let now = conntrack::monotonic_ns();
    let mut out = Vec::new();
    for item in map.iter() {
        let (k, v) = item.context("reading AFFINITY")?;
        out.push(AffinityView {
            client_netns_cookie: k.netns_cookie,
            service: tables.service_name(k.service_id).unwrap_or_default(),
            backend: tables
                .backend(v.backend_id)
                .map(|b| backend_addr(&b).to_string())
                .unwrap_or_default(),
            idle_s: now.saturating_sub(v.last_used_ns) / 1_000_000_000,
        });
    }
    out.sort_by(|a, b| {
        (&a.service, a.client_netns_cookie).cmp(&(&b.service, b.client_netns_cookie))
    });
    Ok(out)
}

/// `proxyctl conntrack`: the tc path's tracked flows, assured and not, with service
/// names, sorted by service, frontend and client. Without a readable `TC_CONFIG`,
/// nothing is shown as expired. A data plane older than the unassured table has only
/// assured flows to show.
pub fn conntrack(bpffs: &Path) -> anyhow::Result<Vec<Flow>> {
    let config = conntrack::read_config(bpffs).unwrap_or_default();
    let now = conntrack::monotonic_ns();
    let table = conntrack::open_table(bpffs)?;
    let entries = table.entries().context("reading CONNTRACK")?;
    let mut out = conntrack::flows(&entries, now, &config);
    for f in &mut out {
        f.assured = true;
    }
    match conntrack::open_unassured(bpffs) {
        Ok(open) => {
            let entries = open.entries().context("reading CT_OPEN")?;
            out.extend(conntrack::flows(&entries, now, &config));
        }
        Err(e) if e.is_missing() => {}
        Err(e) => return Err(e.into()),
    }
    // Names are for operators only; a missing map leaves them empty.
    let names: Option<HashMap<MapData, u32, ServiceName>> =
        pins::open_optional(bpffs, maps::SVC_NAMES).ok().flatten();
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use ipnetwork::IpNetwork;
    use proxy_common as pc;

    use super::*;
    use crate::dataplane::ebpf::keys::{backend, frontend_key, kind_flags};
    use crate::dataplane::ebpf::tables::HeldFrontend;
    use crate::model::{self, FrontendKind, Protocol};

    #[test]
    fn views_show_slots_in_order_skip_missing_ones_and_only_enforced_ranges() {
        let f = model::FrontendKey {
            ip: "0.0.0.0".parse().unwrap(),
            port: 30080,
            protocol: Protocol::Tcp,
            scope: Scope::External,
        };
        let range: IpNetwork = "10.0.0.0/8".parse().unwrap();
        let held = Held {
            frontends: vec![
                HeldFrontend {
                    key: frontend_key(&f),
                    value: pc::FrontendValue {
                        service_id: 3,
                        backend_count: 3,
                        flags: kind_flags(FrontendKind::NodePort),
                        affinity_timeout_s: 0,
                    },
                    name: Some("demo/web:http".into()),
                    slots: vec![Some(2), None, Some(1)],
                    source_ranges: vec![range],
                },
                HeldFrontend {
                    key: frontend_key(&model::FrontendKey::internal(
                        "10.96.0.1".parse().unwrap(),
                        80,
                        Protocol::Tcp,
                    )),
                    value: pc::FrontendValue {
                        service_id: 4,
                        backend_count: 1,
                        flags: pc::FRONTEND_F_AFFINITY | pc::FRONTEND_F_SOURCE_RANGES,
                        affinity_timeout_s: 60,
                    },
                    name: None,
                    slots: vec![Some(9)],
                    source_ranges: vec![range],
                },
            ],
            backends: BTreeMap::from([
                (1, backend(&"10.244.0.11:8080".parse().unwrap(), 6)),
                (2, backend(&"10.244.0.12:8080".parse().unwrap(), 6)),
            ]),
        };
        let flows = FlowCounts::from([
            ((3, "10.244.0.11:8080".parse().unwrap()), (2, 1)),
            // Backend 7 left the service; its flows go on.
            ((3, "10.244.0.7:8080".parse().unwrap()), (1, 0)),
            ((4, "10.244.0.9:8080".parse().unwrap()), (5, 5)),
        ]);
        let v = views(&held, Some(&flows), None);
        assert_eq!(v.len(), 2);
        // Sorted by frontend: the NodePort (address 0.0.0.0) first.
        assert_eq!(v[0].frontend, "*:30080/TCP (external)");
        assert_eq!(
            (v[0].kind.as_str(), v[0].scope.as_str()),
            ("NodePort", "external")
        );
        assert_eq!(v[0].service, "demo/web:http");
        assert_eq!(
            v[0].backends,
            vec![
                "10.244.0.12:8080".parse::<SocketAddr>().unwrap(),
                "10.244.0.11:8080".parse().unwrap()
            ]
        );
        assert!(
            v[0].source_ranges.is_empty(),
            "not enforced without the flag"
        );
        type Row = (String, u32, EndpointState, Option<u32>, Option<u32>);
        let rows: Vec<Row> = v[0]
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.address.to_string(),
                    e.weight,
                    e.state,
                    e.active_connections,
                    e.inactive_connections,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "10.244.0.12:8080".into(),
                    1,
                    EndpointState::Serving,
                    Some(0),
                    Some(0)
                ),
                (
                    "10.244.0.11:8080".into(),
                    1,
                    EndpointState::Serving,
                    Some(2),
                    Some(1)
                ),
                (
                    "10.244.0.7:8080".into(),
                    0,
                    EndpointState::Draining,
                    Some(1),
                    Some(0)
                ),
            ]
        );
        assert_eq!(
            (v[0].scheduler.as_str(), v[0].protocol.as_str(), v[0].port),
            ("random", "TCP", 30080)
        );
        assert_eq!(v[1].frontend, "10.96.0.1:80/TCP");
        assert_eq!(
            (v[1].affinity_timeout_s, v[1].service.as_str()),
            (Some(60), "")
        );
        assert!(v[1].backends.is_empty(), "backend 9 does not exist");
        // Internal scope: connections are not tracked, and flows of another id never
        // show.
        assert!(v[1].endpoints.is_empty(), "{:?}", v[1].endpoints);
        assert_eq!(v[1].source_ranges, vec![range]);
    }

    #[test]
    fn a_backend_in_two_slots_weighs_two_and_flows_count_by_state_unless_expired() {
        use crate::dataplane::ebpf::conntrack::Legs;
        let held = Held {
            frontends: Vec::new(),
            backends: BTreeMap::from([(1, backend(&"10.244.0.11:8080".parse().unwrap(), 6))]),
        };
        let e = endpoints(&held, &[Some(1), Some(1)], 3, None, None);
        assert_eq!(
            (e.len(), e[0].weight, e[0].active_connections),
            (1, 2, None)
        );
        let flow = |state, expired| Flow {
            protocol: "TCP".into(),
            client: "203.0.113.7:40001".parse().unwrap(),
            frontend: "192.0.2.10:30080".parse().unwrap(),
            backend: "10.244.0.11:8080".parse().unwrap(),
            snat: None,
            state,
            service_id: 3,
            service: String::new(),
            idle_s: 0,
            age_s: 0,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            expired,
            legs: Legs::Both,
            assured: true,
        };
        let counts = flow_counts(&[
            flow(FlowState::Established, false),
            flow(FlowState::Established, true),
            flow(FlowState::Opening, false),
            flow(FlowState::Closing, false),
        ]);
        assert_eq!(
            counts.get(&(3, "10.244.0.11:8080".parse().unwrap())),
            Some(&(1, 2))
        );
    }

    #[test]
    fn statistics_attach_per_membership_and_socket_path_counts_hide_packets() {
        let held = Held {
            frontends: Vec::new(),
            backends: BTreeMap::from([
                (1, backend(&"10.244.0.11:8080".parse().unwrap(), 6)),
                (2, backend(&"10.244.0.12:8080".parse().unwrap(), 6)),
            ]),
        };
        let tc_only = Totals {
            connections: 3,
            packets_in: 30,
            packets_out: 20,
            bytes_in: 3000,
            bytes_out: 9000,
            ..Totals::default()
        };
        let mixed = Totals {
            sock_connections: 2,
            ..tc_only
        };
        let key = |service_id, backend_id| AffinityMatchKey {
            service_id,
            backend_id,
        };
        // Backend 1's counts in another service must not show in service 3.
        let stats = MemberStats::from([(key(3, 2), tc_only), (key(4, 1), mixed)]);
        let e = endpoints(&held, &[Some(1), Some(2)], 3, None, Some(&stats));
        assert_eq!(e[0].stats, None, "no statistics of its own in service 3");
        assert_eq!(
            e[1].stats,
            Some(TrafficStats::all(3, (30, 20), (3000, 9000)))
        );
        let e = endpoints(&held, &[Some(1)], 4, None, Some(&stats));
        let s = e[0].stats.unwrap();
        assert_eq!(
            (s.connections, s.packets_in, s.bytes_out),
            (5, None, None),
            "the socket path's connections have no packets to show"
        );
    }

    #[test]
    fn nothing_pinned_is_reported_with_the_pin_root() {
        let e = list(Path::new("/nonexistent/proxy-agent")).unwrap_err();
        assert!(format!("{e:#}").contains("--bpffs"), "{e:#}");
    }
}
