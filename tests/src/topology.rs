//! A one-node "cluster" made of network namespaces.
//!
//! ```text
//!  node netns:  br0 10.244.0.1/24 fd00:244::1/64 (ip_forward on)
//!                |-- vclient <-> eth0 in client pod   10.244.0.2   fd00:244::2
//!                |-- vb0     <-> eth0 in backend-0    10.244.0.11  fd00:244::11
//!                |-- vb1     <-> eth0 in backend-1    10.244.0.12  fd00:244::12
//!                ...
//! ```
//!
//! Every pod has default routes via the bridge addresses. The IPv6 host part spells the
//! IPv4 last octet in decimal digits (`.12` -> `::12`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use crate::probe::start_probe_server_in;
use crate::{Cgroup, ChildGuard, Netns, probe_bin, run, spawn_guarded};

/// How long [`ClusterTopology::client_probe`] lets a probe run.
const PROBE_RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the connectivity check of a new pod may take.
const CONNECTIVITY_TIMEOUT: Duration = Duration::from_secs(10);
/// IPv4 last octet of the first backend.
const FIRST_BACKEND_HOST: u8 = 11;

/// A pod: a network namespace with `eth0` on the node's bridge.
#[derive(Debug)]
pub struct Pod {
    /// The pod's namespace.
    pub netns: Netns,
    /// `client`, `backend-0`, `backend-1`, ...; also the name its probe server answers.
    pub name: String,
    /// Address of `eth0`.
    pub ipv4: Ipv4Addr,
    /// Address of `eth0`.
    pub ipv6: Ipv6Addr,
    /// The host end of the veth pair, in the node namespace, enslaved to `br0`.
    pub host_veth: String,
}

impl Pod {
    /// `ipv4:port`.
    pub fn addr_v4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ipv4), port)
    }

    /// `[ipv6]:port`.
    pub fn addr_v6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ipv6), port)
    }

    /// Runs `probe serve --name <pod name>` on `0.0.0.0` and `[::]` for each TCP and UDP
    /// port, and waits until it is ready.
    pub fn serve(&self, tcp_ports: &[u16], udp_ports: &[u16]) -> ChildGuard {
        let both = |p: &u16| {
            [
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), *p),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), *p),
            ]
        };
        let tcp: Vec<_> = tcp_ports.iter().flat_map(both).collect();
        let udp: Vec<_> = udp_ports.iter().flat_map(both).collect();
        start_probe_server_in(&self.netns, None, &self.name, &tcp, &udp)
    }
}

/// A node namespace with bridge `br0`, a client pod and backend pods; see the module docs
/// for addresses. Everything is removed on drop, in reverse order of creation.
///
/// Client processes belong in [`client_cgroup`](Self::client_cgroup), where the socket
/// programs under test are attached; [`spawn_client`](Self::spawn_client) and
/// [`client_probe`](Self::client_probe) put them there.
#[derive(Debug)]
pub struct ClusterTopology {
    /// The client pod's cgroup.
    pub client_cgroup: Cgroup,
    /// Backend pods, `backend-0` at 10.244.0.11 first. Removing one from the vector
    /// deletes its namespace.
    pub backends: Vec<Pod>,
    /// The client pod (10.244.0.2, fd00:244::2).
    pub client: Pod,
    /// The node namespace holding `br0` and the host ends of the veths.
    pub node: Netns,
    tag: String,
    backends_made: u8,
}

impl ClusterTopology {
    /// Name of the bridge in the node namespace.
    pub const BRIDGE: &'static str = "br0";
    /// Bridge address, the pods' IPv4 gateway.
    pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
    /// Bridge address, the pods' IPv6 gateway.
    pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 1);
    /// The pod network.
    pub const POD_CIDR_V4: &'static str = "10.244.0.0/24";
    /// The pod network.
    pub const POD_CIDR_V6: &'static str = "fd00:244::/64";

    /// Builds the node, the client and `n_backends` backends, and checks that the client
    /// reaches every backend over IPv4 and IPv6 (TCP handshake) before returning.
    ///
    /// # Panics
    /// If any step fails (what was made so far is removed).
    pub fn new(tag: &str, n_backends: usize) -> Self {
        let node = Netns::new(&format!("{tag}-node"));
        node.sysctls(&[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ]);
        node.ip(&["link", "add", Self::BRIDGE, "type", "bridge"]);
        node.ip(&["addr", "add", "10.244.0.1/24", "dev", Self::BRIDGE]);
        node.ip(&[
            "-6",
            "addr",
            "add",
            "fd00:244::1/64",
            "dev",
            Self::BRIDGE,
            "nodad",
        ]);
        node.ip(&["link", "set", Self::BRIDGE, "up"]);

        let client = make_pod(&node, tag, "client", "vclient", 2);
        // Lets connect() reuse TIME_WAIT ports, for connect-heavy benchmarks.
        client.netns.sysctl("net.ipv4.tcp_tw_reuse", "1");
        let mut topo = Self {
            client_cgroup: Cgroup::new(&format!("{tag}-client")),
            backends: Vec::new(),
            client,
            node,
            tag: tag.to_owned(),
            backends_made: 0,
        };
        for _ in 0..n_backends {
            topo.add_backend();
        }
        topo
    }

    /// Adds the next backend pod (`backend-<n>` at `10.244.0.<11+n>`), checks the client
    /// reaches it, and returns it.
    ///
    /// # Panics
    /// If setup fails or the address range (up to .250) is used up.
    pub fn add_backend(&mut self) -> &Pod {
        let index = self.backends_made;
        let host = FIRST_BACKEND_HOST
            .checked_add(index)
            .filter(|h| *h <= 250)
            .unwrap_or_else(|| panic!("too many backends ({index})"));
        self.backends_made += 1;
        let pod = make_pod(
            &self.node,
            &self.tag,
            &format!("backend-{index}"),
            &format!("vb{index}"),
            host,
        );
        check_reaches(&self.client, &pod);
        self.backends.push(pod);
        self.backends.last().expect("just pushed")
    }

    /// The backend called `name`.
    pub fn backend(&self, name: &str) -> Option<&Pod> {
        self.backends.iter().find(|p| p.name == name)
    }

    /// Starts `cmd` in the client pod and its cgroup (stdout/stderr piped, see
    /// [`spawn_guarded`]).
    pub fn spawn_client(&self, cmd: &mut Command) -> ChildGuard {
        spawn_guarded(&self.client.netns, Some(&self.client_cgroup), cmd)
    }

    /// Runs `cmd` to completion in the client pod and its cgroup.
    ///
    /// # Panics
    /// If it cannot start or exceeds `timeout`.
    pub fn run_client(&self, cmd: &mut Command, timeout: Duration) -> Output {
        run(&self.client.netns, Some(&self.client_cgroup), cmd, timeout)
    }

    /// Runs `probe <args>` in the client pod and its cgroup and returns its output (check
    /// `status` yourself: `probe hold` exits 1 on a broken connection). Parse the lines
    /// with [`ProbeReply::parse_all`](crate::ProbeReply::parse_all).
    ///
    /// # Panics
    /// If it does not finish within 120 s.
    pub fn client_probe(&self, args: &[&str]) -> Output {
        self.run_client(Command::new(probe_bin()).args(args), PROBE_RUN_TIMEOUT)
    }

    /// Starts `probe <args>` in the client pod and its cgroup (e.g. `hold`), to read its
    /// lines while the test changes things.
    pub fn spawn_client_probe(&self, args: &[&str]) -> ChildGuard {
        self.spawn_client(Command::new(probe_bin()).args(args))
    }

    /// Makes the node's netfilter see bridged IPv4 traffic
    /// (`net.bridge.bridge-nf-call-iptables=1` in the node namespace), as kube-proxy
    /// requires: pod-to-pod replies cross `br0` without being routed, so without it
    /// conntrack never sees them and cannot un-DNAT a ClusterIP's replies.
    ///
    /// # Panics
    /// If the kernel has no per-namespace `br_netfilter` sysctl (with the reason), or the
    /// value does not read back as 1.
    pub fn enable_bridge_netfilter(&self) {
        const KEY: &str = "net.bridge.bridge-nf-call-iptables";
        let sysctl = crate::tool("sysctl").to_string_lossy().into_owned();
        let have = self.node.try_exec(&[&sysctl, "-n", KEY]);
        assert!(
            have.status.success(),
            "{KEY} does not exist in the node's namespace ({}): this kernel lacks \
             br_netfilter (CONFIG_BRIDGE_NETFILTER) or does not make it per-namespace, \
             so netfilter cannot see bridged pod traffic as kube-proxy requires",
            String::from_utf8_lossy(&have.stderr).trim()
        );
        self.node.sysctl(KEY, "1");
        let now = self.node.exec(&[&sysctl, "-n", KEY]);
        assert_eq!(
            String::from_utf8_lossy(&now.stdout).trim(),
            "1",
            "{KEY} did not stick in the node's namespace"
        );
    }

    /// Runs a probe server on every backend ([`Pod::serve`]), each answering with its pod
    /// name.
    pub fn serve_backends(&self, tcp_ports: &[u16], udp_ports: &[u16]) -> Vec<ChildGuard> {
        self.backends
            .iter()
            .map(|p| p.serve(tcp_ports, udp_ports))
            .collect()
    }
}

impl Drop for ClusterTopology {
    fn drop(&mut self) {
        // Reverse order of creation; the remaining fields follow in declaration order
        // (client cgroup, client, node).
        while let Some(pod) = self.backends.pop() {
            drop(pod);
        }
    }
}

fn ipv6_for_host(host: u8) -> Ipv6Addr {
    let last = u16::from_str_radix(&host.to_string(), 16).expect("decimal digits are hex");
    Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, last)
}

/// Where a pod plugs in: a bridge in a node namespace, and its addresses.
pub(crate) struct PodLink<'a> {
    /// The node namespace.
    pub node: &'a Netns,
    /// The bridge in it.
    pub bridge: &'a str,
    /// The node-side veth name.
    pub host_veth: &'a str,
    /// The pod's IPv4 address (/24).
    pub ipv4: Ipv4Addr,
    /// The pod's IPv6 address (/64).
    pub ipv6: Ipv6Addr,
    /// The default gateways (the bridge's addresses).
    pub gateway_v4: Ipv4Addr,
    /// See `gateway_v4`.
    pub gateway_v6: Ipv6Addr,
}

/// Creates the pod namespace `name`, joins it to the bridge with a veth pair (the pod
/// end is `eth0`), and sets its addresses and default routes.
pub(crate) fn attach_pod(tag: &str, name: &str, link: &PodLink<'_>) -> Pod {
    let netns = Netns::new(&format!("{tag}-{name}"));
    netns.sysctls(&[
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
    ]);
    link.node.ip(&[
        "link",
        "add",
        link.host_veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        netns.name(),
    ]);
    // From here on the pod owns the veth: deleting its namespace deletes the pair.
    let pod = Pod {
        netns,
        name: name.to_owned(),
        ipv4: link.ipv4,
        ipv6: link.ipv6,
        host_veth: link.host_veth.to_owned(),
    };
    link.node
        .ip(&["link", "set", link.host_veth, "master", link.bridge, "up"]);
    let ns = &pod.netns;
    ns.ip(&["addr", "add", &format!("{}/24", link.ipv4), "dev", "eth0"]);
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/64", link.ipv6),
        "dev",
        "eth0",
        "nodad",
    ]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        &link.gateway_v4.to_string(),
    ]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &link.gateway_v6.to_string(),
    ]);
    pod
}

fn make_pod(node: &Netns, tag: &str, name: &str, host_veth: &str, host: u8) -> Pod {
    attach_pod(
        tag,
        name,
        &PodLink {
            node,
            bridge: ClusterTopology::BRIDGE,
            host_veth,
            ipv4: Ipv4Addr::new(10, 244, 0, host),
            ipv6: ipv6_for_host(host),
            gateway_v4: ClusterTopology::GATEWAY_V4,
            gateway_v6: ClusterTopology::GATEWAY_V6,
        },
    )
}

/// Checks that `from` completes a TCP handshake with `to` over IPv4 and IPv6.
fn check_reaches(from: &Pod, to: &Pod) {
    let targets = [IpAddr::V4(to.ipv4), IpAddr::V6(to.ipv6)];
    check_handshakes(&from.netns, &from.name, &to.netns, &to.name, &targets);
}

/// Checks that `from` completes a TCP handshake with a listener in `to` at each of
/// `targets`, retrying for up to [`CONNECTIVITY_TIMEOUT`].
///
/// # Panics
/// If one does not.
pub(crate) fn check_handshakes(
    from: &Netns,
    from_name: &str,
    to: &Netns,
    to_name: &str,
    targets: &[IpAddr],
) {
    // A dual-stack listener; the kernel completes handshakes without accept().
    let listener = to
        .run(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)))
        .unwrap_or_else(|e| panic!("binding a check listener in {to_name}: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("check listener address: {e}"))
        .port();
    for ip in targets {
        let target = SocketAddr::new(*ip, port);
        let result = from.run(|| {
            let deadline = Instant::now() + CONNECTIVITY_TIMEOUT;
            loop {
                match TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(_) => thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        if let Err(e) = result {
            panic!(
                "{from_name} cannot reach {to_name} at {target} within {CONNECTIVITY_TIMEOUT:?}: {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_host_part_spells_the_ipv4_octet() {
        assert_eq!(ipv6_for_host(2).to_string(), "fd00:244::2");
        assert_eq!(ipv6_for_host(11).to_string(), "fd00:244::11");
        assert_eq!(ipv6_for_host(250).to_string(), "fd00:244::250");
    }
}
