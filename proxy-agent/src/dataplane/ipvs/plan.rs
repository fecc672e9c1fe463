//! What one frontend puts in the kernel in kube-proxy's IPVS mode, computed without
//! touching it: its virtual servers, the VIPs it needs on the dummy interface, and its
//! members in kube-proxy's ipsets (which the constant netfilter rules match).
//!
//! - ClusterIP: a virtual server at the VIP, the VIP on the dummy interface, a
//!   `KUBE-CLUSTER-IP` member naming the service (masquerade unless from the cluster
//!   CIDR), the VIP in `KUBE-IPVS-IPS`.
//! - ExternalIP and LoadBalancer IP (external scope): the same at that address, in
//!   `KUBE-EXTERNAL-IP` or `KUBE-LOAD-BALANCER`, also in their `-LOCAL` set under
//!   `externalTrafficPolicy: Local` (not masqueraded: the client's address is kept),
//!   and with source ranges in `KUBE-LOAD-BALANCER-FW` plus one
//!   `KUBE-LOAD-BALANCER-SOURCE-IP`/`-CIDR` member per range.
//! - NodePort (external scope): one virtual server per node address of the family, the
//!   port in `KUBE-NODE-PORT-TCP`/`-UDP` (and `-LOCAL-`), no VIP.
//! - The internal-scope twin of an external address: nothing. IPVS has one virtual
//!   server per address and port, so every client gets the external frontend's
//!   backends (kube-proxy's IPVS mode applies `externalTrafficPolicy` to in-cluster
//!   clients of those addresses too).
//!
//! Every endpoint of a programmed frontend is in `KUBE-LOOP-BACK` (`ep,proto:port,ep`),
//! so that a pod reaching itself through its service is masqueraded (hairpin).

use std::net::{IpAddr, SocketAddr};

use super::netlink::{Entry, ServiceId};
use super::sets::{self, KubeSet};
use crate::model::{FrontendKind, Protocol, Scope, VirtualService};

/// What one frontend programs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Its virtual servers, each with the frontend's backends.
    pub servers: Vec<ServiceId>,
    /// Addresses it needs on the dummy interface.
    pub vips: Vec<IpAddr>,
    /// `(set, member)`: the members that name the service carry its name as comment.
    pub members: Vec<(String, Entry)>,
}

/// Whether a frontend is the internal twin of an external address, which programs
/// nothing of its own (see the module's documentation).
pub fn is_twin(svc: &VirtualService) -> bool {
    svc.frontend.scope == Scope::Internal && svc.kind != FrontendKind::ClusterIp
}

/// The plan of `svc` on a node whose NodePort addresses are `node_ips`.
pub fn plan(svc: &VirtualService, node_ips: &[IpAddr]) -> Plan {
    let mut plan = Plan::default();
    if is_twin(svc) {
        return plan;
    }
    let fe = &svc.frontend;
    let v6 = fe.ip.is_ipv6();
    let protocol = sets::ipvs_protocol(fe.protocol);
    let name = svc.name.to_string();
    let named = |set: &KubeSet, entry: Entry| (set.name_for(v6), entry.with_comment(&name));
    let vip_port = Entry::ip_port(fe.ip, protocol, fe.port);
    let server = |addr: IpAddr| ServiceId {
        protocol,
        addr,
        port: fe.port,
    };
    match svc.kind {
        FrontendKind::NodePort => {
            plan.servers = node_ips
                .iter()
                .filter(|ip| ip.is_ipv6() == v6)
                .map(|ip| server(*ip))
                .collect();
            let (all, local) = match fe.protocol {
                Protocol::Tcp => (sets::NODE_PORT_TCP, sets::NODE_PORT_LOCAL_TCP),
                Protocol::Udp => (sets::NODE_PORT_UDP, sets::NODE_PORT_LOCAL_UDP),
            };
            plan.members.push(named(&all, Entry::port(fe.port)));
            if svc.node_local {
                plan.members.push(named(&local, Entry::port(fe.port)));
            }
        }
        kind => {
            plan.servers.push(server(fe.ip));
            plan.vips.push(fe.ip);
            let (all, local) = match kind {
                FrontendKind::ExternalIp => (sets::EXTERNAL_IP, Some(sets::EXTERNAL_IP_LOCAL)),
                FrontendKind::LoadBalancer => {
                    (sets::LOAD_BALANCER, Some(sets::LOAD_BALANCER_LOCAL))
                }
                _ => (sets::CLUSTER_IP, None),
            };
            plan.members.push(named(&all, vip_port.clone()));
            if let (Some(local), true) = (local, svc.node_local) {
                plan.members.push(named(&local, vip_port.clone()));
            }
            if kind == FrontendKind::LoadBalancer && !svc.source_ranges.is_empty() {
                plan.members
                    .push(named(&sets::LOAD_BALANCER_FW, vip_port.clone()));
                for range in &svc.source_ranges {
                    let host = if v6 { 128 } else { 32 };
                    let member = if range.prefix() == host {
                        let entry = Entry::ip_port_ip(fe.ip, protocol, fe.port, range.ip());
                        (sets::LOAD_BALANCER_SOURCE_IP.name_for(v6), entry)
                    } else {
                        let entry = Entry::ip_port_net(
                            fe.ip,
                            protocol,
                            fe.port,
                            range.network(),
                            range.prefix(),
                        );
                        (sets::LOAD_BALANCER_SOURCE_CIDR.name_for(v6), entry)
                    };
                    plan.members.push(member);
                }
            }
            plan.members
                .push((sets::IPVS_IPS.name_for(v6), Entry::ip(fe.ip)));
        }
    }
    for backend in &svc.backends {
        plan.members.push(loop_back(backend, protocol));
    }
    plan
}

/// The hairpin member of an endpoint.
fn loop_back(backend: &SocketAddr, protocol: super::netlink::Protocol) -> (String, Entry) {
    (
        sets::LOOP_BACK.name_for(backend.is_ipv6()),
        Entry::ip_port_ip(backend.ip(), protocol, backend.port(), backend.ip()),
    )
}

/// A member as it is compared and counted: without its comment.
pub fn bare(entry: &Entry) -> Entry {
    Entry {
        comment: None,
        ..entry.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FrontendKey, ServicePortName};

    fn vs(kind: FrontendKind, scope: Scope, ip: &str, port: u16) -> VirtualService {
        VirtualService {
            name: ServicePortName {
                namespace: "default".into(),
                name: "web".into(),
                port: "http".into(),
            },
            frontend: FrontendKey {
                ip: ip.parse().expect("ip"),
                port,
                protocol: Protocol::Tcp,
                scope,
            },
            backends: vec!["10.244.1.5:8080".parse().expect("backend")],
            affinity_timeout_s: None,
            kind,
            source_ranges: Vec::new(),
            node_local: false,
        }
    }

    fn members(p: &Plan) -> Vec<String> {
        p.members
            .iter()
            .map(|(set, e)| format!("{set} {e} {}", e.comment.as_deref().unwrap_or("-")))
            .collect()
    }

    #[test]
    fn a_cluster_ip_has_its_server_vip_named_member_filter_address_and_hairpins() {
        let p = plan(
            &vs(FrontendKind::ClusterIp, Scope::Internal, "10.96.0.10", 80),
            &[],
        );
        assert_eq!(p.servers.len(), 1);
        assert_eq!(p.vips, ["10.96.0.10".parse::<IpAddr>().expect("ip")]);
        assert_eq!(
            members(&p),
            [
                "KUBE-CLUSTER-IP 10.96.0.10,tcp:80 default/web:http",
                "KUBE-IPVS-IPS 10.96.0.10 -",
                "KUBE-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5 -",
            ]
        );
    }

    #[test]
    fn a_local_load_balancer_with_ranges_is_in_its_local_firewall_and_source_sets() {
        let mut lb = vs(
            FrontendKind::LoadBalancer,
            Scope::External,
            "192.0.2.10",
            80,
        );
        lb.node_local = true;
        lb.source_ranges = vec![
            "198.51.100.0/24".parse().expect("cidr"),
            "203.0.113.7/32".parse().expect("cidr"),
        ];
        assert_eq!(
            members(&plan(&lb, &[])),
            [
                "KUBE-LOAD-BALANCER 192.0.2.10,tcp:80 default/web:http",
                "KUBE-LOAD-BALANCER-LOCAL 192.0.2.10,tcp:80 default/web:http",
                "KUBE-LOAD-BALANCER-FW 192.0.2.10,tcp:80 default/web:http",
                "KUBE-LOAD-BALANCER-SOURCE-CIDR 192.0.2.10,tcp:80,198.51.100.0/24 -",
                "KUBE-LOAD-BALANCER-SOURCE-IP 192.0.2.10,tcp:80,203.0.113.7 -",
                "KUBE-IPVS-IPS 192.0.2.10 -",
                "KUBE-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5 -",
            ]
        );
    }

    #[test]
    fn a_node_port_has_one_server_per_node_address_of_its_family_and_no_vip() {
        let node: Vec<IpAddr> = ["192.168.1.2", "fd00::2", "10.0.0.2"]
            .iter()
            .map(|s| s.parse().expect("ip"))
            .collect();
        let mut np = vs(FrontendKind::NodePort, Scope::External, "0.0.0.0", 30080);
        np.node_local = true;
        let p = plan(&np, &node);
        let addrs: Vec<String> = p.servers.iter().map(|s| s.addr.to_string()).collect();
        assert_eq!(addrs, ["192.168.1.2", "10.0.0.2"]);
        assert!(p.vips.is_empty());
        assert_eq!(
            members(&p),
            [
                "KUBE-NODE-PORT-TCP 30080 default/web:http",
                "KUBE-NODE-PORT-LOCAL-TCP 30080 default/web:http",
                "KUBE-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5 -",
            ]
        );
    }

    #[test]
    fn an_external_address_s_internal_twin_programs_nothing_and_ipv6_uses_the_6_sets() {
        let twin = vs(FrontendKind::ExternalIp, Scope::Internal, "192.0.2.9", 80);
        assert!(is_twin(&twin));
        assert_eq!(plan(&twin, &[]), Plan::default());
        let mut v6 = vs(FrontendKind::ExternalIp, Scope::External, "2001:db8::9", 80);
        v6.backends = vec!["[fd00::5]:8080".parse().expect("backend")];
        assert_eq!(
            members(&plan(&v6, &[])),
            [
                "KUBE-6-EXTERNAL-IP 2001:db8::9,tcp:80 default/web:http",
                "KUBE-6-IPVS-IPS 2001:db8::9 -",
                "KUBE-6-LOOP-BACK fd00::5,tcp:8080,fd00::5 -",
            ]
        );
    }
}
