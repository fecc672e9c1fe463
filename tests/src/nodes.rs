//! A two-node "cluster" with an external client, for the NodePort / tc data plane.
//!
//! ```text
//!  lan netns:  bridge lan0 (192.0.2.0/24, 2001:db8::/64: the external network)
//!    |-- v-client <-> eth0 in client   192.0.2.100  2001:db8::100
//!    |-- v-node-a <-> eth0 in node-a   192.0.2.1    2001:db8::1
//!    |-- v-node-b <-> eth0 in node-b   192.0.2.2    2001:db8::2
//!
//!  node-a:  cbr0 10.244.1.1/24 fd00:244:1::1/64, forwarding on
//!             |-- vp0 <-> eth0 in a-pod-0   10.244.1.11  fd00:244:1::11
//!             |-- vp1 <-> eth0 in a-pod-1   10.244.1.12  fd00:244:1::12 ...
//!           route 10.244.2.0/24 via 192.0.2.2, fd00:244:2::/64 via 2001:db8::2
//!  node-b:  cbr0 10.244.2.1/24 fd00:244:2::1/64, pods b-pod-0 (10.244.2.11), ...
//!           route 10.244.1.0/24 via 192.0.2.1, fd00:244:1::/64 via 2001:db8::1
//! ```
//!
//! Pods reach pods of the other node without NAT. The external network exists only
//! inside these namespaces (documentation ranges). Every veth is created directly inside
//! the namespaces (`ip -n A link add X type veth peer name Y netns B`), so no name is
//! ever used in the root namespace.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::topology::{PodLink, attach_pod, check_handshakes};
use crate::{ChildGuard, Netns, Pod, probe_bin, run, tool, unique_name};

/// How long [`NodesTopology::client_probe`] lets a probe run.
const PROBE_RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// IPv4 last octet of the first pod of a node.
const FIRST_POD_HOST: u8 = 11;
/// Sysctls that turn duplicate address detection off; set before adding addresses.
const NO_DAD: [(&str, &str); 2] = [
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
];

/// A node namespace: `eth0` on the external network, `cbr0` with its pods.
#[derive(Debug)]
pub struct Node {
    /// The node's pods (`a-pod-0`, ... on node-a; `b-pod-0`, ... on node-b); their
    /// `host_veth` (`vp<n>`) is in the node namespace, enslaved to `cbr0`.
    pub pods: Vec<Pod>,
    /// The node's namespace.
    pub netns: Netns,
    /// `node-a` or `node-b`.
    pub name: String,
    /// Address of `eth0` on the external network.
    pub ipv4: Ipv4Addr,
    /// Address of `eth0` on the external network.
    pub ipv6: Ipv6Addr,
    /// Address of `cbr0`, the pods' IPv4 gateway.
    pub gateway_v4: Ipv4Addr,
    /// Address of `cbr0`, the pods' IPv6 gateway.
    pub gateway_v6: Ipv6Addr,
}

impl Node {
    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }
}

/// Two nodes, an external client and the LAN joining them; see the module docs for
/// addresses. Everything is removed on drop (pods, nodes, client, then the LAN).
#[derive(Debug)]
pub struct NodesTopology {
    /// `node-a` (192.0.2.1) and `node-b` (192.0.2.2).
    pub nodes: [Node; 2],
    /// The external client's namespace (`eth0` on the LAN).
    pub client: Netns,
    /// The client's address.
    pub client_v4: Ipv4Addr,
    /// The client's address.
    pub client_v6: Ipv6Addr,
    /// The LAN namespace holding bridge `lan0`.
    pub lan: Netns,
}

impl NodesTopology {
    /// Name of the LAN bridge in [`lan`](Self::lan).
    pub const LAN_BRIDGE: &'static str = "lan0";
    /// Name of the pod bridge in each node.
    pub const POD_BRIDGE: &'static str = "cbr0";
    /// The client's IPv4 address.
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
    /// The agent flags that put its tc programs on a node of this topology: NodePorts on
    /// the LAN addresses, the pod-facing program on the pod bridge.
    pub const AGENT_FLAGS: &'static [&'static str] = &[
        "--nodeport-addresses",
        "192.0.2.0/24,2001:db8::/64",
        "--pod-interfaces",
        "cbr0",
    ];
    /// The client's IPv6 address.
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);

    /// Builds the LAN, the client, both nodes and `pods_per_node` pods on each, and checks
    /// (TCP handshakes, bounded) that the client reaches each node over IPv4 and IPv6 and
    /// that node-a reaches a pod of node-b, before returning.
    ///
    /// # Panics
    /// If any step fails (what was made so far is removed), or `pods_per_node` > 200.
    pub fn new(tag: &str, pods_per_node: usize) -> Self {
        assert!(
            pods_per_node <= 200,
            "too many pods per node ({pods_per_node})"
        );
        let lan = Netns::new(&format!("{tag}-lan"));
        lan.sysctls(&NO_DAD);
        lan.ip(&["link", "add", Self::LAN_BRIDGE, "type", "bridge"]);
        lan.ip(&["link", "set", Self::LAN_BRIDGE, "up"]);

        let client = Netns::new(&format!("{tag}-client"));
        client.sysctls(&NO_DAD);
        attach_to_lan(&lan, &client, "v-client");
        add_addrs(
            &client,
            "eth0",
            &format!("{}/24", Self::CLIENT_V4),
            &format!("{}/64", Self::CLIENT_V6),
        );
        client.ip(&["link", "set", "eth0", "up"]);

        let node_a = make_node(&lan, tag, 0, pods_per_node);
        let node_b = make_node(&lan, tag, 1, pods_per_node);
        route_pods_via(&node_a, &node_b);
        route_pods_via(&node_b, &node_a);

        let topo = Self {
            nodes: [node_a, node_b],
            client,
            client_v4: Self::CLIENT_V4,
            client_v6: Self::CLIENT_V6,
            lan,
        };
        for node in &topo.nodes {
            check_handshakes(
                &topo.client,
                "client",
                &node.netns,
                &node.name,
                &[IpAddr::V4(node.ipv4), IpAddr::V6(node.ipv6)],
            );
        }
        let [a, b] = &topo.nodes;
        if let Some(pod) = b.pods.first() {
            check_handshakes(
                &a.netns,
                &a.name,
                &pod.netns,
                &pod.name,
                &[IpAddr::V4(pod.ipv4), IpAddr::V6(pod.ipv6)],
            );
        }
        topo
    }

    /// node-a.
    pub fn node_a(&self) -> &Node {
        &self.nodes[0]
    }

    /// node-b.
    pub fn node_b(&self) -> &Node {
        &self.nodes[1]
    }

    /// Every pod of both nodes, node-a's first.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    /// Runs a probe server on every pod of both nodes ([`Pod::serve`]), each answering
    /// with its pod name.
    pub fn serve_pods(&self, tcp_ports: &[u16], udp_ports: &[u16]) -> Vec<ChildGuard> {
        self.pods().map(|p| p.serve(tcp_ports, udp_ports)).collect()
    }

    /// Runs `probe <args>` in the client namespace (no cgroup) and returns its output
    /// (check `status` yourself). Parse the lines with
    /// [`ProbeReply::parse_all`](crate::ProbeReply::parse_all).
    ///
    /// # Panics
    /// If it does not finish within 120 s.
    pub fn client_probe(&self, args: &[&str]) -> Output {
        run(
            &self.client,
            None,
            Command::new(probe_bin()).args(args),
            PROBE_RUN_TIMEOUT,
        )
    }

    /// Adds a route in the client for `cidr` (IPv4 or IPv6) via `node`'s LAN address of
    /// that family: how an external client reaches service addresses (ClusterIPs,
    /// external IPs, LoadBalancer IPs) or pod IPs through a node.
    ///
    /// # Panics
    /// If `ip route add` fails.
    pub fn route_client_via(&self, cidr: &str, node: &Node) {
        if cidr.contains(':') {
            self.client
                .ip(&["-6", "route", "add", cidr, "via", &node.ipv6.to_string()]);
        } else {
            self.client
                .ip(&["route", "add", cidr, "via", &node.ipv4.to_string()]);
        }
    }

    /// Names of every namespace of the topology, for checks that they are gone.
    pub fn netns_names(&self) -> Vec<String> {
        let mut names = vec![self.lan.name().to_owned(), self.client.name().to_owned()];
        for node in &self.nodes {
            names.push(node.netns.name().to_owned());
            names.extend(node.pods.iter().map(|p| p.netns.name().to_owned()));
        }
        names
    }
}

/// Creates veth `lan_veth` in `lan` (enslaved to `lan0`, up) with peer `eth0` in `ns`.
fn attach_to_lan(lan: &Netns, ns: &Netns, lan_veth: &str) {
    lan.ip(&[
        "link",
        "add",
        lan_veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ]);
    lan.ip(&[
        "link",
        "set",
        lan_veth,
        "master",
        NodesTopology::LAN_BRIDGE,
        "up",
    ]);
}

fn add_addrs(ns: &Netns, dev: &str, v4: &str, v6: &str) {
    ns.ip(&["addr", "add", v4, "dev", dev]);
    ns.ip(&["-6", "addr", "add", v6, "dev", dev, "nodad"]);
}

/// IPv6 address `prefix::<host>` whose last group spells `host` in decimal digits.
fn ipv6_spelled(prefix: [u16; 3], host: u8) -> Ipv6Addr {
    let last = u16::from_str_radix(&host.to_string(), 16).expect("decimal digits are hex");
    Ipv6Addr::new(prefix[0], prefix[1], prefix[2], 0, 0, 0, 0, last)
}

/// Node `index` (0: node-a, 1: node-b) with its pods.
fn make_node(lan: &Netns, tag: &str, index: u8, pods_per_node: usize) -> Node {
    let letter = if index == 0 { 'a' } else { 'b' };
    let name = format!("node-{letter}");
    let host = index + 1;
    let subnet = index + 1;
    let ipv4 = Ipv4Addr::new(192, 0, 2, host);
    let ipv6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(host));
    let gateway_v4 = Ipv4Addr::new(10, 244, subnet, 1);
    let gateway_v6 = Ipv6Addr::new(0xfd00, 0x244, u16::from(subnet), 0, 0, 0, 0, 1);
    let netns = Netns::new(&format!("{tag}-{name}"));
    netns.sysctls(&[
        NO_DAD[0],
        NO_DAD[1],
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
    ]);
    let mut node = Node {
        pods: Vec::new(),
        netns,
        name,
        ipv4,
        ipv6,
        gateway_v4,
        gateway_v6,
    };
    attach_to_lan(lan, &node.netns, &format!("v-node-{letter}"));
    let ns = &node.netns;
    add_addrs(ns, "eth0", &format!("{ipv4}/24"), &format!("{ipv6}/64"));
    ns.ip(&["link", "set", "eth0", "up"]);
    let br = NodesTopology::POD_BRIDGE;
    ns.ip(&["link", "add", br, "type", "bridge"]);
    add_addrs(
        ns,
        br,
        &format!("{gateway_v4}/24"),
        &format!("{gateway_v6}/64"),
    );
    ns.ip(&["link", "set", br, "up"]);
    for i in 0..pods_per_node {
        let host = FIRST_POD_HOST + u8::try_from(i).expect("at most 200 pods");
        let pod = make_pod(&node, tag, &format!("{letter}-pod-{i}"), i, host);
        node.pods.push(pod);
    }
    node
}

fn make_pod(node: &Node, tag: &str, name: &str, index: usize, host: u8) -> Pod {
    let subnet = node.gateway_v4.octets()[2];
    attach_pod(
        tag,
        name,
        &PodLink {
            node: &node.netns,
            bridge: NodesTopology::POD_BRIDGE,
            host_veth: &format!("vp{index}"),
            ipv4: Ipv4Addr::new(10, 244, subnet, host),
            ipv6: ipv6_spelled([0xfd00, 0x244, u16::from(subnet)], host),
            gateway_v4: node.gateway_v4,
            gateway_v6: node.gateway_v6,
        },
    )
}

/// Routes `other`'s pod CIDRs from `node` via `other`'s LAN addresses.
fn route_pods_via(node: &Node, other: &Node) {
    let subnet = other.gateway_v4.octets()[2];
    node.netns.ip(&[
        "route",
        "add",
        &format!("10.244.{subnet}.0/24"),
        "via",
        &other.ipv4.to_string(),
    ]);
    node.netns.ip(&[
        "-6",
        "route",
        "add",
        &format!("fd00:244:{subnet}::/64"),
        "via",
        &other.ipv6.to_string(),
    ]);
}

/// The start of a kube-proxy nat table: its fixed chains and `chains`, the jumps from
/// the built-in chains, and masquerading of marked traffic.
fn nat_prelude<'a>(chains: impl Iterator<Item = &'a str>) -> String {
    let mut r = String::from("*nat\n");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ]
    .into_iter()
    .chain(chains)
    {
        let _ = writeln!(r, ":{chain} - [0:0]");
    }
    r.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    );
    r
}

/// The kube-proxy-style ruleset of [`install_kube_proxy_nodeport`], in
/// `iptables-restore` format.
pub fn kube_proxy_nodeport_rules(
    node_ip: Ipv4Addr,
    port: u16,
    backends: &[SocketAddrV4],
) -> String {
    kube_proxy_nodeports_rules(node_ip, &[("tcp", port, backends)])
}

/// Like [`kube_proxy_nodeport_rules`] for several NodePorts in one nat table, each
/// `(protocol, port, backends)` with protocol `tcp` or `udp`.
///
/// # Panics
/// If a protocol is neither.
pub fn kube_proxy_nodeports_rules(
    node_ip: Ipv4Addr,
    ports: &[(&str, u16, &[SocketAddrV4])],
) -> String {
    struct Chains {
        proto: String,
        port: u16,
        svc: String,
        ext: String,
        seps: Vec<String>,
    }
    let chains: Vec<Chains> = ports
        .iter()
        .map(|&(proto, port, backends)| {
            // TCP keeps the names of the single-port ruleset.
            let stem = match proto {
                "tcp" => format!("NP{port}"),
                "udp" => format!("NPU{port}"),
                other => panic!("kube-proxy NodePort rules for {other:?}: want tcp or udp"),
            };
            Chains {
                proto: proto.to_owned(),
                port,
                svc: format!("KUBE-SVC-{stem}"),
                ext: format!("KUBE-EXT-{stem}"),
                seps: (0..backends.len())
                    .map(|i| format!("KUBE-SEP-{stem}-E{i}"))
                    .collect(),
            }
        })
        .collect();
    let mut r = nat_prelude(chains.iter().flat_map(|c| {
        [c.ext.as_str(), c.svc.as_str()]
            .into_iter()
            .chain(c.seps.iter().map(String::as_str))
    }));
    for (c, &(_, _, backends)) in chains.iter().zip(ports) {
        let (proto, port, ext, svc) = (&c.proto, c.port, &c.ext, &c.svc);
        let name = format!("default/np-{port}:{proto}");
        let comment = format!("\"{name}\"");
        let _ = writeln!(
            r,
            "-A KUBE-NODEPORTS -p {proto} -m comment --comment {comment} -m {proto} --dport {port} -j {ext}"
        );
        let _ = writeln!(
            r,
            "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(r, "-A {ext} -j {svc}");
        let all: Vec<(&SocketAddrV4, &String)> = backends.iter().zip(&c.seps).collect();
        write_spread(&mut r, svc, &name, &all);
        write_seps(&mut r, proto, &comment, &all);
    }
    // kube-proxy matches NodePorts on every local address (`--nodeport-addresses` unset);
    // node_ip only documents which address the test uses.
    let _ = writeln!(
        r,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain; node {node_ip}\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    r.push_str("COMMIT\n");
    r
}

/// Programs, inside `node` only, a NodePort `port`/TCP the way kube-proxy's iptables mode
/// does for `externalTrafficPolicy: Cluster`: nat chains `KUBE-SERVICES`,
/// `KUBE-NODEPORTS`, `KUBE-EXT-*`, `KUBE-SVC-*` (random `statistic` spread) and
/// `KUBE-SEP-*` (DNAT), jumps from `PREROUTING` and `OUTPUT`, and `KUBE-MARK-MASQ`
/// (mark 0x4000) with `KUBE-POSTROUTING` MASQUERADE. Deliberately *without* the
/// `--ctstate INVALID -j DROP` rule. Replaces the namespace's nat table.
///
/// # Panics
/// If `backends` is empty or `iptables-restore` fails.
pub fn install_kube_proxy_nodeport(
    node: &Netns,
    node_ip: Ipv4Addr,
    port: u16,
    backends: &[SocketAddrV4],
) {
    assert!(
        !backends.is_empty(),
        "a NodePort needs at least one backend"
    );
    install_iptables(node, &kube_proxy_nodeport_rules(node_ip, port, backends));
}

/// The kube-proxy iptables-mode ruleset for a NodePort `port`/TCP with
/// `externalTrafficPolicy: Local`, in `iptables-restore` format.
///
/// `backends` are all the endpoints, each with whether it runs on this node. As
/// kube-proxy writes it (with `--cluster-cidr` as its local-traffic detector):
/// `KUBE-NODEPORTS` jumps to `KUBE-EXT-*`, which sends traffic from pods
/// (`-s cluster_cidr`) to the cluster-wide `KUBE-SVC-*`, masquerades and sends traffic
/// from the node itself (`--src-type LOCAL`) there too, and sends everything else, that
/// is external clients, to `KUBE-SVL-*`: the node-local endpoints only, **without**
/// masquerade, so the client's address reaches the pod and the pod answers the client
/// directly (un-DNATed by conntrack on the way out). `KUBE-SEP-*` DNAT as usual (and
/// mark a pod's hairpin to itself for masquerade). No `--ctstate INVALID -j DROP`.
///
/// # Panics
/// If no backend is local (kube-proxy then installs a drop rule instead; not modelled).
pub fn kube_proxy_nodeport_local_rules(
    port: u16,
    cluster_cidr: &str,
    backends: &[(SocketAddrV4, bool)],
) -> String {
    assert!(
        backends.iter().any(|(_, local)| *local),
        "externalTrafficPolicy: Local needs a local endpoint here"
    );
    let svc = format!("KUBE-SVC-NPL{port}");
    let svl = format!("KUBE-SVL-NPL{port}");
    let ext = format!("KUBE-EXT-NPL{port}");
    let seps: Vec<String> = (0..backends.len())
        .map(|i| format!("KUBE-SEP-NPL{port}-E{i}"))
        .collect();
    let name = format!("default/npl-{port}:tcp");
    let comment = format!("\"{name}\"");
    let mut r = nat_prelude(
        [ext.as_str(), &svc, &svl]
            .into_iter()
            .chain(seps.iter().map(String::as_str)),
    );
    let _ = writeln!(
        r,
        "-A KUBE-NODEPORTS -p tcp -m comment --comment {comment} -m tcp --dport {port} -j {ext}"
    );
    let _ = writeln!(
        r,
        "-A {ext} -s {cluster_cidr} -m comment --comment \"pod traffic for {name} external destinations\" -j {svc}"
    );
    let _ = writeln!(
        r,
        "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
    );
    let _ = writeln!(
        r,
        "-A {ext} -m comment --comment \"route LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j {svc}"
    );
    let _ = writeln!(r, "-A {ext} -j {svl}");
    let all: Vec<(&SocketAddrV4, &String)> = backends.iter().map(|(b, _)| b).zip(&seps).collect();
    let local: Vec<(&SocketAddrV4, &String)> = backends
        .iter()
        .zip(&seps)
        .filter(|((_, is_local), _)| *is_local)
        .map(|((b, _), sep)| (b, sep))
        .collect();
    write_spread(&mut r, &svc, &name, &all);
    write_spread(&mut r, &svl, &name, &local);
    write_seps(&mut r, "tcp", &comment, &all);
    let _ = writeln!(
        r,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    r.push_str("COMMIT\n");
    r
}

/// kube-proxy's random spread of `chain` over `targets` (`statistic` rules with
/// probabilities 1/n, 1/(n-1), ..., then an unconditional jump).
/// The `KUBE-SEP-*` chains: mark a pod's hairpin to itself for masquerade, then DNAT.
fn write_seps(r: &mut String, proto: &str, comment: &str, targets: &[(&SocketAddrV4, &String)]) {
    for (be, sep) in targets {
        let _ = writeln!(
            r,
            "-A {sep} -s {}/32 -m comment --comment {comment} -j KUBE-MARK-MASQ",
            be.ip()
        );
        let _ = writeln!(
            r,
            "-A {sep} -p {proto} -m comment --comment {comment} -m {proto} -j DNAT --to-destination {be}"
        );
    }
}

fn write_spread(r: &mut String, chain: &str, name: &str, targets: &[(&SocketAddrV4, &String)]) {
    let n = targets.len();
    for (i, (be, sep)) in targets.iter().enumerate() {
        let left = n - i;
        if left > 1 {
            #[allow(clippy::cast_precision_loss, reason = "a handful of endpoints")]
            let p = 1.0 / left as f64;
            let _ = writeln!(
                r,
                "-A {chain} -m comment --comment \"{name} -> {be}\" -m statistic --mode random --probability {p:.11} -j {sep}"
            );
        } else {
            let _ = writeln!(
                r,
                "-A {chain} -m comment --comment \"{name} -> {be}\" -j {sep}"
            );
        }
    }
}

/// Programs [`kube_proxy_nodeport_local_rules`] inside `node` (replacing its nat table).
///
/// # Panics
/// If `iptables-restore` fails or no backend is local.
pub fn install_kube_proxy_nodeport_local(
    node: &Netns,
    port: u16,
    cluster_cidr: &str,
    backends: &[(SocketAddrV4, bool)],
) {
    install_iptables(
        node,
        &kube_proxy_nodeport_local_rules(port, cluster_cidr, backends),
    );
}

/// The kube-proxy iptables-mode nat rules for a ClusterIP `vip:port`/TCP, in
/// `iptables-restore` format: `KUBE-SERVICES` matches the VIP and port and jumps to
/// `KUBE-SVC-*`, which marks traffic from outside `cluster_cidr` for masquerade and
/// spreads over the `KUBE-SEP-*` DNAT chains; jumps from `PREROUTING` (pods) and
/// `OUTPUT` (the node), masquerade of marked traffic in `POSTROUTING`. As kube-proxy
/// writes it, and without any filter rule (see [`kube_proxy_forward_rules`]).
///
/// # Panics
/// If `backends` is empty.
pub fn kube_proxy_clusterip_rules(
    vip: Ipv4Addr,
    port: u16,
    cluster_cidr: &str,
    backends: &[SocketAddrV4],
) -> String {
    assert!(
        !backends.is_empty(),
        "a ClusterIP needs at least one backend"
    );
    let svc = format!("KUBE-SVC-CIP{port}");
    let seps: Vec<String> = (0..backends.len())
        .map(|i| format!("KUBE-SEP-CIP{port}-E{i}"))
        .collect();
    let name = format!("default/cip-{port}:tcp");
    let comment = format!("\"{name}\"");
    let mut r = nat_prelude(std::iter::once(svc.as_str()).chain(seps.iter().map(String::as_str)));
    let _ = writeln!(
        r,
        "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {port} -j {svc}"
    );
    let _ = writeln!(
        r,
        "-A {svc} ! -s {cluster_cidr} -d {vip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {port} -j KUBE-MARK-MASQ"
    );
    let all: Vec<(&SocketAddrV4, &String)> = backends.iter().zip(&seps).collect();
    write_spread(&mut r, &svc, &name, &all);
    write_seps(&mut r, "tcp", &comment, &all);
    let _ = writeln!(
        r,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    r.push_str("COMMIT\n");
    r
}

/// Programs [`kube_proxy_clusterip_rules`] inside `node` (replacing its nat table).
///
/// # Panics
/// If `iptables-restore` fails or `backends` is empty.
pub fn install_kube_proxy_clusterip(
    node: &Netns,
    vip: Ipv4Addr,
    port: u16,
    cluster_cidr: &str,
    backends: &[SocketAddrV4],
) {
    install_iptables(
        node,
        &kube_proxy_clusterip_rules(vip, port, cluster_cidr, backends),
    );
}

/// kube-proxy's filter rules for forwarded traffic, in `iptables-restore` format:
/// `FORWARD` jumps to `KUBE-FORWARD`, whose first rule drops what conntrack calls
/// INVALID (the fix of kubernetes issue 74839, PR 74840), then accepts marked and
/// established traffic. Replaces the filter table when loaded.
pub fn kube_proxy_forward_rules() -> String {
    String::from(
        "*filter\n\
         :KUBE-FORWARD - [0:0]\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n",
    )
}

/// Programs [`kube_proxy_forward_rules`] inside `node`.
///
/// # Panics
/// If `iptables-restore` fails.
pub fn install_kube_proxy_forward(node: &Netns) {
    install_iptables(node, &kube_proxy_forward_rules());
}

/// Packets dropped so far by the INVALID rule of [`kube_proxy_forward_rules`] in `node`.
///
/// # Panics
/// If the rule is not there.
pub fn forward_invalid_drops(node: &Netns) -> u64 {
    rule_packets(node, "KUBE-FORWARD", &["DROP", "INVALID"])
}

/// Filter rules that only count (in `FORWARD`) what conntrack calls INVALID, dropping
/// nothing: conntrack is at work, as on any node whose CNI uses it, without kube-proxy's
/// fix. Read the count with [`rule_packets`]`(node, "FORWARD", &["INVALID"])`.
pub const COUNT_INVALID_RULES: &str = "*filter\n\
     -A FORWARD -m conntrack --ctstate INVALID -m comment --comment \"count only\"\n\
     COMMIT\n";

/// Packets matched so far by the first rule of the filter table's `chain` in `node`
/// whose listing (`iptables -L chain -v -x -n`) contains every word of `has`.
///
/// # Panics
/// If there is no such rule.
pub fn rule_packets(node: &Netns, chain: &str, has: &[&str]) -> u64 {
    let bin = tool("iptables").to_string_lossy().into_owned();
    let out = node.exec(&[&bin, "-w", "5", "-L", chain, "-v", "-x", "-n"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| has.iter().all(|w| l.contains(w)))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no rule with {has:?} in {chain}:\n{text}"))
}

/// Empties the IPv4 filter table of `node` (every rule and user chain).
///
/// # Panics
/// If a command fails.
pub fn flush_filter(node: &Netns) {
    let bin = tool("iptables").to_string_lossy().into_owned();
    node.exec(&[&bin, "-w", "5", "-F"]);
    node.exec(&[&bin, "-w", "5", "-X"]);
}

/// Loads `rules` (`iptables-restore` format) inside `node`.
///
/// # Panics
/// If `iptables-restore` fails, with its stderr.
pub fn install_iptables(node: &Netns, rules: &str) {
    let file = TempFile::new(rules);
    let restore = tool("iptables-restore").to_string_lossy().into_owned();
    let path = file.0.to_string_lossy().into_owned();
    node.exec(&[&restore, "-w", "5", &path]);
}

/// Empties the IPv4 and IPv6 nat tables of `node` (every rule and user chain) and its
/// netfilter conntrack table: what is left of kube-proxy once it is gone, so another
/// data plane can take over the same namespace.
///
/// # Panics
/// If a command fails.
pub fn flush_nat(node: &Netns) {
    for bin in ["iptables", "ip6tables"] {
        let bin = tool(bin).to_string_lossy().into_owned();
        node.exec(&[&bin, "-w", "5", "-t", "nat", "-F"]);
        node.exec(&[&bin, "-w", "5", "-t", "nat", "-X"]);
    }
    // `conntrack -F` exits 0 also when the table is empty.
    node.exec(&[&tool("conntrack").to_string_lossy(), "-F"]);
}

/// A file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}.rules", unique_name("iptables")));
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_host_part_spells_the_ipv4_octet() {
        assert_eq!(
            ipv6_spelled([0xfd00, 0x244, 1], 11).to_string(),
            "fd00:244:1::11"
        );
    }

    #[test]
    fn rules_spread_over_every_backend() {
        let bes: Vec<SocketAddrV4> = ["10.244.1.11:8080", "10.244.2.11:8080"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let r = kube_proxy_nodeport_rules(Ipv4Addr::new(192, 0, 2, 1), 30080, &bes);
        assert!(r.contains("--probability 0.50000000000 -j KUBE-SEP-NP30080-E0"));
        assert!(r.contains("-j DNAT --to-destination 10.244.2.11:8080"));
        assert!(!r.contains("INVALID"));
    }

    #[test]
    fn several_nodeports_share_one_table_tcp_and_udp() {
        let be: SocketAddrV4 = "10.244.1.11:5353".parse().unwrap();
        let r = kube_proxy_nodeports_rules(
            Ipv4Addr::new(192, 0, 2, 1),
            &[("tcp", 30080, &[be]), ("udp", 30053, &[be])],
        );
        assert_eq!(r.matches("*nat").count(), 1, "{r}");
        assert!(r.contains(
            "-A KUBE-NODEPORTS -p udp -m comment --comment \"default/np-30053:udp\" -m udp --dport 30053 -j KUBE-EXT-NPU30053"
        ));
        assert!(r.contains(
            "-A KUBE-SEP-NPU30053-E0 -p udp -m comment --comment \"default/np-30053:udp\" -m udp -j DNAT --to-destination 10.244.1.11:5353"
        ));
        assert!(r.contains("-m tcp --dport 30080 -j KUBE-EXT-NP30080"));
        assert_eq!(r.matches("--dst-type LOCAL -j KUBE-NODEPORTS").count(), 1);
    }

    #[test]
    fn local_rules_send_external_clients_to_local_endpoints_without_masquerade() {
        let a: SocketAddrV4 = "10.244.1.11:8080".parse().unwrap();
        let b: SocketAddrV4 = "10.244.2.11:8080".parse().unwrap();
        let r = kube_proxy_nodeport_local_rules(30080, "10.244.0.0/16", &[(a, true), (b, false)]);
        assert!(r.contains(
            "-A KUBE-EXT-NPL30080 -s 10.244.0.0/16 -m comment --comment \"pod traffic for default/npl-30080:tcp external destinations\" -j KUBE-SVC-NPL30080"
        ));
        assert!(r.contains("-A KUBE-EXT-NPL30080 -j KUBE-SVL-NPL30080\n"));
        // The local chain reaches only the local endpoint, unconditionally.
        assert!(r.contains(
            "-A KUBE-SVL-NPL30080 -m comment --comment \"default/npl-30080:tcp -> 10.244.1.11:8080\" -j KUBE-SEP-NPL30080-E0\n"
        ));
        assert!(!r.contains("-A KUBE-SVL-NPL30080 -m comment --comment \"default/npl-30080:tcp -> 10.244.2.11:8080\""));
        assert!(r.contains("--probability 0.50000000000 -j KUBE-SEP-NPL30080-E0"));
        // External traffic is marked for masquerade only when it comes from the node.
        let ext_masq: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with("-A KUBE-EXT-NPL30080") && l.ends_with("KUBE-MARK-MASQ"))
            .collect();
        assert_eq!(ext_masq.len(), 1, "{r}");
        assert!(ext_masq[0].contains("--src-type LOCAL"));
        assert!(!r.contains("INVALID"));
    }

    #[test]
    fn cluster_ip_rules_dnat_the_vip_and_masquerade_only_outside_the_cluster() {
        let be: SocketAddrV4 = "10.244.0.11:8080".parse().unwrap();
        let r =
            kube_proxy_clusterip_rules(Ipv4Addr::new(10, 96, 0, 10), 80, "10.244.0.0/16", &[be]);
        assert!(r.contains(
            "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"default/cip-80:tcp cluster IP\" -m tcp --dport 80 -j KUBE-SVC-CIP80\n"
        ));
        assert!(r.contains("-A KUBE-SVC-CIP80 ! -s 10.244.0.0/16 -d 10.96.0.10/32"));
        assert!(r.contains("-j DNAT --to-destination 10.244.0.11:8080"));
        assert!(r.contains(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ));
        assert!(!r.contains("INVALID"));
        let f = kube_proxy_forward_rules();
        let first = f
            .lines()
            .find(|l| l.starts_with("-A KUBE-FORWARD"))
            .unwrap();
        assert_eq!(
            first,
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
        );
    }
}
