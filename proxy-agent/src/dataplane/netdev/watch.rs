//! Following the node's devices over rtnetlink notifications, so that a new pod veth
//! is planned for within milliseconds instead of at the next poll.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::time::Duration;

use netlink_sys::{AsyncSocket, TokioSocket, protocols::NETLINK_ROUTE};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::rtnl::{RtnlError, notification_matters};

/// How often [`DeviceWatch::changed`] returns with nothing notified, by default.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(30);

/// The notification groups followed: links, addresses, and routes (a default route
/// moving changes the primary interface).
const GROUPS: [(u32, &str); 5] = [
    (libc::RTNLGRP_LINK, "RTNLGRP_LINK"),
    (libc::RTNLGRP_IPV4_IFADDR, "RTNLGRP_IPV4_IFADDR"),
    (libc::RTNLGRP_IPV6_IFADDR, "RTNLGRP_IPV6_IFADDR"),
    (libc::RTNLGRP_IPV4_ROUTE, "RTNLGRP_IPV4_ROUTE"),
    (libc::RTNLGRP_IPV6_ROUTE, "RTNLGRP_IPV6_ROUTE"),
];

/// Asked of the kernel for our receive buffer (it caps this at `net.core.rmem_max`):
/// room for a burst of pod starts between two reads. An overflow is still handled.
const RECEIVE_BUFFER: usize = 1 << 20;

/// A notification datagram is one message of a few KiB; a larger one is read
/// truncated and then counts as a change.
const DATAGRAM: usize = 64 * 1024;

/// At most this many queued datagrams are read per [`DeviceWatch::changed`] call, so
/// that a storm cannot keep one call from returning; the rest makes the next call
/// return at once.
const DRAIN_LIMIT: usize = 1024;

/// Why [`DeviceWatch::changed`] returned. Whatever it is, the caller re-lists.
#[derive(Debug)]
#[non_exhaustive]
pub enum Change {
    /// The kernel announced a link, address or default-route change.
    Notified,
    /// Notifications were lost: our receive buffer overflowed (`ENOBUFS`) or reading
    /// failed. What changed is unknown.
    Lost(io::Error),
    /// The periodic re-list is due: a safety net for anything missed.
    Resync,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Notified => f.write_str("rtnetlink notification"),
            Change::Lost(e) => write!(f, "rtnetlink notifications lost ({e})"),
            Change::Resync => f.write_str("periodic re-list"),
        }
    }
}

/// Reports changes to the interfaces, addresses and default routes of the network
/// namespace it was created in (that of the calling thread).
///
/// Create it *before* the first listing ([`list`](super::list)), then re-list after
/// every [`changed`](DeviceWatch::changed): a change between the two is then reported
/// rather than missed.
pub struct DeviceWatch {
    socket: TokioSocket,
    /// Scratch space for one datagram; holds nothing between calls.
    buf: Vec<u8>,
    resync: Interval,
}

impl fmt::Debug for DeviceWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceWatch")
            .field("resync", &self.resync.period())
            .finish_non_exhaustive()
    }
}

impl DeviceWatch {
    /// Subscribes, with the [`DEFAULT_RESYNC`] period. Must be called inside a tokio
    /// runtime with IO and time enabled.
    pub fn new() -> Result<Self, RtnlError> {
        Self::with_resync(DEFAULT_RESYNC)
    }

    /// Subscribes; [`changed`](DeviceWatch::changed) also returns when `resync` (at
    /// least 1 ms) has passed since it last returned.
    pub fn with_resync(resync: Duration) -> Result<Self, RtnlError> {
        // AsyncFd and Interval would panic without a runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(RtnlError::NoRuntime);
        }
        let mut socket = TokioSocket::new(NETLINK_ROUTE).map_err(|source| RtnlError::Socket {
            call: "socket",
            source,
        })?;
        let sock = socket.socket_mut();
        sock.bind_auto().map_err(|source| RtnlError::Socket {
            call: "bind",
            source,
        })?;
        for (group, name) in GROUPS {
            sock.add_membership(group)
                .map_err(|source| RtnlError::Socket { call: name, source })?;
        }
        // Best effort: a smaller buffer only makes an overflow (handled) likelier.
        if let Err(e) = sock.set_rx_buf_sz(RECEIVE_BUFFER) {
            tracing::debug!("setting SO_RCVBUF on the rtnetlink watch: {e}");
        }
        let period = resync.max(Duration::from_millis(1));
        let mut resync = tokio::time::interval_at(Instant::now() + period, period);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(DeviceWatch {
            socket,
            buf: Vec::with_capacity(DATAGRAM),
            resync,
        })
    }

    /// Waits until something changed since the last return, or the re-list period
    /// passed. Everything queued is read before returning, so a burst of notifications
    /// is one return (or two, if more arrive while the caller re-lists).
    ///
    /// Cancel-safe: the only await points are the socket's readiness and the timer's
    /// tick, before anything is read. A datagram is read and judged without awaiting
    /// and the call then returns, so a future dropped by `tokio::select!` has taken
    /// nothing, and the notifications stay queued in the kernel for the next call.
    pub async fn changed(&mut self) -> Change {
        let change = loop {
            let first = tokio::select! {
                // Notifications first: a due resync can wait for them.
                biased;
                read = poll_fn(|cx| {
                    self.buf.clear();
                    self.socket.poll_recv(cx, &mut self.buf)
                }) => Some(read),
                _ = self.resync.tick() => None,
            };
            let Some(first) = first else {
                break Change::Resync;
            };
            if let Some(change) = self.absorb(first) {
                break change;
            }
        };
        self.resync.reset();
        change
    }

    /// Judges the datagram just read (`first`) and everything else already queued,
    /// without waiting. `None` if none of it matters.
    fn absorb(&mut self, first: io::Result<()>) -> Option<Change> {
        let mut seen = Seen::default();
        seen.note(first, &self.buf);
        for _ in 0..DRAIN_LIMIT {
            self.buf.clear();
            match self
                .socket
                .socket_ref()
                .recv(&mut self.buf, libc::MSG_DONTWAIT)
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                read => seen.note(read.map(drop), &self.buf),
            }
        }
        seen.lost
            .map(Change::Lost)
            .or(seen.relevant.then_some(Change::Notified))
    }

    /// Makes the receive buffer as small as the kernel allows, to provoke `ENOBUFS`.
    #[cfg(test)]
    pub(super) fn shrink_receive_buffer(&self) {
        if let Err(e) = self.socket.socket_ref().set_rx_buf_sz(0_usize) {
            panic!("setting SO_RCVBUF to its minimum: {e}");
        }
    }
}

/// What one [`DeviceWatch::absorb`] saw.
#[derive(Default)]
struct Seen {
    relevant: bool,
    lost: Option<io::Error>,
}

impl Seen {
    fn note(&mut self, read: io::Result<()>, datagram: &[u8]) {
        match read {
            Ok(()) => self.relevant |= notification_matters(datagram),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if self.lost.is_none() {
                    self.lost = Some(e);
                }
            }
        }
    }
}
