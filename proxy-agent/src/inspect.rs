//! Reads the pinned maps for `proxyctl`: what the kernel actually holds, independent
//! of the agent process.

use std::collections::HashMap as StdHashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap, Map, MapData, MapError};
use ipnetwork::IpNetwork;
use proxy_common::{Backend, FrontendKey, ServiceName, SlotKey, SourceRangeKey, maps};

use crate::conntrack::{Flow, Legs};
use crate::dataplane::ebpf::{kind_of, model_frontend, source_range_of};
use crate::model::Scope;

/// One programmed frontend as the kernel holds it.
#[derive(Debug, serde::Serialize)]
pub struct ServiceView {
    /// `namespace/name:port` as the agent recorded it ("" if unknown).
    pub service: String,
    /// The model frontend's form: `VIP:port/protocol`, `*:port/protocol` for a
    /// NodePort, with ` (external)` for the external scope.
    pub frontend: String,
    /// `ClusterIP`, `NodePort`, `ExternalIP` or `LoadBalancer`.
    pub kind: String,
    /// `internal` (clients on this node) or `external` (clients outside it).
    pub scope: String,
    /// The service id in the maps.
    pub service_id: u32,
    /// ClientIP affinity timeout, if on.
    pub affinity_timeout_s: Option<u32>,
    /// `loadBalancerSourceRanges` enforced on this frontend (empty: any source).
    pub source_ranges: Vec<IpNetwork>,
    /// Backends in slot order.
    pub backends: Vec<SocketAddr>,
}

fn open_hash<K: aya::Pod, V: aya::Pod>(
    bpffs: &Path,
    name: &str,
) -> anyhow::Result<HashMap<MapData, K, V>> {
    let path = bpffs.join("maps").join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening {} (is the agent running with this --bpffs?)",
            path.display()
        )
    })?;
    HashMap::try_from(Map::HashMap(data)).with_context(|| format!("map {name}"))
}

/// Lists the programmed services, sorted by frontend.
pub fn list(bpffs: &Path) -> anyhow::Result<Vec<ServiceView>> {
    let frontends: HashMap<_, FrontendKey, proxy_common::FrontendValue> =
        open_hash(bpffs, maps::FRONTENDS)?;
    let slots: HashMap<_, SlotKey, u32> = open_hash(bpffs, maps::SLOTS)?;
    let backends: HashMap<_, u32, Backend> = open_hash(bpffs, maps::BACKENDS)?;
    let names: Option<HashMap<_, u32, ServiceName>> = open_hash(bpffs, maps::SVC_NAMES).ok();
    let ranges = source_ranges(bpffs)?;
    let mut out = Vec::new();
    for item in frontends.iter() {
        let (key, fe) = item.context("reading FRONTENDS")?;
        let Some(f) = model_frontend(&key) else {
            continue;
        };
        let mut list = Vec::new();
        for slot in 0..fe.backend_count {
            let key = SlotKey {
                service_id: fe.service_id,
                slot,
            };
            if let Ok(id) = slots.get(&key, 0)
                && let Ok(be) = backends.get(&id, 0)
            {
                list.push(SocketAddr::new(be.addr.ip(), u16::from_be(be.port_be)));
            }
        }
        out.push((
            f,
            ServiceView {
                service: names
                    .as_ref()
                    .and_then(|n| n.get(&fe.service_id, 0).ok())
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_default(),
                frontend: f.to_string(),
                kind: kind_of(fe.flags).to_string(),
                scope: match f.scope {
                    Scope::Internal => "internal",
                    Scope::External => "external",
                }
                .to_owned(),
                service_id: fe.service_id,
                affinity_timeout_s: (fe.flags & proxy_common::FRONTEND_F_AFFINITY != 0)
                    .then_some(fe.affinity_timeout_s),
                // The flag is what the programs check; ranges without it are not enforced.
                source_ranges: if fe.flags & proxy_common::FRONTEND_F_SOURCE_RANGES != 0 {
                    ranges.get(&fe.service_id).cloned().unwrap_or_default()
                } else {
                    Vec::new()
                },
                backends: list,
            },
        ));
    }
    out.sort_by_key(|(f, _)| *f);
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

/// `SOURCE_RANGES` by service id, each list sorted. A data plane pinned before the map
/// existed has none.
fn source_ranges(bpffs: &Path) -> anyhow::Result<StdHashMap<u32, Vec<IpNetwork>>> {
    let path = bpffs.join("maps").join(maps::SOURCE_RANGES);
    let mut out: StdHashMap<u32, Vec<IpNetwork>> = StdHashMap::new();
    let data = match MapData::from_pin(&path) {
        Ok(d) => d,
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(out);
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let trie: LpmTrie<_, SourceRangeKey, u32> =
        LpmTrie::try_from(Map::LpmTrie(data)).context("map SOURCE_RANGES")?;
    for key in trie.keys() {
        let key = key.context("reading SOURCE_RANGES")?;
        if let Some((id, net)) = source_range_of(&key) {
            out.entry(id).or_default().push(net);
        }
    }
    for list in out.values_mut() {
        list.sort();
    }
    Ok(out)
}

/// A table in the spirit of `ipvsadm -Ln`.
pub fn render_table(services: &[ServiceView]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<44} {:<12} {:>4}  {:<16} {:<8} SERVICE",
        "FRONTEND", "KIND", "ID", "AFFINITY", "BACKENDS"
    );
    for v in services {
        let aff = v
            .affinity_timeout_s
            .map(|t| format!("ClientIP {t}s"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "{:<44} {:<12} {:>4}  {:<16} {:<8} {}",
            v.frontend,
            v.kind,
            v.service_id,
            aff,
            v.backends.len(),
            v.service
        );
        if !v.source_ranges.is_empty() {
            let ranges: Vec<String> = v.source_ranges.iter().map(ToString::to_string).collect();
            let _ = writeln!(s, "  source ranges: {}", ranges.join(", "));
        }
        if v.backends.is_empty() {
            let _ = writeln!(s, "  -> (none: connections are refused)");
        }
        for b in &v.backends {
            let _ = writeln!(s, "  -> {b}");
        }
    }
    s
}

/// The data plane's per-CPU event counters, summed over CPUs, by name.
pub fn counters(bpffs: &Path) -> anyhow::Result<Vec<(&'static str, u64)>> {
    let path = bpffs.join("maps").join(maps::COUNTERS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let array: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(Map::PerCpuArray(data)).context("map COUNTERS")?;
    let mut out = Vec::new();
    for (i, name) in proxy_common::counter::NAMES.iter().enumerate() {
        match array.get(&(i as u32), 0) {
            Ok(per_cpu) => out.push((*name, per_cpu.iter().sum())),
            // A map pinned by an older data plane has fewer counters: show what it has.
            Err(MapError::OutOfBounds { .. }) => break,
            Err(e) => return Err(e).context("reading COUNTERS"),
        }
    }
    Ok(out)
}

/// `proxyctl stats`: the data plane's counters as a table.
pub fn render_counters(counters: &[(&str, u64)]) -> String {
    let mut s = String::new();
    for (name, value) in counters {
        let _ = writeln!(s, "{name:<24} {value}");
    }
    s
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
    use proxy_common::{AffinityKey, AffinityValue};
    let path = bpffs.join("maps").join(maps::AFFINITY);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map: HashMap<_, AffinityKey, AffinityValue> =
        HashMap::try_from(Map::LruHashMap(data)).context("map AFFINITY")?;
    let backends: HashMap<_, u32, Backend> = open_hash(bpffs, maps::BACKENDS)?;
    let names: Option<HashMap<_, u32, ServiceName>> = open_hash(bpffs, maps::SVC_NAMES).ok();
    let now = crate::conntrack::monotonic_ns();
    let mut out = Vec::new();
    for item in map.iter() {
        let (k, v) = item.context("reading AFFINITY")?;
        out.push(AffinityView {
            client_netns_cookie: k.netns_cookie,
            service: names
                .as_ref()
                .and_then(|n| n.get(&k.service_id, 0).ok())
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default(),
            backend: backends
                .get(&v.backend_id, 0)
                .map(|b| SocketAddr::new(b.addr.ip(), u16::from_be(b.port_be)).to_string())
                .unwrap_or_default(),
            idle_s: now.saturating_sub(v.last_used_ns) / 1_000_000_000,
        });
    }
    out.sort_by(|a, b| {
        (&a.service, a.client_netns_cookie).cmp(&(&b.service, b.client_netns_cookie))
    });
    Ok(out)
}

/// `proxyctl affinity` as a table.
pub fn render_affinities(list: &[AffinityView]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<28} {:>20} {:<44} {:>8}",
        "SERVICE", "CLIENT NETNS", "BACKEND", "IDLE (s)"
    );
    for a in list {
        let _ = writeln!(
            s,
            "{:<28} {:>20} {:<44} {:>8}",
            a.service, a.client_netns_cookie, a.backend, a.idle_s
        );
    }
    s
}

/// `proxyctl conntrack`: the tc path's tracked flows, with service names.
pub fn conntrack(bpffs: &Path) -> anyhow::Result<Vec<Flow>> {
    Ok(crate::conntrack::read(bpffs)?)
}

/// `proxyctl conntrack` as a table, columns sized to their contents.
pub fn render_conntrack(flows: &[Flow]) -> String {
    let dash = || "-".to_owned();
    let mut rows: Vec<[String; 10]> = vec![[
        "PROTO".into(),
        "CLIENT".into(),
        "FRONTEND".into(),
        "BACKEND".into(),
        "SNAT".into(),
        "STATE".into(),
        "IDLE".into(),
        "SERVICE".into(),
        "PKTS(in/out)".into(),
        "NOTE".into(),
    ]];
    for f in flows {
        let mut note = Vec::new();
        match f.legs {
            Legs::Both => {}
            Legs::ForwardOnly => note.push("no reply leg"),
            Legs::ReplyOnly => note.push("no forward leg"),
        }
        if f.expired {
            note.push("expired");
        }
        rows.push([
            f.protocol.clone(),
            f.client.to_string(),
            f.frontend.to_string(),
            f.backend.to_string(),
            f.snat.map(|a| a.to_string()).unwrap_or_else(dash),
            f.state.to_string(),
            format!("{}s", f.idle_s),
            if f.service.is_empty() {
                format!("(id {})", f.service_id)
            } else {
                f.service.clone()
            },
            format!("{}/{}", f.packets_in, f.packets_out),
            note.join(", "),
        ]);
    }
    let mut widths = [0usize; 10];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            // IDLE is a number: right-aligned.
            if i == 6 {
                let _ = write!(line, "{cell:>w$}");
            } else {
                let _ = write!(line, "{cell:<w$}");
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::FlowState;

    fn flow(service: &str, legs: Legs, expired: bool, snat: Option<&str>) -> Flow {
        let sa = |s: &str| s.parse::<SocketAddr>().expect("address");
        Flow {
            protocol: "TCP".into(),
            client: sa("203.0.113.7:40001"),
            frontend: sa("192.0.2.10:30080"),
            backend: sa("10.244.1.5:8080"),
            snat: snat.map(sa),
            state: FlowState::Established,
            service_id: 7,
            service: service.into(),
            idle_s: 3,
            age_s: 60,
            packets_in: 12,
            packets_out: 10,
            bytes_in: 1200,
            bytes_out: 9000,
            expired,
            legs,
        }
    }

    #[test]
    fn the_conntrack_table_has_a_header_and_one_aligned_row_per_flow() {
        let flows = [
            flow(
                "demo/echo:http",
                Legs::Both,
                false,
                Some("192.0.2.10:40001"),
            ),
            flow("", Legs::ReplyOnly, true, None),
        ];
        let t = render_conntrack(&flows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("PROTO  CLIENT"), "{t}");
        let col = |l: &str, name: &str| l.find(name).unwrap_or(usize::MAX);
        let backend_col = col(lines[0], "BACKEND");
        assert_eq!(col(lines[1], "10.244.1.5:8080"), backend_col, "{t}");
        assert_eq!(col(lines[2], "10.244.1.5:8080"), backend_col, "{t}");
        assert!(lines[1].contains("192.0.2.10:40001") && lines[1].contains("demo/echo:http"));
        assert!(lines[1].contains("12/10") && lines[1].contains("established"));
        assert!(
            lines[2].contains("(id 7)") && lines[2].ends_with("no forward leg, expired"),
            "{t}"
        );
    }

    #[test]
    fn service_views_serialize_kind_scope_and_ranges() {
        let v = ServiceView {
            service: "demo/web:http".into(),
            frontend: "*:30080/TCP (external)".into(),
            kind: "NodePort".into(),
            scope: "external".into(),
            service_id: 3,
            affinity_timeout_s: None,
            source_ranges: vec!["10.0.0.0/8".parse().expect("cidr")],
            backends: vec!["10.244.0.11:8080".parse().expect("address")],
        };
        let json = serde_json::to_value(&v).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "service": "demo/web:http",
                "frontend": "*:30080/TCP (external)",
                "kind": "NodePort",
                "scope": "external",
                "service_id": 3,
                "affinity_timeout_s": null,
                "source_ranges": ["10.0.0.0/8"],
                "backends": ["10.244.0.11:8080"],
            })
        );
        let t = render_table(&[v]);
        assert!(
            t.contains("NodePort") && t.contains("source ranges: 10.0.0.0/8"),
            "{t}"
        );
    }
}
