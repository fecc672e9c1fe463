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
