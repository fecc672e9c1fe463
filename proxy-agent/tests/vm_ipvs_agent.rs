//! The real `proxy-agent` binary in `--proxy-mode=ipvs`, driven from manifests inside
//! the VM (`cargo xtask vm-test`; never on the host, which has no IPVS: `test =
//! false`). Each test builds a lab of its own (a node namespace where the agent runs,
//! client and pod namespaces joined to it by veth; see `vm_agent::lab`), writes
//! Services and EndpointSlices, starts the agent, then asks the services from a client
//! and reads what IPVS holds with the project's netlink code.
//!
//! To add a case: `Lab::new(tag, pods, clients)`, `Manifests::new(tag)` and
//! `write_services`, `Agent::start`, then `kernel::wait_live` and `client::ask*`.

mod vm_agent;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proxy_agent::daemon::config::IPVS_SCHEDULERS;
use proxy_agent::dataplane::ipvs::netlink::{Destination, ServiceFlags};
use vm_agent::agent::{self, Agent};
use vm_agent::client::{Held, ask, ask_here, ask_n, ask_udp};
use vm_agent::kernel::{self, eventually, tcp, udp, wait_live};
use vm_agent::lab::{Lab, TCP_PORT, UDP_PORT};
use vm_agent::manifests::{Manifests, Service};

const WEB4: &str = "10.96.0.10";
const WEB6: &str = "fd00:96::10";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(self::ip(ip), port)
}

/// `lab`'s pods `names`, by address of one family.
fn pod_ips(lab: &Lab, names: &[&str], v6: bool) -> Vec<IpAddr> {
    names.iter().map(|n| lab.pod(n).ip(v6)).collect()
}

/// Their TCP listeners.
fn pod_tcp(lab: &Lab, names: &[&str], v6: bool) -> Vec<SocketAddr> {
    names.iter().map(|n| lab.pod(n).tcp(v6)).collect()
}

/// Their UDP listeners.
fn pod_udp(lab: &Lab, names: &[&str], v6: bool) -> Vec<SocketAddr> {
    pod_ips(lab, names, v6)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, UDP_PORT))
        .collect()
}

/// `web` (IPv4) and `web6` (IPv6), each TCP 80 -> 8080 and UDP 53 -> 5353, on `pods`.
fn web_services(lab: &Lab, pods: &[&str]) -> Vec<Service> {
    [("web", WEB4, false), ("web6", WEB6, true)]
        .into_iter()
        .map(|(name, vip, v6)| {
            Service::new(name, ip(vip))
                .tcp(80, TCP_PORT)
                .udp(53, UDP_PORT)
                .endpoints(pod_ips(lab, pods, v6))
        })
        .collect()
}

/// The distinct answers among `answers`.
fn distinct(answers: &[String]) -> Vec<String> {
    let set: BTreeSet<&String> = answers.iter().collect();
    set.into_iter().cloned().collect()
}

/// ClusterIPs over TCP and UDP, IPv4 and IPv6, reach every pod from a client in
/// another namespace, and the agent's observers answer in the node's namespace.
#[test]
fn cluster_ips_over_tcp_and_udp_on_both_families_reach_every_pod() {
    let lab = Lab::new("basic", &["a", "b"], 1);
    let manifests = Manifests::new("basic");
    manifests.write_services("web.yaml", &web_services(&lab, &["a", "b"]));
    let agent = Agent::start(&lab, &manifests, &[]);

    for (vip, v6) in [(WEB4, false), (WEB6, true)] {
        wait_live(&lab.node, tcp(at(vip, 80)), &pod_tcp(&lab, &["a", "b"], v6));
        wait_live(&lab.node, udp(at(vip, 53)), &pod_udp(&lab, &["a", "b"], v6));
        let tcp_answers = ask_n(&lab.client().ns, at(vip, 80), 4);
        assert_eq!(distinct(&tcp_answers), ["a", "b"], "TCP to {vip}: rr");
        let udp_answers: Vec<String> = (0..4)
            .map(|i| {
                ask_udp(&lab.client().ns, at(vip, 53))
                    .unwrap_or_else(|e| panic!("datagram {i} to {vip}: {e}"))
            })
            .collect();
        assert_eq!(distinct(&udp_answers), ["a", "b"], "UDP to {vip}: rr");
    }

    // Four frontends, each in one virtual server: nothing else in the table.
    assert_eq!(kernel::services(&lab.node).len(), 4);
    assert_eq!(agent.metric(&lab.node, "proxy_agent_services"), Some(4.0));
    assert_eq!(agent.metric(&lab.node, "proxy_agent_backends"), Some(8.0));
    assert_eq!(
        agent.get_metrics(&lab.node, "/proxyMode"),
        (200, "ipvs".to_owned())
    );
    let (code, body) = agent::http_get(&lab.node, agent.healthz, "/healthz");
    assert_eq!(code, 200, "/healthz after a sync: {body}");

    // proxyctl, in the node's namespace, reads the same from IPVS.
    let mut listed: Vec<(String, String, usize)> = proxyctl_list(&lab)
        .iter()
        .map(|v| {
            let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            let backends = v["backends"].as_array().map_or(0, Vec::len);
            (field("service"), field("kind"), backends)
        })
        .collect();
    listed.sort();
    let want: Vec<(String, String, usize)> = [
        "test/web6:p53",
        "test/web6:p80",
        "test/web:p53",
        "test/web:p80",
    ]
    .iter()
    .map(|s| ((*s).to_owned(), "ClusterIP".to_owned(), 2))
    .collect();
    assert_eq!(listed, want);

    // `--stats` reads IPVS's own counters, in the listing's layout: the 4 TCP
    // connections above (and the waits before them) per VIP, with packets and bytes
    // both ways, summed over the destinations.
    // IPVS folds its per-CPU counters into what it reports every 2 s (its
    // estimator's tick): wait for them.
    let count = |v: &serde_json::Value, k: &str| v["stats"][k].as_u64().unwrap_or(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    let web = loop {
        let stats = proxyctl_json(&lab, &["list", "--stats", "--json"]);
        let web = stats
            .iter()
            .find(|v| v["service"] == "test/web:p80")
            .cloned()
            .unwrap_or_else(|| panic!("no test/web:p80 in {stats:?}"));
        if count(&web, "connections") >= 4 || std::time::Instant::now() > deadline {
            break web;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    let web = &web;
    assert!(count(web, "connections") >= 4, "{web:#}");
    for k in ["packets_in", "packets_out", "bytes_in", "bytes_out"] {
        assert!(count(web, k) > 0, "{k}: {web:#}");
    }
    let by_dest: u64 = web["endpoints"]
        .as_array()
        .map_or(0, |a| a.iter().map(|e| count(e, "connections")).sum());
    assert_eq!(by_dest, count(web, "connections"), "{web:#}");
    let rate = proxyctl_json(&lab, &["list", "--rate", "--interval", "0.2", "--json"]);
    assert!(
        rate.iter().all(|v| v["rate"]["connections"].is_number()),
        "{rate:?}"
    );
}

/// `proxyctl list --json` in the node's namespace (no eBPF pins there: it reads IPVS).
fn proxyctl_list(lab: &Lab) -> Vec<serde_json::Value> {
    proxyctl_json(lab, &["list", "--json"])
}

/// `proxyctl ARGS` (a JSON list) in the node's namespace, reading IPVS.
fn proxyctl_json(lab: &Lab, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["--bpffs", "/tmp/kpt-vm-no-pins"];
    all.extend_from_slice(args);
    let out = agent::run(&lab.node, "proxyctl", &all);
    assert!(out.status.success(), "proxyctl {args:?}: {out:?}");
    match serde_json::from_slice(&out.stdout) {
        Ok(serde_json::Value::Array(list)) => list,
        other => panic!("proxyctl {args:?}: {other:?} from {out:?}"),
    }
}

/// Each `--ipvs-scheduler` value kube-proxy accepts: the virtual server reads back
/// with it and serves. One agent after the other on the same manifests, so each new
/// one also rewrites the scheduler its predecessor left.
#[test]
fn every_scheduler_is_programmed_and_serves() {
    let lab = Lab::new("sched", &["a", "b"], 1);
    let manifests = Manifests::new("sched");
    let web = Service::new("web", ip(WEB4))
        .tcp(80, TCP_PORT)
        .endpoints(pod_ips(&lab, &["a", "b"], false));
    manifests.write_services("web.yaml", &[web]);
    let id = tcp(at(WEB4, 80));
    for scheduler in IPVS_SCHEDULERS {
        let agent = Agent::start(&lab, &manifests, &["--ipvs-scheduler", scheduler]);
        let read =
            eventually(
                &format!("the virtual server with {scheduler}"),
                || match kernel::service(&lab.node, id) {
                    Some(s) if s.scheduler == scheduler => Ok(s),
                    other => Err(other),
                },
            );
        assert_eq!(
            read.flags,
            ServiceFlags::default(),
            "{scheduler}: no persistence"
        );
        wait_live(&lab.node, id, &pod_tcp(&lab, &["a", "b"], false));
        let answer = ask(&lab.client().ns, at(WEB4, 80))
            .unwrap_or_else(|e| panic!("a connection with {scheduler}: {e}"));
        assert!(
            ["a", "b"].contains(&answer.as_str()),
            "{scheduler}: {answer}"
        );
        let status = agent.stop();
        assert!(status.success(), "{scheduler}: the agent exited {status}");
    }
    assert_eq!(
        kernel::services(&lab.node).len(),
        1,
        "one virtual server throughout"
    );
}

/// `sessionAffinity: ClientIP`: the virtual server is persistent with the Service's
/// timeout, and each client's connections all reach one backend.
#[test]
fn client_ip_affinity_keeps_each_client_on_one_backend() {
    let lab = Lab::new("affinity", &["a", "b"], 2);
    let manifests = Manifests::new("affinity");
    let sticky: Vec<Service> = web_services(&lab, &["a", "b"])
        .into_iter()
        .map(|s| s.affinity(600))
        .collect();
    manifests.write_services("web.yaml", &sticky);
    let _agent = Agent::start(&lab, &manifests, &[]);

    for (vip, v6) in [(WEB4, false), (WEB6, true)] {
        let id = tcp(at(vip, 80));
        wait_live(&lab.node, id, &pod_tcp(&lab, &["a", "b"], v6));
        let read = kernel::service(&lab.node, id).expect("the virtual server");
        assert!(read.flags.contains(ServiceFlags::PERSISTENT), "{read:?}");
        assert_eq!(read.timeout, 600, "{read:?}");
        assert_eq!(
            read.netmask,
            if v6 { 128 } else { 32 },
            "per client: {read:?}"
        );
        let mut chosen = Vec::new();
        for (i, client) in lab.clients.iter().enumerate() {
            let answers = ask_n(&client.ns, at(vip, 80), 6);
            assert_eq!(
                distinct(&answers).len(),
                1,
                "client {i} to {vip}: {answers:?}"
            );
            chosen.push(answers[0].clone());
        }
        // Round robin picked a backend per client (not per service): the second
        // client's template took the other one.
        assert_eq!(distinct(&chosen), ["a", "b"], "{vip}: {chosen:?}");
    }
}

/// Graceful termination: a TCP connection to an endpoint removed from the manifests
/// keeps exchanging data and completes; new connections avoid the endpoint, whose
/// destination reads weight 0 while the connection lasts and is deleted at a full
/// resync once it has no connection left.
#[test]
fn a_removed_endpoint_drains_its_connection_then_goes() {
    const NEW_CONNECTIONS: usize = 20;
    let lab = Lab::new("drain", &["a", "b"], 1);
    let manifests = Manifests::new("drain");
    let web = |pods: &[&str]| {
        Service::new("web", ip(WEB4))
            .tcp(80, TCP_PORT)
            .endpoints(pod_ips(&lab, pods, false))
    };
    manifests.write_services("web.yaml", &[web(&["a"])]);
    let agent = Agent::start(&lab, &manifests, &["--sync-period", "1"]);
    let id = tcp(at(WEB4, 80));
    let (a, b) = (lab.pod("a").tcp(false), lab.pod("b").tcp(false));
    wait_live(&lab.node, id, &[a]);

    // The only connection `a` ever serves.
    let mut held = Held::open(&lab.client().ns, at(WEB4, 80));
    assert_eq!(held.backend, "a");
    held.exchange();

    manifests.write_services("web.yaml", &[web(&["b"])]);
    wait_live(&lab.node, id, &[b]);
    assert_eq!(
        kernel::weights(&lab.node, id),
        [(a, 0), (b, 1)],
        "a drained"
    );
    held.exchange();

    let answers = ask_n(&lab.client().ns, at(WEB4, 80), NEW_CONNECTIONS);
    let to_b = answers.iter().filter(|a| *a == "b").count();
    assert_eq!(
        to_b, NEW_CONNECTIONS,
        "every new connection avoids a: {answers:?}"
    );

    // Full resyncs while the connection lasts keep the drained destination.
    let before = agent.syncs().iter().filter(|s| s.full).count();
    agent.wait("two full resyncs", || {
        let full = agent.syncs().iter().filter(|s| s.full).count();
        (full >= before + 2).then_some(())
    });
    let dests = kernel::dests(&lab.node, id);
    let drained = dests
        .iter()
        .find(|d| SocketAddr::new(d.destination.addr, d.destination.port) == a)
        .unwrap_or_else(|| panic!("a was deleted with a connection open: {dests:?}"));
    assert_eq!(drained.destination.weight, 0);
    assert_eq!(drained.active_connections, 1, "{drained:?}");
    held.exchange();
    held.reset();

    eventually("a to be deleted once its connection is gone", || {
        let weights = kernel::weights(&lab.node, id);
        if weights == [(b, 1)] {
            Ok(())
        } else {
            Err(weights)
        }
    });
}

/// When a connection started, and who answered or why it failed.
type Attempt = (Instant, Result<String, String>);

/// Endpoint churn: generation after generation of endpoint sets written while a
/// client connects continuously. No connection fails, and none started after a
/// generation was programmed reaches a backend outside it.
#[test]
fn endpoint_churn_never_fails_a_connection_nor_reaches_a_removed_backend() {
    const PODS: [&str; 4] = ["a", "b", "c", "d"];
    const GENERATIONS: [&[&str]; 12] = [
        &["a", "b"],
        &["b", "c"],
        &["c", "d"],
        &["d"],
        &["a", "b", "c", "d"],
        &["a"],
        &["b", "d"],
        &["c"],
        &["a", "c", "d"],
        &["b"],
        &["a", "d"],
        &["b", "c", "d"],
    ];
    /// Connections that must start inside each generation's steady window.
    const PER_WINDOW: usize = 3;
    let lab = Lab::new("churn", &PODS, 1);
    let manifests = Manifests::new("churn");
    let web = |pods: &[&str]| {
        Service::new("web", ip(WEB4))
            .tcp(80, TCP_PORT)
            .endpoints(pod_ips(&lab, pods, false))
    };
    manifests.write_services("web.yaml", &[web(GENERATIONS[0])]);
    // Full resyncs (which delete drained destinations) during the churn too.
    let _agent = Agent::start(&lab, &manifests, &["--sync-period", "5"]);
    let id = tcp(at(WEB4, 80));
    wait_live(&lab.node, id, &pod_tcp(&lab, GENERATIONS[0], false));

    // (started, answer) of every connection, from a thread in the client namespace.
    let log: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        lab.client().ns.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let answer = ask_here(at(WEB4, 80)).map_err(|e| e.to_string());
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((started, answer));
                // Paced: a client that never yields the VM's one CPU starves the agent.
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let started_since = |t: Instant| {
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(s, _)| *s >= t)
            .count()
    };

    // Per generation: when it was written and when the kernel was seen holding it.
    let mut windows: Vec<(Instant, Instant)> = Vec::new();
    for (g, pods) in GENERATIONS.iter().enumerate() {
        let written = Instant::now();
        if g > 0 {
            manifests.write_services("web.yaml", &[web(pods)]);
        }
        wait_live(&lab.node, id, &pod_tcp(&lab, pods, false));
        let programmed = Instant::now();
        eventually(
            &format!("{PER_WINDOW} connections in generation {g}"),
            || {
                let n = started_since(programmed);
                if n > PER_WINDOW { Ok(()) } else { Err(n) }
            },
        );
        windows.push((written, programmed));
    }
    stop.store(true, Ordering::Relaxed);
    client.join().expect("the client loop");

    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    let failed: Vec<_> = log.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {failed:?}",
        failed.len(),
        log.len()
    );
    let mut checked = 0;
    for (g, pods) in GENERATIONS.iter().enumerate() {
        let from = windows[g].1;
        let until = windows.get(g + 1).map(|w| w.0);
        for (started, answer) in log.iter() {
            if *started < from || until.is_some_and(|u| *started >= u) {
                continue;
            }
            let answer = answer.as_deref().unwrap_or("");
            assert!(
                pods.contains(&answer),
                "generation {g} ({pods:?}) was programmed, yet a connection reached {answer}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= GENERATIONS.len() * PER_WINDOW,
        "{checked} connections checked"
    );
    eprintln!(
        "churn: {} connections over {} generations, {checked} checked against a programmed one",
        log.len(),
        GENERATIONS.len()
    );
}

/// What a restart must leave alone: the virtual servers and their destinations as
/// written (the counters and connection counts change with traffic).
fn programmed(
    lab: &Lab,
) -> Vec<(
    proxy_agent::dataplane::ipvs::netlink::Service,
    Vec<Destination>,
)> {
    kernel::table(&lab.node)
        .into_values()
        .map(|(s, d)| (s, d.into_iter().map(|d| d.destination).collect()))
        .collect()
}

/// Restart adoption: the agent stops on SIGTERM leaving IPVS programmed; a held
/// connection exchanges data before, during and after the gap, new connections work
/// in the gap, and the next agent adopts what it finds, rewriting nothing.
#[test]
fn a_restarted_agent_adopts_the_table_and_traffic_never_stops() {
    let lab = Lab::new("restart", &["a", "b"], 1);
    let manifests = Manifests::new("restart");
    let mut services = web_services(&lab, &["a", "b"]);
    services.push(
        Service::new("sticky", ip("10.96.0.20"))
            .tcp(80, TCP_PORT)
            .endpoints(pod_ips(&lab, &["a", "b"], false))
            .affinity(300),
    );
    manifests.write_services("web.yaml", &services);
    let first = Agent::start(&lab, &manifests, &[]);
    for (vip, v6) in [(WEB4, false), (WEB6, true)] {
        wait_live(&lab.node, tcp(at(vip, 80)), &pod_tcp(&lab, &["a", "b"], v6));
        wait_live(&lab.node, udp(at(vip, 53)), &pod_udp(&lab, &["a", "b"], v6));
    }
    wait_live(
        &lab.node,
        tcp(at("10.96.0.20", 80)),
        &pod_tcp(&lab, &["a", "b"], false),
    );
    let mut held = Held::open(&lab.client().ns, at(WEB4, 80));
    held.exchange();
    let before = programmed(&lab);
    assert_eq!(before.len(), 5);

    let status = first.stop();
    assert!(status.success(), "the first agent exited {status}");
    // The gap: no agent, everything still served.
    held.exchange();
    assert_eq!(
        programmed(&lab),
        before,
        "the stopped agent left IPVS as it was"
    );
    for vip in [WEB4, WEB6, "10.96.0.20"] {
        ask_n(&lab.client().ns, at(vip, 80), 2);
    }
    ask_udp(&lab.client().ns, at(WEB4, 53)).expect("UDP in the gap");

    let second = Agent::start(&lab, &manifests, &[]);
    let report = second.wait_syncs(1).remove(0);
    assert_eq!(
        (report.upserted, report.removed, report.failed),
        (0, 0, 0),
        "the first sync rewrote something: {}",
        report.line
    );
    assert_eq!(report.unchanged, report.services, "{}", report.line);
    assert_eq!(report.services, 5, "{}", report.line);
    assert_eq!(second.metric(&lab.node, "proxy_agent_services"), Some(5.0));
    assert_eq!(programmed(&lab), before, "the new agent changed IPVS");
    held.exchange();
    for vip in [WEB4, WEB6, "10.96.0.20"] {
        ask_n(&lab.client().ns, at(vip, 80), 2);
    }
}

/// `proxy-agent --cleanup` in the node's namespace removes what the IPVS mode left
/// (every virtual server, its ipsets, `kube-ipvs0`); a second run finds nothing.
#[test]
fn cleanup_removes_the_virtual_servers_the_sets_and_the_link() {
    let lab = Lab::new("cleanup", &["a"], 1);
    let manifests = Manifests::new("cleanup");
    manifests.write_services("web.yaml", &web_services(&lab, &["a"]));
    let agent = Agent::start(&lab, &manifests, &[]);
    wait_live(&lab.node, tcp(at(WEB6, 80)), &pod_tcp(&lab, &["a"], true));
    wait_live(&lab.node, udp(at(WEB4, 53)), &pod_udp(&lab, &["a"], false));
    wait_live(&lab.node, tcp(at(WEB4, 80)), &pod_tcp(&lab, &["a"], false));
    assert!(agent.stop().success());
    assert_eq!(
        kernel::services(&lab.node).len(),
        4,
        "left programmed on exit"
    );
    let sets = kernel::set_names(&lab.node);
    for set in ["KUBE-6-CLUSTER-IP", "KUBE-CLUSTER-IP"] {
        assert!(sets.iter().any(|s| s == set), "{set} in {sets:?}");
    }
    assert!(
        kernel::link_addresses(&lab.node).is_some(),
        "kube-ipvs0 is there"
    );

    let cleanup = |what: &str| {
        let out = agent::run(
            &lab.node,
            "proxy-agent",
            &["--cleanup", "--bpffs", "/tmp/kpt-vm-cleanup-bpffs"],
        );
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{what} --cleanup: {out:?}");
        log
    };
    let log = cleanup("the first");
    assert!(log.contains("removed the IPVS mode's state"), "{log}");
    assert!(kernel::services(&lab.node).is_empty());
    let left: Vec<String> = kernel::set_names(&lab.node)
        .into_iter()
        .filter(|s| s.starts_with("KUBE-"))
        .collect();
    assert!(left.is_empty(), "sets left: {left:?}");
    assert_eq!(
        kernel::link_addresses(&lab.node),
        None,
        "kube-ipvs0 is gone"
    );
    assert!(
        ask(&lab.client().ns, at(WEB4, 80)).is_err(),
        "nothing answers"
    );

    let again = cleanup("a second");
    assert!(!again.contains("removed the IPVS mode's state"), "{again}");

    let listed = proxyctl_list(&lab);
    assert!(listed.is_empty(), "proxyctl lists nothing: {listed:?}");
}
