//! `/healthz`, `/livez` and `/metrics` keep answering while the agent syncs 10,000
//! services: the sync runs off the threads that serve them. The test asserts that
//! answers complete while the sync is still running (a blocked server would answer
//! only after it); how fast they are is measured by `cargo xtask bench sync`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests::{Agent, BpfFs, Cgroup, ManifestDir, http_get, service};

const SERVICES: u32 = 10_000;

/// 10,000 Services with one endpoint each, in one file.
fn many_services() -> String {
    let mut out = String::new();
    for i in 0..SERVICES {
        let vip = IpAddr::V4(Ipv4Addr::new(10, 96, (i / 250) as u8, (1 + i % 250) as u8));
        let ep = IpAddr::V4(Ipv4Addr::new(10, 244, (i / 250) as u8, (1 + i % 250) as u8));
        out.push_str(&service(
            &format!("s{i}"),
            vip,
            &[("http", 80, "TCP", 8080)],
            &[ep],
            None,
        ));
        out.push_str("---\n");
    }
    out
}

/// One GET; when it completed.
fn answered(addr: SocketAddr, path: &str) -> Instant {
    let (code, body) = http_get(addr, path);
    assert!(code == 200 || code == 503, "{path}: {code} {body}");
    Instant::now()
}

#[test]
fn health_and_metrics_answer_while_10000_services_are_synced() {
    let dir = ManifestDir::new("resp");
    let bpffs = BpfFs::new("resp");
    let cgroup = Cgroup::new("resp");
    let mut agent = Agent::start(bpffs.path(), cgroup.path(), dir.path(), &[]);
    let (metrics, health) = agent.http_addrs();
    let text = many_services();

    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(&'static str, Instant)>>> = Arc::default();
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
                    let at = answered(addr, path);
                    samples.lock().expect("samples").push((path, at));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let syncs = agent.syncs();
    let started = Instant::now();
    dir.write("many.yaml", &text);
    agent.wait_syncs(syncs + 1, Duration::from_secs(120));
    // The sync line is logged when the maps are written: answers before this instant
    // were served while the sync ran.
    let synced = Instant::now();
    let sync_took = synced - started;
    stop.store(true, Ordering::Relaxed);
    poller.join().expect("the poller");

    let last = agent.sync_lines().pop().unwrap_or_default();
    assert!(
        last.contains("services=10000"),
        "the sync programmed them all: {last}"
    );
    let samples = samples.lock().expect("samples");
    let during: Vec<&'static str> = samples
        .iter()
        .filter(|(_, at)| (started..synced).contains(at))
        .map(|(path, _)| *path)
        .collect();
    eprintln!(
        "sync of {SERVICES} services took {sync_took:?}; {} of {} answers while it ran",
        during.len(),
        samples.len()
    );
    // Each endpoint, many times over: a server the sync blocked would have answered
    // once at most before the sync line.
    for path in ["/healthz", "/livez", "/metrics"] {
        let n = during.iter().filter(|p| **p == path).count();
        assert!(
            n >= 10,
            "{path} answered {n} times during a {sync_took:?} sync of {SERVICES} services"
        );
    }
}
