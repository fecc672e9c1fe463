//! The agent's input: a manifest directory (`--manifests DIR`) and the Services and
//! EndpointSlices written into it.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The node name the agent is started with (`--hostname-override`), which endpoints
/// name as theirs.
pub const NODE: &str = "node-a";

/// A manifest directory, removed on drop.
pub struct Manifests {
    path: PathBuf,
}

impl Manifests {
    /// A new empty directory under `/tmp`.
    pub fn new(tag: &str) -> Manifests {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "kpt-vm-manifests-{tag}-{}",
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating the manifest directory");
        Manifests { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `file` atomically (a hidden temporary renamed into place, as ConfigMap
    /// volumes do), so the agent never reads half a file.
    pub fn write(&self, file: &str, content: &str) {
        let tmp = self.path.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, content).expect("writing a manifest");
        std::fs::rename(&tmp, self.path.join(file)).expect("renaming a manifest");
    }

    /// Writes `services` as `file`, one multi-document YAML.
    pub fn write_services(&self, file: &str, services: &[Service]) {
        let text: String = services.iter().map(Service::yaml).collect();
        self.write(file, &text);
    }
}

impl Drop for Manifests {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The node the endpoints of [`Service::remote_endpoints`] are on.
pub const OTHER_NODE: &str = "node-b";

/// A Service of one family in namespace `test` (ClusterIP unless given NodePorts or
/// load balancer IPs), with one EndpointSlice of ready endpoints on [`NODE`] (and
/// [`OTHER_NODE`]). Ports are `(port, TCP|UDP, targetPort)`, named `p<port>`.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub cluster_ip: IpAddr,
    pub ports: Vec<(u16, &'static str, u16)>,
    pub endpoints: Vec<IpAddr>,
    /// Endpoints on [`OTHER_NODE`].
    pub remote_endpoints: Vec<IpAddr>,
    /// `sessionAffinity: ClientIP` with this timeout.
    pub affinity_timeout_s: Option<u32>,
    /// `nodePort` by service port: type NodePort (LoadBalancer with `lb_ips`).
    pub node_ports: Vec<(u16, u16)>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`: type LoadBalancer.
    pub lb_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`.
    pub source_ranges: Vec<String>,
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
}

impl Service {
    /// A service `name` on `cluster_ip` with no ports and no endpoints yet.
    pub fn new(name: &str, cluster_ip: IpAddr) -> Service {
        Service {
            name: name.to_owned(),
            cluster_ip,
            ports: Vec::new(),
            endpoints: Vec::new(),
            remote_endpoints: Vec::new(),
            affinity_timeout_s: None,
            node_ports: Vec::new(),
            external_ips: Vec::new(),
            lb_ips: Vec::new(),
            source_ranges: Vec::new(),
            local: false,
        }
    }

    /// Gives service port `port` the NodePort `node_port`.
    pub fn node_port(mut self, port: u16, node_port: u16) -> Service {
        self.node_ports.push((port, node_port));
        self
    }

    /// Adds an externalIP.
    pub fn external_ip(mut self, ip: IpAddr) -> Service {
        self.external_ips.push(ip);
        self
    }

    /// Adds a load balancer IP (the Service becomes type LoadBalancer).
    pub fn load_balancer(mut self, ip: IpAddr) -> Service {
        self.lb_ips.push(ip);
        self
    }

    /// Adds a `loadBalancerSourceRanges` entry.
    pub fn source_range(mut self, cidr: &str) -> Service {
        self.source_ranges.push(cidr.to_owned());
        self
    }

    /// `externalTrafficPolicy: Local`.
    pub fn local(mut self) -> Service {
        self.local = true;
        self
    }

    /// Sets the endpoints on [`OTHER_NODE`].
    pub fn remote_endpoints(mut self, endpoints: impl IntoIterator<Item = IpAddr>) -> Service {
        self.remote_endpoints = endpoints.into_iter().collect();
        self
    }

    /// Adds a TCP port.
    pub fn tcp(mut self, port: u16, target: u16) -> Service {
        self.ports.push((port, "TCP", target));
        self
    }

    /// Adds a UDP port.
    pub fn udp(mut self, port: u16, target: u16) -> Service {
        self.ports.push((port, "UDP", target));
        self
    }

    /// Sets the endpoints.
    pub fn endpoints(mut self, endpoints: impl IntoIterator<Item = IpAddr>) -> Service {
        self.endpoints = endpoints.into_iter().collect();
        self
    }

    /// `sessionAffinity: ClientIP`.
    pub fn affinity(mut self, timeout_s: u32) -> Service {
        self.affinity_timeout_s = Some(timeout_s);
        self
    }

    /// The Service and its EndpointSlice as YAML documents (each ending in `---`).
    pub fn yaml(&self) -> String {
        let family = if self.cluster_ip.is_ipv4() {
            "IPv4"
        } else {
            "IPv6"
        };
        let (name, ip) = (&self.name, self.cluster_ip);
        let kind = if !self.lb_ips.is_empty() {
            "LoadBalancer"
        } else if !self.node_ports.is_empty() {
            "NodePort"
        } else {
            "ClusterIP"
        };
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: test}}\n\
             spec:\n  type: {kind}\n  clusterIP: \"{ip}\"\n  clusterIPs: [\"{ip}\"]\n  \
             ipFamilies: [{family}]\n"
        );
        let quoted = |ips: &[IpAddr]| {
            ips.iter()
                .map(|ip| format!("\"{ip}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.external_ips.is_empty() {
            let _ = writeln!(y, "  externalIPs: [{}]", quoted(&self.external_ips));
        }
        if !self.source_ranges.is_empty() {
            let ranges: Vec<String> = self
                .source_ranges
                .iter()
                .map(|r| format!("\"{r}\""))
                .collect();
            let _ = writeln!(y, "  loadBalancerSourceRanges: [{}]", ranges.join(", "));
        }
        if kind != "ClusterIP" || !self.external_ips.is_empty() {
            let policy = if self.local { "Local" } else { "Cluster" };
            let _ = writeln!(y, "  externalTrafficPolicy: {policy}");
        }
        match self.affinity_timeout_s {
            Some(t) => {
                let _ = writeln!(
                    y,
                    "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {t}}}}}"
                );
            }
            None => y.push_str("  sessionAffinity: None\n"),
        }
        y.push_str("  ports:\n");
        for (port, proto, target) in &self.ports {
            let node_port = self
                .node_ports
                .iter()
                .find(|(p, _)| p == port)
                .map(|(_, n)| format!(", nodePort: {n}"))
                .unwrap_or_default();
            let _ = writeln!(
                y,
                "  - {{name: p{port}, port: {port}, protocol: {proto}, targetPort: {target}{node_port}}}"
            );
        }
        if !self.lb_ips.is_empty() {
            y.push_str("status:\n  loadBalancer:\n    ingress:\n");
            for ip in &self.lb_ips {
                let _ = writeln!(y, "    - {{ip: \"{ip}\"}}");
            }
        }
        let _ = write!(
            y,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-1, namespace: test, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: {family}\n"
        );
        if self.endpoints.is_empty() && self.remote_endpoints.is_empty() {
            y.push_str("endpoints: []\n");
        } else {
            y.push_str("endpoints:\n");
        }
        let on = |node| move |ip: &IpAddr| (*ip, node);
        for (ip, node) in self
            .endpoints
            .iter()
            .map(on(NODE))
            .chain(self.remote_endpoints.iter().map(on(OTHER_NODE)))
        {
            let _ = writeln!(
                y,
                "- {{addresses: [\"{ip}\"], conditions: {{ready: true}}, nodeName: {node}}}"
            );
        }
        y.push_str("ports:\n");
        for (port, proto, target) in &self.ports {
            let _ = writeln!(y, "- {{name: p{port}, port: {target}, protocol: {proto}}}");
        }
        y.push_str("---\n");
        y
    }
}
