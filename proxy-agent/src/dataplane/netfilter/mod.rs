//! Netfilter's connection tracking over ctnetlink (nfnetlink subsystem
//! `NFNL_SUBSYS_CTNETLINK` = 1): listing and deleting entries ([`conntrack`]) and
//! the table's statistics ([`stats`]), in the network namespace of the calling thread.
//!
//! IPVS mode's connections live only in this table, and so do the node's own
//! connections and the INVALID verdicts behind the conntrack-reset bug; the eBPF data
//! plane's tc path keeps its own table (`dataplane::ebpf::conntrack`).
//!
//! The entry messages are netlink-packet-netfilter's `ConntrackMessage`; the
//! statistics requests (`IPCTNL_MSG_CT_GET_STATS_CPU`, `IPCTNL_MSG_CT_GET_STATS`),
//! which that crate does not model, are encoded and decoded in [`stats`] from
//! `include/uapi/linux/netfilter/nfnetlink_conntrack.h`. The conversations run over
//! the IPVS backend's generic netlink [`Conn`] (request, dump, `NLMSG_ERROR` mapping).

pub mod conntrack;
pub mod metrics;
pub mod nfacct;
pub mod reconciler;
pub mod services;
pub mod stats;
#[cfg(test)]
mod test_support;

use netlink_sys::protocols::NETLINK_NETFILTER;

use crate::dataplane::ipvs::netlink::NetlinkError;
use crate::dataplane::ipvs::netlink::error::errno_name;
use crate::dataplane::ipvs::netlink::socket::{self, Conn, Kernel};

pub use conntrack::{Entry, Family, Icmp, Tuple};
pub use stats::Stats;

/// Why a ctnetlink request failed, naming what it was about.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    /// No ctnetlink in this kernel (nfnetlink refuses subsystem 1).
    #[error(
        "netfilter conntrack: the kernel has no ctnetlink (it answered {}): load \
         nf_conntrack_netlink (modprobe nf_conntrack_netlink)",
        errno_name(*errno)
    )]
    NoCtnetlink {
        /// What the kernel answered.
        errno: i32,
    },
    /// ctnetlink wants `CAP_NET_ADMIN` in the namespace, even to read.
    #[error("netfilter conntrack: {op}: permission denied (EPERM): run as root (CAP_NET_ADMIN)")]
    Denied {
        /// The request (`dump`, `delete`, `stats`).
        op: &'static str,
    },
    /// The entry to delete is not in the table (`ENOENT`): gone already.
    #[error("netfilter conntrack entry {tuple}: no such entry (ENOENT)")]
    NotFound {
        /// The original tuple asked for.
        tuple: String,
    },
    /// The request cannot be expressed (a tuple of mixed families, ICMP without id).
    #[error("netfilter conntrack entry {tuple}: {reason}")]
    Invalid {
        /// The tuple.
        tuple: String,
        /// Why.
        reason: String,
    },
    /// Any other failure of the conversation.
    #[error("netfilter conntrack: {op} {object}: {source}")]
    Netlink {
        /// The request (`dump`, `delete`, `stats`, `socket`).
        op: &'static str,
        /// What it was about (`entries`, an entry's tuple, `per-CPU statistics`).
        object: String,
        /// The failure.
        #[source]
        source: NetlinkError,
    },
    /// A reply did not decode.
    #[error("netfilter conntrack: {op}: malformed reply: {reason}")]
    Malformed {
        /// The request.
        op: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl NetfilterError {
    /// Gives a conversation's failure its meaning for request `op` about `object`.
    fn from_netlink(op: &'static str, object: impl Into<String>, source: NetlinkError) -> Self {
        match source.errno() {
            Some(libc::EPERM) => NetfilterError::Denied { op },
            Some(errno @ (libc::EOPNOTSUPP | libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT)) => {
                NetfilterError::NoCtnetlink { errno }
            }
            _ => NetfilterError::Netlink {
                op,
                object: object.into(),
                source,
            },
        }
    }

    /// A short, fixed label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            NetfilterError::NoCtnetlink { .. } => "no_ctnetlink",
            NetfilterError::Denied { .. } => "denied",
            NetfilterError::NotFound { .. } => "not_found",
            NetfilterError::Invalid { .. } => "invalid",
            NetfilterError::Netlink { .. } => "netlink",
            NetfilterError::Malformed { .. } => "malformed",
        }
    }
}

/// A ctnetlink conversation, in the network namespace of the thread that opened it.
pub struct Ctnetlink<T = Kernel> {
    conn: Conn<T>,
}

impl Ctnetlink<Kernel> {
    /// Opens a `NETLINK_NETFILTER` socket.
    pub fn open() -> Result<Ctnetlink<Kernel>, NetfilterError> {
        socket::open(NETLINK_NETFILTER, "NETLINK_NETFILTER")
            .map(Ctnetlink::over)
            .map_err(|e| NetfilterError::from_netlink("socket", "NETLINK_NETFILTER", e))
    }
}

impl<T: socket::Transport> Ctnetlink<T> {
    /// A conversation over `transport` (a script in tests).
    pub fn over(transport: T) -> Self {
        Ctnetlink {
            conn: Conn::new(transport),
        }
    }
}
