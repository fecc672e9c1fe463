//! The read-only views `proxyctl` shows, straight from the pinned maps: what the kernel
//! actually holds, independent of the agent process. The services are read with the
//! same code the agent adopts them with ([`super::tables::read_back`]).

use std::collections::HashMap as StdHashMap;
use std::path::Path;

use anyhow::Context;
use aya::maps::{HashMap, MapData};
use proxy_common::{AffinityKey, AffinityValue, ServiceName, maps};

use super::conntrack::{self, Flow, gc::CtTable};
use super::keys::{affinity_of, backend_addr, kind_of, model_frontend};
use super::pins;
use super::tables::{Held, MapTables, read_back};
pub use crate::dataplane::listing::ServiceView;
use crate::model::Scope;

/// Whether a data plane pinned its maps under `bpffs` (what `proxyctl --mode auto`
/// looks for).
pub fn pinned(bpffs: &Path) -> bool {
    pins::map_path(bpffs, maps::FRONTENDS).exists()
}

/// Lists the programmed services, sorted by frontend.
pub fn list(bpffs: &Path) -> anyhow::Result<Vec<ServiceView>> {
    let tables = MapTables::from_pins(bpffs)?;
    Ok(views(
        &read_back(&tables).context("reading the service maps")?,
    ))
}

/// The views of what [`read_back`] found. Slots that are missing or name no backend
/// (an update in flight, or drift) are left out.
fn views(held: &Held) -> Vec<ServiceView> {
    let mut out = Vec::new();
    for f in &held.frontends {
        let Some(frontend) = model_frontend(&f.key) else {
            continue;
        };
        let fe = f.value;
        out.push((
            frontend,
            ServiceView {
                service: f.name.clone().unwrap_or_default(),
                frontend: frontend.to_string(),
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
        let v = views(&held);
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
        assert_eq!(v[1].frontend, "10.96.0.1:80/TCP");
        assert_eq!(
            (v[1].affinity_timeout_s, v[1].service.as_str()),
            (Some(60), "")
        );
        assert!(v[1].backends.is_empty(), "backend 9 does not exist");
        assert_eq!(v[1].source_ranges, vec![range]);
    }

    #[test]
    fn nothing_pinned_is_reported_with_the_pin_root() {
        let e = list(Path::new("/nonexistent/proxy-agent")).unwrap_err();
        assert!(format!("{e:#}").contains("--bpffs"), "{e:#}");
    }
}
