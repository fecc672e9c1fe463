//! `cargo xtask bench sync`: how fast the agent programs what the API server says.
//!
//! A fake API server holds 10,000 Services x 10 endpoints (100,000 endpoints). The
//! (release-built) agent starts against it: cold start is the time from starting the
//! agent until all 10,000 services are in the maps. Then a stream of single-endpoint
//! changes, one at a time: the agent reports, per sync, the time from the change
//! reaching it to the map write (p50, p99). Peak RSS is the agent's VmHWM.
//!
//! Then the observers under load: an agent on an empty manifest directory gets the
//! same 10,000 services in one file while `/healthz`, `/livez` and `/metrics` are
//! polled; their answer times during that sync are reported (target: under 100 ms).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};
use tests::{Agent, BpfFs, Cgroup, FakeApiServer, ManifestDir};

use super::quantile;
use crate::{cargo, run_streamed, workspace_root};

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;
const CHANGES: usize = 300;

/// Runs the benchmark.
pub fn run() -> Result<()> {
    crate::setup::run()?;
    run_streamed(cargo().args(["build", "--release", "-p", "proxy-agent", "--bins"]))?;
    let release = workspace_root().join("target/release");
    // SAFETY: single-threaded at this point; the harness reads these when spawning.
    unsafe {
        std::env::set_var("KPT_AGENT_BIN", release.join("proxy-agent"));
        std::env::set_var("KPT_PROXYCTL_BIN", release.join("proxyctl"));
    }

    let api = FakeApiServer::start();
    let t = Instant::now();
    for i in 0..SERVICES {
        let (svc, slice) = objects(i, 0);
        api.apply(svc);
        api.apply(slice);
    }
    println!(
        "fake API server loaded {SERVICES} services x {ENDPOINTS} endpoints in {:?}",
        t.elapsed()
    );

    // A real API server lists from its watch cache; so does the fake, once warmed.
    api.warm_list_cache();
    let dir = ManifestDir::new("bench-sync");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let bpffs = BpfFs::new("bench-sync");
    let cgroup = Cgroup::new("bench-sync");
    let started = Instant::now();
    let mut agent = Agent::start_kube(
        &api,
        bpffs.path(),
        cgroup.path(),
        &kubeconfig,
        &["--min-sync-period", "0"],
    );
    let cold = started.elapsed();
    let first = agent.sync_lines();
    let Some(last) = first.last() else {
        bail!("the agent logged no sync:\n{}", agent.log());
    };
    let services = field(last, "services=")?;
    if services < SERVICES as f64 {
        bail!(
            "the first sync held {services} frontends, not {SERVICES}:\n{}",
            agent.log()
        );
    }

    let mut latencies = Vec::with_capacity(CHANGES);
    for n in 0..CHANGES {
        let before = agent.syncs();
        let (_, slice) = objects(n * 37 % SERVICES, n + 1);
        api.apply(slice);
        agent.wait_syncs(before + 1, Duration::from_secs(10));
        let Some(line) = agent.sync_lines().pop() else {
            bail!("change {n}: no sync line after the sync counter rose");
        };
        // A sync without a latency measured nothing: no figure stands in for it.
        latencies.push(field(&line, "latency_us=")?);
        std::thread::sleep(Duration::from_millis(5));
    }
    let rss_mb = agent.peak_rss_kib() as f64 / 1024.0;
    let (min, p50, p99, max) = (
        quantile(&mut latencies, 0.0),
        quantile(&mut latencies, 0.5),
        quantile(&mut latencies, 0.99),
        quantile(&mut latencies, 1.0),
    );
    println!(
        "\nsync: {SERVICES} services x {ENDPOINTS} endpoints\n\
         {:<44} {:>10.0} ms   (target < 2000)\n\
         {:<44} {:>10.2} ms   (target p99 < 10)\n\
         {:<44} {:>10.2} ms\n\
         {:<44} {:>10.2} ms .. {:.2} ms\n\
         {:<44} {:>10.0} MB   (target < 200)",
        "cold start (agent start -> all in the maps)",
        cold.as_secs_f64() * 1000.0,
        "single-endpoint change -> map write, p99",
        p99 / 1000.0,
        "single-endpoint change -> map write, p50",
        p50 / 1000.0,
        "single-endpoint change -> map write, min .. max",
        min / 1000.0,
        max / 1000.0,
        "agent peak RSS",
        rss_mb,
    );
    drop(agent);
    observers_during_a_sync()
}

/// `/healthz`, `/livez` and `/metrics` answer times while 10,000 services are synced
/// from manifests.
fn observers_during_a_sync() -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let dir = ManifestDir::new("bench-observers");
    let bpffs = BpfFs::new("bench-observers");
    let cgroup = Cgroup::new("bench-observers");
    let mut agent = Agent::start(bpffs.path(), cgroup.path(), dir.path(), &[]);
    let (metrics, health) = agent.http_addrs();
    let mut text = String::new();
    for i in 0..SERVICES {
        let (a, b) = (i / 250, i % 250 + 1);
        let ip = |net: u8| std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, net, a as u8, b as u8));
        text.push_str(&tests::service(
            &format!("s{i}"),
            ip(97),
            &[("http", 80, "TCP", 8080)],
            &[ip(128)],
            None,
        ));
        text.push_str("---\n");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<f64>>> = Arc::default();
    let poller = {
        let (stop, samples) = (Arc::clone(&stop), Arc::clone(&samples));
        // The agent's servers listen in its namespace.
        agent.spawn_in_netns(move || {
            while !stop.load(Ordering::Relaxed) {
                for (addr, path) in [
                    (health, "/healthz"),
                    (health, "/livez"),
                    (metrics, "/metrics"),
                ] {
                    let t = Instant::now();
                    let (code, _) = tests::http_get(addr, path);
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    if code == 200 || code == 503 {
                        samples.lock().unwrap_or_else(|e| e.into_inner()).push(ms);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let syncs = agent.syncs();
    let started = Instant::now();
    dir.write("many.yaml", &text);
    agent.wait_syncs(syncs + 1, Duration::from_secs(120));
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    if poller.join().is_err() {
        bail!("the poller panicked");
    }
    let mut ms = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    if ms.len() < 30 {
        bail!(
            "only {} answers during a {took:?} sync: nothing to measure",
            ms.len()
        );
    }
    println!(
        "\nobservers while {SERVICES} services sync ({:.1} s, {} answers)\n\
         {:<44} {:>10.2} ms\n\
         {:<44} {:>10.2} ms   (target < 100)\n\
         {:<44} {:>10.2} ms .. {:.2} ms",
        took.as_secs_f64(),
        ms.len(),
        "/healthz, /livez, /metrics answer, p50",
        quantile(&mut ms, 0.5),
        "/healthz, /livez, /metrics answer, max",
        quantile(&mut ms, 1.0),
        "min .. p99",
        quantile(&mut ms, 0.0),
        quantile(&mut ms, 0.99),
    );
    Ok(())
}

/// The number after `key` in a sync log line; its absence is an error, never a zero.
fn field(line: &str, key: &str) -> Result<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {key} in the sync line {line:?}"))
}

/// Service `i` and its slice; `version` shifts one endpoint so that each change moves
/// exactly one endpoint.
fn objects(i: usize, version: usize) -> (Value, Value) {
    let (a, b) = (i / 250, i % 250 + 1);
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("s{i}"), "namespace": "load", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"clusterIP": format!("10.97.{a}.{b}"), "clusterIPs": [format!("10.97.{a}.{b}")],
                 "ipFamilies": ["IPv4"], "type": "ClusterIP",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    });
    let endpoints: Vec<Value> = (0..ENDPOINTS)
        .map(|e| {
            let host = if e == 0 { 100 + version % 100 } else { e };
            json!({"addresses": [format!("10.{}.{}.{}", 128 + a, b, host)], "conditions": {"ready": true}})
        })
        .collect();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("s{i}-1"), "namespace": "load",
                     "labels": {"kubernetes.io/service-name": format!("s{i}")}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    });
    (svc, slice)
}
