//! Fills [`FlowMaps`] from the pinned maps: every frontend and node address, then
//! only the entries the frontends at the destination and the flow's tuple can reach.

use std::path::Path;

use anyhow::Context;
use aya::maps::{HashMap, MapData};
use proxy_common as pc;
use proxy_common::{
    Addr, AffinityKey, AffinityMatchKey, AffinityValue, ClientAffinityKey, CtKey, NodeAddr,
    SlotKey, TcConfig, maps,
};

use super::decide::{ClientNetns, FlowMaps, Query};
use super::netns;
use super::view::FlowPath;
use crate::dataplane::ebpf::conntrack::{self, CtTable};
use crate::dataplane::ebpf::error::is_not_found;
use crate::dataplane::ebpf::pins;
use crate::dataplane::ebpf::tables::{MapTables, Tables};

/// One `get` on a pinned hash map: absent is `None`, any other failure an error
/// naming the map.
fn get<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> anyhow::Result<Option<V>> {
    match map.get(key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading map {name}")),
    }
}

/// Whether frontend key `k` may be what `dst:port/proto` matches in some scope: the
/// address itself or (NodePort) the unspecified address of its family.
fn at_destination(k: &pc::FrontendKey, dst: &Addr, port_be: u16, l4: u8) -> bool {
    let unspec = if dst.is_v4() {
        Addr::from_v4_be(0)
    } else {
        Addr([0; 4])
    };
    k.port_be == port_be && k.proto == l4 && (k.addr == *dst || k.addr == unspec)
}

/// Reads what [`super::decide`] needs for `q` from the maps pinned under `bpffs`.
/// `netns` is the client pod's namespace path if the operator gave one; otherwise it is
/// looked for by the client's address, and only when a frontend at the destination
/// has ClientIP affinity at the socket layer (the only reader of the cookie).
pub fn read(
    bpffs: &Path,
    mut q: Query,
    netns_path: Option<&Path>,
) -> anyhow::Result<(Query, FlowMaps)> {
    let tables = MapTables::from_pins(bpffs)?;
    let l4 = q.protocol.number();
    let dst = Addr::from(q.destination.ip());
    let port_be = q.destination.port().to_be();
    let mut m = FlowMaps {
        now_ns: conntrack::monotonic_ns(),
        ..FlowMaps::default()
    };
    m.frontends = tables
        .frontends()
        .context("reading map FRONTENDS")?
        .into_iter()
        .collect();
    for v in m.frontends.values() {
        if let Some(n) = tables.service_name(v.service_id) {
            m.names.insert(v.service_id, n);
        }
    }
    let node: HashMap<MapData, Addr, NodeAddr> = pins::open(bpffs, maps::NODE_ADDRS)?;
    m.node_addrs = node
        .keys()
        .collect::<Result<_, _>>()
        .context("reading map NODE_ADDRS")?;

    let near: Vec<pc::FrontendValue> = m
        .frontends
        .iter()
        .filter(|(k, _)| at_destination(k, &dst, port_be, l4))
        .map(|(_, v)| *v)
        .collect();
    for fe in &near {
        for slot in 0..fe.backend_count {
            let key = SlotKey {
                service_id: fe.service_id,
                slot,
            };
            if let Some(id) = tables.slot(key).context("reading map SLOTS")? {
                m.slots.insert(key, id);
                if let Some(b) = tables.backend(id) {
                    m.backends.insert(id, b);
                }
            }
        }
    }
    let sids: Vec<u32> = near.iter().map(|v| v.service_id).collect();
    for (sid, net) in tables
        .source_ranges()
        .context("reading map SOURCE_RANGES")?
    {
        if sids.contains(&sid) {
            m.source_ranges.entry(sid).or_default().push(net);
        }
    }

    let affinity_here = near.iter().any(|v| v.flags & pc::FRONTEND_F_AFFINITY != 0);
    if q.path == FlowPath::Pod {
        q.netns = match netns_path {
            Some(p) => match netns::cookie_of(p) {
                Ok(cookie) => ClientNetns::Known {
                    cookie,
                    from: p.display().to_string(),
                },
                Err(e) => anyhow::bail!(
                    "reading the network namespace cookie of {}: {e} (give --netns a \
                     namespace path such as /run/netns/NAME or /proc/PID/ns/net)",
                    p.display()
                ),
            },
            None if affinity_here => netns::find(q.source),
            None => ClientNetns::Unknown("not needed: no ClientIP affinity here".into()),
        };
    }

    // Remembered affinities and their memberships.
    let members: HashMap<MapData, AffinityMatchKey, u32> = pins::open(bpffs, maps::AFFINITY_MATCH)?;
    let mut member_ids: Vec<(u32, u32)> = Vec::new();
    if affinity_here {
        let aff: HashMap<MapData, AffinityKey, AffinityValue> = pins::open(bpffs, maps::AFFINITY)?;
        if let ClientNetns::Known { cookie, .. } = q.netns {
            for sid in &sids {
                let k = AffinityKey {
                    netns_cookie: cookie,
                    service_id: *sid,
                    _pad: 0,
                };
                if let Some(v) = get(&aff, &k, maps::AFFINITY)? {
                    m.affinity.insert(k, v);
                    member_ids.push((*sid, v.backend_id));
                }
            }
        }
        let client: Option<HashMap<MapData, ClientAffinityKey, AffinityValue>> =
            pins::open_optional(bpffs, maps::CLIENT_AFFINITY)?;
        if let Some(client) = client {
            for sid in &sids {
                let k = ClientAffinityKey {
                    client: Addr::from(q.source),
                    service_id: *sid,
                    _pad: 0,
                };
                if let Some(v) = get(&client, &k, maps::CLIENT_AFFINITY)? {
                    m.client_affinity.insert(k, v);
                    member_ids.push((*sid, v.backend_id));
                }
            }
        }
    }

    // The flow's own tuple in the connection tables (external, with a port).
    if let (FlowPath::External, Some(sport)) = (q.path, q.source_port) {
        m.config = match conntrack::read_config(bpffs) {
            // ct.rs `config`: the programs' defaults until the agent writes its own.
            Ok(c) if c.udp_s != 0 => c,
            _ => TcConfig::DEFAULT,
        };
        let key = CtKey {
            saddr: Addr::from(q.source),
            daddr: dst,
            sport_be: sport.to_be(),
            dport_be: port_be,
            proto: l4,
            _pad: [0; 3],
        };
        let table = conntrack::open_table(bpffs)?;
        if let Some(e) = table.get(&key).context("reading map CONNTRACK")? {
            m.conntrack.insert(key, e);
            member_ids.push((e.service_id, e.backend_id));
        }
        match conntrack::open_unassured(bpffs) {
            Ok(open) => {
                if let Some(e) = open.get(&key).context("reading map CT_OPEN")? {
                    m.ct_open.insert(key, e);
                    member_ids.push((e.service_id, e.backend_id));
                }
            }
            Err(e) if e.is_missing() => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (sid, bid) in member_ids {
        let k = AffinityMatchKey {
            service_id: sid,
            backend_id: bid,
        };
        if get(&members, &k, maps::AFFINITY_MATCH)?.is_some() {
            m.members.insert((sid, bid));
        }
        if let Some(b) = tables.backend(bid) {
            m.backends.insert(bid, b);
        }
    }
    Ok((q, m))
}
