//! The guest half of `cargo xtask bench ipvs`: run inside the VM (release builds of
//! this and of the agent binary), it prints raw samples as `@@kpt-bench ...` lines on
//! the console, which xtask reads and sums up (medians, spreads, quantiles).
//!
//! In one lab (a client and a pod around the node, see `vm_agent::lab`):
//! 1. with 2 services programmed (the measured one and a probe): new TCP connections
//!    per second from the client, through an IPVS ClusterIP and straight to the pod,
//!    in alternating rounds; then the probe's endpoints changed `CHANGES` times, one
//!    at a time: the time from writing the manifest until the new destination is in
//!    IPVS (polled over netlink);
//! 2. the agent stopped and `--cleanup`ed; `SERVICES` services x 10 endpoints (the
//!    probe among them) written to the manifests; a new agent started: the time from
//!    its start to its first sync holding them all (its log's timestamp), then the
//!    kernel's table counted;
//! 3. the connection rounds again, and `LOADED_CHANGES` probe changes, among them.
//!
//! Arguments: `--rounds N --round-ms MS --services N --changes N --loaded-changes N`.

mod vm_agent;

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use proxy_agent::dataplane::ipvs::netlink::Ipvs;
use vm_agent::agent::{self, Agent};
use vm_agent::client::CONNECT_TIMEOUT;
use vm_agent::kernel::{self, tcp, wait_live};
use vm_agent::lab::Lab;
use vm_agent::listeners::serve_tcp_greet_and_close;
use vm_agent::manifests::{Manifests, Service};

/// The measured service and its pod's greet-and-close port.
const VIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)), 80);
const POD_PORT: u16 = 9090;
/// The same server on another port for the direct side: the pod must never see one
/// client port from both sides within TIME_WAIT. (It would, on one port: the pod's
/// TIME_WAIT answers the direct SYN with an ACK that IPVS, still holding the VIP
/// connection of that tuple, rewrites to come from the VIP, so the client's reset
/// never reaches the pod and the connection times out.)
const DIRECT_PORT: u16 = 9091;
/// Endpoints per load service.
const ENDPOINTS: usize = 10;
/// Load services per manifest file (the agent re-reads the directory on any change).
const PER_FILE: usize = 1_000;
/// The load service whose endpoints change.
const PROBE: usize = 0;

struct Args {
    rounds: usize,
    round: Duration,
    services: usize,
    changes: usize,
    loaded_changes: usize,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 9,
        round: Duration::from_millis(1500),
        services: 10_000,
        changes: 100,
        loaded_changes: 5,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = |v: Option<&String>| -> u64 {
            v.and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{pair:?}: a number expected"))
        };
        let v = value(pair.get(1));
        match pair[0].as_str() {
            "--rounds" => a.rounds = v as usize,
            "--round-ms" => a.round = Duration::from_millis(v),
            "--services" => a.services = v as usize,
            "--changes" => a.changes = v as usize,
            "--loaded-changes" => a.loaded_changes = v as usize,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn main() {
    let args = args();
    let lab = Lab::new("bench", &["a"], 1);
    let pod = lab.pod("a");
    serve_tcp_greet_and_close(&pod.ns, SocketAddr::new(pod.ipv4.into(), POD_PORT), "a");
    let direct = SocketAddr::new(pod.ipv4.into(), DIRECT_PORT);
    serve_tcp_greet_and_close(&pod.ns, direct, "a");
    // Room for every round's connections without reusing a port.
    lab.client()
        .ns
        .sysctl("ipv4/ip_local_port_range", "1024 65535");
    // The load services' endpoints are never reached; IPVS only wants them routable.
    lab.node.ip(&["route", "add", "10.128.0.0/9", "dev", "lo"]);

    let manifests = Manifests::new("bench");
    let bench = Service::new("bench", VIP.ip())
        .tcp(VIP.port(), POD_PORT)
        .endpoints([IpAddr::V4(pod.ipv4)]);
    manifests.write_services("bench.yaml", &[bench]);
    manifests.write_services("probe.yaml", &[load_service(PROBE, 0)]);
    // No full resync during the measurements (each re-applies the netfilter rules
    // with iptables-restore, seconds of the VM's one CPU).
    let first = Agent::start(&lab, &manifests, &["--sync-period", "3600"]);
    wait_live(
        &lab.node,
        tcp(VIP),
        &[SocketAddr::new(pod.ipv4.into(), POD_PORT)],
    );
    connection_rounds(&lab, &args, 2, direct);
    endpoint_changes(&lab, &manifests, &first, 2, args.changes);
    assert!(first.stop().success(), "the first agent's exit");

    // From cold: nothing programmed, everything in the manifests before the start.
    let out = agent::run(
        &lab.node,
        "proxy-agent",
        &["--cleanup", "--bpffs", "/tmp/kpt-bench-bpffs"],
    );
    assert!(out.status.success(), "--cleanup: {out:?}");
    assert!(kernel::services(&lab.node).is_empty(), "cleaned up");
    write_load(&manifests, args.services, 0);
    let total = args.services + 1;
    let second = Agent::start(&lab, &manifests, &["--sync-period", "3600"]);
    let synced = second.wait_up_to(Duration::from_secs(3000), "the first full sync", || {
        second
            .syncs()
            .into_iter()
            .find(|s| s.services as usize >= total)
    });
    assert_eq!(synced.failed, 0, "{}", synced.line);
    let cold = synced.at().duration_since(second.started_at);
    let table = kernel::table(&lab.node);
    let dests: usize = table.values().map(|(_, d)| d.len()).sum();
    assert_eq!(table.len(), total, "virtual servers after the first sync");
    assert_eq!(dests, args.services * ENDPOINTS + 1, "destinations");
    println!(
        "@@kpt-bench cold services={} endpoints={ENDPOINTS} ms={:.1} virtual_servers={} dests={dests} translate_us={} apply_us={}",
        args.services,
        cold.as_secs_f64() * 1000.0,
        table.len(),
        synced.field("translate_us").unwrap_or(0),
        synced.field("apply_us").unwrap_or(0)
    );

    connection_rounds(&lab, &args, total, direct);
    endpoint_changes(&lab, &manifests, &second, total, args.loaded_changes);
    println!(
        "@@kpt-bench rss services={} kib={}",
        args.services,
        second.peak_rss_kib()
    );
    assert!(second.stop().success(), "the second agent's exit");
    println!("@@kpt-bench done");
}

/// Alternating rounds (which side goes first alternates too) of new connections from
/// the client: to the pod, and to the VIP.
fn connection_rounds(lab: &Lab, args: &Args, services: usize, direct: SocketAddr) {
    for round in 0..args.rounds {
        let mut order = [("direct", direct), ("vip", VIP)];
        if round % 2 == 1 {
            order.reverse();
        }
        let mut line = format!("@@kpt-bench crr services={services} round={round}");
        for (side, to) in order {
            let d = args.round;
            let (conns, errors, secs) = lab.client().ns.run(move || connections_for(to, d));
            assert!(
                errors.is_empty(),
                "round {round}: {} failed connections to {to} (of {}): {errors:?}",
                errors.len(),
                conns as usize + errors.len()
            );
            let _ = write!(line, " {side}={:.1}", conns as f64 / secs);
        }
        println!("{line}");
    }
}

/// Connects to `to` (reading the greeting to the server's close) over and over for
/// `d`: connections made, the failures (what went wrong), seconds taken.
fn connections_for(to: SocketAddr, d: Duration) -> (u64, Vec<String>, f64) {
    let started = Instant::now();
    let (mut conns, mut errors) = (0, Vec::new());
    let mut buf = Vec::with_capacity(16);
    while started.elapsed() < d {
        let t = Instant::now();
        let ok = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)
            .map_err(|e| format!("connect: {e}"))
            .and_then(|mut c| {
                c.set_read_timeout(Some(CONNECT_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                buf.clear();
                c.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))
            });
        match ok {
            Ok(n) if n > 0 => conns += 1,
            Ok(_) => errors.push(format!("closed without a greeting after {:?}", t.elapsed())),
            Err(e) => errors.push(format!("{e} after {:?}", t.elapsed())),
        }
    }
    (conns, errors, started.elapsed().as_secs_f64())
}

/// Load service `i`: `10.97.x.y:80` with 10 endpoints in `10.128.0.0/9`; `version`
/// moves its first endpoint.
fn load_service(i: usize, version: usize) -> Service {
    let (a, b) = ((i / 250) as u8, (i % 250 + 1) as u8);
    let endpoints = (0..ENDPOINTS).map(|e| {
        let host = if e == 0 { 100 + version % 150 } else { e };
        IpAddr::V4(Ipv4Addr::new(10, 128 + a, b, host as u8))
    });
    Service::new(&format!("s{i}"), IpAddr::V4(Ipv4Addr::new(10, 97, a, b)))
        .tcp(80, 8080)
        .endpoints(endpoints)
}

/// Writes `n` load services, [`PER_FILE`] to a file, the probe alone in its own.
fn write_load(manifests: &Manifests, n: usize, probe_version: usize) {
    for (f, start) in (0..n).step_by(PER_FILE).enumerate() {
        let services: Vec<Service> = (start..(start + PER_FILE).min(n))
            .filter(|i| *i != PROBE)
            .map(|i| load_service(i, 0))
            .collect();
        manifests.write_services(&format!("load-{f}.yaml"), &services);
    }
    manifests.write_services("probe.yaml", &[load_service(PROBE, probe_version)]);
}

/// The probe's endpoints changed `n` times, one at a time, with `services` programmed:
/// from each write until IPVS has the new destination, polled over one netlink socket
/// of the node's (every millisecond for 2 s, then every 20 ms); with the agent's account of that sync (when it
/// ended, from the write, and its translate and apply parts: the rest is the source's
/// debounce and its re-reading of the manifests).
fn endpoint_changes(lab: &Lab, manifests: &Manifests, agent: &Agent, services: usize, n: usize) {
    let probe = load_service(PROBE, 0);
    let id = tcp(SocketAddr::new(probe.cluster_ip, 80));
    let mut ipvs = lab.node.run(|| Ipvs::open().expect("IPVS"));
    for version in 1..=n {
        let changed = load_service(PROBE, version);
        let new = SocketAddr::new(changed.endpoints[0], 8080);
        let syncs = agent.syncs().len();
        let written = jiff::Timestamp::now();
        let started = Instant::now();
        manifests.write_services("probe.yaml", &[changed]);
        loop {
            let dests = ipvs.dests(&id).expect("the probe's destinations");
            if dests.iter().any(|d| {
                d.destination.weight > 0
                    && SocketAddr::new(d.destination.addr, d.destination.port) == new
            }) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "change {version}: {new} not in IPVS after 600 s: {dests:?}"
            );
            // Fine-grained while a change is quick; then coarser, not to take the
            // VM's one CPU from the agent during a long one.
            let pause = if started.elapsed() < Duration::from_secs(2) {
                1
            } else {
                20
            };
            std::thread::sleep(Duration::from_millis(pause));
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let synced = agent.wait("the change's sync line", || {
            let all = agent.syncs();
            (all.len() > syncs).then(|| all[syncs].clone())
        });
        let us = |key: &str| {
            synced
                .field(key)
                .unwrap_or_else(|| panic!("no {key} in {}", synced.line))
        };
        let sync_end_ms = synced.at().duration_since(written).as_secs_f64() * 1000.0;
        println!(
            "@@kpt-bench change services={services} ms={ms:.2} sync_end_ms={sync_end_ms:.1} \
             translate_us={} apply_us={}",
            us("translate_us"),
            us("apply_us")
        );
    }
}
