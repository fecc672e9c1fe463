//! `IpvsDataplane` against a kernel with IPVS: run by `cargo xtask vm-test` inside
//! Debian's kernel under qemu, never on the host (`test = false`). The unit tests
//! check the backend's write order and rollback against fakes; this checks that what
//! it writes carries traffic: a client on the node reaches a backend in another
//! network namespace through a ClusterIP, a removed backend takes no new connections,
//! and removing the service takes the VIP away; IPv6 (on the down dummy interface)
//! and UDP VIPs carry traffic too.
//!
//! Layout, in namespaces of this test's own (the VM's root one is untouched):
//!
//! ```text
//!  node (the test thread)                 pod (a thread of its own)
//!  kube-ipvs0: 10.96.0.10/32 (down)
//!  vnode 10.244.1.1/24  <----- veth ----->  vpod 10.244.1.5/24, 10.244.1.6/24
//!                                           listeners :8080 answering "a" and "b"
//! ```

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_sys::protocols::NETLINK_ROUTE;
use proxy_agent::dataplane::Dataplane;
use proxy_agent::dataplane::ipvs::netlink::socket::{self, Conn};
use proxy_agent::dataplane::ipvs::netlink::{Ipset, Ipvs, ServiceId};
use proxy_agent::dataplane::ipvs::{IpvsDataplane, Options, cleanup, sysctl};
use proxy_agent::dataplane::netdev;
use proxy_agent::model::{FrontendKey, FrontendKind, Protocol, ServicePortName, VirtualService};

const VIP: &str = "10.96.0.10";
const A: &str = "10.244.1.5:8080";
const B: &str = "10.244.1.6:8080";

fn unshare_net() {
    // SAFETY: plain syscall; only the calling thread changes namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
}

/// Runs busybox `ip` in the calling thread's namespace (children start in it).
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (busybox's, in the VM)");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// The pod namespace: a thread that takes a new namespace, waits for its veth end,
/// runs `configure` (addresses, routes, listeners bound there) and then keeps the
/// namespace until the process ends. Returns its thread id (what IFLA_NET_NS_PID
/// names a namespace by), the "moved" sender and the "ready" receiver.
fn pod(configure: impl FnOnce() + Send + 'static) -> (u32, mpsc::Sender<()>, mpsc::Receiver<()>) {
    let (tid_tx, tid_rx) = mpsc::channel();
    let (moved_tx, moved_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        unshare_net();
        // SAFETY: plain syscall, no arguments.
        let tid = unsafe { libc::gettid() };
        tid_tx
            .send(u32::try_from(tid).expect("a positive tid"))
            .expect("send tid");
        moved_rx.recv().expect("the veth end arrives");
        ip(&["link", "set", "lo", "up"]);
        configure();
        ready_tx.send(()).expect("send ready");
        // Keep the namespace (the listeners hold it too).
        std::thread::park();
    });
    let tid = tid_rx.recv().expect("the pod thread's id");
    (tid, moved_tx, ready_rx)
}

/// Serves `name` to every TCP connection on `addr`, bound in the calling thread's
/// namespace (the socket stays there, whichever thread serves it).
fn serve_tcp(addr: &str, name: &'static str) {
    let listener = TcpListener::bind(addr).expect("bind a backend");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(name.as_bytes());
        }
    });
}

/// Answers every datagram on `addr` with `name`.
fn serve_udp(addr: &str, name: &'static str) {
    let socket = UdpSocket::bind(addr).expect("bind a UDP backend");
    std::thread::spawn(move || {
        let mut buf = [0; 64];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(name.as_bytes(), from);
        }
    });
}

/// No duplicate address detection on `dev` (a tentative address cannot be bound).
fn no_dad(dev: &str) {
    std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/accept_dad"), "0").expect("accept_dad");
}

/// This thread in a namespace of its own, joined by veth to a pod namespace set up by
/// `configure`; `node` runs here once the veth end is up.
fn node_and_pod(configure: impl FnOnce() + Send + 'static, node: &[&[&str]]) {
    unshare_net();
    ip(&["link", "set", "lo", "up"]);
    let (tid, moved, ready) = pod(configure);
    veth_to(tid);
    moved.send(()).expect("tell the pod");
    no_dad("vnode");
    ip(&["link", "set", "vnode", "up"]);
    for args in node {
        ip(args);
    }
    ready.recv().expect("the pod serves");
}

/// The veth pair `vnode` (here) and `vpod` (in the namespace of thread `tid`), over
/// rtnetlink: busybox `ip` has no `type veth peer`.
fn veth_to(tid: u32) {
    let mut peer = LinkMessage::default();
    peer.attributes.push(LinkAttribute::IfName("vpod".into()));
    peer.attributes.push(LinkAttribute::NetNsPid(tid));
    let mut link = LinkMessage::default();
    link.attributes.push(LinkAttribute::IfName("vnode".into()));
    link.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    let mut conn = Conn::new(socket::open(NETLINK_ROUTE, "NETLINK_ROUTE").expect("rtnetlink"));
    conn.request(
        RouteNetlinkMessage::NewLink(link),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .expect("RTM_NEWLINK veth");
}

/// [`node_and_pod`] with backends `A` ("a") and `B` ("b") in the pod.
fn node_with_a_and_b() {
    node_and_pod(
        || {
            ip(&["link", "set", "vpod", "up"]);
            ip(&["addr", "add", "10.244.1.5/24", "dev", "vpod"]);
            ip(&["addr", "add", "10.244.1.6/24", "dev", "vpod"]);
            // Replies go to the client's address, the VIP itself (no masquerading).
            ip(&["route", "add", "default", "via", "10.244.1.1"]);
            serve_tcp(A, "a");
            serve_tcp(B, "b");
        },
        &[&["addr", "add", "10.244.1.1/24", "dev", "vnode"]],
    );
}

/// This thread in a namespace of its own without a pod: enough for tests that only
/// look at what is programmed.
fn node_alone() {
    unshare_net();
    ip(&["link", "set", "lo", "up"]);
    // IPVS takes an IPv4 destination only if it is routable here.
    ip(&["route", "add", "10.244.0.0/16", "dev", "lo"]);
}

/// The virtual server of [`web`].
fn web_id() -> ServiceId {
    ServiceId {
        protocol: proxy_agent::dataplane::ipvs::netlink::Protocol::Tcp,
        addr: VIP.parse().expect("vip"),
        port: 80,
    }
}

/// Connects to the VIP and returns what the backend wrote, or the error.
fn ask() -> std::io::Result<String> {
    ask_at(&format!("{VIP}:80"))
}

fn ask_at(vip: &str) -> std::io::Result<String> {
    let vip: SocketAddr = vip.parse().expect("vip");
    let mut conn = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    conn.read_to_string(&mut out)?;
    Ok(out)
}

fn web(backends: &[&str]) -> VirtualService {
    vs(VIP, 80, Protocol::Tcp, backends)
}

fn vs(vip: &str, port: u16, protocol: Protocol, backends: &[&str]) -> VirtualService {
    VirtualService {
        name: ServicePortName {
            namespace: "default".into(),
            name: "web".into(),
            port: "http".into(),
        },
        frontend: FrontendKey::internal(vip.parse().expect("vip"), port, protocol),
        backends: backends
            .iter()
            .map(|b| b.parse().expect("backend"))
            .collect(),
        affinity_timeout_s: None,
        kind: FrontendKind::ClusterIp,
        source_ranges: Vec::new(),
        node_local: false,
    }
}

fn vip_on_link() -> bool {
    let vip: IpAddr = VIP.parse().expect("vip");
    netdev::list()
        .expect("listing links")
        .interfaces
        .iter()
        .any(|i| i.name == "kube-ipvs0" && i.addrs.contains(&vip))
}

#[test]
fn a_cluster_ip_reaches_its_backends_drains_a_removed_one_and_goes_away() {
    node_with_a_and_b();

    let mut dp = IpvsDataplane::open(&Options::default()).expect("IPVS, ipset, rtnetlink");
    assert_eq!(dp.programmed().expect("programmed"), [], "a new namespace");
    // The sysctls kube-proxy sets, set by open() in this namespace.
    for (name, value) in sysctl::SETTINGS {
        let path = format!("/proc/sys/net/ipv4/vs/{name}");
        let got = std::fs::read_to_string(&path).expect("reading a sysctl");
        assert_eq!(got.trim(), value, "{path}");
    }

    // Two backends, round robin: both answer.
    let both = web(&[A, B]);
    dp.upsert(&both).expect("upsert");
    assert!(vip_on_link(), "the VIP is on kube-ipvs0");
    assert_eq!(
        dp.programmed().expect("programmed"),
        std::slice::from_ref(&both)
    );
    let mut answers: Vec<String> = (0..4)
        .map(|i| ask().unwrap_or_else(|e| panic!("connection {i} to the VIP: {e}")))
        .collect();
    answers.sort();
    answers.dedup();
    assert_eq!(answers, ["a", "b"], "rr over both backends");

    // The ipset member names the service, and follows a rename.
    let mut ipset = Ipset::open().expect("ipset");
    let comments = |ipset: &mut Ipset| -> Vec<Option<String>> {
        ipset
            .list("KUBE-CLUSTER-IP")
            .expect("list")
            .expect("the set exists")
            .entries
            .into_iter()
            .map(|e| e.comment)
            .collect()
    };
    assert_eq!(comments(&mut ipset), [Some("default/web:http".to_owned())]);
    let mut renamed = both.clone();
    renamed.name.port = "web".into();
    dp.upsert(&renamed).expect("rename");
    assert_eq!(comments(&mut ipset), [Some("default/web:web".to_owned())]);
    dp.refresh().expect("refresh");
    assert_eq!(dp.programmed().expect("programmed"), [renamed]);

    // A removed: drained (weight 0), reported gone, and every new connection goes to b.
    // The refresh keeps it: the connections it served are still in IPVS's table (in
    // TIME_WAIT), so it is not drained yet.
    let only_b = web(&[B]);
    dp.upsert(&only_b).expect("upsert without a");
    dp.refresh().expect("refresh");
    assert_eq!(
        dp.programmed().expect("programmed"),
        std::slice::from_ref(&only_b)
    );
    let mut ipvs = Ipvs::open().expect("IPVS");
    let id = web_id();
    let mut weights: Vec<(u16, IpAddr, u32)> = ipvs
        .dests(&id)
        .expect("dests")
        .into_iter()
        .map(|d| (d.destination.port, d.destination.addr, d.destination.weight))
        .collect();
    weights.sort();
    assert_eq!(
        weights,
        [
            (8080, "10.244.1.5".parse().expect("a"), 0),
            (8080, "10.244.1.6".parse().expect("b"), 1)
        ]
    );
    for i in 0..4 {
        assert_eq!(
            ask().unwrap_or_else(|e| panic!("connection {i} without a: {e}")),
            "b"
        );
    }

    // No backend left: new connections fail.
    dp.upsert(&web(&[])).expect("upsert without backends");
    assert!(ask().is_err(), "a service without backends refuses");

    // Removed: the virtual server, the member and the VIP are gone.
    dp.remove(&only_b.frontend).expect("remove");
    assert_eq!(dp.programmed().expect("programmed"), []);
    assert!(ipvs.services().expect("services").is_empty());
    assert_eq!(comments(&mut ipset), Vec::<Option<String>>::new());
    assert!(!vip_on_link(), "the VIP left kube-ipvs0");
    dp.refresh().expect("refresh");
    assert_eq!(dp.programmed().expect("programmed"), []);
}

#[test]
fn an_ipv6_cluster_ip_and_a_udp_one_reach_their_backends() {
    node_and_pod(
        || {
            no_dad("vpod");
            ip(&["link", "set", "vpod", "up"]);
            ip(&["addr", "add", "10.244.1.5/24", "dev", "vpod"]);
            ip(&["-6", "addr", "add", "fd00:244::5/64", "dev", "vpod"]);
            ip(&["route", "add", "default", "via", "10.244.1.1"]);
            ip(&["-6", "route", "add", "default", "via", "fd00:244::1"]);
            serve_tcp("[fd00:244::5]:8080", "six");
            serve_udp("10.244.1.5:5353", "dns");
        },
        &[
            &["addr", "add", "10.244.1.1/24", "dev", "vnode"],
            &["-6", "addr", "add", "fd00:244::1/64", "dev", "vnode"],
        ],
    );
    let mut dp = IpvsDataplane::open(&Options::default()).expect("IPVS, ipset, rtnetlink");
    let six = vs("fd00:96::10", 80, Protocol::Tcp, &["[fd00:244::5]:8080"]);
    let udp = vs("10.96.0.53", 53, Protocol::Udp, &["10.244.1.5:5353"]);
    dp.upsert(&six).expect("upsert IPv6");
    dp.upsert(&udp).expect("upsert UDP");
    let mut want = vec![six.clone(), udp.clone()];
    want.sort_by_key(|s| s.frontend);
    dp.refresh().expect("refresh");
    assert_eq!(dp.programmed().expect("programmed"), want);

    assert_eq!(
        ask_at("[fd00:96::10]:80").expect("a connection to the IPv6 VIP"),
        "six"
    );
    let client = UdpSocket::bind("0.0.0.0:0").expect("a UDP client");
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    client.connect("10.96.0.53:53").expect("connect UDP");
    client.send(b"query").expect("send");
    let mut buf = [0; 64];
    let n = client.recv(&mut buf).expect("the UDP backend answers");
    assert_eq!(&buf[..n], b"dns");

    // A removed UDP backend is deleted at once (not drained), as kube-proxy does.
    dp.upsert(&vs("10.96.0.53", 53, Protocol::Udp, &[]))
        .expect("upsert without backends");
    let mut ipvs = Ipvs::open().expect("IPVS");
    let id = ServiceId {
        protocol: proxy_agent::dataplane::ipvs::netlink::Protocol::Udp,
        addr: "10.96.0.53".parse().expect("vip"),
        port: 53,
    };
    assert!(ipvs.dests(&id).expect("dests").is_empty());

    dp.remove(&six.frontend).expect("remove IPv6");
    dp.remove(&udp.frontend).expect("remove UDP");
    assert!(ipvs.services().expect("services").is_empty());
    let links = netdev::list().expect("links");
    let ipvs0 = links
        .interfaces
        .iter()
        .find(|i| i.name == "kube-ipvs0")
        .expect("kube-ipvs0 stays");
    assert!(ipvs0.addrs.is_empty(), "{:?}", ipvs0.addrs);
}

/// A ClusterIP Service `web` (10.96.0.10:80 -> 8080) with `backends` as ready endpoints.
fn web_manifest(backends: &[&str]) -> String {
    let endpoints: String = backends
        .iter()
        .map(|b| {
            let ip = b.split(':').next().expect("ip:port");
            format!("- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n")
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec:\n  clusterIP: {VIP}\n  ports:\n  - {{name: http, port: 80, protocol: TCP, targetPort: 8080}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nendpoints:\n{endpoints}\
         ports:\n- {{name: http, port: 8080, protocol: TCP}}\n"
    )
}

/// The destinations of the VIP's virtual server that take new connections (weight > 0).
fn live_dests() -> Vec<SocketAddr> {
    let id = web_id();
    let mut ipvs = Ipvs::open().expect("IPVS");
    let mut live: Vec<SocketAddr> = match ipvs.dests(&id) {
        Ok(d) => d
            .into_iter()
            .filter(|d| d.destination.weight > 0)
            .map(|d| SocketAddr::new(d.destination.addr, d.destination.port))
            .collect(),
        Err(_) => Vec::new(),
    };
    live.sort();
    live
}

/// Waits until the VIP's live destinations are `want` and the VIP is on `kube-ipvs0`
/// (the backend's last write for a new service), the facts that the agent synced.
fn wait_live(want: &[&str]) {
    let want: Vec<SocketAddr> = want.iter().map(|b| b.parse().expect("backend")).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let live = live_dests();
        if live == want && vip_on_link() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent programmed {live:?} (VIP on kube-ipvs0: {}), not {want:?}, within 60 s",
            vip_on_link()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent itself (its `daemon::run`, in-process on a thread of this namespace) in
/// `--proxy-mode=ipvs` from a manifest directory: it programs the ClusterIP, traffic
/// reaches both backends, and an endpoint deleted from the manifest is drained.
#[test]
fn the_agent_in_ipvs_mode_serves_a_cluster_ip_from_manifests_and_follows_them() {
    use clap::Parser as _;
    node_with_a_and_b();
    let dir = std::env::temp_dir().join("kpt-vm-ipvs-agent");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("manifest dir");
    std::fs::write(dir.join("web.yaml"), web_manifest(&[A, B])).expect("manifest");
    let cfg = proxy_agent::daemon::Config::parse_from([
        "proxy-agent",
        "--proxy-mode",
        "ipvs",
        "--manifests",
        dir.to_str().expect("utf-8 path"),
        "--hostname-override",
        "node-a",
        "--metrics-bind-address",
        "127.0.0.1:0",
        "--healthz-bind-address",
        "127.0.0.1:0",
    ]);
    // A thread spawned here starts in this namespace. It runs until the test process
    // exits.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        if let Err(e) = rt.block_on(proxy_agent::daemon::run(cfg)) {
            panic!("the agent stopped: {e:#}");
        }
    });

    wait_live(&[A, B]);
    let mut answers: Vec<String> = (0..4)
        .map(|i| ask().unwrap_or_else(|e| panic!("connection {i} to the VIP: {e}")))
        .collect();
    answers.sort();
    answers.dedup();
    assert_eq!(answers, ["a", "b"], "rr over both backends");

    // The endpoint leaves the manifest: drained, and new connections avoid it.
    std::fs::write(dir.join("web.yaml"), web_manifest(&[B])).expect("manifest");
    wait_live(&[B]);
    for i in 0..4 {
        assert_eq!(ask().unwrap_or_else(|e| panic!("connection {i}: {e}")), "b");
    }
}

/// `--cleanup` (and the eBPF mode's start) removes what the IPVS mode left: every
/// virtual server, the mode's ipsets and `kube-ipvs0`; a second run finds nothing.
#[test]
fn cleanup_removes_the_virtual_servers_the_sets_and_the_link_and_then_finds_nothing() {
    node_alone();
    let mut dp = IpvsDataplane::open(&Options::default()).expect("IPVS, ipset, rtnetlink");
    dp.upsert(&web(&[A, B])).expect("upsert");
    dp.upsert(&vs(
        "fd00:96::10",
        53,
        Protocol::Udp,
        &["[fd00:244::5]:5353"],
    ))
    .expect("upsert v6");
    drop(dp);

    let removed = cleanup::cleanup("kube-ipvs0", &[]).expect("cleanup");
    assert_eq!(removed.virtual_servers, 2, "{removed:?}");
    let mut sets = removed.sets.clone();
    sets.sort();
    let mut every: Vec<String> = proxy_agent::dataplane::ipvs::sets::all().collect();
    every.sort();
    assert_eq!(sets, every, "every set the mode creates");
    assert!(removed.link, "{removed:?}");
    assert!(
        Ipvs::open()
            .expect("IPVS")
            .services()
            .expect("dump")
            .is_empty()
    );
    assert!(
        Ipset::open()
            .expect("ipset")
            .headers()
            .expect("headers")
            .is_empty()
    );
    assert!(!vip_on_link(), "kube-ipvs0 is gone");

    let again = cleanup::cleanup("kube-ipvs0", &[]).expect("cleanup again");
    assert!(again.is_empty(), "nothing left to remove: {again:?}");
}

/// A removed TCP backend that has no connection left in IPVS's table is deleted at
/// the next refresh (graceful termination's second half).
#[test]
fn a_drained_backend_without_connections_is_deleted_at_the_next_refresh() {
    node_alone();
    let mut dp = IpvsDataplane::open(&Options::default()).expect("IPVS, ipset, rtnetlink");
    dp.upsert(&web(&[A, B])).expect("upsert");
    dp.upsert(&web(&[B])).expect("upsert without a");
    let id = web_id();
    let dests = |ipvs: &mut Ipvs| -> Vec<(String, u32)> {
        let mut d: Vec<(String, u32)> = ipvs
            .dests(&id)
            .expect("dests")
            .into_iter()
            .map(|d| {
                let at = SocketAddr::new(d.destination.addr, d.destination.port);
                (at.to_string(), d.destination.weight)
            })
            .collect();
        d.sort();
        d
    };
    let mut ipvs = Ipvs::open().expect("IPVS");
    assert_eq!(
        dests(&mut ipvs),
        [(A.into(), 0), (B.into(), 1)],
        "drained first"
    );
    dp.refresh().expect("refresh");
    assert_eq!(dests(&mut ipvs), [(B.into(), 1)], "then deleted");
}

/// A drained backend still holding connections goes once its grace period is over
/// (here none), connections or not.
#[test]
fn a_drained_backend_with_connections_goes_after_the_grace_period() {
    node_with_a_and_b();
    let options = Options {
        drain_grace: Duration::ZERO,
        ..Options::default()
    };
    let mut dp = IpvsDataplane::open(&options).expect("IPVS, ipset, rtnetlink");
    dp.upsert(&web(&[A])).expect("upsert");
    assert_eq!(ask().expect("through the VIP"), "a");
    dp.upsert(&web(&[B])).expect("upsert without a");
    let mut ipvs = Ipvs::open().expect("IPVS");
    let a = |ipvs: &mut Ipvs| {
        ipvs.dests(&web_id())
            .expect("dests")
            .into_iter()
            .find(|d| SocketAddr::new(d.destination.addr, d.destination.port).to_string() == A)
    };
    let held = a(&mut ipvs).expect("a, drained");
    assert_eq!(held.destination.weight, 0);
    assert!(
        held.active_connections + held.inactive_connections > 0,
        "the connection a served is still in IPVS's table: {held:?}"
    );
    dp.refresh().expect("refresh");
    assert!(a(&mut ipvs).is_none(), "deleted at the refresh");
    drop(dp);
    cleanup::cleanup("kube-ipvs0", &[]).expect("cleanup");
}

/// A set kube-proxy made (ipset's default maxelem, 65,536) is rebuilt with the
/// backend's size and swapped in, its members kept.
#[test]
fn a_set_made_with_other_parameters_is_rebuilt_with_its_members() {
    node_alone();
    let mut ipset = Ipset::open().expect("ipset");
    let set = &proxy_agent::dataplane::ipvs::sets::CLUSTER_IP;
    let mut theirs = set.spec(false);
    theirs.maxelem = None;
    ipset.create(&theirs, false).expect("kube-proxy's set");
    let member = proxy_agent::dataplane::ipvs::netlink::Entry::ip_port(
        "10.96.0.99".parse().expect("ip"),
        proxy_agent::dataplane::ipvs::netlink::Protocol::Tcp,
        80,
    );
    ipset.add(&theirs.name, &member, false).expect("its member");

    let dp = IpvsDataplane::open(&Options::default()).expect("IPVS, ipset, rtnetlink");
    let now = ipset.list(&theirs.name).expect("list").expect("the set");
    assert_eq!(
        now.maxelem,
        Some(proxy_agent::dataplane::ipvs::sets::MAXELEM),
        "{now:?}"
    );
    assert!(
        now.entries
            .iter()
            .any(|e| e.ip == member.ip && e.port == member.port),
        "the member kept: {:?}",
        now.entries
    );
    assert!(
        ipset
            .list(proxy_agent::dataplane::ipvs::sets::REBUILD)
            .expect("list")
            .is_none(),
        "no temporary set left"
    );
    drop(dp);
    cleanup::cleanup("kube-ipvs0", &[]).expect("cleanup");
}
