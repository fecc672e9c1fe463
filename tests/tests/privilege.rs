//! Least privilege: the agent runs with exactly the capabilities `deploy/daemonset.yaml`
//! grants, and with one fewer it refuses to start, naming the one missing.
//!
//! The agent is run by `capwrap` (`src/bin/capwrap.rs`), which leaves a root process
//! only the listed capabilities in every set, as a container runtime does for
//! `capabilities: {drop: [ALL], add: [...]}`. The topology is the tc tests'
//! [`NodesTopology`]: the agent in node-a, an external client, pods on both nodes.
//!
//! ```text
//! client 192.0.2.100 --NodePort 192.0.2.1:30090 (tc on node-a's eth0)--> a-pod-0
//! b-pod-0, in the test's cgroup --ClusterIP 10.96.0.30:80 (socket programs)--> a-pod-0
//! ```
//!
//! node-b runs no agent and has no route to the service range: b-pod-0 reaches the
//! ClusterIP only through the socket programs on the cgroup, which rewrite its connect
//! to a-pod-0's address.
//!
//! The set was found with the first test and `KPT_CAPS` (which replaces the set it
//! grants), before the agent checked its capabilities itself: with CAP_BPF,
//! CAP_NET_ADMIN and CAP_PERFMON it serves; without CAP_BPF creating the first map
//! fails (EPERM), without CAP_NET_ADMIN loading `tc_ingress` fails (EPERM), without
//! CAP_PERFMON the verifier refuses `tc_ingress` (EACCES, "pointer arithmetic with it
//! prohibited for !root"). CAP_SYS_ADMIN alone also works (the kernel accepts it for
//! all three BPF checks), but grants far more.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tests::{
    Agent, BpfFs, Cgroup, ManifestDir, Netns, NodesTopology, ProbeReply, ServiceSpec, agent_binary,
    capwrap_bin, probe_bin, run,
};

/// What the eBPF data plane needs, and so what `deploy/daemonset.yaml` adds; keep
/// the two and `proxy-agent/src/daemon/privileges.rs` in step.
const EBPF_CAPS: [&str; 3] = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"];

/// Capability numbers (`linux/capability.h`), for reading the agent's CapEff.
fn cap_number(name: &str) -> u32 {
    match name {
        "CAP_NET_ADMIN" => 12,
        "CAP_NET_RAW" => 13,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("no number for {other} in this test"),
    }
}

const POD_TCP: u16 = 8080;
const SERVED: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// `probe tcp --to TO --count 3` from `ns` (in `cgroup` if given) until it is answered
/// by `want` (within [`SERVED`]); panics with `context()` if never.
fn wait_answered_by(
    ns: &Netns,
    cgroup: Option<&Cgroup>,
    to: &str,
    want: &str,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + SERVED;
    loop {
        let out = run(
            ns,
            cgroup,
            Command::new(probe_bin()).args([
                "tcp",
                "--to",
                to,
                "--count",
                "3",
                "--timeout-ms",
                "500",
            ]),
            Duration::from_secs(30),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let replies = ProbeReply::parse_all(&stdout);
        if replies.len() == 3 && replies.iter().all(|r| r.name() == Some(want)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{to} from {} was not answered by {want} within {SERVED:?}: {replies:?}\n{}",
            ns.name(),
            context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_agent_with_exactly_the_documented_capabilities_serves_cluster_ips_and_node_ports() {
    let caps = std::env::var("KPT_CAPS").unwrap_or_else(|_| EBPF_CAPS.join(","));
    let bpffs = BpfFs::new("caps");
    let dir = ManifestDir::new("caps");
    let cgroup = Cgroup::new("caps-pods");
    let topo = NodesTopology::new("caps", 1);
    let _servers = topo.serve_pods(&[POD_TCP], &[]);
    let node_a = topo.node_a();
    dir.write(
        "svc.yaml",
        &ServiceSpec::new("web", "NodePort")
            .cluster_ip(ip("10.96.0.30"))
            .port("http", 80, "TCP", POD_TCP, Some(30090))
            .endpoint(ip("10.244.1.11"), "node-a")
            .yaml(),
    );
    let agent = Agent::start_in_with_caps(
        &caps,
        &node_a.netns,
        bpffs.path(),
        cgroup.path(),
        dir.path(),
        NodesTopology::AGENT_FLAGS,
    );
    // The wrapper did its job: the agent holds exactly the set, nothing more.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))
        .expect("reading the agent's /proc status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no CapEff in {status}"));
    let want = caps
        .split(',')
        .filter(|c| !c.is_empty())
        .fold(0u64, |m, c| m | 1 << cap_number(c));
    assert_eq!(eff, want, "the agent's effective capabilities");
    let context = || agent.log();
    // NodePort: the tc programs on node-a's eth0.
    wait_answered_by(&topo.client, None, "192.0.2.1:30090", "a-pod-0", context);
    // ClusterIP: the socket programs on the test's cgroup, from the node without an agent.
    let b_pod = &topo.node_b().pods[0];
    wait_answered_by(
        &b_pod.netns,
        Some(&cgroup),
        "10.96.0.30:80",
        "a-pod-0",
        context,
    );
    agent.stop();
}

/// Runs the agent with `caps` in a namespace of its own and returns how it exited and
/// its stderr.
fn run_agent_with(caps: &str, extra: &[&str], bpffs: &Path, cgroup: &Path) -> (bool, String) {
    let ns = Netns::new("caps-fail");
    let dir = ManifestDir::new("caps-fail");
    let out = run(
        &ns,
        None,
        Command::new(capwrap_bin())
            .args(["--caps", caps, "--"])
            .arg(agent_binary("proxy-agent"))
            .arg("--manifests")
            .arg(dir.path())
            .arg("--bpffs")
            .arg(bpffs.join("agent"))
            .arg("--cgroup-path")
            .arg(cgroup)
            .args(["--nodeport-addresses", "none"])
            .args(["--metrics-bind-address", "127.0.0.1:0"])
            .args(["--healthz-bind-address", "127.0.0.1:0"])
            .args(extra),
        Duration::from_secs(30),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn with_any_one_capability_fewer_the_agent_refuses_to_start_and_names_it() {
    let bpffs = BpfFs::new("caps-fail");
    let cgroup = Cgroup::new("caps-fail");
    for missing in EBPF_CAPS {
        let fewer: Vec<&str> = EBPF_CAPS.into_iter().filter(|c| *c != missing).collect();
        let (ok, stderr) = run_agent_with(&fewer.join(","), &[], bpffs.path(), cgroup.path());
        assert!(!ok, "the agent started without {missing}:\n{stderr}");
        assert!(
            stderr.contains(&format!("needs {missing} (missing)")),
            "without {missing}, the agent's error does not name it:\n{stderr}"
        );
        // Refused before anything was made.
        assert!(
            !bpffs.path().join("agent").exists(),
            "without {missing}, the agent created its pin directory:\n{stderr}"
        );
    }
}

#[test]
fn the_ipvs_mode_names_cap_net_admin_when_it_is_missing() {
    let bpffs = BpfFs::new("caps-ipvs");
    let cgroup = Cgroup::new("caps-ipvs");
    let (ok, stderr) = run_agent_with(
        "CAP_BPF,CAP_PERFMON",
        &["--proxy-mode", "ipvs"],
        bpffs.path(),
        cgroup.path(),
    );
    assert!(
        !ok,
        "the IPVS mode started without CAP_NET_ADMIN:\n{stderr}"
    );
    assert!(
        stderr.contains("needs CAP_NET_ADMIN (missing)"),
        "the IPVS mode's error does not name CAP_NET_ADMIN:\n{stderr}"
    );
}

#[test]
fn the_daemonset_grants_exactly_this_set_and_nothing_privileged() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("reading deploy/daemonset.yaml");
    let ds: serde_yaml::Value = serde_yaml::from_str(&text).expect("deploy/daemonset.yaml parses");
    let pod = &ds["spec"]["template"]["spec"];
    assert_ne!(pod["hostPID"].as_bool(), Some(true), "hostPID");
    let sc = &pod["containers"][0]["securityContext"];
    assert_ne!(sc["privileged"].as_bool(), Some(true), "privileged: {sc:?}");
    assert_eq!(
        sc["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{sc:?}"
    );
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{sc:?}");
    let list = |key: &str| -> Vec<String> {
        sc["capabilities"][key]
            .as_sequence()
            .unwrap_or_else(|| panic!("capabilities.{key} is not a list: {sc:?}"))
            .iter()
            .map(|v| v.as_str().expect("a capability name").to_owned())
            .collect()
    };
    assert_eq!(list("drop"), ["ALL"]);
    let mut added: Vec<String> = list("add").iter().map(|c| format!("CAP_{c}")).collect();
    added.sort();
    let mut want = EBPF_CAPS.map(str::to_owned).to_vec();
    want.sort();
    assert_eq!(added, want, "capabilities.add in {}", path.display());
}
