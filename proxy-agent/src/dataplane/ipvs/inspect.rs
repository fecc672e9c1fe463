//! `proxyctl list` in IPVS mode: the virtual servers read over netlink in the calling
//! thread's network namespace, independent of the agent process, as the listing the
//! eBPF data plane's inspection produces ([`ServiceView`]), with IPVS's scheduler,
//! persistence, destinations and counters besides. Names and kinds come from the
//! comments of the ipset members the backend writes (see [`super::sets`]), as the
//! backend itself recovers them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use super::netlink::{
    DestinationInfo, ForwardMethod, Ipset, IpsetError, Ipvs, IpvsError, Protocol, ServiceFlags,
    ServiceInfo, Stats,
};
use super::sets;
use crate::dataplane::listing::{
    EndpointState, EndpointView, IpvsCounters, IpvsDestinationView, IpvsView, ServiceView,
    TrafficStats,
};
use crate::model::{FrontendKey, FrontendKind};

/// Why the IPVS listing could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// IPVS did not answer (no `ip_vs` module: [`IpvsError::NoIpvs`]), or refused.
    #[error(transparent)]
    Ipvs(#[from] IpvsError),
    /// The ipsets naming the services could not be read.
    #[error(transparent)]
    Ipset(#[from] IpsetError),
}

/// The service that an ipset member names: its kind (which set) and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// The kind of the set the member is in.
    pub kind: FrontendKind,
    /// `namespace/name:port` from the member's comment ("" without one).
    pub name: String,
}

/// The named frontends, by address, IP protocol number and port.
pub type Names = BTreeMap<(IpAddr, u16, u16), Named>;

/// Whether IPVS answers in this network namespace (what `proxyctl --mode auto` asks).
pub fn available() -> Result<(), IpvsError> {
    Ipvs::open().map(drop)
}

/// Every address-based virtual server, sorted by address, port and protocol. Without
/// ipset in the kernel the services are listed unnamed.
pub fn list() -> Result<Vec<ServiceView>, InspectError> {
    let mut ipvs = Ipvs::open()?;
    let names = match Ipset::open() {
        Ok(mut ipset) => names(&mut ipset)?,
        Err(IpsetError::NoIpset(_)) => Names::new(),
        Err(e) => return Err(e.into()),
    };
    let mut servers = Vec::new();
    for info in ipvs.services()? {
        match ipvs.dests(&info.service.id) {
            Ok(dests) => servers.push((info, dests)),
            // Deleted since the dump: not there any more.
            Err(IpvsError::NoSuchService { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(views(servers, &names))
}

/// The members of the backend's naming sets, by what they name: ClusterIPs,
/// externalIPs and LB IPs by address; NodePorts by port, under the unspecified address
/// of their family (their virtual servers are at each node address).
fn names(ipset: &mut Ipset) -> Result<Names, IpsetError> {
    let mut out = Names::new();
    let named = [
        (FrontendKind::ClusterIp, sets::CLUSTER_IP, None),
        (FrontendKind::ExternalIp, sets::EXTERNAL_IP, None),
        (FrontendKind::LoadBalancer, sets::LOAD_BALANCER, None),
        (
            FrontendKind::NodePort,
            sets::NODE_PORT_TCP,
            Some(Protocol::Tcp),
        ),
        (
            FrontendKind::NodePort,
            sets::NODE_PORT_UDP,
            Some(Protocol::Udp),
        ),
    ];
    for (kind, set, node_port) in named {
        for v6 in [false, true] {
            let Some(info) = ipset.list(&set.name_for(v6))? else {
                continue;
            };
            for entry in info.entries {
                let any = if v6 {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                };
                let (Some(ip), Some(protocol), Some(port)) = (
                    entry.ip.or(node_port.map(|_| any)),
                    entry.protocol.or(node_port),
                    entry.port,
                ) else {
                    continue;
                };
                let name = entry
                    .comment
                    .as_deref()
                    .and_then(sets::parse_name)
                    .map(|n| n.to_string())
                    .unwrap_or_default();
                out.insert((ip, protocol.number(), port), Named { kind, name });
            }
        }
    }
    Ok(out)
}

/// The listing of `servers` (each with its destinations), named from `names`.
pub fn views(servers: Vec<(ServiceInfo, Vec<DestinationInfo>)>, names: &Names) -> Vec<ServiceView> {
    let mut out: Vec<((IpAddr, u16, u16), ServiceView)> = servers
        .into_iter()
        .map(|(info, mut dests)| {
            // The kernel lists the newest first; by address reads better and stays put.
            dests.sort_by_key(|d| (d.destination.addr, d.destination.port));
            let svc = info.service;
            let key = (svc.id.addr, svc.id.port, svc.id.protocol.number());
            let any = if svc.id.addr.is_ipv6() {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            };
            let named = names
                .get(&(svc.id.addr, svc.id.protocol.number(), svc.id.port))
                .or_else(|| names.get(&(any, svc.id.protocol.number(), svc.id.port)));
            let persistent = svc.flags.contains(ServiceFlags::PERSISTENT);
            let view = ServiceView {
                service: named.map(|n| n.name.clone()).unwrap_or_default(),
                frontend: frontend(svc.id.addr, svc.id.port, svc.id.protocol),
                ip: svc.id.addr,
                port: svc.id.port,
                protocol: svc.id.protocol.to_string(),
                scheduler: svc.scheduler.clone(),
                kind: named.map(|n| n.kind.to_string()).unwrap_or_default(),
                scope: match named.map(|n| n.kind) {
                    Some(FrontendKind::ClusterIp) | None => "internal",
                    Some(_) => "external",
                }
                .to_owned(),
                service_id: 0,
                affinity_timeout_s: persistent.then_some(svc.timeout),
                source_ranges: Vec::new(),
                backends: dests
                    .iter()
                    .filter(|d| d.destination.weight > 0)
                    .map(|d| SocketAddr::new(d.destination.addr, d.destination.port))
                    .collect(),
                endpoints: endpoints(&dests),
                stats: Some(traffic(&info.stats)),
                rate: None,
                ipvs: Some(IpvsView {
                    scheduler: svc.scheduler,
                    persistent,
                    timeout_s: svc.timeout,
                    netmask: svc.netmask,
                    counters: counters(&info.stats),
                    destinations: dests.iter().map(destination).collect(),
                }),
            };
            (key, view)
        })
        .collect();
    out.sort_by_key(|(key, _)| *key);
    out.into_iter().map(|(_, v)| v).collect()
}

/// The model frontend's form (`10.96.0.10:80/TCP`); another protocol in the same shape.
fn frontend(addr: IpAddr, port: u16, protocol: Protocol) -> String {
    match sets::model_protocol(protocol) {
        Some(p) => FrontendKey::internal(addr, port, p).to_string(),
        None => format!("{}/{protocol}", SocketAddr::new(addr, port)),
    }
}

/// The destinations as the listing's backends: the ones taking connections first,
/// then the draining ones (weight 0: the backend keeps a removed destination until
/// its connections end or its grace period runs out), each by address.
fn endpoints(dests: &[DestinationInfo]) -> Vec<EndpointView> {
    let mut out: Vec<EndpointView> = dests
        .iter()
        .map(|d| EndpointView {
            address: SocketAddr::new(d.destination.addr, d.destination.port),
            weight: d.destination.weight,
            state: if d.destination.weight > 0 {
                EndpointState::Serving
            } else {
                EndpointState::Draining
            },
            active_connections: Some(d.active_connections),
            inactive_connections: Some(d.inactive_connections),
            stats: Some(traffic(&d.stats)),
            rate: None,
        })
        .collect();
    out.sort_by_key(|e| (e.state, e.address));
    out
}

fn destination(d: &DestinationInfo) -> IpvsDestinationView {
    let dest = &d.destination;
    IpvsDestinationView {
        address: SocketAddr::new(dest.addr, dest.port),
        forward: match dest.forward {
            ForwardMethod::Masquerade => "masquerade",
            ForwardMethod::Local => "local",
            ForwardMethod::Tunnel => "tunnel",
            ForwardMethod::DirectRoute => "route",
            ForwardMethod::Other(_) => "other",
        }
        .to_owned(),
        weight: dest.weight,
        active_connections: d.active_connections,
        inactive_connections: d.inactive_connections,
        persistent_connections: d.persistent_connections,
        counters: counters(&d.stats),
    }
}

/// IPVS's counters as the listing's: it sees every packet both ways.
fn traffic(s: &Stats) -> TrafficStats {
    TrafficStats::all(
        s.connections,
        (s.packets_in, s.packets_out),
        (s.bytes_in, s.bytes_out),
    )
}

fn counters(s: &Stats) -> IpvsCounters {
    IpvsCounters {
        connections: s.connections,
        packets_in: s.packets_in,
        packets_out: s.packets_out,
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::ipvs::netlink::{Destination, Service, ServiceId};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn info(protocol: Protocol, addr: &str, port: u16, persistent: Option<u32>) -> ServiceInfo {
        let id = ServiceId {
            protocol,
            addr: ip(addr),
            port,
        };
        let mut service = Service::new(id, "rr");
        if let Some(timeout) = persistent {
            service.flags = ServiceFlags::PERSISTENT;
            service.timeout = timeout;
        }
        ServiceInfo {
            service,
            stats: Stats {
                connections: 12,
                packets_in: 100,
                packets_out: 90,
                bytes_in: 6400,
                bytes_out: 12800,
                cps: 3,
                ..Stats::default()
            },
        }
    }

    fn dest(addr: &str, port: u16, weight: u32, active: u32, inactive: u32) -> DestinationInfo {
        DestinationInfo {
            destination: Destination {
                weight,
                ..Destination::masquerade(ip(addr), port)
            },
            active_connections: active,
            inactive_connections: inactive,
            persistent_connections: 0,
            stats: Stats {
                connections: 6,
                ..Stats::default()
            },
        }
    }

    #[test]
    fn virtual_servers_become_the_listing_with_names_persistence_and_counters() {
        let names = Names::from([(
            (ip("10.96.0.10"), 6, 80),
            Named {
                kind: FrontendKind::ClusterIp,
                name: "default/web:http".into(),
            },
        )]);
        let servers = vec![
            (info(Protocol::Udp, "10.96.0.53", 53, None), Vec::new()),
            (
                info(Protocol::Tcp, "10.96.0.10", 80, Some(10_800)),
                vec![
                    dest("10.244.1.5", 8080, 1, 1, 0),
                    dest("10.244.2.5", 8080, 0, 0, 2),
                ],
            ),
            (info(Protocol::Sctp, "10.96.0.10", 9, None), Vec::new()),
        ];
        let v = views(servers, &names);
        let frontends: Vec<&str> = v.iter().map(|s| s.frontend.as_str()).collect();
        assert_eq!(
            frontends,
            [
                "10.96.0.10:9/SCTP",
                "10.96.0.10:80/TCP",
                "10.96.0.53:53/UDP"
            ]
        );
        let web = &v[1];
        assert_eq!(
            (web.service.as_str(), web.kind.as_str(), web.scope.as_str()),
            ("default/web:http", "ClusterIP", "internal")
        );
        assert_eq!(web.affinity_timeout_s, Some(10_800));
        // The drained destination takes no new connections: not a backend.
        let first: SocketAddr = "10.244.1.5:8080".parse().expect("an address");
        assert_eq!(web.backends, [first]);
        let ipvs = web.ipvs.as_ref().expect("IPVS details");
        assert_eq!(
            (
                ipvs.scheduler.as_str(),
                ipvs.persistent,
                ipvs.timeout_s,
                ipvs.netmask
            ),
            ("rr", true, 10_800, 32)
        );
        assert_eq!(
            ipvs.counters,
            IpvsCounters {
                connections: 12,
                packets_in: 100,
                packets_out: 90,
                bytes_in: 6400,
                bytes_out: 12800,
            }
        );
        let weights: Vec<(u32, u32, u32)> = ipvs
            .destinations
            .iter()
            .map(|d| (d.weight, d.active_connections, d.inactive_connections))
            .collect();
        assert_eq!(weights, [(1, 1, 0), (0, 0, 2)]);
        let endpoints: Vec<(u32, EndpointState, Option<u32>, Option<u32>)> = web
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.weight,
                    e.state,
                    e.active_connections,
                    e.inactive_connections,
                )
            })
            .collect();
        assert_eq!(
            endpoints,
            [
                (1, EndpointState::Serving, Some(1), Some(0)),
                (0, EndpointState::Draining, Some(0), Some(2))
            ]
        );
        assert_eq!(
            (web.scheduler.as_str(), web.protocol.as_str(), web.port),
            ("rr", "TCP", 80)
        );
        assert_eq!(ipvs.destinations[0].forward, "masquerade");
        assert_eq!(ipvs.destinations[1].counters.connections, 6);
        // Unnamed: no set member (not the agent's, or mid-write).
        assert_eq!((v[2].service.as_str(), v[2].kind.as_str()), ("", ""));
        assert_eq!(v[2].affinity_timeout_s, None);
        assert!(v[2].backends.is_empty());
    }

    #[test]
    fn the_listing_serializes_the_ebpf_fields_and_the_ipvs_ones() {
        let v = views(
            vec![(
                info(Protocol::Tcp, "fd00:96::10", 443, None),
                vec![dest("fd00:244::5", 8443, 1, 0, 0)],
            )],
            &Names::new(),
        );
        let json = serde_json::to_value(&v[0]).expect("json");
        assert_eq!(json["frontend"], "[fd00:96::10]:443/TCP");
        assert_eq!(json["service_id"], 0);
        assert_eq!(json["backends"], serde_json::json!(["[fd00:244::5]:8443"]));
        assert_eq!(json["ipvs"]["scheduler"], "rr");
        assert_eq!(json["ipvs"]["netmask"], 128);
        assert_eq!(json["ipvs"]["counters"]["bytes_out"], 12800);
        assert_eq!(
            json["ipvs"]["destinations"][0]["address"],
            "[fd00:244::5]:8443"
        );
    }
}
