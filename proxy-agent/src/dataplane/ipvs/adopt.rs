//! Reading the kernel back into frontends: what a restarted agent adopts and what a
//! full resync compares with the desired state. IPVS stores no names, so each
//! frontend is found from the set member that names it (`KUBE-CLUSTER-IP`,
//! `KUBE-EXTERNAL-IP`, `KUBE-LOAD-BALANCER`, `KUBE-NODE-PORT-*`), its virtual
//! servers from IPVS, its flags from the other sets. Whatever differs from what
//! [`super::plan`] would write (a missing member, VIP or virtual server, another
//! scheduler, destinations that disagree) reads as unnamed: drift, which the next sync
//! rewrites. A virtual server nothing names reads as an unnamed ClusterIP, which the
//! next sync removes.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnetwork::IpNetwork;

use super::kernel::{IpvsTable, SetTable, VipAddresses};
use super::netlink::{Destination, Entry, ForwardMethod, Service, ServiceFlags, ServiceId};
use super::plan::{bare, is_twin, plan};
use super::sets::{self, KubeSet};
use crate::dataplane::DataplaneError;
use crate::model::{FrontendKey, FrontendKind, Protocol, Scope, ServicePortName, VirtualService};

/// What the kernel holds of this mode, read once.
pub struct Kernel {
    /// TCP and UDP virtual servers outside `--ipvs-exclude-cidrs`, with destinations.
    pub services: BTreeMap<ServiceId, (Service, Vec<Destination>)>,
    /// The members of every set of [`sets::KUBE_SETS`], by set name.
    pub members: BTreeMap<String, Vec<Entry>>,
    /// The dummy interface's addresses.
    pub vips: BTreeSet<IpAddr>,
}

impl Kernel {
    /// Reads the virtual servers (except those `excluded` says are someone else's),
    /// the sets and the VIPs.
    pub fn read(
        table: &mut impl IpvsTable,
        set_table: &mut impl SetTable,
        addrs: &mut impl VipAddresses,
        excluded: impl Fn(&IpAddr) -> bool,
    ) -> Result<Kernel, DataplaneError> {
        let mut services = BTreeMap::new();
        for svc in table.services()? {
            if sets::model_protocol(svc.id.protocol).is_none() || excluded(&svc.id.addr) {
                continue;
            }
            let dests = table.dests(&svc.id)?;
            services.insert(svc.id, (svc, dests));
        }
        let mut members = BTreeMap::new();
        for set in &sets::KUBE_SETS {
            for v6 in [false, true] {
                let name = set.name_for(v6);
                let entries = set_table.entries(&name)?;
                members.insert(name, entries);
            }
        }
        let vips = addrs.addresses()?.into_iter().collect();
        Ok(Kernel {
            services,
            members,
            vips,
        })
    }

    fn entries(&self, set: &KubeSet, v6: bool) -> &[Entry] {
        self.members
            .get(&set.name_for(v6))
            .map_or(&[], Vec::as_slice)
    }
}

/// What [`adopt`] found.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Every frontend, as [`crate::dataplane::Dataplane::programmed`] reports it.
    pub held: BTreeMap<FrontendKey, VirtualService>,
    /// The virtual servers of each NodePort frontend.
    pub node_servers: BTreeMap<FrontendKey, Vec<ServiceId>>,
}

/// The frontends `kernel` holds on a node whose NodePort addresses are `node_ips`
/// (empty when not known yet: a NodePort is then whatever virtual servers carry its
/// port); `service` is the virtual server the backend would write.
pub fn adopt(
    kernel: &Kernel,
    node_ips: &[IpAddr],
    service: impl Fn(ServiceId, Option<u32>) -> Service,
) -> Adopted {
    let present: HashSet<(&str, Entry)> = kernel
        .members
        .iter()
        .flat_map(|(set, entries)| entries.iter().map(move |e| (set.as_str(), bare(e))))
        .collect();
    let ranges = source_ranges(kernel);
    let mut out = Adopted::default();
    let mut claimed: BTreeSet<ServiceId> = BTreeSet::new();
    let read = Reader {
        kernel,
        present: &present,
        service: &service,
        node_ips,
    };

    let addressed = [
        (FrontendKind::ClusterIp, sets::CLUSTER_IP, None),
        (
            FrontendKind::ExternalIp,
            sets::EXTERNAL_IP,
            Some(sets::EXTERNAL_IP_LOCAL),
        ),
        (
            FrontendKind::LoadBalancer,
            sets::LOAD_BALANCER,
            Some(sets::LOAD_BALANCER_LOCAL),
        ),
    ];
    for (kind, set, local) in addressed {
        for v6 in [false, true] {
            for e in kernel.entries(&set, v6) {
                let (Some(ip), Some(proto), Some(port)) = (e.ip, e.protocol, e.port) else {
                    continue;
                };
                let Some(protocol) = sets::model_protocol(proto) else {
                    continue;
                };
                let id = ServiceId {
                    protocol: proto,
                    addr: ip,
                    port,
                };
                if !kernel.services.contains_key(&id) || !claimed.insert(id) {
                    continue;
                }
                let scope = match kind {
                    FrontendKind::ClusterIp => Scope::Internal,
                    _ => Scope::External,
                };
                let frontend = FrontendKey {
                    ip,
                    port,
                    protocol,
                    scope,
                };
                let vip_port = Entry::ip_port(ip, proto, port);
                let node_local = local.is_some_and(|l| read.has(&l, v6, &vip_port));
                let source_ranges = if kind == FrontendKind::LoadBalancer
                    && read.has(&sets::LOAD_BALANCER_FW, v6, &vip_port)
                {
                    ranges.get(&id).cloned().unwrap_or_default()
                } else {
                    Vec::new()
                };
                let vs = read.frontend(
                    e.comment.as_deref(),
                    frontend,
                    kind,
                    &[id],
                    node_local,
                    source_ranges,
                );
                out.held.insert(frontend, vs);
            }
        }
    }

    let node_port_sets = [
        (
            Protocol::Tcp,
            sets::NODE_PORT_TCP,
            sets::NODE_PORT_LOCAL_TCP,
        ),
        (
            Protocol::Udp,
            sets::NODE_PORT_UDP,
            sets::NODE_PORT_LOCAL_UDP,
        ),
    ];
    for (protocol, set, local) in node_port_sets {
        let proto = sets::ipvs_protocol(protocol);
        for v6 in [false, true] {
            for e in kernel.entries(&set, v6) {
                let Some(port) = e.port else { continue };
                let ids: Vec<ServiceId> = kernel
                    .services
                    .keys()
                    .filter(|id| {
                        id.protocol == proto
                            && id.port == port
                            && id.addr.is_ipv6() == v6
                            && !claimed.contains(id)
                    })
                    .copied()
                    .collect();
                if ids.is_empty() {
                    continue;
                }
                claimed.extend(ids.iter().copied());
                let frontend = FrontendKey {
                    ip: unspecified(v6),
                    port,
                    protocol,
                    scope: Scope::External,
                };
                let node_local = read.has(&local, v6, &Entry::port(port));
                let vs = read.frontend(
                    e.comment.as_deref(),
                    frontend,
                    FrontendKind::NodePort,
                    &ids,
                    node_local,
                    Vec::new(),
                );
                out.held.insert(frontend, vs);
                out.node_servers.insert(frontend, ids);
            }
        }
    }

    // Virtual servers nothing names (a crash between writes, or someone else's).
    for (id, (svc, dests)) in &kernel.services {
        if claimed.contains(id) {
            continue;
        }
        let Some(protocol) = sets::model_protocol(id.protocol) else {
            continue;
        };
        let frontend = FrontendKey::internal(id.addr, id.port, protocol);
        out.held.insert(
            frontend,
            VirtualService {
                name: unnamed(),
                frontend,
                backends: live(dests),
                affinity_timeout_s: affinity(svc),
                kind: FrontendKind::ClusterIp,
                source_ranges: Vec::new(),
                node_local: false,
            },
        );
    }

    // The internal twins of the external addresses: nothing of their own in the
    // kernel, so they are whatever their external frontend is.
    let twins: Vec<VirtualService> = out
        .held
        .values()
        .filter(|s| s.frontend.scope == Scope::External)
        .map(|s| {
            twin(&VirtualService {
                frontend: FrontendKey {
                    scope: Scope::Internal,
                    ..s.frontend
                },
                ..s.clone()
            })
        })
        .collect();
    for t in twins {
        out.held.entry(t.frontend).or_insert(t);
    }
    out
}

/// What one frontend's reading needs.
struct Reader<'a, F> {
    kernel: &'a Kernel,
    present: &'a HashSet<(&'a str, Entry)>,
    service: &'a F,
    node_ips: &'a [IpAddr],
}

impl<F: Fn(ServiceId, Option<u32>) -> Service> Reader<'_, F> {
    fn has(&self, set: &KubeSet, v6: bool, entry: &Entry) -> bool {
        self.present
            .contains(&(set.name_for(v6).as_str(), bare(entry)))
    }

    /// The frontend served by the virtual servers `ids` (all present), named by
    /// `comment`; unnamed if anything differs from what the backend writes.
    fn frontend(
        &self,
        comment: Option<&str>,
        frontend: FrontendKey,
        kind: FrontendKind,
        ids: &[ServiceId],
        node_local: bool,
        mut source_ranges: Vec<IpNetwork>,
    ) -> VirtualService {
        let servers: Vec<&(Service, Vec<Destination>)> = ids
            .iter()
            .filter_map(|id| self.kernel.services.get(id))
            .collect();
        let (backends, affinity_timeout_s) = servers
            .first()
            .map(|(svc, dests)| (live(dests), affinity(svc)))
            .unwrap_or_default();
        source_ranges.sort();
        source_ranges.dedup();
        let mut vs = VirtualService {
            name: comment.and_then(sets::parse_name).unwrap_or_else(unnamed),
            frontend,
            backends,
            affinity_timeout_s,
            kind,
            source_ranges,
            node_local,
        };
        let agree = servers.iter().all(|(svc, dests)| {
            live(dests) == vs.backends && *svc == (self.service)(svc.id, vs.affinity_timeout_s)
        });
        let mut expected = plan(&vs, self.node_ips);
        let servers_right = kind != FrontendKind::NodePort
            || self.node_ips.is_empty()
            || sorted(&expected.servers) == sorted(ids);
        expected.servers = ids.to_vec();
        let complete = expected
            .members
            .iter()
            .all(|(set, m)| self.present.contains(&(set.as_str(), bare(m))))
            && expected.vips.iter().all(|ip| self.kernel.vips.contains(ip));
        if !(agree && servers_right && complete) {
            vs.name = unnamed();
        }
        vs
    }
}

fn sorted(ids: &[ServiceId]) -> Vec<ServiceId> {
    let mut v = ids.to_vec();
    v.sort();
    v
}

/// The source ranges of each load balancer virtual server, from the
/// `KUBE-LOAD-BALANCER-SOURCE-IP` and `-CIDR` sets.
fn source_ranges(kernel: &Kernel) -> BTreeMap<ServiceId, Vec<IpNetwork>> {
    let mut out: BTreeMap<ServiceId, Vec<IpNetwork>> = BTreeMap::new();
    for v6 in [false, true] {
        let host = if v6 { 128 } else { 32 };
        let sources = kernel
            .entries(&sets::LOAD_BALANCER_SOURCE_IP, v6)
            .iter()
            .map(|e| (e, Some(host)))
            .chain(
                kernel
                    .entries(&sets::LOAD_BALANCER_SOURCE_CIDR, v6)
                    .iter()
                    .map(|e| (e, e.cidr2)),
            );
        for (e, prefix) in sources {
            let (Some(ip), Some(protocol), Some(port), Some(src), Some(prefix)) =
                (e.ip, e.protocol, e.port, e.ip2, prefix)
            else {
                continue;
            };
            if let Ok(net) = IpNetwork::new(src, prefix) {
                let id = ServiceId {
                    protocol,
                    addr: ip,
                    port,
                };
                out.entry(id).or_default().push(net);
            }
        }
    }
    out
}

/// The destinations that take new connections, as backends.
fn live(dests: &[Destination]) -> Vec<SocketAddr> {
    let mut backends: Vec<SocketAddr> = dests
        .iter()
        .filter(|d| d.weight > 0 && d.forward == ForwardMethod::Masquerade)
        .map(|d| SocketAddr::new(d.addr, d.port))
        .collect();
    backends.sort();
    backends.dedup();
    backends
}

fn affinity(svc: &Service) -> Option<u32> {
    svc.flags
        .contains(ServiceFlags::PERSISTENT)
        .then_some(svc.timeout)
}

fn unspecified(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// The name of a frontend whose state drifted (or that nothing names).
pub fn unnamed() -> ServicePortName {
    ServicePortName {
        namespace: String::new(),
        name: String::new(),
        port: String::new(),
    }
}

/// An internal twin as it reads back: only its identity.
fn twin(svc: &VirtualService) -> VirtualService {
    VirtualService {
        backends: Vec::new(),
        affinity_timeout_s: None,
        source_ranges: Vec::new(),
        node_local: false,
        ..svc.clone()
    }
}

/// What of `svc` the kernel keeps, in the form [`adopt`] reads it back.
pub fn stored(svc: &VirtualService) -> Cow<'_, VirtualService> {
    if is_twin(svc) {
        return Cow::Owned(twin(svc));
    }
    // No set says a ClusterIP is internalTrafficPolicy Local: its backends do.
    let local_cluster_ip = svc.kind == FrontendKind::ClusterIp && svc.node_local;
    let ranges_sorted = svc.source_ranges.windows(2).all(|w| w[0] < w[1]);
    if !local_cluster_ip && ranges_sorted {
        return Cow::Borrowed(svc);
    }
    let mut source_ranges = svc.source_ranges.clone();
    source_ranges.sort();
    source_ranges.dedup();
    Cow::Owned(VirtualService {
        node_local: svc.node_local && !local_cluster_ip,
        source_ranges,
        ..svc.clone()
    })
}
