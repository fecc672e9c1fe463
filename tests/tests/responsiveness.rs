//! `/healthz`, `/livez` and `/metrics` keep answering while the agent syncs 10,000
//! services: the sync runs off the threads that serve them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests::{Agent, BpfFs, Cgroup, ManifestDir, http_get, service};

const SERVICES: u32 = 10_000;
/// The longest any answer may take while the sync runs.
const BOUND: Duration = Duration::from_millis(100);

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

/// One timed GET.
fn timed(addr: SocketAddr, path: &str) -> Duration {
    let t = Instant::now();
    let (code, body) = http_get(addr, path);
    let took = t.elapsed();
    assert!(code == 200 || code == 503, "{path}: {code} {body}");
    took
}

#[test]
fn health_and_metrics_answer_within_100ms_while_10000_services_are_synced() {
    let dir = ManifestDir::new("resp");
    let bpffs = BpfFs::new("resp");
    let cgroup = Cgroup::new("resp");
    let mut agent = Agent::start(bpffs.path(), cgroup.path(), dir.path(), &[]);
    let (metrics, health) = agent.http_addrs();
    let text = many_services();

    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(&'static str, Duration)>>> = Arc::default();
    let poller = {
        let (stop, samples) = (Arc::clone(&stop), Arc::clone(&samples));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (addr, path) in [
                    (health, "/healthz"),
                    (health, "/livez"),
                    (metrics, "/metrics"),
                ] {
                    let took = timed(addr, path);
                    samples.lock().expect("samples").push((path, took));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let syncs = agent.syncs();
    let started = Instant::now();
    dir.write("many.yaml", &text);
    agent.wait_syncs(syncs + 1, Duration::from_secs(120));
    let sync_took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    poller.join().expect("the poller");

    let last = agent.sync_lines().pop().unwrap_or_default();
    assert!(
        last.contains("services=10000"),
        "the sync programmed them all: {last}"
    );
    let samples = samples.lock().expect("samples");
    let worst = samples
        .iter()
        .max_by_key(|(_, d)| *d)
        .copied()
        .expect("samples were taken");
    eprintln!(
        "sync of {SERVICES} services took {sync_took:?}; {} answers, the slowest {} in {:?}",
        samples.len(),
        worst.0,
        worst.1
    );
    assert!(
        samples.len() >= 30,
        "too few answers ({}) during a {sync_took:?} sync to show anything",
        samples.len()
    );
    assert!(
        worst.1 < BOUND,
        "{} took {:?} while the sync ran (bound {BOUND:?})",
        worst.0,
        worst.1
    );
}
