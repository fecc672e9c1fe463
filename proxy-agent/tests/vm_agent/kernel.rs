//! What the kernel holds in the node's namespace, read with the project's own netlink
//! code (`Ipvs`, `Ipset`, rtnetlink): the facts the tests assert on.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use proxy_agent::dataplane::ipvs::netlink::{
    DestinationInfo, Ipset, Ipvs, Protocol, Service, ServiceId,
};
use proxy_agent::dataplane::netdev;

use super::agent::PATIENCE;
use super::netns::Netns;

/// The dummy interface the IPVS mode puts the VIPs on.
pub const LINK: &str = "kube-ipvs0";

/// The virtual server `addr` (`ip:port`) of `protocol`.
pub fn id(protocol: Protocol, addr: SocketAddr) -> ServiceId {
    ServiceId {
        protocol,
        addr: addr.ip(),
        port: addr.port(),
    }
}

/// The TCP virtual server on `addr`.
pub fn tcp(addr: SocketAddr) -> ServiceId {
    id(Protocol::Tcp, addr)
}

/// The UDP virtual server on `addr`.
pub fn udp(addr: SocketAddr) -> ServiceId {
    id(Protocol::Udp, addr)
}

/// Every virtual server with its destinations (counters left out), by id.
pub fn table(node: &Netns) -> BTreeMap<ServiceId, (Service, Vec<DestinationInfo>)> {
    node.run(|| {
        let mut ipvs = Ipvs::open().expect("IPVS");
        let services = ipvs.services().expect("dumping the virtual servers");
        services
            .into_iter()
            .map(|s| {
                let mut dests = ipvs.dests(&s.service.id).expect("dumping destinations");
                dests.sort_by_key(|d| (d.destination.addr, d.destination.port));
                (s.service.id, (s.service, dests))
            })
            .collect()
    })
}

/// The virtual servers, without their destinations.
pub fn services(node: &Netns) -> Vec<Service> {
    node.run(|| {
        Ipvs::open()
            .expect("IPVS")
            .services()
            .expect("dumping the virtual servers")
            .into_iter()
            .map(|s| s.service)
            .collect()
    })
}

/// The virtual server `id`, if there.
pub fn service(node: &Netns, id: ServiceId) -> Option<Service> {
    node.run(move || {
        Ipvs::open()
            .expect("IPVS")
            .service(&id)
            .expect("reading a virtual server")
            .map(|s| s.service)
    })
}

/// `id`'s destinations, sorted; empty if `id` is not there.
pub fn dests(node: &Netns, id: ServiceId) -> Vec<DestinationInfo> {
    node.run(move || {
        let mut ipvs = Ipvs::open().expect("IPVS");
        if ipvs
            .service(&id)
            .expect("reading a virtual server")
            .is_none()
        {
            return Vec::new();
        }
        let mut d = ipvs.dests(&id).expect("dumping destinations");
        d.sort_by_key(|d| (d.destination.addr, d.destination.port));
        d
    })
}

/// `id`'s destinations that take new connections (weight > 0), sorted.
pub fn live(node: &Netns, id: ServiceId) -> Vec<SocketAddr> {
    dests(node, id)
        .into_iter()
        .filter(|d| d.destination.weight > 0)
        .map(|d| SocketAddr::new(d.destination.addr, d.destination.port))
        .collect()
}

/// `(destination, weight)` of each of `id`'s destinations, sorted.
pub fn weights(node: &Netns, id: ServiceId) -> Vec<(SocketAddr, u32)> {
    dests(node, id)
        .into_iter()
        .map(|d| {
            let at = SocketAddr::new(d.destination.addr, d.destination.port);
            (at, d.destination.weight)
        })
        .collect()
}

/// The addresses on [`LINK`], or `None` without the link.
pub fn link_addresses(node: &Netns) -> Option<Vec<IpAddr>> {
    node.run(|| {
        netdev::list()
            .expect("listing links")
            .interfaces
            .into_iter()
            .find(|i| i.name == LINK)
            .map(|i| i.addrs)
    })
}

/// The names of the ipsets in the namespace.
pub fn set_names(node: &Netns) -> Vec<String> {
    node.run(|| {
        let mut names: Vec<String> = Ipset::open()
            .expect("ipset")
            .headers()
            .expect("listing ipsets")
            .into_iter()
            .map(|s| s.name)
            .collect();
        names.sort();
        names
    })
}

/// Polls `check` until it gives something; fails after [`PATIENCE`], saying `what`
/// and the last `state` seen.
pub fn eventually<T, S: std::fmt::Debug>(what: &str, mut check: impl FnMut() -> Result<T, S>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match check() {
            Ok(t) => return t,
            Err(state) if Instant::now() >= deadline => {
                panic!("waited {PATIENCE:?} for {what}; last seen: {state:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Waits until `id`'s live destinations are `want` (sorted or not) and the VIP is on
/// [`LINK`] (the backend's last write for a new service): the agent has synced it.
pub fn wait_live(node: &Netns, id: ServiceId, want: &[SocketAddr]) {
    let mut want = want.to_vec();
    want.sort();
    eventually(&format!("{id} to serve {want:?}"), || {
        let live = live(node, id);
        let on_link = link_addresses(node).is_some_and(|a| a.contains(&id.addr));
        if live == want && on_link {
            Ok(())
        } else {
            Err((live, on_link))
        }
    });
}
