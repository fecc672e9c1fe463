//! `proxyctl monitor`'s side of the event stream: a lease in `MONITOR` that makes the
//! programs emit (see `proxy_common::monitor`), and the `EVENTS` ring buffer read
//! back as [`Event`]s, with the service names and the counter names resolved.

use std::collections::HashMap as StdHashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, RingBuf};
use proxy_common::{CtKey, MonitorEvent, ServiceName, counter, maps, monitor};

use super::pins::{self, PinError};

/// What to listen for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Refused connections and dropped packets, with the reason.
    Drop,
    /// New flows and connections translated to a backend.
    Trace,
}

impl Kind {
    fn index(self) -> u32 {
        match self {
            Kind::Drop => monitor::KIND_DROP,
            Kind::Trace => monitor::KIND_TRACE,
        }
    }

    /// The name `--type` takes and events print.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Drop => "drop",
            Kind::Trace => "trace",
        }
    }
}

/// One event, resolved for display.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    /// `drop` or `trace`.
    pub kind: &'static str,
    /// The counter that counted it (`nat_source_denied`, `ct_new`, ...).
    pub reason: &'static str,
    /// `sock` (connect/sendmsg), `tc-ingress` or `tc-egress`.
    pub hook: &'static str,
    /// The interface (tc), or 0.
    pub ifindex: u32,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// Where the packet came from; `None` in the socket hooks, which run before the
    /// connection has a source.
    pub source: Option<SocketAddr>,
    /// Where it was going.
    pub destination: SocketAddr,
    /// Trace: where it was sent instead (the backend; for SNATed flows the source
    /// changes too, see `translated_source`).
    pub translated: Option<SocketAddr>,
    /// Trace at tc: the source it was sent with.
    pub translated_source: Option<SocketAddr>,
    /// The service (`namespace/name:port`) of the frontend it matched, if any.
    pub service: Option<String>,
    /// When, on the kernel's monotonic clock (ns).
    pub time_ns: u64,
}

/// Failures of the monitor.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The maps are not there or cannot be opened.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// Renewing the lease failed.
    #[error("writing the lease to {}: {source}", maps::MONITOR)]
    Lease {
        /// aya's answer.
        #[source]
        source: aya::maps::MapError,
    },
    /// Waiting for events failed.
    #[error("waiting on {}: {source}", maps::EVENTS)]
    Poll {
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
}

/// A listener: holds the lease for its kinds while it lives (it lapses within
/// [`monitor::LEASE_NS`] once it stops being renewed).
pub struct Listener {
    ring: RingBuf<MapData>,
    leases: Array<MapData, u64>,
    names: Option<HashMap<MapData, u32, ServiceName>>,
    name_cache: StdHashMap<u32, Option<String>>,
    kinds: Vec<Kind>,
}

impl Listener {
    /// Opens the maps under `bpffs`, discards what the ring holds from before (events
    /// a previous listener left unread), and takes the lease for `kinds`.
    pub fn open(bpffs: &Path, kinds: &[Kind]) -> Result<Listener, MonitorError> {
        let ring: RingBuf<MapData> = pins::open(bpffs, maps::EVENTS)?;
        let leases: Array<MapData, u64> = pins::open(bpffs, maps::MONITOR)?;
        let names = pins::open_optional(bpffs, maps::SVC_NAMES)?;
        let mut l = Listener {
            ring,
            leases,
            names,
            name_cache: StdHashMap::new(),
            kinds: kinds.to_vec(),
        };
        while l.ring.next().is_some() {}
        l.renew()?;
        Ok(l)
    }

    /// Extends the lease of each kind to [`monitor::LEASE_NS`] from now (never
    /// shortening another listener's).
    pub fn renew(&mut self) -> Result<(), MonitorError> {
        let deadline = monotonic_ns() + monitor::LEASE_NS;
        for kind in &self.kinds {
            let i = kind.index();
            let current = self.leases.get(&i, 0).unwrap_or(0);
            if current < deadline {
                self.leases
                    .set(i, deadline, 0)
                    .map_err(|source| MonitorError::Lease { source })?;
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for events and returns those of the listened kinds (the
    /// ring is shared: another listener's lease may bring others).
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<Event>, MonitorError> {
        let mut fds = [libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(MonitorError::Poll { source: e });
            }
        }
        let mut raw = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(e) = decode(&item) {
                raw.push(e);
            }
        }
        let wanted: Vec<u32> = self.kinds.iter().map(|k| k.index()).collect();
        let mut out = Vec::new();
        for e in raw.into_iter().filter(|e| wanted.contains(&e.kind)) {
            let service = self.service(e.service_id);
            out.push(resolve(&e, service));
        }
        Ok(out)
    }

    fn service(&mut self, id: u32) -> Option<String> {
        if id == 0 {
            return None;
        }
        let names = &self.names;
        self.name_cache
            .entry(id)
            .or_insert_with(|| {
                let n = names.as_ref()?.get(&id, 0).ok()?;
                Some(n.as_str().to_owned()).filter(|s| !s.is_empty())
            })
            .clone()
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock `bpf_ktime_get_coarse_ns` counts on.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The event in `bytes`, if it has an event's size.
pub fn decode(bytes: &[u8]) -> Option<MonitorEvent> {
    if bytes.len() < std::mem::size_of::<MonitorEvent>() {
        return None;
    }
    // SAFETY: long enough, and MonitorEvent is plain data (any bits are valid); read
    // unaligned as the ring gives no alignment guarantee to a byte slice.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<MonitorEvent>()) })
}

/// `e` for display, with its service's name.
pub fn resolve(e: &MonitorEvent, service: Option<String>) -> Event {
    let kind = if e.kind == monitor::KIND_TRACE {
        Kind::Trace
    } else {
        Kind::Drop
    };
    let sock = e.hook == monitor::HOOK_SOCK;
    let translated = (kind == Kind::Trace).then(|| dst(&e.to));
    Event {
        kind: kind.name(),
        reason: counter::NAMES
            .get(e.reason as usize)
            .copied()
            .unwrap_or("unknown"),
        hook: match e.hook {
            monitor::HOOK_SOCK => "sock",
            monitor::HOOK_TC_INGRESS => "tc-ingress",
            monitor::HOOK_TC_EGRESS => "tc-egress",
            _ => "unknown",
        },
        ifindex: e.ifindex,
        protocol: match e.tuple.proto {
            proxy_common::proto::TCP => "tcp",
            proxy_common::proto::UDP => "udp",
            _ => "other",
        },
        source: (!sock).then(|| src(&e.tuple)),
        destination: dst(&e.tuple),
        translated,
        translated_source: (kind == Kind::Trace && !sock).then(|| src(&e.to)),
        service,
        time_ns: e.time_ns,
    }
}

fn src(k: &CtKey) -> SocketAddr {
    SocketAddr::new(k.saddr.ip(), u16::from_be(k.sport_be))
}

fn dst(k: &CtKey) -> SocketAddr {
    SocketAddr::new(k.daddr.ip(), u16::from_be(k.dport_be))
}

#[cfg(test)]
mod tests {
    use proxy_common::Addr;

    use super::*;

    fn key(s: &str, d: &str, proto: u8) -> CtKey {
        let s: SocketAddr = s.parse().unwrap();
        let d: SocketAddr = d.parse().unwrap();
        CtKey {
            saddr: Addr::from(s.ip()),
            daddr: Addr::from(d.ip()),
            sport_be: s.port().to_be(),
            dport_be: d.port().to_be(),
            proto,
            _pad: [0; 3],
        }
    }

    fn bytes(e: &MonitorEvent) -> Vec<u8> {
        // SAFETY: plain data, read as bytes.
        unsafe {
            std::slice::from_raw_parts(
                (e as *const MonitorEvent).cast::<u8>(),
                std::mem::size_of::<MonitorEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn a_tc_drop_reads_back_with_its_reason_and_tuple() {
        let e = MonitorEvent {
            time_ns: 7,
            kind: monitor::KIND_DROP,
            reason: counter::NAT_SOURCE_DENIED,
            hook: monitor::HOOK_TC_INGRESS,
            ifindex: 3,
            service_id: 9,
            tuple: key(
                "192.0.2.100:40000",
                "203.0.113.21:80",
                proxy_common::proto::TCP,
            ),
            ..MonitorEvent::default()
        };
        let back = decode(&bytes(&e)).expect("an event");
        assert_eq!(back, e);
        let r = resolve(&back, Some("default/denied:http".into()));
        assert_eq!(r.kind, "drop");
        assert_eq!(r.reason, "nat_source_denied");
        assert_eq!(r.hook, "tc-ingress");
        assert_eq!(r.protocol, "tcp");
        assert_eq!(r.source, Some("192.0.2.100:40000".parse().unwrap()));
        assert_eq!(r.destination, "203.0.113.21:80".parse().unwrap());
        assert_eq!(r.translated, None);
        assert_eq!(r.service.as_deref(), Some("default/denied:http"));
    }

    #[test]
    fn a_socket_trace_has_no_source_and_names_the_backend() {
        let e = MonitorEvent {
            kind: monitor::KIND_TRACE,
            reason: counter::LB_TRANSLATED,
            hook: monitor::HOOK_SOCK,
            tuple: key("0.0.0.0:0", "10.96.0.10:53", proxy_common::proto::UDP),
            to: key("0.0.0.0:0", "10.244.1.5:5353", proxy_common::proto::UDP),
            ..MonitorEvent::default()
        };
        let r = resolve(&e, None);
        assert_eq!(
            (r.kind, r.reason, r.hook),
            ("trace", "lb_translated", "sock")
        );
        assert_eq!(r.source, None);
        assert_eq!(r.translated, Some("10.244.1.5:5353".parse().unwrap()));
        assert_eq!(r.translated_source, None);
    }

    #[test]
    fn a_short_record_is_not_an_event() {
        assert_eq!(decode(&[0u8; 16]), None);
    }
}
