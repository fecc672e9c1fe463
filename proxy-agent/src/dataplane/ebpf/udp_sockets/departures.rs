//! Which backends left which UDP service, and which sockets that makes stale: the
//! pure part of a sweep, tested without a kernel.
//!
//! A socket is stale when `REV_SOCK` (written by the connect hook) says that this very
//! socket (its cookie) was sent to this backend by the frontend the backend left, with
//! the frontend's service id of the time. Anything else is left alone: sockets the
//! agent did not balance, sockets balanced to the same backend through another
//! service that keeps it, and a socket balanced by a service id that was freed and
//! handed to another frontend since (the VIP and port must match too).

use std::collections::HashMap;

use proxy_common::{Addr, Backend, RevSockKey, RevSockValue, proto};

use super::diag::ConnectedUdp;
use crate::model::{self, Protocol, Scope};

/// A backend that left a UDP frontend the socket programs balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Departure {
    /// The frontend's VIP.
    pub vip: Addr,
    /// Its port, network byte order.
    pub vip_port_be: u16,
    /// Its service id while the backend was in it.
    pub service_id: u32,
    /// The backend that left.
    pub backend: Backend,
}

/// Whether the socket programs balance `frontend` with connect(): only internal UDP
/// frontends (the hooks look up scope INTERNAL; TCP connections to a removed
/// backend fail by themselves).
pub fn watched(frontend: &model::FrontendKey) -> bool {
    frontend.protocol == Protocol::Udp && frontend.scope == Scope::Internal
}

/// The backends of `before` (a frontend's service id and backends) that `after` no
/// longer has: all of them when the frontend went (`after` is `None`) or its service
/// id changed.
pub fn departures(
    frontend: &model::FrontendKey,
    before: Option<(u32, Vec<Backend>)>,
    after: Option<(u32, Vec<Backend>)>,
) -> Vec<Departure> {
    if !watched(frontend) {
        return Vec::new();
    }
    let Some((service_id, old)) = before else {
        return Vec::new();
    };
    let kept: &[Backend] = match &after {
        Some((id, new)) if *id == service_id => new,
        _ => &[],
    };
    let vip = Addr::from(frontend.ip);
    let mut out: Vec<Departure> = Vec::new();
    for backend in old {
        let d = Departure {
            vip,
            vip_port_be: frontend.port.to_be(),
            service_id,
            backend,
        };
        if !kept.contains(&backend) && !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// Departures indexed by backend address and port, as a socket's peer reads.
#[derive(Debug, Default)]
pub struct Departed {
    by_backend: HashMap<(Addr, u16), Vec<Departure>>,
}

impl Departed {
    /// The index of `all`.
    pub fn new(all: &[Departure]) -> Self {
        let mut by_backend: HashMap<(Addr, u16), Vec<Departure>> = HashMap::new();
        for d in all {
            let list = by_backend
                .entry((d.backend.addr, d.backend.port_be))
                .or_default();
            if !list.contains(d) {
                list.push(*d);
            }
        }
        Departed { by_backend }
    }

    /// Whether there is nothing to look for.
    pub fn is_empty(&self) -> bool {
        self.by_backend.is_empty()
    }

    /// Number of (frontend, backend) departures.
    pub fn len(&self) -> usize {
        self.by_backend.values().map(Vec::len).sum()
    }

    /// The departure that makes `socket` stale, given what `REV_SOCK` holds for it
    /// (`lookup`), if any.
    pub fn stale(
        &self,
        socket: &ConnectedUdp,
        lookup: impl FnOnce(&RevSockKey) -> Option<RevSockValue>,
    ) -> Option<Departure> {
        let peer = socket.peer();
        let addr = Addr::from(peer.ip());
        let port_be = peer.port().to_be();
        let candidates = self.by_backend.get(&(addr, port_be))?;
        let key = RevSockKey {
            cookie: socket.cookie(),
            addr,
            port_be,
            _pad: [0; 6],
        };
        let v = lookup(&key)?;
        if v.proto != proto::UDP {
            return None;
        }
        candidates
            .iter()
            .find(|d| d.vip == v.addr && d.vip_port_be == v.port_be && d.service_id == v.service_id)
            .copied()
    }
}

#[cfg(test)]
#[path = "departures_tests.rs"]
mod tests;
