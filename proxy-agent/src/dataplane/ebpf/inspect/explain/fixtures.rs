//! Maps and flows for the decision's tests and the rendering's golden files.

#![allow(clippy::unwrap_used, reason = "test fixtures")]

use std::net::{IpAddr, SocketAddr};

use proxy_common as pc;
use proxy_common::{
    Addr, AffinityKey, AffinityValue, ClientAffinityKey, CtEntry, CtKey, SlotKey, TcConfig, proto,
};

use super::decide::{ClientNetns, FlowMaps, Query};
use super::view::FlowPath;
use crate::dataplane::ebpf::keys::{backend, frontend_key, kind_flags};
use crate::model::{self, FrontendKind, Protocol, Scope};

pub const S: u64 = 1_000_000_000;
/// The clock of every case: an hour after boot.
pub const NOW: u64 = 3600 * S;
pub const COOKIE: u64 = 4099;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Maps being written for one case.
pub struct World {
    /// The maps.
    pub m: FlowMaps,
    next_backend: u32,
}

impl World {
    pub fn new() -> Self {
        let mut m = FlowMaps {
            config: TcConfig::DEFAULT,
            now_ns: NOW,
            ..FlowMaps::default()
        };
        m.node_addrs.insert(Addr::from(ip("192.0.2.1")));
        World { m, next_backend: 1 }
    }

    /// A frontend `ip:port/proto` in `scope` of `kind` named `name`, id `sid`, over
    /// `backends` (one slot each), with extra `flags`.
    #[allow(clippy::too_many_arguments, reason = "a fixture with every knob")]
    pub fn frontend(
        mut self,
        sid: u32,
        name: &str,
        at: &str,
        p: Protocol,
        scope: Scope,
        kind: FrontendKind,
        backends: &[&str],
        flags: u32,
    ) -> Self {
        let at = sa(at);
        let key = frontend_key(&model::FrontendKey {
            ip: at.ip(),
            port: at.port(),
            protocol: p,
            scope,
        });
        self.m.frontends.insert(
            key,
            pc::FrontendValue {
                service_id: sid,
                backend_count: backends.len() as u32,
                flags: kind_flags(kind) | flags,
                affinity_timeout_s: 600,
            },
        );
        self.m.names.insert(sid, name.to_owned());
        for (slot, b) in backends.iter().enumerate() {
            let b = sa(b);
            let id = match self
                .m
                .backends
                .iter()
                .find(|(_, v)| **v == backend(&b, p.number()))
            {
                Some((id, _)) => *id,
                None => {
                    let id = self.next_backend;
                    self.next_backend += 1;
                    self.m.backends.insert(id, backend(&b, p.number()));
                    id
                }
            };
            self.m.slots.insert(
                SlotKey {
                    service_id: sid,
                    slot: slot as u32,
                },
                id,
            );
            self.m.members.insert((sid, id));
        }
        self
    }

    /// The ClusterIP 10.96.0.10:80/TCP (id 1) over three backends.
    pub fn web(self, flags: u32) -> Self {
        self.frontend(
            1,
            "test/web:http",
            "10.96.0.10:80",
            Protocol::Tcp,
            Scope::Internal,
            FrontendKind::ClusterIp,
            &["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.13:8080"],
            flags,
        )
    }

    /// The NodePort *:30080/TCP (id 2, external) over `backends`, with `flags`.
    pub fn nodeport(self, backends: &[&str], flags: u32) -> Self {
        self.frontend(
            2,
            "test/web:http",
            "0.0.0.0:30080",
            Protocol::Tcp,
            Scope::External,
            FrontendKind::NodePort,
            backends,
            flags,
        )
    }

    pub fn id_of(&self, b: &str) -> u32 {
        let want = backend(&sa(b), proto::TCP);
        *self
            .m
            .backends
            .iter()
            .find(|(_, v)| v.addr == want.addr && v.port_be == want.port_be)
            .unwrap()
            .0
    }

    /// The socket layer remembers that the client pod used `b` for service `sid`
    /// `idle_s` ago.
    pub fn pod_affinity(mut self, sid: u32, b: &str, idle_s: u64) -> Self {
        let id = self.id_of(b);
        self.m.affinity.insert(
            AffinityKey {
                netns_cookie: COOKIE,
                service_id: sid,
                _pad: 0,
            },
            AffinityValue {
                last_used_ns: NOW - idle_s * S,
                backend_id: id,
                _pad: 0,
            },
        );
        self
    }

    /// tc remembers that `client` used `b` for service `sid` `idle_s` ago.
    pub fn client_affinity(mut self, client: &str, sid: u32, b: &str, idle_s: u64) -> Self {
        let id = self.id_of(b);
        self.m.client_affinity.insert(
            ClientAffinityKey {
                client: Addr::from(ip(client)),
                service_id: sid,
                _pad: 0,
            },
            AffinityValue {
                last_used_ns: NOW - idle_s * S,
                backend_id: id,
                _pad: 0,
            },
        );
        self
    }

    /// `b` leaves service `sid`'s membership (its slot stays: an update in flight).
    pub fn not_member(mut self, sid: u32, b: &str) -> Self {
        let id = self.id_of(b);
        self.m.members.remove(&(sid, id));
        self
    }

    pub fn source_range(mut self, sid: u32, net: &str) -> Self {
        self.m
            .source_ranges
            .entry(sid)
            .or_default()
            .push(net.parse().unwrap());
        self
    }

    pub fn drop_slot(mut self, sid: u32, slot: u32) -> Self {
        self.m.slots.remove(&SlotKey {
            service_id: sid,
            slot,
        });
        self
    }

    /// A tracked flow `client -> frontend` (service `sid`) to `b`, in `state`, idle
    /// `idle_s`, in the assured table or not.
    #[allow(clippy::too_many_arguments, reason = "a fixture with every knob")]
    pub fn flow(
        mut self,
        client: &str,
        frontend: &str,
        l4: u8,
        sid: u32,
        b: &str,
        state: u8,
        idle_s: u64,
        assured: bool,
    ) -> Self {
        let (c, f, be) = (sa(client), sa(frontend), sa(b));
        let key = CtKey {
            saddr: Addr::from(c.ip()),
            daddr: Addr::from(f.ip()),
            sport_be: c.port().to_be(),
            dport_be: f.port().to_be(),
            proto: l4,
            _pad: [0; 3],
        };
        let e = CtEntry {
            nat_saddr: Addr::from(c.ip()),
            nat_daddr: Addr::from(be.ip()),
            nat_sport_be: c.port().to_be(),
            nat_dport_be: be.port().to_be(),
            state,
            backend_id: self.id_of(b),
            service_id: sid,
            last_seen_ns: NOW - idle_s * S,
            ..CtEntry::default()
        };
        if assured {
            self.m.conntrack.insert(key, e);
        } else {
            self.m.ct_open.insert(key, e);
        }
        self
    }
}

/// A flow on `path` from `src` (`IP` or `IP:PORT`) to `dst`.
pub fn query(path: FlowPath, src: &str, dst: &str, p: Protocol) -> Query {
    let (source, source_port) = match src.parse::<SocketAddr>() {
        Ok(s) => (s.ip(), Some(s.port())),
        Err(_) => (ip(src), None),
    };
    Query {
        source,
        source_port,
        destination: sa(dst),
        protocol: p,
        path,
        netns: ClientNetns::Known {
            cookie: COOKIE,
            from: "/run/netns/client".into(),
        },
    }
}

/// A TCP connection from the client pod (10.244.0.2) to `dst`.
pub fn pod(dst: &str) -> Query {
    query(FlowPath::Pod, "10.244.0.2", dst, Protocol::Tcp)
}

/// A TCP connection from outside, `src` to `dst`.
pub fn ext(src: &str, dst: &str) -> Query {
    query(FlowPath::External, src, dst, Protocol::Tcp)
}
