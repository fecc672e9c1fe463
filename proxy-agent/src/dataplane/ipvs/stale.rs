//! The IPVS mode's half of the UDP conntrack reconciler
//! ([`crate::dataplane::netfilter::reconciler`]): which virtual servers are UDP and
//! who may answer them, and when a pass is due.
//!
//! kube-proxy runs a pass at the end of every sync. A stale entry can only appear
//! when a UDP frontend's backends change (an endpoint left, or a service without
//! endpoints got some), so a pass runs at the end of a sync that changed one, at
//! every full resync (which also catches what an earlier pass could not delete), and
//! at the first sync after a start (an agent that was down missed the changes).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::netlink::ServiceId;
use crate::dataplane::netfilter::conntrack::Family;
use crate::dataplane::netfilter::reconciler::{ConntrackReconciler, ReconcilerMetrics, UdpServers};
use crate::model::{Protocol, VirtualService};

/// When passes are due, and the reconciler that runs them.
#[derive(Debug)]
pub struct StaleUdp {
    reconciler: ConntrackReconciler,
    due: bool,
}

impl Default for StaleUdp {
    fn default() -> Self {
        StaleUdp {
            reconciler: ConntrackReconciler::default(),
            // The first sync after a start.
            due: true,
        }
    }
}

impl StaleUdp {
    /// Its series, to register.
    pub fn metrics(&self) -> &ReconcilerMetrics {
        self.reconciler.metrics()
    }

    /// `new` was programmed over `old` (`None`: it is new): a pass is due if it is UDP
    /// and its backends changed.
    pub fn programmed(&mut self, old: Option<&VirtualService>, new: &VirtualService) {
        if new.frontend.protocol == Protocol::Udp && old.is_none_or(|o| o.backends != new.backends)
        {
            self.due = true;
        }
    }

    /// A full resync: a pass is due whatever changed.
    pub fn resync(&mut self) {
        self.due = true;
    }

    /// Runs the pass if one is due, over `servers` (see [`udp_servers`]); a pass that
    /// did not finish stays due.
    pub fn run_if_due(&mut self, servers: impl FnOnce() -> BTreeMap<Family, UdpServers>) {
        if !self.due {
            return;
        }
        let servers = servers();
        self.due = !servers.is_empty() && !self.reconciler.run(&servers);
    }
}

/// The UDP virtual servers by family: each `(frontend, its virtual servers)` of
/// `programmed` that is UDP maps each virtual server's address and port to the
/// frontend's backends.
pub fn udp_servers<'a>(
    programmed: impl IntoIterator<Item = (&'a VirtualService, Vec<ServiceId>)>,
) -> BTreeMap<Family, UdpServers> {
    let mut out: BTreeMap<Family, UdpServers> = BTreeMap::new();
    for (svc, servers) in programmed {
        if svc.frontend.protocol != Protocol::Udp {
            continue;
        }
        for id in servers {
            let family = if id.addr.is_ipv4() {
                Family::Ipv4
            } else {
                Family::Ipv6
            };
            out.entry(family)
                .or_default()
                .entry(SocketAddr::new(id.addr, id.port))
                .or_default()
                .extend(svc.backends.iter().copied());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::dataplane::ipvs::netlink::Protocol as IpvsProtocol;
    use crate::model::{FrontendKey, FrontendKind, ServicePortName};

    fn svc(vip: &str, port: u16, protocol: Protocol, backends: &[&str]) -> VirtualService {
        let ip: IpAddr = vip.parse().unwrap_or_else(|e| panic!("{vip}: {e}"));
        VirtualService {
            name: ServicePortName {
                namespace: "test".to_owned(),
                name: "dns".to_owned(),
                port: "dns".to_owned(),
            },
            frontend: FrontendKey::internal(ip, port, protocol),
            backends: backends
                .iter()
                .map(|b| b.parse().unwrap_or_else(|e| panic!("{b}: {e}")))
                .collect(),
            affinity_timeout_s: None,
            kind: FrontendKind::ClusterIp,
            source_ranges: Vec::new(),
            node_local: false,
        }
    }

    fn id(addr: &str, port: u16) -> ServiceId {
        ServiceId {
            protocol: IpvsProtocol::Udp,
            addr: addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}")),
            port,
        }
    }

    #[test]
    fn each_udp_virtual_server_maps_to_its_frontends_backends_by_family() {
        let dns = svc("10.96.0.10", 53, Protocol::Udp, &["10.244.1.5:5353"]);
        let web = svc("10.96.0.10", 80, Protocol::Tcp, &["10.244.1.5:8080"]);
        let dns6 = svc("fd00::10", 53, Protocol::Udp, &["[fd00:244::5]:5353"]);
        // A NodePort: one virtual server per node address.
        let np = svc("0.0.0.0", 30053, Protocol::Udp, &["10.244.2.5:5353"]);
        let got = udp_servers([
            (&dns, vec![id("10.96.0.10", 53)]),
            (&web, vec![id("10.96.0.10", 80)]),
            (&dns6, vec![id("fd00::10", 53)]),
            (&np, vec![id("192.0.2.1", 30053), id("192.0.2.2", 30053)]),
        ]);
        let sa = |s: &str| -> SocketAddr { s.parse().unwrap_or_else(|e| panic!("{s}: {e}")) };
        let v4 = &got[&Family::Ipv4];
        assert_eq!(v4.len(), 3, "{v4:?}");
        assert!(v4[&sa("10.96.0.10:53")].contains(&sa("10.244.1.5:5353")));
        assert!(v4[&sa("192.0.2.2:30053")].contains(&sa("10.244.2.5:5353")));
        assert!(
            !v4.contains_key(&sa("10.96.0.10:80")),
            "TCP is not reconciled"
        );
        assert_eq!(got[&Family::Ipv6].len(), 1);
    }

    #[test]
    fn a_pass_is_due_at_start_on_a_udp_backend_change_and_at_a_resync() {
        let mut s = StaleUdp::default();
        // Due at start; with nothing UDP there is nothing to run and nothing left due.
        s.run_if_due(BTreeMap::new);
        assert!(!s.due);
        let old = svc("10.96.0.10", 53, Protocol::Udp, &["10.244.1.5:5353"]);
        s.programmed(Some(&old), &old);
        assert!(!s.due, "unchanged");
        let tcp = svc("10.96.0.10", 80, Protocol::Tcp, &[]);
        s.programmed(None, &tcp);
        assert!(!s.due, "TCP");
        let new = svc("10.96.0.10", 53, Protocol::Udp, &["10.244.2.5:5353"]);
        s.programmed(Some(&old), &new);
        assert!(s.due, "a backend changed");
        s.due = false;
        s.programmed(None, &old);
        assert!(s.due, "a new UDP frontend");
        s.due = false;
        s.resync();
        assert!(s.due);
    }
}
