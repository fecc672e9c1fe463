//! Connected UDP sockets follow their service (issue 13): when a backend leaves, a
//! connected UDP socket the connect hook balanced to it is destroyed (sock_diag
//! `SOCK_DESTROY`), so the application's next call fails (`ECONNABORTED` from a
//! recv, `EDESTADDRREQ` from a send: the socket is disconnected), it reconnects, and
//! is balanced to a backend that is there. A socket balanced to a backend that stays is
//! not touched.
//!
//! The client is `probe resolver`: one socket connect()ed once and a query every
//! 50 ms, as glibc's resolver uses one; a timeout keeps the socket, any other error
//! makes it reconnect. Without the agent's help such a client keeps talking to the
//! backend that left (the control run below, without CAP_SYS_ADMIN, shows it), and
//! blackholes once that backend is gone.
//!
//! ```text
//! client pod 10.244.0.2 (test cgroup) --connect 10.96.0.10:53/UDP--> backend-0 | backend-1
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::{
    Agent, BpfFs, ChildGuard, ClusterTopology, ManifestDir, PortSpec, ProbeReply, metric_value,
    probe_bin, service, spawn_guarded,
};

const SYNC: Duration = Duration::from_secs(10);
/// How soon after the agent has programmed the removal the client must have recovered:
/// the sweep runs right after the sync (milliseconds), the client's next query comes
/// within 50 ms.
const RECOVERED_WITHIN: Duration = Duration::from_secs(3);
const PORT: u16 = 5353;
const DNS: &[PortSpec<'static>] = &[("dns", 53, "UDP", PORT)];

fn dns(vip: IpAddr, backends: &[IpAddr]) -> String {
    service("dns", vip, DNS, backends, None)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// A running `probe resolver` and its first answer.
struct Resolver {
    guard: ChildGuard,
    /// The backend that answered first.
    backend: String,
    /// The client address the backend saw: the socket's.
    socket: SocketAddr,
}

impl Resolver {
    /// The next reply line within `timeout`.
    fn next(&mut self, timeout: Duration) -> Option<ProbeReply> {
        let line = self.guard.next_line(timeout)?;
        Some(ProbeReply::parse(&line).unwrap_or_else(|| panic!("not a probe reply: {line:?}")))
    }

    /// Replies until one is answered by a backend other than `gone`, within `within`:
    /// (the replies before it, that answer).
    fn until_answered_elsewhere(
        &mut self,
        gone: &str,
        within: Duration,
    ) -> (Vec<ProbeReply>, ProbeReply) {
        let deadline = Instant::now() + within;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(r) if r.name().is_some_and(|n| n != gone) => return (before, r),
                Some(r) => before.push(r),
                None => panic!(
                    "the resolver first answered by {gone} was not answered by another \
                     backend within {within:?}; its replies since: {before:?}"
                ),
            }
        }
    }

    /// Every reply during `span`.
    fn during(&mut self, span: Duration) -> Vec<ProbeReply> {
        let deadline = Instant::now() + span;
        let mut out = Vec::new();
        while let Some(r) = self.next(deadline.saturating_duration_since(Instant::now())) {
            out.push(r);
            if Instant::now() >= deadline {
                break;
            }
        }
        out
    }
}

/// Whether `r` is the error of a socket the agent destroyed: `ECONNABORTED` if the
/// application was waiting for an answer (or reads next), `EDESTADDRREQ` if its next
/// call was a send (the socket is disconnected).
fn aborted(r: &ProbeReply) -> bool {
    matches!(r.error(), Some("ECONNABORTED" | "EDESTADDRREQ"))
}

fn peer_of(r: &ProbeReply) -> Option<SocketAddr> {
    match r {
        ProbeReply::Ok { peer, .. } => *peer,
        ProbeReply::Err { .. } => None,
    }
}

/// Starts resolvers with `spawn` until one's first answer comes from `want` (the
/// backend a socket gets depends on its cookie, so a few tries are needed).
fn resolver_on(want: &str, spawn: impl Fn() -> ChildGuard) -> Resolver {
    let mut seen = BTreeMap::new();
    for _ in 0..40 {
        let mut guard = spawn();
        let line = guard.expect_line(Duration::from_secs(5));
        match ProbeReply::parse(&line) {
            Some(r @ ProbeReply::Ok { .. }) if r.name() == Some(want) => {
                let socket = peer_of(&r).expect("--peer gives the socket's address");
                return Resolver {
                    guard,
                    backend: want.to_owned(),
                    socket,
                };
            }
            Some(ProbeReply::Ok { name, .. }) => *seen.entry(name).or_insert(0) += 1,
            other => panic!("the resolver's first query failed: {other:?} ({line})"),
        }
    }
    panic!("no resolver was balanced to {want} in 40 tries: {seen:?}");
}

fn resolver_args(vip: &SocketAddr) -> Vec<String> {
    [
        "resolver",
        "--to",
        &vip.to_string(),
        "--interval-ms",
        "50",
        "--timeout-ms",
        "300",
        "--peer",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn terminated(agent: &Agent, result: &str) -> f64 {
    let labels = format!("{{result=\"{result}\"}}");
    metric_value(
        &agent.metrics(),
        "proxy_agent_udp_sockets_terminated_total",
        &labels,
    )
    .unwrap_or_else(|| panic!("no proxy_agent_udp_sockets_terminated_total{labels} in /metrics"))
}

/// The whole story for one VIP: the backend-0 client recovers on the abort, the
/// backend-1 client keeps its socket, and when the service goes both are told.
fn follows(tag: &str, vip: IpAddr, v6: bool) {
    let topo = ClusterTopology::new(tag, 2);
    let _servers = topo.serve_backends(&[], &[PORT]);
    let ips: Vec<IpAddr> = topo
        .backends
        .iter()
        .map(|p| {
            if v6 {
                IpAddr::V6(p.ipv6)
            } else {
                IpAddr::V4(p.ipv4)
            }
        })
        .collect();
    let dir = ManifestDir::new(tag);
    dir.write("dns.yaml", &dns(vip, &ips));
    let bpffs = BpfFs::new(tag);
    let agent = Agent::start(bpffs.path(), topo.client_cgroup.path(), dir.path(), &[]);
    let vip_port = SocketAddr::new(vip, 53);
    let frontend = format!("{vip_port}/UDP");
    let all: Vec<SocketAddr> = ips.iter().map(|i| SocketAddr::new(*i, PORT)).collect();
    agent.wait_for(&frontend, &all, SYNC);
    let args = resolver_args(&vip_port);
    let spawn = || topo.spawn_client(Command::new(probe_bin()).args(&args));
    let mut leaving = resolver_on("backend-0", spawn);
    let mut staying = resolver_on("backend-1", spawn);
    assert_eq!(terminated(&agent, "destroyed"), 0.0);

    // backend-0 leaves the service.
    dir.write("dns.yaml", &dns(vip, &ips[1..]));
    agent.wait_for(&frontend, &all[1..], SYNC);
    let (before, after) = leaving.until_answered_elsewhere("backend-0", RECOVERED_WITHIN);
    assert!(
        before.iter().any(aborted),
        "the socket on backend-0 was not aborted (replies before recovering: {before:?})\n{}",
        agent.log()
    );
    assert_eq!(after.name(), Some("backend-1"), "{after:?}");
    match &after {
        ProbeReply::Ok { addr, peer, .. } => {
            assert_eq!(*addr, vip_port, "replies still appear to come from the VIP");
            assert_ne!(*peer, Some(leaving.socket), "a new socket after the abort");
        }
        ProbeReply::Err { .. } => unreachable!("an answer"),
    }
    // The socket on the backend that stayed was not touched: same socket, no error.
    let kept = staying.during(Duration::from_millis(500));
    assert!(!kept.is_empty(), "the backend-1 resolver went quiet");
    for r in &kept {
        assert_eq!(r.name(), Some("backend-1"), "{kept:?}");
        assert_eq!(
            peer_of(r),
            Some(staying.socket),
            "the same socket: {kept:?}"
        );
    }
    assert_eq!(terminated(&agent, "destroyed"), 1.0, "{}", agent.log());
    assert_eq!(leaving.backend, "backend-0");

    // The service goes: both sockets (now on backend-1) are aborted.
    dir.remove("dns.yaml");
    agent.wait_gone(&frontend, SYNC);
    for (what, r) in [("leaving", &mut leaving), ("staying", &mut staying)] {
        let replies = r.during(RECOVERED_WITHIN);
        assert!(
            replies.iter().any(aborted),
            "the {what} resolver's socket was not aborted when the service went: {replies:?}"
        );
    }
    assert_eq!(terminated(&agent, "destroyed"), 3.0, "{}", agent.log());
    assert_eq!(terminated(&agent, "failed"), 0.0);
    agent.stop();
}

#[test]
fn a_connected_udp_socket_follows_its_service_when_its_backend_leaves() {
    follows("udpsock4", ip("10.96.0.10"), false);
}

#[test]
fn an_ipv6_connected_udp_socket_follows_its_service_too() {
    follows("udpsock6", ip("fd00:96::10"), true);
}

/// Without CAP_SYS_ADMIN (the DaemonSet's default set) the agent says once what it
/// cannot do, exports it, serves as before, and still follows the sockets of its own
/// namespace; a pod's socket is not followed (the control run: without the sweep, the
/// resolver only times out after its backend left).
#[test]
fn without_cap_sys_admin_only_the_agents_own_namespace_is_followed_and_it_says_so() {
    let tag = "udpsock-caps";
    let topo = ClusterTopology::new(tag, 2);
    let _servers = topo.serve_backends(&[], &[PORT]);
    let ips: Vec<IpAddr> = topo.backends.iter().map(|p| IpAddr::V4(p.ipv4)).collect();
    let vip = ip("10.96.0.10");
    let dir = ManifestDir::new(tag);
    dir.write("dns.yaml", &dns(vip, &ips));
    let bpffs = BpfFs::new(tag);
    // In the node's namespace, where a host-network client also runs.
    let agent = Agent::start_in_with_caps(
        "CAP_BPF,CAP_NET_ADMIN,CAP_PERFMON",
        &topo.node,
        bpffs.path(),
        topo.client_cgroup.path(),
        dir.path(),
        &["--nodeport-addresses", "none"],
    );
    let vip_port = SocketAddr::new(vip, 53);
    let frontend = format!("{vip_port}/UDP");
    let all: Vec<SocketAddr> = ips.iter().map(|i| SocketAddr::new(*i, PORT)).collect();
    agent.wait_for(&frontend, &all, SYNC);

    let warned = agent.logged("cannot enter other network namespaces");
    assert_eq!(warned.len(), 1, "one warning at start:\n{}", agent.log());
    assert!(
        warned[0].text.contains("CAP_SYS_ADMIN"),
        "it names the capability: {:?}",
        warned[0].text
    );
    let gauge = metric_value(
        &agent.metrics(),
        "proxy_agent_udp_socket_pod_namespaces",
        "",
    );
    assert_eq!(
        gauge,
        Some(0.0),
        "pod namespaces are reported as not covered"
    );

    let args = resolver_args(&vip_port);
    let mut pod = resolver_on("backend-0", || {
        topo.spawn_client(Command::new(probe_bin()).args(&args))
    });
    let mut host = resolver_on("backend-0", || {
        spawn_guarded(
            &topo.node,
            Some(&topo.client_cgroup),
            Command::new(probe_bin()).args(&args),
        )
    });

    dir.write("dns.yaml", &dns(vip, &ips[1..]));
    agent.wait_for(&frontend, &all[1..], SYNC);
    // The agent's own namespace: aborted, and answered by backend-1 after.
    let (before, after) = host.until_answered_elsewhere("backend-0", RECOVERED_WITHIN);
    assert!(
        before.iter().any(aborted),
        "{before:?} {after:?}\n{}",
        agent.log()
    );
    // The pod's: not followed, so it keeps talking to the backend that left, on the
    // same socket (the hole this feature closes; a backend that is gone for good
    // would blackhole it).
    let stuck = pod.during(Duration::from_secs(1));
    assert!(!stuck.is_empty(), "the pod's resolver went quiet");
    for r in &stuck {
        assert_eq!(r.name(), Some("backend-0"), "{stuck:?}");
        assert_eq!(peer_of(r), Some(pod.socket), "{stuck:?}");
    }
    assert_eq!(terminated(&agent, "destroyed"), 1.0, "{}", agent.log());
    agent.stop();
}
