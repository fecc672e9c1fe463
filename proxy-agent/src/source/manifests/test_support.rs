//! Builders shared by the manifest source's tests (and by the translation's, which
//! read the examples through the source).

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{ManifestError, ManifestSource};
use crate::source::Snapshot;

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "proxy-agent-manifests-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub(crate) fn write(&self, name: &str, content: &str) {
        std::fs::write(self.file(name), content).unwrap();
    }

    pub(crate) fn remove(&self, name: &str) {
        std::fs::remove_file(self.file(name)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn service_yaml(ns: &str, name: &str, ip: &str, port: i64) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  clusterIP: {ip}\n  ports:\n  - name: http\n    port: {port}\n    \
         targetPort: 8080\n"
    )
}

pub(crate) fn slice_yaml(ns: &str, name: &str, service: &str, address: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
         namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {service}\n\
         addressType: IPv4\nports:\n- name: http\n  port: 8080\nendpoints:\n\
         - addresses: [\"{address}\"]\n"
    )
}

pub(crate) fn source(dir: &TempDir) -> ManifestSource {
    ManifestSource::new(dir.path().to_path_buf()).unwrap()
}

pub(crate) fn keys<V>(map: &BTreeMap<(String, String), V>) -> Vec<String> {
    map.keys()
        .map(|(ns, name)| format!("{ns}/{name}"))
        .collect()
}

pub(crate) fn port(snapshot: &Snapshot, ns: &str, name: &str) -> i32 {
    let svc = &snapshot.services[&(ns.to_string(), name.to_string())];
    svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port
}

/// The errors as displayed, with the directory replaced by `DIR`.
pub(crate) fn shown(dir: &TempDir, errors: &[ManifestError]) -> Vec<String> {
    let prefix = format!("{}/", dir.path().display());
    errors
        .iter()
        .map(|e| e.to_string().replace(&prefix, "DIR/"))
        .collect()
}

pub(crate) fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}
