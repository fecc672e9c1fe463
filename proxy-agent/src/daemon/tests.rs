//! The daemon's loop driven end to end over the fake data plane: the seam a second
//! backend plugs into. Paused time makes the timing exact; the churn test uses the
//! real manifest source and real time.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::pipeline::Pipeline;
use super::sync_loop::{self, Timing};
use crate::dataplane::fake::FakeDataplane;
use crate::model::{FrontendKey, NodePortAddresses, Protocol};
use crate::observe::healthcheck::HealthCheckServers;
use crate::observe::http::Health;
use crate::observe::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::source::debounce::Debounce;
use crate::source::{Snapshot, Source, Taken, Update};

const QUIET: Duration = Duration::from_millis(100);

/// A source over a snapshot the test edits; `changed` debounces like the manifest
/// source's.
struct FakeSource {
    world: Arc<Mutex<Snapshot>>,
    debounce: Debounce,
}

impl Source for FakeSource {
    fn describe(&self) -> String {
        "fake".into()
    }
    fn changed(&mut self) -> impl std::future::Future<Output = ()> + Send {
        self.debounce.changed()
    }
    fn take(&mut self) -> Taken {
        Taken {
            update: Some(Update::Reset(self.world.lock().unwrap().clone())),
            ..Taken::default()
        }
    }
}

fn service(name: &str, ip: &str, port: i32) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"port": port, "protocol": "TCP", "targetPort": 8080}]}
        }))
        .unwrap(),
    )
}

fn slice(service: &str, addresses: &[&str]) -> Arc<EndpointSlice> {
    let endpoints: Vec<_> = addresses
        .iter()
        .map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{service}-1"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .unwrap(),
    )
}

fn key(ip: &str, port: u16) -> FrontendKey {
    FrontendKey::internal(ip.parse().unwrap(), port, Protocol::Tcp)
}

/// Runs the daemon's loop over `source` and `dp` in a task, until the sender is used.
fn spawn_loop<S: Source + 'static>(
    mut source: S,
    dp: FakeDataplane,
    timing: Timing,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let metrics = Metrics::new(|_| {});
        let health = Health::new(Duration::from_secs(60));
        let health_checks = HealthCheckServers::new("127.0.0.1".parse().unwrap(), || true);
        let mut pipeline = Pipeline::new(
            "node-a".into(),
            NodePortAddresses::None,
            Reconciler::new(dp).unwrap(),
            health_checks,
            Arc::clone(&metrics),
            Arc::clone(&health),
        );
        let shutdown = async move {
            let _ = stopped.await;
        };
        sync_loop::run(
            &mut source,
            &mut pipeline,
            timing,
            &metrics,
            &health,
            shutdown,
        )
        .await;
    });
    (stop, task)
}

/// The loop running in a task, and the handles a test drives it with.
struct Running {
    fake: FakeDataplane,
    signals: mpsc::Sender<()>,
    world: Arc<Mutex<Snapshot>>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(
        world: Snapshot,
        timing: Timing,
        debounce: Debounce,
        signals: mpsc::Sender<()>,
    ) -> Self {
        let fake = FakeDataplane::new();
        let world = Arc::new(Mutex::new(world));
        let source = FakeSource {
            world: Arc::clone(&world),
            debounce,
        };
        let (stop, task) = spawn_loop(source, fake.clone(), timing);
        Running {
            fake,
            signals,
            world,
            stop: Some(stop),
            task,
        }
    }

    fn change(&self, edit: impl FnOnce(&mut Snapshot)) {
        edit(&mut self.world.lock().unwrap());
        let _ = self.signals.try_send(());
    }

    fn backends(&self, k: &FrontendKey) -> Option<Vec<String>> {
        let st = self.fake.state();
        st.held
            .get(k)
            .map(|s| s.backends.iter().map(ToString::to_string).collect())
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap();
    }
}

const TIMING: Timing = Timing {
    sync_period: Duration::from_secs(30),
    min_sync_period: Duration::from_millis(50),
};

fn world_with_web() -> Snapshot {
    let mut w = Snapshot::default();
    w.services.insert(
        ("default".into(), "web".into()),
        service("web", "10.96.0.10", 80),
    );
    w.slices.insert(
        ("default".into(), "web-1".into()),
        slice("web", &["10.0.0.1"]),
    );
    w
}

fn debounce() -> (mpsc::Sender<()>, Debounce) {
    let (tx, rx) = mpsc::channel(1);
    (tx, Debounce::new(rx, QUIET, Duration::from_secs(1)))
}

#[tokio::test(start_paused = true)]
async fn the_loop_programs_follows_changes_devices_and_repairs_drift_through_the_trait() {
    let (tx, d) = debounce();
    let run = Running::start(world_with_web(), TIMING, d, tx);
    let web = key("10.96.0.10", 80);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(run.backends(&web), Some(vec!["10.0.0.1:8080".to_owned()]));
    assert_eq!(
        run.fake.state().ops.first().map(String::as_str),
        Some("set_node"),
        "node addresses before services"
    );

    run.change(|w| {
        w.slices.insert(
            ("default".into(), "web-1".into()),
            slice("web", &["10.0.0.1", "10.0.0.2"]),
        );
    });
    tokio::time::sleep(QUIET + Duration::from_millis(1)).await;
    assert_eq!(
        run.backends(&web).map(|b| b.len()),
        Some(2),
        "the change is applied"
    );

    let node_sets = |r: &Running| {
        r.fake
            .state()
            .ops
            .iter()
            .filter(|o| *o == "set_node")
            .count()
    };
    let before = node_sets(&run);
    run.fake.devices_changed();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        node_sets(&run),
        before + 1,
        "a device change re-applies the node at once"
    );

    // Drift: the service vanishes behind the agent's back; the full resync restores it.
    run.fake.state().held.clear();
    tokio::time::sleep(TIMING.sync_period).await;
    assert_eq!(
        run.backends(&web).map(|b| b.len()),
        Some(2),
        "drift repaired"
    );
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_change_debounced_while_a_device_event_wins_the_race_is_still_applied() {
    let (tx, d) = debounce();
    let run = Running::start(world_with_web(), TIMING, d, tx);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let api = key("10.96.0.11", 443);
    run.change(|w| {
        w.services.insert(
            ("default".into(), "api".into()),
            service("api", "10.96.0.11", 443),
        );
    });
    // Mid-debounce, device events win the select three times.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        run.fake.devices_changed();
    }
    assert_eq!(run.backends(&api), None, "still debouncing");
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        run.backends(&api),
        Some(Vec::new()),
        "the change survived the cancelled futures (well before the 30 s resync)"
    );
    run.stop().await;
}

/// The control: the old debounce (take a signal, then debounce inside the future)
/// loses the change in the same scenario, so the test above can tell.
#[tokio::test(start_paused = true)]
async fn control_a_debounce_that_is_not_cancel_safe_loses_the_change() {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut applied = false;
    tx.try_send(()).unwrap();
    async fn old_changed(rx: &mut mpsc::Receiver<()>) {
        if rx.recv().await.is_none() {
            return;
        }
        while let Ok(Some(())) = tokio::time::timeout(QUIET, rx.recv()).await {}
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(500) {
        tokio::select! {
            () = old_changed(&mut rx) => applied = true,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    assert!(!applied, "the old pattern drops the taken signal");
}

/// A temporary manifest directory.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "proxy-agent-churn-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn manifest(name: &str, ip: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  clusterIP: {ip}\n  ports:\n  - port: {port}\n    targetPort: 8080\n"
    )
}

/// Writes, renames and deletes manifest files in bursts; after each burst the
/// programmed state must match the directory within 300 ms of the last change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_manifest_churn_the_programmed_state_matches_the_directory_within_300ms() {
    use std::collections::BTreeSet;
    let dir = Dir::new();
    let fake = FakeDataplane::new();
    let source = crate::source::manifests::ManifestSource::new(dir.0.clone()).unwrap();
    let (stop, task) = spawn_loop(source, fake.clone(), TIMING);
    // file name -> port of the service it holds (one Service per file).
    let mut files: std::collections::BTreeMap<String, u16> = Default::default();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut worst = Duration::ZERO;
    let mut writes = 0u32;
    for round in 0..200u16 {
        for _ in 0..1 + rand(4) {
            let name = format!("f{}.yaml", rand(12));
            match (files.contains_key(&name), rand(3)) {
                (true, 0) => {
                    std::fs::remove_file(dir.0.join(&name)).unwrap();
                    files.remove(&name);
                }
                (true, 1) => {
                    let to = format!("g{}-{round}.yaml", rand(1000));
                    std::fs::rename(dir.0.join(&name), dir.0.join(&to)).unwrap();
                    let port = files.remove(&name).unwrap();
                    files.insert(to, port);
                }
                _ => {
                    // Each file its own Service and VIP; rewriting changes the port.
                    let idx = files.len() as u16 + round;
                    let port = 1000 + rand(60000) as u16;
                    // A fresh name per write: a renamed file keeps its Service, and
                    // two files must never hold the same one.
                    writes += 1;
                    let svc = format!("s{writes}");
                    let ip = format!("10.96.{}.{}", idx / 250, 1 + idx % 250);
                    let old = files.keys().find(|f| **f == name).cloned();
                    let ip = match old {
                        Some(_) => {
                            // Keep the VIP the file already had (read it back).
                            let text = std::fs::read_to_string(dir.0.join(&name)).unwrap();
                            text.lines()
                                .find_map(|l| {
                                    l.trim().strip_prefix("clusterIP: ").map(str::to_owned)
                                })
                                .unwrap_or(ip)
                        }
                        None => ip,
                    };
                    let tmp = dir.0.join(format!(".{name}.tmp"));
                    std::fs::write(&tmp, manifest(&svc, &ip, port)).unwrap();
                    std::fs::rename(&tmp, dir.0.join(&name)).unwrap();
                    files.insert(name, port);
                }
            }
        }
        let last_change = std::time::Instant::now();
        let want: BTreeSet<u16> = files.values().copied().collect();
        loop {
            let held: BTreeSet<u16> = fake.state().held.keys().map(|k| k.port).collect();
            if held == want {
                worst = worst.max(last_change.elapsed());
                break;
            }
            assert!(
                last_change.elapsed() < Duration::from_millis(300),
                "round {round}: programmed ports {held:?} != directory {want:?} 300 ms after the last change"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let _ = stop.send(());
    task.await.unwrap();
    eprintln!("churn: worst time to match the directory {worst:?}");
}

#[test]
fn the_cleanup_summary_says_nothing_was_removed_or_counts_what_was() {
    use crate::dataplane::ebpf::bpffs::Removed as Pins;
    use crate::dataplane::ipvs::cleanup::Removed as Ipvs;
    let root = std::path::Path::new("/sys/fs/bpf/x");
    assert_eq!(
        super::cleanup_summary(root, &Pins::default(), &Ipvs::default()),
        "cleanup: nothing to remove (no pins under /sys/fs/bpf/x, no IPVS state)"
    );
    let pins = Pins {
        maps: 12,
        cgroup_links: 3,
        tc_links: 2,
        dirs: 2,
    };
    let ipvs = Ipvs {
        virtual_servers: 4,
        rules_v4: true,
        rules_v6: false,
        invalid_counter: false,
        sets: vec!["KUBE-CLUSTER-IP".into()],
        link: true,
    };
    assert_eq!(
        super::cleanup_summary(root, &pins, &ipvs),
        "cleanup: removed 12 map pins, 5 program links (3 cgroup, 2 tc) and 2 directories \
         from /sys/fs/bpf/x; 4 IPVS virtual servers, IPv4 iptables rules, 1 ipsets, the \
         kube-ipvs0 interface"
    );
}
