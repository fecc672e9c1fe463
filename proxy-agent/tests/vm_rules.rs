//! The IPVS mode's netfilter rules against a kernel and the host's iptables: run by
//! `cargo xtask vm-test vm_rules` inside Debian's kernel under qemu, never on the host
//! (`test = false`: it would change the host's tables). The unit tests check the text
//! and the tool calls; this checks that iptables takes the rules, that applying twice
//! changes nothing, that removal leaves nothing, and that the rules act on packets.
//!
//! Each test runs in a network namespace of its own (the test thread's), which has its
//! own tables and ipsets; the sets the rules match are created first, as the backend
//! creates them at start.
//!
//! The behaviour test's layout:
//!
//! ```text
//!  node (the test thread)                     client (a thread of its own)
//!  kube-ipvs0: 10.96.0.10/32, fd00:96::10
//!  listener VIP:8080
//!  vnode 10.0.0.1/24 fd00:1::1/64  <- veth ->  vcli 10.0.0.2/24 fd00:1::2/64
//!                                              routes to the VIPs via vnode
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
use proxy_agent::dataplane::ipvs::RuleOptions;
use proxy_agent::dataplane::ipvs::addresses::DummyLink;
use proxy_agent::dataplane::ipvs::cleanup;
use proxy_agent::dataplane::ipvs::kernel::VipAddresses;
use proxy_agent::dataplane::ipvs::netlink::socket::{self, Conn};
use proxy_agent::dataplane::ipvs::netlink::{Entry, Ipset, Protocol};
use proxy_agent::dataplane::ipvs::rules::{self, Iptables, JUMPS, chains::CHAINS};
use proxy_agent::dataplane::ipvs::sets::{self, KUBE_SETS};

const INVALID: &str = "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP";

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

/// No duplicate address detection on `dev` (a tentative address cannot be bound).
fn no_dad(dev: &str) {
    std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/accept_dad"), "0").expect("accept_dad");
}

/// A fresh namespace for this thread, with every set the rules match, in both
/// families, as the backend creates them.
fn node_with_sets() -> Ipset {
    unshare_net();
    ip(&["link", "set", "lo", "up"]);
    let mut ipset = Ipset::open().expect("ipset");
    for v6 in [false, true] {
        for set in KUBE_SETS {
            let spec = set.spec(v6);
            ipset
                .create(&spec, false)
                .unwrap_or_else(|e| panic!("creating {}: {e}", spec.name));
        }
    }
    ipset
}

fn opts() -> RuleOptions {
    RuleOptions {
        drop_invalid: true,
        ..RuleOptions::default()
    }
}

/// `iptables-save` (or ip6tables') without what changes by itself: the dated comment
/// lines and the packet counters.
fn saved(v6: bool) -> String {
    let text = Iptables::new(v6).save().expect("iptables-save");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.rfind(" [") {
            Some(at) if l.starts_with(':') => format!("{} [0:0]", &l[..at]),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The lines of `table` in saved text.
fn table<'a>(saved: &'a str, table: &str) -> Vec<&'a str> {
    saved
        .lines()
        .skip_while(|l| *l != format!("*{table}"))
        .take_while(|l| *l != "COMMIT")
        .collect()
}

fn jump_line(j: &rules::Jump) -> String {
    format!(
        "-A {} -m comment --comment \"{}\" -j {}",
        j.from, j.comment, j.to
    )
}

#[test]
fn the_rules_apply_once_however_often_applied_and_remove_without_a_trace() {
    let _sets = node_with_sets();
    for v6 in [false, true] {
        rules::apply(v6, &opts()).unwrap_or_else(|e| panic!("apply v6={v6}: {e}"));
    }
    let first = [saved(false), saved(true)];
    for (v6, text) in [(false, &first[0]), (true, &first[1])] {
        for (t, chain) in CHAINS {
            let lines = table(text, t.name());
            assert!(
                lines.contains(&format!(":{chain} - [0:0]").as_str()),
                "{t} {chain} in v6={v6}:\n{text}"
            );
        }
        for j in &JUMPS {
            let line = jump_line(j);
            let n = table(text, j.table.name())
                .iter()
                .filter(|l| **l == line)
                .count();
            assert_eq!(n, 1, "{line} in v6={v6}:\n{text}");
        }
        // The rules read back as kube-proxy's do (iptables-save adds the default
        // reject type).
        let ips = sets::IPVS_IPS.name_for(v6);
        assert!(
            text.contains(&format!(
                "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set {ips} dst -j REJECT"
            )),
            "{text}"
        );
        assert!(
            text.contains("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"),
            "{text}"
        );
        assert_eq!(text.matches(INVALID).count(), 1, "{text}");
    }

    for v6 in [false, true] {
        rules::apply(v6, &opts()).unwrap_or_else(|e| panic!("apply again v6={v6}: {e}"));
    }
    assert_eq!(
        [saved(false), saved(true)],
        first,
        "applying again changed something"
    );

    for v6 in [false, true] {
        assert!(rules::remove(v6).expect("remove"), "v6={v6} had rules");
        let text = saved(v6);
        assert!(!text.contains("KUBE-"), "v6={v6} left:\n{text}");
        assert!(
            !rules::remove(v6).expect("remove again"),
            "nothing the second time"
        );
    }
}

#[test]
fn drop_invalid_puts_the_invalid_drop_in_and_takes_it_out() {
    let _sets = node_with_sets();
    for v6 in [false, true] {
        let liberal = RuleOptions {
            drop_invalid: false,
            ..opts()
        };
        // Both drops: kube-proxy's in FORWARD, ours of endpoints' replies in INPUT.
        let any_invalid = |v6| saved(v6).matches("--ctstate INVALID").count();
        rules::apply(v6, &liberal).expect("apply liberal");
        assert_eq!(any_invalid(v6), 0, "v6={v6}:\n{}", saved(v6));
        rules::apply(v6, &opts()).expect("apply strict");
        assert_eq!(saved(v6).matches(INVALID).count(), 1, "v6={v6}");
        assert_eq!(any_invalid(v6), 2, "v6={v6}:\n{}", saved(v6));
        rules::apply(v6, &liberal).expect("apply liberal again");
        assert_eq!(any_invalid(v6), 0, "v6={v6}: a flag change is applied");
    }
}

#[test]
fn cleanup_removes_the_rules_of_both_families_before_the_sets() {
    let _sets = node_with_sets();
    for v6 in [false, true] {
        rules::apply(v6, &opts()).expect("apply");
    }
    let removed = cleanup::cleanup("kube-ipvs0", &[]).expect("cleanup");
    assert!(removed.rules_v4 && removed.rules_v6, "{removed:?}");
    for v6 in [false, true] {
        assert!(!saved(v6).contains("KUBE-"), "v6={v6}");
    }
    // The sets the rules matched could go: the rules went first.
    assert!(
        removed.sets.contains(&"KUBE-CLUSTER-IP".to_owned()),
        "{removed:?}"
    );
    // With none of our chains left, there is nothing to remove and no error.
    let again = cleanup::cleanup("kube-ipvs0", &[]).expect("cleanup again");
    assert!(!again.rules_v4 && !again.rules_v6, "{again:?}");
}

/// A namespace of its own on a thread that runs what it is given there.
struct Client {
    jobs: mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl Client {
    /// The thread, its namespace and the veth `vnode` (here) / `vcli` (there).
    fn start() -> Client {
        let (jobs, todo) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let (tid_tx, tid_rx) = mpsc::channel();
        std::thread::spawn(move || {
            unshare_net();
            // SAFETY: plain syscall, no arguments.
            let tid = unsafe { libc::gettid() };
            tid_tx
                .send(u32::try_from(tid).expect("a positive tid"))
                .expect("send tid");
            for job in todo {
                job();
            }
        });
        veth_to(tid_rx.recv().expect("the client thread's id"));
        Client { jobs }
    }

    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .expect("the client thread runs");
        rx.recv().expect("the client job ends")
    }
}

/// The veth pair `vnode` (here) and `vcli` (in the namespace of thread `tid`), over
/// rtnetlink: busybox `ip` has no `type veth peer`.
fn veth_to(tid: u32) {
    let mut peer = LinkMessage::default();
    peer.attributes.push(LinkAttribute::IfName("vcli".into()));
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

/// Connects to `to` from the client's namespace and reads what the listener says.
fn ask(client: &Client, to: SocketAddr) -> std::io::Result<String> {
    client.run(move || {
        let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut out = String::new();
        conn.read_to_string(&mut out)?;
        Ok(out)
    })
}

#[test]
fn a_vip_port_no_set_holds_is_refused_until_it_is_a_cluster_ip() {
    let mut ipset = node_with_sets();
    let client = Client::start();
    client.run(|| {
        no_dad("vcli");
        ip(&["link", "set", "lo", "up"]);
        ip(&["link", "set", "vcli", "up"]);
        ip(&["addr", "add", "10.0.0.2/24", "dev", "vcli"]);
        ip(&["addr", "add", "fd00:1::2/64", "dev", "vcli"]);
        ip(&["route", "add", "10.96.0.0/16", "via", "10.0.0.1"]);
        ip(&["-6", "route", "add", "fd00:96::/64", "via", "fd00:1::1"]);
    });
    no_dad("vnode");
    ip(&["link", "set", "vnode", "up"]);
    ip(&["addr", "add", "10.0.0.1/24", "dev", "vnode"]);
    ip(&["addr", "add", "fd00:1::1/64", "dev", "vnode"]);
    let mut link = DummyLink::open("kube-ipvs0").expect("rtnetlink");
    link.ensure_link().expect("kube-ipvs0");

    for vip in ["10.96.0.10", "fd00:96::10"] {
        let vip: IpAddr = vip.parse().expect("vip");
        let v6 = vip.is_ipv6();
        link.add(vip).expect("the VIP on kube-ipvs0");
        let to = SocketAddr::new(vip, 8080);
        let listener = TcpListener::bind(to).expect("listen on the VIP");
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let _ = conn.write_all(b"node");
            }
        });
        // Without rules the port answers: what follows is the rules' doing.
        assert_eq!(ask(&client, to).expect("no rules yet"), "node", "{vip}");

        let ips = sets::IPVS_IPS.name_for(v6);
        ipset
            .add(&ips, &Entry::ip(vip), false)
            .expect("into KUBE-IPVS-IPS");
        rules::apply(v6, &opts()).expect("apply");
        let refused = ask(&client, to).expect_err("a VIP port no service has");
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{vip}: {refused}"
        );

        let cluster_ip = sets::CLUSTER_IP.name_for(v6);
        ipset
            .add(
                &cluster_ip,
                &Entry::ip_port(vip, Protocol::Tcp, 8080),
                false,
            )
            .expect("into KUBE-CLUSTER-IP");
        assert_eq!(ask(&client, to).expect("a ClusterIP port"), "node", "{vip}");
        // Another port of the same VIP is still refused.
        let other = SocketAddr::new(vip, 8081);
        let _listener = TcpListener::bind(other).expect("listen on the VIP");
        assert_eq!(
            ask(&client, other).expect_err("not a service port").kind(),
            std::io::ErrorKind::ConnectionRefused
        );
    }
}
