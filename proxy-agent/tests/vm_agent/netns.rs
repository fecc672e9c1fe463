//! A network namespace held by a thread of its own, which runs closures in it.
//!
//! A namespace belongs to a thread (`unshare(CLONE_NEWNET)` moves only the caller),
//! and what that thread creates stays in it: sockets, child processes, and threads it
//! spawns. So a test never unshares itself: it asks a [`Netns`] to bind, connect,
//! spawn or run `ip` there, and uses the sockets and processes from anywhere. The
//! namespace goes when its [`Netns`] is dropped and nothing else holds it.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_sys::protocols::NETLINK_ROUTE;
use proxy_agent::dataplane::ipvs::netlink::socket::{self, Conn};

type Job = Box<dyn FnOnce() + Send>;

/// See the module docs.
pub struct Netns {
    name: String,
    /// The holding thread's id: what `IFLA_NET_NS_PID` names the namespace by.
    tid: u32,
    jobs: mpsc::Sender<Job>,
}

impl Netns {
    /// A new namespace with `lo` up; `name` is for messages.
    pub fn new(name: &str) -> Netns {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                // SAFETY: plain syscall; only the calling thread changes namespace.
                let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                if rc != 0 {
                    let _ = tid_tx.send(Err(std::io::Error::last_os_error()));
                    return;
                }
                // SAFETY: plain syscall, no arguments.
                let tid = unsafe { libc::gettid() };
                let _ = tid_tx.send(Ok(tid));
                // Until the Netns is dropped.
                for job in rx {
                    job();
                }
            })
            .expect("spawning a namespace thread");
        let tid = match tid_rx.recv() {
            Ok(Ok(tid)) => u32::try_from(tid).expect("a positive tid"),
            Ok(Err(e)) => panic!("unshare(CLONE_NEWNET) for {name}: {e} (run as root, in the VM)"),
            Err(_) => panic!("the thread of namespace {name} died"),
        };
        let ns = Netns {
            name: name.to_owned(),
            tid,
            jobs,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` in this namespace and returns what it returns; a panic in `f` is
    /// re-raised here.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        });
        if self.jobs.send(job).is_err() {
            panic!("the thread of namespace {} is gone", self.name);
        }
        match rx.recv() {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => resume_unwind(panic),
            Err(_) => panic!("the thread of namespace {} is gone", self.name),
        }
    }

    /// Runs `f` on a new thread in this namespace (for servers and client loops).
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> JoinHandle<R> {
        self.run(move || std::thread::spawn(f))
    }

    /// Runs busybox `ip ARGS` here; fails the test if it fails.
    pub fn ip(&self, args: &[&str]) {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let name = self.name.clone();
        self.run(move || {
            let out = Command::new("ip")
                .args(&args)
                .output()
                .expect("running ip (busybox's, in the VM)");
            assert!(out.status.success(), "{name}: ip {args:?}: {out:?}");
        });
    }

    /// Writes `value` to `/proc/sys/net/PATH` of this namespace.
    pub fn sysctl(&self, path: &str, value: &str) {
        let (path, value) = (format!("/proc/sys/net/{path}"), value.to_owned());
        let name = self.name.clone();
        self.run(move || {
            std::fs::write(&path, &value)
                .unwrap_or_else(|e| panic!("{name}: writing {value} to {path}: {e}"));
        });
    }

    /// A veth pair: `here` in this namespace, `there` in `peer`'s, both down, IPv6
    /// duplicate address detection off on both (a tentative address cannot be bound).
    /// Over rtnetlink: busybox `ip` has no `type veth peer`.
    pub fn veth(&self, here: &str, peer: &Netns, there: &str) {
        let (link_name, peer_name, pid) = (here.to_owned(), there.to_owned(), peer.tid);
        self.run(move || {
            let mut peer = LinkMessage::default();
            peer.attributes.push(LinkAttribute::IfName(peer_name));
            peer.attributes.push(LinkAttribute::NetNsPid(pid));
            let mut link = LinkMessage::default();
            link.attributes.push(LinkAttribute::IfName(link_name));
            link.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]));
            let mut conn =
                Conn::new(socket::open(NETLINK_ROUTE, "NETLINK_ROUTE").expect("rtnetlink"));
            conn.request(
                RouteNetlinkMessage::NewLink(link),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .expect("RTM_NEWLINK veth");
        });
        self.sysctl(&format!("ipv6/conf/{here}/accept_dad"), "0");
        peer.sysctl(&format!("ipv6/conf/{there}/accept_dad"), "0");
    }
}
