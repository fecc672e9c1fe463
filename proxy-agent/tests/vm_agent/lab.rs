//! The topology a test runs in: a node (where the agent runs), client namespaces and
//! pod namespaces, each joined to the node by a veth pair of its own, in namespaces of
//! the test's own (the VM's root namespace is untouched).
//!
//! ```text
//!  client i (Netns)                 node (Netns): the agent, IPVS, kube-ipvs0      pod i (Netns)
//!  eth0 10.0.<i+1>.2/24   <-veth->  vc<i> 10.0.<i+1>.1    vp<i> 10.244.<i+1>.1  <-veth->  eth0 10.244.<i+1>.2/24
//!       fd00:1:<i+1>::2/64                fd00:1:<i+1>::1       fd00:244:<i+1>::1         fd00:244:<i+1>::2/64
//!  default routes via the node           forwarding on                               listeners :8080/tcp, :5353/udp
//! ```
//!
//! The node forwards between its veths; a ClusterIP connection from a client reaches
//! IPVS on the node, which masquerades it towards a pod; the pod's reply comes back
//! through the node (its default route), where IPVS undoes the translation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::listeners::{serve_tcp, serve_udp};
use super::netns::Netns;

/// The TCP port every pod serves on (both families).
pub const TCP_PORT: u16 = 8080;
/// The UDP port every pod serves on (both families).
pub const UDP_PORT: u16 = 5353;

/// A pod: a namespace with one address per family and named listeners.
pub struct Pod {
    /// What its listeners answer.
    pub name: String,
    pub ns: Netns,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl Pod {
    /// Its address of `ip`'s family.
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.ipv6)
        } else {
            IpAddr::V4(self.ipv4)
        }
    }

    /// Its TCP listener's address of that family.
    pub fn tcp(&self, v6: bool) -> SocketAddr {
        SocketAddr::new(self.ip(v6), TCP_PORT)
    }
}

/// A client: a namespace with one address per family.
pub struct Client {
    pub ns: Netns,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

/// See the module docs.
pub struct Lab {
    /// The agent's namespace.
    pub node: Netns,
    pub clients: Vec<Client>,
    pub pods: Vec<Pod>,
    /// `10.0.1.1`: the node's address towards client 0, for its metrics and health.
    pub node_ip: Ipv4Addr,
}

impl Lab {
    /// A node with `clients` clients and one pod per name in `pods`, each serving
    /// [`TCP_PORT`] and [`UDP_PORT`] on both families, answering its name. `tag` names
    /// the namespaces in messages.
    pub fn new(tag: &str, pods: &[&str], clients: usize) -> Lab {
        let node = Netns::new(&format!("{tag}-node"));
        node.sysctl("ipv4/ip_forward", "1");
        node.sysctl("ipv6/conf/all/forwarding", "1");
        let clients = (0..clients)
            .map(|i| {
                let n = u8::try_from(i + 1).expect("fewer than 255 clients");
                let ns = Netns::new(&format!("{tag}-client{i}"));
                let (ipv4, ipv6) = attach(&node, &ns, &format!("vc{i}"), [10, 0, n], [1, n.into()]);
                Client { ns, ipv4, ipv6 }
            })
            .collect();
        let pods = pods
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let n = u8::try_from(i + 1).expect("fewer than 255 pods");
                let ns = Netns::new(&format!("{tag}-pod-{name}"));
                let (ipv4, ipv6) = attach(
                    &node,
                    &ns,
                    &format!("vp{i}"),
                    [10, 244, n],
                    [0x244, n.into()],
                );
                let pod = Pod {
                    name: (*name).to_owned(),
                    ns,
                    ipv4,
                    ipv6,
                };
                for v6 in [false, true] {
                    serve_tcp(&pod.ns, pod.tcp(v6), name);
                    serve_udp(&pod.ns, SocketAddr::new(pod.ip(v6), UDP_PORT), name);
                }
                pod
            })
            .collect();
        Lab {
            node,
            clients,
            pods,
            node_ip: Ipv4Addr::new(10, 0, 1, 1),
        }
    }

    /// The pod named `name`.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Client 0.
    pub fn client(&self) -> &Client {
        self.clients.first().expect("a lab with a client")
    }
}

/// Joins `ns` to `node` by `link` (node side) and `eth0` (`ns` side): `ns` gets
/// `V4.2/24` and `fd00:V6[0]:V6[1]::2/64`, the node `.1` of both, and `ns` routes
/// everything via the node. Returns `ns`'s addresses.
fn attach(node: &Netns, ns: &Netns, link: &str, v4: [u8; 3], v6: [u16; 2]) -> (Ipv4Addr, Ipv6Addr) {
    node.veth(link, ns, "eth0");
    let [a, b, c] = v4;
    let [x, y] = v6;
    let (node4, ns4) = (Ipv4Addr::new(a, b, c, 1), Ipv4Addr::new(a, b, c, 2));
    let (node6, ns6) = (
        Ipv6Addr::new(0xfd00, x, y, 0, 0, 0, 0, 1),
        Ipv6Addr::new(0xfd00, x, y, 0, 0, 0, 0, 2),
    );
    node.ip(&["addr", "add", &format!("{node4}/24"), "dev", link]);
    node.ip(&["-6", "addr", "add", &format!("{node6}/64"), "dev", link]);
    node.ip(&["link", "set", link, "up"]);
    ns.ip(&["addr", "add", &format!("{ns4}/24"), "dev", "eth0"]);
    ns.ip(&["-6", "addr", "add", &format!("{ns6}/64"), "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["route", "add", "default", "via", &node4.to_string()]);
    ns.ip(&["-6", "route", "add", "default", "via", &node6.to_string()]);
    (ns4, ns6)
}
