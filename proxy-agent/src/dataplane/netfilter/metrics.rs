//! netfilter's conntrack statistics in `/metrics`, read at scrape time (a collector,
//! not a timer: the numbers are the kernel's, as fresh as the scrape), in the network
//! namespace of the thread that scrapes, which is the agent's.
//!
//! kube-proxy exports none of these: its `iptables_ct_state_invalid_dropped_packets_total`
//! counts the packets its own INVALID rule dropped (an iptables rule counter), not
//! netfilter's `invalid` statistic, so netfilter's own counters go under
//! `proxy_agent_netfilter_conntrack_*`.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{Ctnetlink, NetfilterError, Stats};

/// Reads the statistics; the kernel's by default, a stub in tests.
pub type StatsReader = Box<dyn Fn() -> Result<Stats, NetfilterError> + Send + Sync + 'static>;

/// The collector: `proxy_agent_netfilter_conntrack_{entries,max}` gauges, one
/// `proxy_agent_netfilter_conntrack_<stat>_total` counter per per-CPU statistic, and
/// `proxy_agent_netfilter_conntrack_readable`, which reads 0 (rather than the series
/// vanishing) while the statistics cannot be read.
pub struct NetfilterStats {
    read: StatsReader,
}

impl NetfilterStats {
    /// A collector over `read`.
    pub fn new(read: StatsReader) -> Self {
        NetfilterStats { read }
    }

    /// A collector over this network namespace's kernel, one socket per scrape.
    pub fn kernel() -> Self {
        NetfilterStats::new(Box::new(|| Ctnetlink::open()?.stats()))
    }
}

impl fmt::Debug for NetfilterStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetfilterStats").finish_non_exhaustive()
    }
}

/// The help text of each per-CPU statistic's counter.
fn help(stat: &str) -> &'static str {
    match stat {
        "found" => "netfilter conntrack lookups that found an entry, summed over CPUs",
        "invalid" => {
            "Packets netfilter conntrack could not track and marked INVALID (out of window, \
             malformed), summed over CPUs"
        }
        "insert" => "Entries inserted into netfilter's connection table, summed over CPUs",
        "insert_failed" => {
            "Entries netfilter conntrack failed to insert (lost clashes), summed over CPUs"
        }
        "drop" => {
            "Packets dropped because netfilter conntrack could not make an entry (table full), \
             summed over CPUs"
        }
        "early_drop" => {
            "Entries evicted early from a full netfilter connection table, summed over CPUs"
        }
        "error" => "Packets netfilter conntrack's protocol trackers refused, summed over CPUs",
        "search_restart" => {
            "netfilter conntrack lookups restarted by concurrent changes, summed over CPUs"
        }
        "clash_resolve" => {
            "Insert clashes netfilter conntrack resolved to the existing entry, summed over CPUs"
        }
        "chain_toolong" => {
            "Inserts netfilter conntrack refused for a too long hash chain, summed over CPUs"
        }
        _ => "A netfilter conntrack statistic, summed over CPUs",
    }
}

impl Collector for NetfilterStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let readable = match (self.read)() {
            Ok(stats) => {
                for (name, help, value) in [
                    (
                        "proxy_agent_netfilter_conntrack_entries",
                        "Entries in netfilter's connection table (this network namespace)",
                        stats.entries,
                    ),
                    (
                        "proxy_agent_netfilter_conntrack_max",
                        "The limit of netfilter's connection table (nf_conntrack_max)",
                        stats.max,
                    ),
                ] {
                    let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
                }
                for (stat, value) in stats.sums.by_name() {
                    let c = ConstCounter::new(value);
                    let name = format!("proxy_agent_netfilter_conntrack_{stat}");
                    c.encode(encoder.encode_descriptor(
                        &name,
                        help(stat),
                        None,
                        c.metric_type(),
                    )?)?;
                }
                1
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading netfilter's conntrack statistics");
                0
            }
        };
        let g = ConstGauge::new(readable);
        g.encode(encoder.encode_descriptor(
            "proxy_agent_netfilter_conntrack_readable",
            "1 while netfilter's conntrack statistics are readable over ctnetlink",
            None,
            g.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::dataplane::netfilter::stats::CpuStats;

    fn scrape(read: StatsReader) -> String {
        let mut r = Registry::default();
        r.register_collector(Box::new(NetfilterStats::new(read)));
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &r).unwrap_or_else(|e| panic!("{e}"));
        s
    }

    fn has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }

    #[test]
    fn the_statistics_are_exported_as_gauges_and_counters_under_their_names() {
        let text = scrape(Box::new(|| {
            Ok(Stats {
                entries: 12,
                max: 262_144,
                cpus: 2,
                sums: CpuStats {
                    invalid: 3,
                    insert_failed: 1,
                    drop: 0,
                    early_drop: 5,
                    ..CpuStats::default()
                },
            })
        }));
        for line in [
            "# TYPE proxy_agent_netfilter_conntrack_entries gauge",
            "proxy_agent_netfilter_conntrack_entries 12",
            "proxy_agent_netfilter_conntrack_max 262144",
            "# TYPE proxy_agent_netfilter_conntrack_invalid counter",
            "proxy_agent_netfilter_conntrack_invalid_total 3",
            "proxy_agent_netfilter_conntrack_insert_failed_total 1",
            "proxy_agent_netfilter_conntrack_drop_total 0",
            "proxy_agent_netfilter_conntrack_early_drop_total 5",
            "proxy_agent_netfilter_conntrack_search_restart_total 0",
            "proxy_agent_netfilter_conntrack_readable 1",
        ] {
            has(&text, line);
        }
    }

    #[test]
    fn unreadable_statistics_read_as_not_readable_instead_of_vanishing() {
        let text = scrape(Box::new(|| Err(NetfilterError::Denied { op: "stats" })));
        has(&text, "proxy_agent_netfilter_conntrack_readable 0");
        assert!(!text.contains("conntrack_invalid"), "{text}");
    }
}
