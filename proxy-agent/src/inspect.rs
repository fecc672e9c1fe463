//! Reads the pinned maps for `proxyctl`: what the kernel actually holds, independent
//! of the agent process.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use aya::maps::{HashMap, Map, MapData};
use proxy_common::{Backend, FrontendKey, ServiceName, SlotKey, maps};

use crate::dataplane::ebpf::model_frontend;

/// One programmed frontend as the kernel holds it.
#[derive(Debug, serde::Serialize)]
pub struct ServiceView {
    /// `namespace/name:port` as the agent recorded it ("" if unknown).
    pub service: String,
    /// VIP:port/protocol.
    pub frontend: String,
    /// The service id in the maps.
    pub service_id: u32,
    /// ClientIP affinity timeout, if on.
    pub affinity_timeout_s: Option<u32>,
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
    let frontends: HashMap<_, FrontendKey, proxy_common::Frontend> =
        open_hash(bpffs, maps::FRONTENDS)?;
    let slots: HashMap<_, SlotKey, u32> = open_hash(bpffs, maps::SLOTS)?;
    let backends: HashMap<_, u32, Backend> = open_hash(bpffs, maps::BACKENDS)?;
    let names: Option<HashMap<_, u32, ServiceName>> = open_hash(bpffs, maps::SVC_NAMES).ok();
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
                service_id: fe.service_id,
                affinity_timeout_s: (fe.flags & proxy_common::FRONTEND_F_AFFINITY != 0)
                    .then_some(fe.affinity_timeout_s),
                backends: list,
            },
        ));
    }
    out.sort_by_key(|(f, _)| *f);
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

/// A table in the spirit of `ipvsadm -Ln`.
pub fn render_table(services: &[ServiceView]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<44} {:>4}  {:<16} {:<8} SERVICE",
        "FRONTEND", "ID", "AFFINITY", "BACKENDS"
    );
    for v in services {
        let aff = v
            .affinity_timeout_s
            .map(|t| format!("ClientIP {t}s"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "{:<44} {:>4}  {:<16} {:<8} {}",
            v.frontend,
            v.service_id,
            aff,
            v.backends.len(),
            v.service
        );
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
        let per_cpu = array.get(&(i as u32), 0).context("reading COUNTERS")?;
        out.push((*name, per_cpu.iter().sum()));
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
    let now = monotonic_ns();
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

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
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
