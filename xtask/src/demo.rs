//! `cargo xtask demo`: a ClusterIP service balanced at the socket layer, live.
//!
//! Builds everything, creates a node namespace with a client pod and three backend
//! pods (each answering with its name), runs the agent on `examples/clusterip.yaml`,
//! sends requests through the VIP, then turns on ClientIP affinity and shows the
//! client pinned to one backend. Everything it creates is removed at the end (also on
//! Ctrl-C or a failure, by the harness's drop guards).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tests::{Agent, BpfFs, ClusterTopology, ManifestDir, ProbeReply};

use crate::{cargo, run_streamed, workspace_root};

const VIP: &str = "10.96.0.10:80";

/// Runs the demo.
pub fn run() -> Result<()> {
    crate::setup::run()?;
    run_streamed(cargo().args(["build", "-p", "proxy-agent", "-p", "tests", "--bins"]))?;

    let example = workspace_root().join("examples/clusterip.yaml");
    let manifest = std::fs::read_to_string(&example)
        .with_context(|| format!("reading {}", example.display()))?;

    step("Creating a node namespace with a client pod and three backend pods");
    let topo = ClusterTopology::new("demo", 3);
    let _servers = topo.serve_backends(&[8080], &[5353]);
    for pod in &topo.backends {
        println!(
            "  {:<10} {:<14} serves its name on tcp/8080 and udp/5353",
            pod.name, pod.ipv4
        );
    }
    println!(
        "  client     {:<14} in cgroup {}",
        topo.client.ipv4,
        topo.client_cgroup.path().display()
    );

    step(&format!("Starting proxy-agent on {}", example.display()));
    let dir = ManifestDir::new("demo");
    dir.write("clusterip.yaml", &manifest);
    let bpffs = BpfFs::new("demo");
    let agent = Agent::start(bpffs.path(), topo.client_cgroup.path(), dir.path(), &[]);
    println!("\n$ proxyctl list\n{}", agent.proxyctl(&["list"]));

    step(&format!("12 requests from the client to {VIP}"));
    show(&requests(&topo, 12)?);

    step("Turning on sessionAffinity: ClientIP (rewriting the manifest)");
    let sticky = manifest.replacen(
        "\n  sessionAffinity: None\n",
        "\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 10800\n",
        1,
    );
    if sticky == manifest {
        bail!(
            "{} has no `sessionAffinity: None` to replace",
            example.display()
        );
    }
    dir.write("clusterip.yaml", &sticky);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent
        .programmed()
        .iter()
        .any(|v| v.affinity_timeout_s.is_some())
    {
        if Instant::now() > deadline {
            bail!(
                "the agent did not apply the affinity change:\n{}",
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("\n$ proxyctl list\n{}", agent.proxyctl(&["list"]));

    step(&format!(
        "12 more requests to {VIP}: all pinned to one backend"
    ));
    show(&requests(&topo, 12)?);

    step("Cleaning up: agent, pods, namespaces, cgroup, bpffs");
    drop(agent);
    Ok(())
}

fn step(s: &str) {
    println!("\n==> {s}");
}

fn requests(topo: &ClusterTopology, n: usize) -> Result<Vec<String>> {
    let count = n.to_string();
    let out = topo.client_probe(&["tcp", "--to", VIP, "--count", &count]);
    ProbeReply::parse_all(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .map(|r| match r {
            ProbeReply::Ok { name, addr, .. } => {
                Ok(format!("{name} (the socket's peer is {addr})"))
            }
            ProbeReply::Err { reason, .. } => bail!("request failed: {reason}"),
        })
        .collect()
}

fn show(replies: &[String]) {
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, r) in replies.iter().enumerate() {
        println!("  request {:>2} -> {r}", i + 1);
        let name = r.split_whitespace().next().unwrap_or_default();
        *tally.entry(name).or_default() += 1;
    }
    let summary: Vec<String> = tally.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("  spread: {}", summary.join(", "));
}
