//! The benchmark's service set (the measured service amid thousands of others), as the
//! agent's manifest and as the kube-proxy-style iptables ruleset it races against.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use ::tests::ServiceSpec;

use super::{HTTP_NODEPORT, HTTP_PORT, IPERF_NODEPORT, IPERF_PORT};

/// Every `NODEPORT_EVERY`-th other service is a NodePort (the rest are ClusterIP): as
/// many as fit in the default NodePort range.
const NODEPORT_EVERY: usize = 4;
/// First NodePort of the other services.
const OTHER_NODEPORT_BASE: u16 = 30_202;
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// One service of the programmed set, for both the manifest and the iptables rules.
pub(crate) struct Svc {
    /// Chain-name stem (`BENCH`, `S00042`).
    pub(crate) id: String,
    name: String,
    cluster_ip: Ipv4Addr,
    /// (name, port, target port, node port).
    pub(crate) ports: Vec<(&'static str, u16, u16, Option<u16>)>,
    endpoint: Ipv4Addr,
    node: &'static str,
}

/// The measured service (two NodePorts: the probe server and iperf3) amid `others`
/// other services, placed in the middle (kube-proxy writes services in map order, so on
/// average a service's rules sit halfway down its chains).
pub(crate) fn service_set(pod: Ipv4Addr, others: usize) -> Vec<Svc> {
    let mut svcs: Vec<Svc> = (0..others)
        .map(|i| {
            let (a, b) = (i / 250, i % 250 + 1);
            let node_port = (i % NODEPORT_EVERY == 0).then(|| {
                OTHER_NODEPORT_BASE + u16::try_from(i / NODEPORT_EVERY).expect("fits the range")
            });
            Svc {
                id: format!("S{i:05}"),
                name: format!("s{i}"),
                cluster_ip: Ipv4Addr::new(10, 97, a as u8, b as u8),
                ports: vec![("http", 80, 8080, node_port)],
                endpoint: Ipv4Addr::new(10, 245, a as u8, b as u8),
                node: "node-b",
            }
        })
        .collect();
    let bench = Svc {
        id: "BENCH".into(),
        name: "bench".into(),
        cluster_ip: CLUSTER_IP,
        ports: vec![
            ("http", 80, HTTP_PORT, Some(HTTP_NODEPORT)),
            ("iperf", IPERF_PORT, IPERF_PORT, Some(IPERF_NODEPORT)),
        ],
        endpoint: pod,
        node: "node-a",
    };
    svcs.insert(others / 2, bench);
    svcs
}

impl Svc {
    pub(crate) fn yaml(&self) -> String {
        let np = self.ports.iter().any(|p| p.3.is_some());
        let mut spec = ServiceSpec::new(&self.name, if np { "NodePort" } else { "ClusterIP" })
            .cluster_ip(IpAddr::V4(self.cluster_ip))
            .endpoint(IpAddr::V4(self.endpoint), self.node);
        for &(name, port, target, node_port) in &self.ports {
            spec = spec.port(name, port, "TCP", target, node_port);
        }
        spec.yaml()
    }
}

/// kube-proxy's iptables-mode nat table for `svcs` (`externalTrafficPolicy: Cluster`,
/// `--cluster-cidr` set, one endpoint each), in `iptables-restore` format. The rule
/// shapes are kube-proxy's (as in `tests::kube_proxy_nodeport_rules`); chain names are
/// readable stems instead of hashes.
pub(super) fn kube_proxy_rules(svcs: &[Svc]) -> String {
    let mut chains = String::new();
    let mut services = String::new();
    let mut nodeports = String::new();
    let mut rest = String::new();
    for s in svcs {
        for &(port_name, port, target, node_port) in &s.ports {
            let stem = format!("{}-{}", s.id, port_name.to_ascii_uppercase());
            let (svc, ext, sep) = (
                format!("KUBE-SVC-{stem}"),
                format!("KUBE-EXT-{stem}"),
                format!("KUBE-SEP-{stem}-E0"),
            );
            let name = format!("test/{}:{port_name}", s.name);
            let cip = s.cluster_ip;
            let be = SocketAddrV4::new(s.endpoint, target);
            let _ = writeln!(chains, ":{svc} - [0:0]\n:{sep} - [0:0]");
            let _ = writeln!(
                services,
                "-A KUBE-SERVICES -d {cip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {port} -j {svc}"
            );
            if let Some(np) = node_port {
                let _ = writeln!(chains, ":{ext} - [0:0]");
                let _ = writeln!(
                    nodeports,
                    "-A KUBE-NODEPORTS -p tcp -m comment --comment \"{name}\" -m tcp --dport {np} -j {ext}"
                );
                let _ = writeln!(
                    rest,
                    "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ\n\
                     -A {ext} -j {svc}"
                );
            }
            let _ = writeln!(
                rest,
                "-A {svc} ! -s {CLUSTER_CIDR} -d {cip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {port} -j KUBE-MARK-MASQ\n\
                 -A {svc} -m comment --comment \"{name} -> {be}\" -j {sep}\n\
                 -A {sep} -s {}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ\n\
                 -A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {be}",
                s.endpoint
            );
        }
    }
    let mut r = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    r.push_str(&chains);
    r.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    );
    r.push_str(&nodeports);
    r.push_str(&rest);
    r.push_str(&services);
    r.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         COMMIT\n",
    );
    r
}

#[cfg(test)]
mod rules {
    use super::super::OTHER_SERVICES;
    use super::*;

    #[test]
    fn a_nodeport_connection_walks_every_service_rule_first() {
        let svcs = service_set(Ipv4Addr::new(10, 244, 1, 11), 9);
        let r = kube_proxy_rules(&svcs);
        let services: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES "))
            .collect();
        // 9 one-port services, the bench service's two ports, then the NodePort jump.
        assert_eq!(services.len(), 12, "{r}");
        assert!(services[11].ends_with("--dst-type LOCAL -j KUBE-NODEPORTS"));
        assert!(r.contains(
            "-A KUBE-NODEPORTS -p tcp -m comment --comment \"test/bench:http\" -m tcp --dport 30080 -j KUBE-EXT-BENCH-HTTP"
        ));
        assert!(r.contains("-j DNAT --to-destination 10.244.1.11:5201"));
        // s0, s4, s8 are NodePorts, in order around the bench service.
        let nodeports: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with("-A KUBE-NODEPORTS "))
            .collect();
        assert_eq!(nodeports.len(), 5);
        assert!(nodeports[0].contains("--dport 30202"));
        assert!(nodeports[4].contains("--dport 30204"));
        assert!(r.lines().all(|l| l.len() < 400));
    }

    #[test]
    fn other_nodeports_stay_in_the_default_range() {
        let svcs = service_set(Ipv4Addr::new(10, 244, 1, 11), OTHER_SERVICES);
        let mut ports: Vec<u16> = svcs
            .iter()
            .flat_map(|s| &s.ports)
            .filter_map(|p| p.3)
            .collect();
        let n = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), n, "NodePorts collide");
        assert!(ports.iter().all(|p| (30_000..=32_767).contains(p)));
        assert_eq!(svcs.len(), OTHER_SERVICES + 1);
    }
}
