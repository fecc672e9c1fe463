//! Connected UDP sockets follow their service: when a backend leaves a UDP service
//! (or the service goes), every connected UDP socket the connect hook balanced to it
//! is destroyed: it is disconnected, the application's next call fails
//! (`ECONNABORTED` from a recv, `EDESTADDRREQ` from a send), and its next connect() is
//! balanced to a backend that is there.
//!
//! Why: the connect hook rewrites a UDP socket's destination once, at connect(). The
//! sendmsg hook does not run for a connected socket's send() (no address given), so
//! without this such a socket (a resolver's, a metrics client's) keeps sending to the
//! backend that left, and blackholes until the application reconnects by itself.
//!
//! How: sock_diag's `SOCK_DESTROY` ([`diag`]), from a thread that enters each network
//! namespace in turn ([`netns`]). Chosen over `bpf_sock_destroy()` from a BPF socket
//! iterator (Linux 6.5): that kfunc needs the program to declare a kfunc call, which
//! aya-ebpf 0.2 cannot express (no `__ksym` externs reach bpf-linker's BTF), and an
//! iterator is per namespace all the same, so it would not spare the `setns`.
//! sock_diag needs only CAP_NET_ADMIN over the namespace, the kernel's
//! CONFIG_INET_DIAG_DESTROY (Debian's and most distributions' kernels have it; without
//! it each destroy fails with `EOPNOTSUPP`, counted as `failed`), and CAP_SYS_ADMIN to
//! enter pod namespaces; without CAP_SYS_ADMIN only the agent's own namespace is
//! searched (host-network pods), and the agent says so once at start.
//!
//! Exactly the stale sockets ([`departures`]): a socket is destroyed only if
//! `REV_SOCK` records that this socket (its cookie) was sent to the departed backend by
//! the frontend it left; a socket the agent did not balance is never touched.
//!
//! Off the sync's path: [`UdpSockets::departed`] queues the departures and returns;
//! one worker thread sweeps right away (batching what queued meanwhile), so a sweep
//! ends within milliseconds of the sync that removed the backend.

mod departures;
mod diag;
mod netns;

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use aya::maps::{HashMap, MapData, MapError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use proxy_common::{RevSockKey, RevSockValue, maps};
use tracing::{debug, info, info_span, warn};

use self::departures::Departed;
pub use self::departures::{Departure, departures, watched};
use self::diag::{Destroy, Diag};
use self::netns::Namespace;
use super::pins;

/// Where pod network namespaces are bind-mounted by default (CNI, containerd,
/// CRI-O, `ip netns`).
pub const DEFAULT_POD_NETNS_DIR: &str = "/var/run/netns";

/// A `result` label of `proxy_agent_udp_sockets_terminated`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

/// Destroyed: the application gets `ECONNABORTED` (or `EDESTADDRREQ`) and reconnects.
const DESTROYED: Outcome = Outcome {
    result: "destroyed",
};
/// Closed or reconnected between the listing and the destroy.
const GONE: Outcome = Outcome { result: "gone" };
/// The kernel refused (see [`Destroy::Failed`]).
const FAILED: Outcome = Outcome { result: "failed" };

/// What the sweeps did. Cloning shares the metrics.
#[derive(Clone, Debug)]
struct SweepMetrics {
    terminated: Family<Outcome, Counter>,
    /// 1 when pod namespaces are searched (CAP_SYS_ADMIN), 0 when only the agent's.
    pod_namespaces: Gauge,
    /// Namespaces searched by the last sweep.
    namespaces: Gauge,
    /// Namespaces (or the REV_SOCK map) that could not be read: their sockets were
    /// not checked.
    errors: Counter,
    duration: Histogram,
}

impl Default for SweepMetrics {
    fn default() -> Self {
        let m = SweepMetrics {
            terminated: Family::default(),
            pod_namespaces: Gauge::default(),
            namespaces: Gauge::default(),
            errors: Counter::default(),
            // 100 µs .. ~3 s.
            duration: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
        };
        // Every series from the start, so that queries and alerts have data.
        for o in [DESTROYED, GONE, FAILED] {
            drop(m.terminated.get_or_create(&o));
        }
        m
    }
}

impl SweepMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "proxy_agent_udp_sockets_terminated",
            "Connected UDP sockets balanced to a backend that left its service, by result: destroyed (the application gets ECONNABORTED or EDESTADDRREQ and reconnects), gone (closed meanwhile), failed",
            self.terminated.clone(),
        );
        r.register(
            "proxy_agent_udp_socket_pod_namespaces",
            "1 if connected UDP sockets are followed in pod network namespaces too, 0 if only in the agent's own (CAP_SYS_ADMIN missing)",
            self.pod_namespaces.clone(),
        );
        r.register(
            "proxy_agent_udp_socket_namespaces_searched",
            "Network namespaces the last connected-UDP sweep searched",
            self.namespaces.clone(),
        );
        r.register(
            "proxy_agent_udp_socket_sweep_errors",
            "Network namespaces whose UDP sockets could not be listed (or REV_SOCK unreadable) during a sweep",
            self.errors.clone(),
        );
        r.register(
            "proxy_agent_udp_socket_sweep_duration_seconds",
            "Time one connected-UDP sweep took, over all namespaces",
            self.duration.clone(),
        );
    }
}

/// The handle the eBPF backend holds; the worker stops when it is dropped.
#[derive(Debug)]
pub struct UdpSockets {
    tx: mpsc::Sender<Vec<Departure>>,
    metrics: SweepMetrics,
}

impl UdpSockets {
    /// Starts the worker: it reads `REV_SOCK` under `bpffs` and searches the agent's
    /// namespace and those bind-mounted in `pod_netns_dir`.
    pub fn start(bpffs: PathBuf, pod_netns_dir: PathBuf) -> UdpSockets {
        let (tx, rx) = mpsc::channel();
        let metrics = SweepMetrics::default();
        let m = metrics.clone();
        let spawned = thread::Builder::new()
            .name("udp-sockets".into())
            .spawn(move || Worker::new(bpffs, pod_netns_dir, m).run(rx));
        if let Err(e) = spawned {
            warn!(
                error = %e,
                "cannot start the connected-UDP worker thread: sockets balanced to a \
                 backend that leaves will keep sending to it until they reconnect"
            );
        }
        UdpSockets { tx, metrics }
    }

    /// Queues backends that left, for the worker to sweep at once.
    pub fn departed(&self, departures: Vec<Departure>) {
        if departures.is_empty() {
            return;
        }
        if self.tx.send(departures).is_err() {
            debug!("the connected-UDP worker is not running; departures not swept");
        }
    }

    /// Registers the sweeps' metrics.
    pub fn register(&self, r: &mut Registry) {
        self.metrics.register(r);
    }
}

type RevSock = HashMap<MapData, RevSockKey, RevSockValue>;

/// The sweeping thread's state.
struct Worker {
    bpffs: PathBuf,
    dir: PathBuf,
    metrics: SweepMetrics,
    /// The agent's namespace, opened before the thread entered any other.
    own: Option<File>,
    /// Whether this thread may enter other namespaces (CAP_SYS_ADMIN).
    roams: bool,
    rev: Option<RevSock>,
}

impl Worker {
    fn new(bpffs: PathBuf, dir: PathBuf, metrics: SweepMetrics) -> Self {
        let own = match File::open(netns::OWN) {
            Ok(f) => Some(f),
            Err(e) => {
                warn!(
                    error = %e,
                    path = netns::OWN,
                    "cannot open the agent's own network namespace: connected UDP \
                     sockets are only followed in this thread's namespace"
                );
                None
            }
        };
        // Entering the namespace we are in is the exact test of what a sweep needs:
        // setns answers EPERM without CAP_SYS_ADMIN (or under a seccomp or LSM rule).
        let roams = match own.as_ref().map(netns::enter) {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                warn!(
                    error = %e,
                    missing = "CAP_SYS_ADMIN",
                    "cannot enter other network namespaces (setns needs CAP_SYS_ADMIN): \
                     connected UDP sockets in pod namespaces keep sending to a backend \
                     that left their service until the application reconnects; only \
                     the agent's own namespace is swept. Grant SYS_ADMIN and mount the \
                     pod namespace directory to follow them (see deploy/daemonset.yaml)"
                );
                false
            }
            None => false,
        };
        metrics.pod_namespaces.set(i64::from(roams));
        Worker {
            bpffs,
            dir,
            metrics,
            own,
            roams,
            rev: None,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Vec<Departure>>) {
        while let Ok(mut batch) = rx.recv() {
            // Whatever queued meanwhile goes in the same sweep.
            while let Ok(more) = rx.try_recv() {
                batch.extend(more);
            }
            self.sweep(&Departed::new(&batch));
        }
    }

    /// `REV_SOCK`, opened on first use (the pins exist once the data plane loaded).
    fn rev_sock(&mut self) -> Result<&RevSock, pins::PinError> {
        match &mut self.rev {
            Some(r) => Ok(r),
            slot @ None => Ok(slot.insert(pins::open(&self.bpffs, maps::REV_SOCK)?)),
        }
    }

    fn sweep(&mut self, departed: &Departed) {
        if departed.is_empty() {
            return;
        }
        let span = info_span!("udp_sweep", departures = departed.len());
        let _enter = span.enter();
        let start = Instant::now();
        let mut tally = Tally::default();
        let own = match &self.own {
            Some(f) if self.roams => f.try_clone().ok(),
            _ => None,
        };
        let searched = match own {
            Some(own) => {
                // The agent's own namespace first, then each pod's.
                let mut namespaces = netns::pinned(&self.dir, &own);
                if let Ok(file) = own.try_clone() {
                    namespaces.insert(
                        0,
                        Namespace {
                            path: netns::OWN.into(),
                            file,
                        },
                    );
                }
                for ns in &namespaces {
                    if let Err(e) = netns::enter(&ns.file) {
                        // A namespace torn down meanwhile, mostly.
                        debug!(netns = %ns.path.display(), error = %e, "entering");
                        continue;
                    }
                    self.sweep_here(departed, &ns.path.display().to_string(), &mut tally);
                }
                if let Err(e) = netns::enter(&own) {
                    debug!(error = %e, "returning to the agent's namespace");
                }
                namespaces.len()
            }
            None => {
                self.sweep_here(departed, "own", &mut tally);
                1
            }
        };
        self.metrics
            .namespaces
            .set(i64::try_from(searched).unwrap_or(i64::MAX));
        self.metrics.duration.observe(start.elapsed().as_secs_f64());
        let elapsed_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        if tally.destroyed + tally.failed > 0 {
            info!(
                destroyed = tally.destroyed,
                gone = tally.gone,
                failed = tally.failed,
                namespaces = searched,
                elapsed_us,
                "connected UDP sockets of departed backends terminated"
            );
        } else {
            debug!(
                namespaces = searched,
                elapsed_us, "no connected UDP socket of a departed backend"
            );
        }
    }

    /// Sweeps the namespace the thread is in.
    fn sweep_here(&mut self, departed: &Departed, netns: &str, tally: &mut Tally) {
        let metrics = self.metrics.clone();
        let rev = match self.rev_sock() {
            Ok(r) => r,
            Err(e) => {
                metrics.errors.inc();
                warn!(error = %format!("{:#}", anyhow::Error::new(e)), "reading REV_SOCK for the connected-UDP sweep");
                return;
            }
        };
        let mut diag = match Diag::open() {
            Ok(d) => d,
            Err(e) => {
                metrics.errors.inc();
                warn!(netns, error = %e, "opening sock_diag to list UDP sockets");
                return;
            }
        };
        for family in diag::FAMILIES {
            let sockets = match diag.connected(family) {
                Ok(s) => s,
                Err(e) => {
                    metrics.errors.inc();
                    warn!(netns, family, error = %e, "listing connected UDP sockets");
                    continue;
                }
            };
            for socket in sockets {
                let Some(d) = departed.stale(&socket, |k| lookup(rev, k)) else {
                    continue;
                };
                let outcome = match diag.destroy(&socket) {
                    Ok(()) => {
                        tally.destroyed += 1;
                        DESTROYED
                    }
                    Err(Destroy::Gone) => {
                        tally.gone += 1;
                        GONE
                    }
                    Err(e @ Destroy::Failed(_)) => {
                        tally.failed += 1;
                        warn!(
                            netns,
                            local = %socket.local(),
                            peer = %socket.peer(),
                            errno = e.errno().unwrap_or(0),
                            "destroying a connected UDP socket of a departed backend failed \
                             (EOPNOTSUPP: the kernel lacks CONFIG_INET_DIAG_DESTROY)"
                        );
                        FAILED
                    }
                };
                metrics.terminated.get_or_create(&outcome).inc();
                debug!(
                    netns,
                    local = %socket.local(),
                    peer = %socket.peer(),
                    service_id = d.service_id,
                    result = outcome.result,
                    "connected UDP socket of a departed backend"
                );
            }
        }
    }
}

/// What `REV_SOCK` holds for `key`; a lookup error reads as "not ours" (the socket is
/// left alone).
fn lookup(rev: &RevSock, key: &RevSockKey) -> Option<RevSockValue> {
    match rev.get(key, 0) {
        Ok(v) => Some(v),
        Err(MapError::KeyNotFound) => None,
        Err(e) => {
            debug!(error = %e, "looking up REV_SOCK");
            None
        }
    }
}

/// One sweep's counts, for its log line.
#[derive(Default)]
struct Tally {
    destroyed: u64,
    gone: u64,
    failed: u64,
}
