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

/// A ClusterIP Service of one family in namespace `test`, with one EndpointSlice of
/// ready endpoints on [`NODE`]. Ports are `(port, TCP|UDP, targetPort)`, named `p<port>`.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub cluster_ip: IpAddr,
    pub ports: Vec<(u16, &'static str, u16)>,
    pub endpoints: Vec<IpAddr>,
    /// `sessionAffinity: ClientIP` with this timeout.
    pub affinity_timeout_s: Option<u32>,
}

impl Service {
    /// A service `name` on `cluster_ip` with no ports and no endpoints yet.
    pub fn new(name: &str, cluster_ip: IpAddr) -> Service {
        Service {
            name: name.to_owned(),
            cluster_ip,
            ports: Vec::new(),
            endpoints: Vec::new(),
            affinity_timeout_s: None,
        }
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
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: test}}\n\
             spec:\n  type: ClusterIP\n  clusterIP: \"{ip}\"\n  clusterIPs: [\"{ip}\"]\n  \
             ipFamilies: [{family}]\n"
        );
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
            let _ = writeln!(
                y,
                "  - {{name: p{port}, port: {port}, protocol: {proto}, targetPort: {target}}}"
            );
        }
        let _ = write!(
            y,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-1, namespace: test, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: {family}\n"
        );
        if self.endpoints.is_empty() {
            y.push_str("endpoints: []\n");
        } else {
            y.push_str("endpoints:\n");
        }
        for ip in &self.endpoints {
            let _ = writeln!(
                y,
                "- {{addresses: [\"{ip}\"], conditions: {{ready: true}}, nodeName: {NODE}}}"
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
