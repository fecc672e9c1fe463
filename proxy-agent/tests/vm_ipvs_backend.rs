//! `IpvsDataplane` against a kernel with IPVS: run by `cargo xtask vm-test` inside
//! Debian's kernel under qemu, never on the host (`test = false`). The unit tests
//! check the backend's write order and rollback against fakes; this checks that what
//! it writes carries traffic: a client on the node reaches a backend in another
//! network namespace through a ClusterIP, a removed backend takes no new connections,
//! and removing the service takes the VIP away.
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
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_sys::protocols::NETLINK_ROUTE;
use proxy_agent::dataplane::Dataplane;
use proxy_agent::dataplane::ipvs::netlink::socket::{Conn, Kernel};
use proxy_agent::dataplane::ipvs::netlink::{Ipset, Ipvs, ServiceId};
use proxy_agent::dataplane::ipvs::{IpvsDataplane, Options, sysctl};
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
/// and serves `a` and `b` on 8080 until the process ends. Returns its thread id (what
/// IFLA_NET_NS_PID names a namespace by) and a receiver for "configured".
fn pod() -> (u32, mpsc::Sender<()>, mpsc::Receiver<()>) {
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
        ip(&["link", "set", "vpod", "up"]);
        ip(&["addr", "add", "10.244.1.5/24", "dev", "vpod"]);
        ip(&["addr", "add", "10.244.1.6/24", "dev", "vpod"]);
        // Replies go to the client's address, the VIP itself (no masquerading).
        ip(&["route", "add", "default", "via", "10.244.1.1"]);
        for (addr, name) in [(A, "a"), (B, "b")] {
            // Bound here: the socket stays in this namespace, whichever thread serves.
            let listener = TcpListener::bind(addr).expect("bind a backend");
            std::thread::spawn(move || {
                for mut conn in listener.incoming().flatten() {
                    let _ = conn.write_all(name.as_bytes());
                }
            });
        }
        ready_tx.send(()).expect("send ready");
        // Keep the namespace (the listeners hold it too).
        std::thread::park();
    });
    let tid = tid_rx.recv().expect("the pod thread's id");
    (tid, moved_tx, ready_rx)
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
    let mut conn = Conn::new(Kernel::open(NETLINK_ROUTE, "NETLINK_ROUTE").expect("rtnetlink"));
    conn.request(
        RouteNetlinkMessage::NewLink(link),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .expect("RTM_NEWLINK veth");
}

/// Connects to the VIP and returns what the backend wrote, or the error.
fn ask() -> std::io::Result<String> {
    let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");
    let mut conn = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    conn.read_to_string(&mut out)?;
    Ok(out)
}

fn web(backends: &[&str]) -> VirtualService {
    VirtualService {
        name: ServicePortName {
            namespace: "default".into(),
            name: "web".into(),
            port: "http".into(),
        },
        frontend: FrontendKey::internal(VIP.parse().expect("vip"), 80, Protocol::Tcp),
        backends: backends
            .iter()
            .map(|b| b.parse().expect("backend"))
            .collect(),
        affinity_timeout_s: None,
        kind: FrontendKind::ClusterIp,
        source_ranges: Vec::new(),
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
    unshare_net();
    ip(&["link", "set", "lo", "up"]);

    let (tid, moved, ready) = pod();
    veth_to(tid);
    moved.send(()).expect("tell the pod");
    ip(&["link", "set", "vnode", "up"]);
    ip(&["addr", "add", "10.244.1.1/24", "dev", "vnode"]);
    ready.recv().expect("the pod serves");

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
    let only_b = web(&[B]);
    dp.upsert(&only_b).expect("upsert without a");
    dp.refresh().expect("refresh");
    assert_eq!(
        dp.programmed().expect("programmed"),
        std::slice::from_ref(&only_b)
    );
    let mut ipvs = Ipvs::open().expect("IPVS");
    let id = ServiceId {
        protocol: proxy_agent::dataplane::ipvs::netlink::Protocol::Tcp,
        addr: VIP.parse().expect("vip"),
        port: 80,
    };
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
