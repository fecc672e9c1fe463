//! Harness for the real-kernel integration tests.
//!
//! Everything a test creates lives in objects that undo themselves on `Drop`, also when
//! the test panics:
//!
//! - [`Netns`]: a named network namespace (`ip netns add kpt-<tag>-<pid>-<n>`).
//! - [`Cgroup`]: a fresh cgroup v2 directory for attaching socket programs; never the
//!   machine's root cgroup.
//! - [`BpfFs`]: a private bpffs mount so pins of parallel tests do not clash.
//! - [`ChildGuard`]: a process that is killed and reaped on drop.
//! - [`ClusterTopology`]: a "node" namespace with a bridge, a client pod and backend pods.
//!
//! Processes are started inside a namespace (and optionally a cgroup) with [`spawn`],
//! [`spawn_guarded`] or [`run`]; every wait is bounded by a timeout, so a test never hangs.
//! Test traffic starts and ends in namespaces the test made; nothing is routed or attached
//! in the root namespace or the root cgroup.
//!
//! The `probe` binary (`src/bin/probe.rs`) is the traffic tool: [`probe_bin`] finds it,
//! [`start_probe_server`] runs `probe serve`, [`ProbeReply::parse`] reads its output.
//! [`flood`] is the spoofed-source flood scenario around the `flood` binary.
//!
//! All of this needs root and a real kernel. CI runs as root, so a test that cannot set up
//! its environment fails with the reason rather than skipping.
#![deny(missing_docs)]

mod agent;
mod bpffs;
mod cgroup;
mod continuity;
pub mod exposition;
mod fake_api;
pub mod flood;
mod http;
mod manifests;
mod netns;
mod nodes;
pub mod packet;
mod probe;
mod process;
mod stale;
mod topology;

pub use agent::{Agent, LogLine, ServiceView, agent_binary, run_cleanup};
pub use bpffs::BpfFs;
pub use cgroup::{Cgroup, cgroup2_mount};
pub use continuity::{Restart, TrafficWatch};
pub use fake_api::{FakeApiServer, Resource, TestCa};
pub use http::{http_get, metric_value};
pub use manifests::{
    ManifestDir, PortSpec, ServiceSpec, SvcEndpoint, SvcPort, service, yaml_objects,
};
pub use netns::Netns;
pub use nodes::{
    COUNT_INVALID_RULES, Node, NodesTopology, flush_filter, flush_nat, forward_invalid_drops,
    install_iptables, install_kube_proxy_clusterip, install_kube_proxy_forward,
    install_kube_proxy_nodeport, install_kube_proxy_nodeport_local, kube_proxy_clusterip_rules,
    kube_proxy_forward_rules, kube_proxy_nodeport_local_rules, kube_proxy_nodeport_rules,
    kube_proxy_nodeports_rules, rule_packets,
};
pub use probe::{ProbeReply, Stamped, capwrap_bin, probe_bin, start_probe_server, unix_us};
pub use process::{
    ChildGuard, RunTimedOut, run, spawn, spawn_guarded, stdout_lines, tool, try_run,
};
pub use stale::cleanup_stale;
pub use topology::{ClusterTopology, Pod};

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Prefix of every object name the harness creates (netns, cgroup, bpffs directory).
pub const PREFIX: &str = "kpt-";

/// Default timeout for short helper commands (`ip`, `sysctl`, ...).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// A name unique across this process and all other processes:
/// `kpt-<tag>-<run id>-<n>`, where the run id is this process's, whose lock
/// ([`stale::run_id`]) it holds while it lives.
pub(crate) fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{tag}-{}-{n}", stale::run_id())
}

/// The run id embedded by [`unique_name`], if `name` has that shape.
pub(crate) fn owner_run(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let _counter: u32 = parts.next()?.parse().ok()?;
    let run = parts.next()?.parse().ok()?;
    let _tag = parts.next()?;
    Some(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_carry_the_run_id() {
        let a = unique_name("x-y");
        let b = unique_name("x-y");
        assert_ne!(a, b);
        assert_eq!(owner_run(&a), Some(stale::run_id()));
        assert_eq!(owner_run(&b), Some(stale::run_id()));
    }

    #[test]
    fn owner_run_rejects_foreign_names() {
        assert_eq!(owner_run("cni-1234"), None);
        assert_eq!(owner_run("kpt-foo"), None);
        assert_eq!(owner_run("kpt-12-3"), None);
        assert_eq!(owner_run("kpt-a-12-3"), Some(12));
    }
}
