//! Manifest directories for the agent's standalone source, written by tests.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A temporary manifest directory, removed on drop.
pub struct ManifestDir {
    path: PathBuf,
}

impl ManifestDir {
    /// A new empty directory.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "kpt-manifests-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("creating the manifest directory");
        ManifestDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes (atomically: write then rename, as kubectl-style tools and ConfigMap
    /// volumes do) `name` with `content`.
    pub fn write(&self, name: &str, content: &str) {
        let tmp = self.path.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).expect("writing a manifest");
        std::fs::rename(&tmp, self.path.join(name)).expect("renaming a manifest");
    }

    /// Removes `name`.
    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.path.join(name)).expect("removing a manifest");
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("harness: removing {}: {e}", self.path.display());
        }
    }
}

/// One service port: (name, port, protocol, targetPort number).
pub type PortSpec<'a> = (&'a str, u16, &'a str, u16);

/// A ClusterIP Service and one EndpointSlice with `endpoints` (all ready, on node-a)
/// as a two-document YAML string.
pub fn service(
    name: &str,
    cluster_ip: IpAddr,
    ports: &[PortSpec<'_>],
    endpoints: &[IpAddr],
    affinity_timeout_s: Option<u32>,
) -> String {
    let family = if cluster_ip.is_ipv4() { "IPv4" } else { "IPv6" };
    let mut y = String::new();
    let _ = writeln!(
        y,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: test\n  creationTimestamp: \"2026-01-01T00:00:00Z\"\nspec:\n  type: ClusterIP\n  clusterIP: {cluster_ip}\n  clusterIPs: [\"{cluster_ip}\"]\n  ipFamilies: [{family}]\n  ports:"
    );
    for (pname, port, proto, target) in ports {
        let _ = writeln!(
            y,
            "  - name: {pname}\n    port: {port}\n    protocol: {proto}\n    targetPort: {target}"
        );
    }
    match affinity_timeout_s {
        Some(t) => {
            let _ = writeln!(
                y,
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {t}"
            );
        }
        None => {
            let _ = writeln!(y, "  sessionAffinity: None");
        }
    }
    let _ = writeln!(
        y,
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: test\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: {family}\nendpoints:"
    );
    if endpoints.is_empty() {
        y.truncate(y.len() - "endpoints:\n".len());
        let _ = writeln!(y, "endpoints: []");
    }
    for ip in endpoints {
        let _ = writeln!(
            y,
            "- addresses: [\"{ip}\"]\n  conditions:\n    ready: true\n  nodeName: node-a"
        );
    }
    let _ = writeln!(y, "ports:");
    for (pname, _, proto, target) in ports {
        let _ = writeln!(y, "- name: {pname}\n  port: {target}\n  protocol: {proto}");
    }
    y
}

/// The objects of a multi-document YAML string as JSON values (for the fake API).
pub fn yaml_objects(yaml: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde_json::Value::deserialize(doc).expect("test YAML is valid"))
        .filter(|v| !v.is_null())
        .collect()
}

/// One port of a [`ServiceSpec`].
#[derive(Clone, Debug)]
pub struct SvcPort {
    /// Port name (also the EndpointSlice port name).
    pub name: String,
    /// The service port (ClusterIP, external IPs, LoadBalancer IPs).
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// The backends' port.
    pub target_port: u16,
    /// `spec.ports[].nodePort`, for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
}

/// One endpoint of a [`ServiceSpec`]'s EndpointSlices.
#[derive(Clone, Debug)]
pub struct SvcEndpoint {
    /// Its address (the family picks the slice).
    pub ip: IpAddr,
    /// `nodeName` (`node-a`, `node-b`, ...).
    pub node: String,
    /// `conditions.ready`.
    pub ready: bool,
}

/// A Service of any type, and its EndpointSlices (one per address family), written as
/// YAML by [`yaml`](Self::yaml). Build it with the chained setters:
///
/// ```no_run
/// # use tests::ServiceSpec;
/// let yaml = ServiceSpec::new("web", "NodePort")
///     .cluster_ip("10.96.0.10".parse().unwrap())
///     .port("http", 80, "TCP", 8080, Some(30080))
///     .endpoint("10.244.1.11".parse().unwrap(), "node-a")
///     .external_traffic_policy_local(Some(32080))
///     .yaml();
/// ```
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// `metadata.name` (namespace `test`).
    pub name: String,
    /// `spec.type`: `ClusterIP`, `NodePort` or `LoadBalancer`.
    pub type_: String,
    /// `spec.clusterIPs` (the first is `spec.clusterIP`); their families give
    /// `ipFamilies`, two of them make the service `RequireDualStack`.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ports`.
    pub ports: Vec<SvcPort>,
    /// The endpoints, split into one EndpointSlice per family.
    pub endpoints: Vec<SvcEndpoint>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub lb_ingress: Vec<IpAddr>,
    /// `spec.externalTrafficPolicy: Local` when true (else `Cluster`).
    pub etp_local: bool,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// `spec.loadBalancerSourceRanges` (CIDRs).
    pub source_ranges: Vec<String>,
    /// `sessionAffinity: ClientIP` with this timeout when set.
    pub affinity_timeout_s: Option<u32>,
}

impl ServiceSpec {
    /// A service `name` of type `type_` with nothing else yet.
    pub fn new(name: &str, type_: &str) -> Self {
        Self {
            name: name.to_owned(),
            type_: type_.to_owned(),
            cluster_ips: Vec::new(),
            ports: Vec::new(),
            endpoints: Vec::new(),
            external_ips: Vec::new(),
            lb_ingress: Vec::new(),
            etp_local: false,
            health_check_node_port: None,
            source_ranges: Vec::new(),
            affinity_timeout_s: None,
        }
    }

    /// Adds a cluster IP (first IPv4 then IPv6 for a dual-stack service, or either).
    #[must_use]
    pub fn cluster_ip(mut self, ip: IpAddr) -> Self {
        self.cluster_ips.push(ip);
        self
    }

    /// Adds a port.
    #[must_use]
    pub fn port(
        mut self,
        name: &str,
        port: u16,
        protocol: &str,
        target_port: u16,
        node_port: Option<u16>,
    ) -> Self {
        self.ports.push(SvcPort {
            name: name.to_owned(),
            port,
            protocol: protocol.to_owned(),
            target_port,
            node_port,
        });
        self
    }

    /// Adds a ready endpoint on `node`.
    #[must_use]
    pub fn endpoint(mut self, ip: IpAddr, node: &str) -> Self {
        self.endpoints.push(SvcEndpoint {
            ip,
            node: node.to_owned(),
            ready: true,
        });
        self
    }

    /// Adds ready endpoints on `node`.
    #[must_use]
    pub fn endpoints(mut self, ips: impl IntoIterator<Item = IpAddr>, node: &str) -> Self {
        for ip in ips {
            self = self.endpoint(ip, node);
        }
        self
    }

    /// Adds an external IP.
    #[must_use]
    pub fn external_ip(mut self, ip: IpAddr) -> Self {
        self.external_ips.push(ip);
        self
    }

    /// Adds a LoadBalancer ingress IP (in `status`).
    #[must_use]
    pub fn lb_ingress(mut self, ip: IpAddr) -> Self {
        self.lb_ingress.push(ip);
        self
    }

    /// `externalTrafficPolicy: Local`, with `healthCheckNodePort` if given.
    #[must_use]
    pub fn external_traffic_policy_local(mut self, health_check_node_port: Option<u16>) -> Self {
        self.etp_local = true;
        self.health_check_node_port = health_check_node_port;
        self
    }

    /// Adds a `loadBalancerSourceRanges` CIDR.
    #[must_use]
    pub fn source_range(mut self, cidr: &str) -> Self {
        self.source_ranges.push(cidr.to_owned());
        self
    }

    /// `sessionAffinity: ClientIP` with `timeoutSeconds`.
    #[must_use]
    pub fn client_ip_affinity(mut self, timeout_s: u32) -> Self {
        self.affinity_timeout_s = Some(timeout_s);
        self
    }

    /// The Service and its EndpointSlices as a multi-document YAML string.
    ///
    /// # Panics
    /// If there is no cluster IP or no port.
    pub fn yaml(&self) -> String {
        assert!(
            !self.cluster_ips.is_empty(),
            "{}: give a cluster IP",
            self.name
        );
        assert!(!self.ports.is_empty(), "{}: give a port", self.name);
        let family = |ip: &IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        let quoted = |ips: &[IpAddr]| {
            ips.iter()
                .map(|i| format!("\"{i}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let families: Vec<&str> = self.cluster_ips.iter().map(family).collect();
        let policy = if families.len() > 1 {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        let name = &self.name;
        let mut y = String::new();
        let _ = writeln!(
            y,
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: test\n  creationTimestamp: \"2026-01-01T00:00:00Z\"\nspec:\n  type: {}\n  clusterIP: {}\n  clusterIPs: [{}]\n  ipFamilies: [{}]\n  ipFamilyPolicy: {policy}\n  ports:",
            self.type_,
            self.cluster_ips[0],
            quoted(&self.cluster_ips),
            families.join(", "),
        );
        for p in &self.ports {
            let _ = writeln!(
                y,
                "  - name: {}\n    port: {}\n    protocol: {}\n    targetPort: {}",
                p.name, p.port, p.protocol, p.target_port
            );
            if let Some(np) = p.node_port {
                let _ = writeln!(y, "    nodePort: {np}");
            }
        }
        if !self.external_ips.is_empty() {
            let _ = writeln!(y, "  externalIPs: [{}]", quoted(&self.external_ips));
        }
        if self.type_ != "ClusterIP" {
            let etp = if self.etp_local { "Local" } else { "Cluster" };
            let _ = writeln!(y, "  externalTrafficPolicy: {etp}");
        }
        if let Some(hc) = self.health_check_node_port {
            let _ = writeln!(y, "  healthCheckNodePort: {hc}");
        }
        if !self.source_ranges.is_empty() {
            let ranges: Vec<String> = self
                .source_ranges
                .iter()
                .map(|r| format!("\"{r}\""))
                .collect();
            let _ = writeln!(y, "  loadBalancerSourceRanges: [{}]", ranges.join(", "));
        }
        match self.affinity_timeout_s {
            Some(t) => {
                let _ = writeln!(
                    y,
                    "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {t}"
                );
            }
            None => {
                let _ = writeln!(y, "  sessionAffinity: None");
            }
        }
        if !self.lb_ingress.is_empty() {
            let _ = writeln!(y, "status:\n  loadBalancer:\n    ingress:");
            for ip in &self.lb_ingress {
                let _ = writeln!(y, "    - ip: \"{ip}\"");
            }
        }
        let mut slice_families: Vec<&str> = families.clone();
        slice_families.dedup();
        for fam in slice_families {
            let _ = writeln!(
                y,
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{}\n  namespace: test\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: {fam}",
                fam.to_ascii_lowercase()
            );
            let eps: Vec<&SvcEndpoint> = self
                .endpoints
                .iter()
                .filter(|e| family(&e.ip) == fam)
                .collect();
            if eps.is_empty() {
                let _ = writeln!(y, "endpoints: []");
            } else {
                let _ = writeln!(y, "endpoints:");
            }
            for e in eps {
                let _ = writeln!(
                    y,
                    "- addresses: [\"{}\"]\n  conditions:\n    ready: {}\n  nodeName: {}",
                    e.ip, e.ready, e.node
                );
            }
            let _ = writeln!(y, "ports:");
            for p in &self.ports {
                let _ = writeln!(
                    y,
                    "- name: {}\n  port: {}\n  protocol: {}",
                    p.name, p.target_port, p.protocol
                );
            }
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn a_dual_stack_load_balancer_has_every_field_and_one_slice_per_family() {
        let y = ServiceSpec::new("lb", "LoadBalancer")
            .cluster_ip(ip("10.96.0.10"))
            .cluster_ip(ip("fd00:96::10"))
            .port("http", 80, "TCP", 8080, Some(30080))
            .endpoint(ip("10.244.1.11"), "node-a")
            .endpoint(ip("fd00:244:2::11"), "node-b")
            .external_ip(ip("198.51.100.10"))
            .lb_ingress(ip("203.0.113.10"))
            .external_traffic_policy_local(Some(32080))
            .source_range("192.0.2.100/32")
            .client_ip_affinity(60)
            .yaml();
        let docs = yaml_objects(&y);
        assert_eq!(docs.len(), 3, "{y}");
        let spec = &docs[0]["spec"];
        assert_eq!(spec["type"], "LoadBalancer");
        assert_eq!(spec["ipFamilyPolicy"], "RequireDualStack");
        assert_eq!(spec["ports"][0]["nodePort"], 30080);
        assert_eq!(spec["externalIPs"][0], "198.51.100.10");
        assert_eq!(spec["externalTrafficPolicy"], "Local");
        assert_eq!(spec["healthCheckNodePort"], 32080);
        assert_eq!(spec["loadBalancerSourceRanges"][0], "192.0.2.100/32");
        assert_eq!(spec["sessionAffinity"], "ClientIP");
        assert_eq!(
            docs[0]["status"]["loadBalancer"]["ingress"][0]["ip"],
            "203.0.113.10"
        );
        assert_eq!(docs[1]["addressType"], "IPv4");
        assert_eq!(docs[1]["endpoints"][0]["nodeName"], "node-a");
        assert_eq!(docs[2]["addressType"], "IPv6");
        assert_eq!(docs[2]["endpoints"][0]["addresses"][0], "fd00:244:2::11");
        assert_eq!(docs[2]["ports"][0]["port"], 8080);
    }

    #[test]
    fn a_family_without_endpoints_gets_an_empty_slice() {
        let y = ServiceSpec::new("np", "NodePort")
            .cluster_ip(ip("10.96.0.11"))
            .port("dns", 53, "UDP", 5353, Some(30053))
            .yaml();
        let docs = yaml_objects(&y);
        assert_eq!(docs[0]["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(docs[1]["endpoints"], serde_json::json!([]));
    }
}
