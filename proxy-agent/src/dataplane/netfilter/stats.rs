//! The connection table's statistics: `IPCTNL_MSG_CT_GET_STATS_CPU` (a dump, one
//! message per possible CPU, `nfgen_res_id` = the CPU) summed over CPUs, and
//! `IPCTNL_MSG_CT_GET_STATS` (one message) for the entry count of this network
//! namespace and the table's limit. What `conntrack -S` and `conntrack -C` print.
//!
//! netlink-packet-netfilter has no type for these: the requests are its
//! `ConntrackMessage::Other`, and the replies are read here as `nfgenmsg` plus
//! big-endian `u32` attributes (`enum ctattr_stats_cpu`, `enum ctattr_stats_global`
//! in `include/uapi/linux/netfilter/nfnetlink_conntrack.h`).

use netlink_packet_core::{NlaBuffer, NlasIterator};
use netlink_packet_netfilter::conntrack::ConntrackMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

use super::conntrack::NFNL_SUBSYS_CTNETLINK;
use super::{Ctnetlink, NetfilterError};
use crate::dataplane::ipvs::netlink::socket::Transport;

/// `IPCTNL_MSG_CT_GET_STATS_CPU` (`enum cntl_msg_types`).
pub const IPCTNL_MSG_CT_GET_STATS_CPU: u8 = 4;
/// `IPCTNL_MSG_CT_GET_STATS`.
pub const IPCTNL_MSG_CT_GET_STATS: u8 = 5;

// `enum ctattr_stats_cpu` (SEARCHED, NEW, IGNORE, DELETE and DELETE_LIST are no
// longer sent).
const CTA_STATS_FOUND: u16 = 2;
const CTA_STATS_INVALID: u16 = 4;
const CTA_STATS_INSERT: u16 = 8;
const CTA_STATS_INSERT_FAILED: u16 = 9;
const CTA_STATS_DROP: u16 = 10;
const CTA_STATS_EARLY_DROP: u16 = 11;
const CTA_STATS_ERROR: u16 = 12;
const CTA_STATS_SEARCH_RESTART: u16 = 13;
const CTA_STATS_CLASH_RESOLVE: u16 = 14;
const CTA_STATS_CHAIN_TOOLONG: u16 = 15;

// `enum ctattr_stats_global`.
const CTA_STATS_GLOBAL_ENTRIES: u16 = 1;
const CTA_STATS_GLOBAL_MAX_ENTRIES: u16 = 2;

/// The per-CPU counters, summed over CPUs. Each counts since boot (or since the
/// namespace was made); none is ever reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CpuStats {
    /// Lookups that found an entry.
    pub found: u64,
    /// Packets conntrack could not track (out of window, bad header, ...): marked
    /// INVALID, which is what `ct state invalid` / `--ctstate INVALID` match.
    pub invalid: u64,
    /// Entries inserted.
    pub insert: u64,
    /// Entries that could not be inserted (a clash lost, usually parallel UDP).
    pub insert_failed: u64,
    /// Packets dropped because an entry could not be made (table full).
    pub drop: u64,
    /// Entries evicted early to make room in a full table.
    pub early_drop: u64,
    /// Packets refused by an L4 tracker (`icmp_error` and the like).
    pub error: u64,
    /// Lookups restarted because a hash chain changed under them.
    pub search_restart: u64,
    /// Insert clashes resolved in favour of the existing entry.
    pub clash_resolve: u64,
    /// Inserts refused because the hash chain was too long.
    pub chain_toolong: u64,
}

impl CpuStats {
    /// The counters by their `conntrack -S` name, in a fixed order.
    pub fn by_name(&self) -> [(&'static str, u64); 10] {
        [
            ("found", self.found),
            ("invalid", self.invalid),
            ("insert", self.insert),
            ("insert_failed", self.insert_failed),
            ("drop", self.drop),
            ("early_drop", self.early_drop),
            ("error", self.error),
            ("search_restart", self.search_restart),
            ("clash_resolve", self.clash_resolve),
            ("chain_toolong", self.chain_toolong),
        ]
    }

    /// Adds one CPU's message (its attributes, after the `nfgenmsg`).
    fn add(&mut self, attrs: &[u8]) -> Result<(), String> {
        for nla in NlasIterator::new(attrs) {
            let nla = nla.map_err(|e| e.to_string())?;
            let value = u64::from(be32(&nla)?);
            let field = match nla.kind() {
                CTA_STATS_FOUND => &mut self.found,
                CTA_STATS_INVALID => &mut self.invalid,
                CTA_STATS_INSERT => &mut self.insert,
                CTA_STATS_INSERT_FAILED => &mut self.insert_failed,
                CTA_STATS_DROP => &mut self.drop,
                CTA_STATS_EARLY_DROP => &mut self.early_drop,
                CTA_STATS_ERROR => &mut self.error,
                CTA_STATS_SEARCH_RESTART => &mut self.search_restart,
                CTA_STATS_CLASH_RESOLVE => &mut self.clash_resolve,
                CTA_STATS_CHAIN_TOOLONG => &mut self.chain_toolong,
                // A counter newer than this code: skipped, not an error.
                _ => continue,
            };
            *field = field.saturating_add(value);
        }
        Ok(())
    }
}

/// Everything the statistics requests answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Entries in this network namespace's table (`nf_conntrack_count`).
    pub entries: u64,
    /// The table's limit (`nf_conntrack_max`).
    pub max: u64,
    /// How many CPUs answered.
    pub cpus: u32,
    /// The per-CPU counters, summed.
    pub sums: CpuStats,
}

/// A statistics request: `nfgen_family` `AF_UNSPEC` (the counters are not per family).
pub fn stats_request(message_type: u8) -> NetfilterMessage {
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
        ConntrackMessage::Other {
            message_type,
            attributes: Vec::new(),
        },
    )
}

impl<T: Transport> Ctnetlink<T> {
    /// Reads the counters of every CPU and the global entry count and limit.
    pub fn stats(&mut self) -> Result<Stats, NetfilterError> {
        let per_cpu = self
            .conn
            .dump(stats_request(IPCTNL_MSG_CT_GET_STATS_CPU))
            .map_err(|e| NetfilterError::from_netlink("stats", "per-CPU statistics", e))?;
        let mut stats = Stats::default();
        for reply in &per_cpu {
            let attrs = attributes(
                reply.message_type,
                IPCTNL_MSG_CT_GET_STATS_CPU,
                &reply.payload,
            )
            .and_then(|attrs| stats.sums.add(attrs))
            .map_err(|reason| NetfilterError::Malformed {
                op: "per-CPU statistics",
                reason,
            });
            attrs?;
            stats.cpus = stats.cpus.saturating_add(1);
        }
        let global = self
            .conn
            .request(stats_request(IPCTNL_MSG_CT_GET_STATS), 0)
            .map_err(|e| NetfilterError::from_netlink("stats", "global statistics", e))?;
        let (entries, max) =
            global_counts(&global).map_err(|reason| NetfilterError::Malformed {
                op: "global statistics",
                reason,
            })?;
        stats.entries = entries;
        stats.max = max;
        Ok(stats)
    }
}

/// The entry count and limit from the answer to `IPCTNL_MSG_CT_GET_STATS`.
pub fn global_counts(
    replies: &[crate::dataplane::ipvs::netlink::socket::Reply],
) -> Result<(u64, u64), String> {
    let reply = match replies {
        [one] => one,
        other => return Err(format!("{} messages, expected 1", other.len())),
    };
    let attrs = attributes(reply.message_type, IPCTNL_MSG_CT_GET_STATS, &reply.payload)?;
    let (mut entries, mut max) = (None, None);
    for nla in NlasIterator::new(attrs) {
        let nla = nla.map_err(|e| e.to_string())?;
        match nla.kind() {
            CTA_STATS_GLOBAL_ENTRIES => entries = Some(u64::from(be32(&nla)?)),
            CTA_STATS_GLOBAL_MAX_ENTRIES => max = Some(u64::from(be32(&nla)?)),
            _ => {}
        }
    }
    Ok((
        entries.ok_or("no CTA_STATS_GLOBAL_ENTRIES")?,
        max.ok_or("no CTA_STATS_GLOBAL_MAX_ENTRIES")?,
    ))
}

/// The attributes of a ctnetlink message of type `want`: what follows its
/// 4-byte `nfgenmsg`.
fn attributes(message_type: u16, want: u8, payload: &[u8]) -> Result<&[u8], String> {
    let expected = (NFNL_SUBSYS_CTNETLINK << 8) | u16::from(want);
    if message_type != expected {
        return Err(format!(
            "message type {message_type:#x}, expected {expected:#x}"
        ));
    }
    NetfilterHeader::parse(payload).map_err(|e| e.to_string())?;
    payload
        .get(4..)
        .ok_or_else(|| "shorter than its nfgenmsg".to_owned())
}

fn be32(nla: &NlaBuffer<&[u8]>) -> Result<u32, String> {
    let value = nla.value();
    <[u8; 4]>::try_from(value)
        .map(u32::from_be_bytes)
        .map_err(|_| {
            format!(
                "attribute {} has {} bytes, expected 4",
                nla.kind(),
                value.len()
            )
        })
}

#[cfg(test)]
#[path = "stats_tests.rs"]
mod tests;
