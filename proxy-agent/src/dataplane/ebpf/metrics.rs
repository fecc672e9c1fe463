//! The eBPF backend's own metrics, registered in the agent's `/metrics` through
//! [`crate::dataplane::Dataplane::register_metrics`]: the connection-table collector's
//! statistics and the programs' event counters.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::conntrack::GcReport;
#[cfg(test)]
use super::conntrack::GcStats;

/// A `table` label: `assured` (`CONNTRACK`) or `unassured` (`CT_OPEN`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Table {
    /// Which table.
    pub table: &'static str,
}

/// The label of `CONNTRACK`.
pub const ASSURED: Table = Table { table: "assured" };
/// The label of `CT_OPEN`.
pub const UNASSURED: Table = Table { table: "unassured" };

/// A `map` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapName {
    /// The map's name.
    pub map: &'static str,
}

/// What the connection-table collector did and saw. Cloning shares the metrics.
#[derive(Clone, Debug)]
pub struct GcMetrics {
    /// Entries (two per flow) left after the last collection, per table.
    pub entries: Family<Table, Gauge>,
    /// Each table's capacity in entries, as the kernel has it.
    pub capacity: Family<Table, Gauge>,
    /// entries / capacity, per table: the gauge to alert on.
    pub fill_ratio: Family<Table, Gauge<f64, AtomicU64>>,
    /// Entries deleted by the collector, per table.
    pub deleted: Family<Table, Counter>,
    /// Unassured entries the LRU evicted to make room for new flows (estimated).
    pub evictions: Family<Table, Counter>,
    /// Completed collections.
    pub runs: Counter,
    /// Collections that failed (map errors); retried at the next interval.
    pub errors: Counter,
    /// How long a collection took.
    pub duration: Histogram,
}

impl Default for GcMetrics {
    fn default() -> Self {
        GcMetrics {
            entries: Family::default(),
            capacity: Family::default(),
            fill_ratio: Family::default(),
            deleted: Family::default(),
            evictions: Family::default(),
            runs: Counter::default(),
            errors: Counter::default(),
            // 1 ms .. ~16 s: a full table of 262,144 entries is read in well under that.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        }
    }
}

impl GcMetrics {
    /// Records one completed collection, and `evicted` unassured entries since the
    /// one before.
    pub fn record(&self, report: &GcReport, evicted: u64, elapsed: Duration) {
        self.runs.inc();
        for (label, stats, capacity) in [
            (ASSURED, &report.assured, report.assured_capacity),
            (UNASSURED, &report.unassured, report.unassured_capacity),
        ] {
            self.deleted
                .get_or_create(&label)
                .inc_by(stats.deleted as u64);
            self.entries
                .get_or_create(&label)
                .set(i64::try_from(stats.live).unwrap_or(i64::MAX));
            self.capacity.get_or_create(&label).set(i64::from(capacity));
            let ratio = if capacity == 0 {
                0.0
            } else {
                stats.live as f64 / f64::from(capacity)
            };
            self.fill_ratio.get_or_create(&label).set(ratio);
        }
        self.evictions.get_or_create(&UNASSURED).inc_by(evicted);
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Registers them under their `proxy_agent_conntrack_*` names.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "proxy_agent_conntrack_entries",
            "Connection-tracking entries of the tc path (two per flow) after the last collection, by table",
            self.entries.clone(),
        );
        r.register(
            "proxy_agent_conntrack_capacity",
            "Connection-tracking entries each table can hold (two per flow)",
            self.capacity.clone(),
        );
        r.register(
            "proxy_agent_conntrack_fill_ratio",
            "Fraction of each connection table in use after the last collection",
            self.fill_ratio.clone(),
        );
        r.register(
            "proxy_agent_conntrack_evictions",
            "Unassured connection-tracking entries evicted to admit new flows (estimated from the data plane's counters; a flood shows here)",
            self.evictions.clone(),
        );
        r.register(
            "proxy_agent_conntrack_gc_deleted",
            "Connection-tracking entries deleted because their flow was idle past its timeout",
            self.deleted.clone(),
        );
        r.register(
            "proxy_agent_conntrack_gc_runs",
            "Completed connection-tracking collections",
            self.runs.clone(),
        );
        r.register(
            "proxy_agent_conntrack_gc_errors",
            "Connection-tracking collections that failed",
            self.errors.clone(),
        );
        r.register(
            "proxy_agent_conntrack_gc_duration_seconds",
            "Time one connection-tracking collection took",
            self.duration.clone(),
        );
    }
}

/// Reads the programs' counters, by name; an error is the reason they are unreadable.
pub type CounterReader =
    Box<dyn Fn() -> Result<Vec<(&'static str, u64)>, String> + Send + Sync + 'static>;

/// The per-CPU `COUNTERS` map, summed over CPUs at scrape time:
/// `proxy_agent_datapath_events{event}` and `proxy_agent_datapath_loaded`, which reads
/// 0 (rather than vanishing) while the counters cannot be read.
pub struct DatapathCounters {
    read: CounterReader,
}

impl DatapathCounters {
    /// A collector over `read`.
    pub fn new(read: CounterReader) -> Self {
        DatapathCounters { read }
    }

    /// A collector over the counters pinned under `bpffs`.
    pub fn pinned(bpffs: PathBuf) -> Self {
        DatapathCounters::new(Box::new(move || {
            super::counters::read(&bpffs).map_err(|e| crate::error_text::chain(&e))
        }))
    }
}

impl fmt::Debug for DatapathCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatapathCounters").finish_non_exhaustive()
    }
}

impl Collector for DatapathCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let loaded = match (self.read)() {
            Ok(values) => {
                let mut me = encoder.encode_descriptor(
                    "proxy_agent_datapath_events",
                    "What the data plane programs did, by event (translations, refusals, drops, misses)",
                    None,
                    ConstCounter::new(0u64).metric_type(),
                )?;
                for (event, value) in values {
                    ConstCounter::new(value).encode(me.encode_family(&[("event", event)])?)?;
                }
                1
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading the data plane's counters");
                0
            }
        };
        let up = ConstGauge::new(loaded as i64);
        up.encode(encoder.encode_descriptor(
            "proxy_agent_datapath_loaded",
            "1 while the data plane's maps are readable",
            None,
            up.metric_type(),
        )?)
    }
}

/// Everything the eBPF backend exports.
#[derive(Clone, Debug)]
pub struct EbpfMetrics {
    /// The connection-table collector's statistics.
    pub gc: GcMetrics,
    /// The kernel memory each map takes, read once at load (maps never resize).
    pub memory: Family<MapName, Gauge>,
    /// The pin root the counters are read from.
    pub bpffs: PathBuf,
    /// How full the statistics' table is.
    pub stats: super::stats::StatsGauges,
}

impl EbpfMetrics {
    /// Registers the collector's metrics and the counters' collector.
    pub fn register(&self, r: &mut Registry) {
        self.gc.register(r);
        r.register_with_unit(
            "proxy_agent_map_memory",
            "Kernel memory each of the data plane's maps takes (its memlock)",
            prometheus_client::registry::Unit::Bytes,
            self.memory.clone(),
        );
        r.register_collector(Box::new(DatapathCounters::pinned(self.bpffs.clone())));
        self.stats.register(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(r: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, r).expect("encoding");
        s
    }

    fn has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }

    #[test]
    fn conntrack_metrics_are_exported_under_their_names() {
        let m = GcMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        m.record(
            &GcReport {
                assured: GcStats {
                    scanned: 6,
                    deleted: 2,
                    live: 4,
                },
                assured_capacity: 16,
                unassured: GcStats {
                    scanned: 8,
                    deleted: 0,
                    live: 8,
                },
                unassured_capacity: 8,
            },
            5,
            Duration::from_millis(2),
        );
        let text = encode(&r);
        for line in [
            "proxy_agent_conntrack_entries{table=\"assured\"} 4",
            "proxy_agent_conntrack_entries{table=\"unassured\"} 8",
            "proxy_agent_conntrack_capacity{table=\"assured\"} 16",
            "proxy_agent_conntrack_fill_ratio{table=\"assured\"} 0.25",
            "proxy_agent_conntrack_fill_ratio{table=\"unassured\"} 1.0",
            "proxy_agent_conntrack_evictions_total{table=\"unassured\"} 5",
            "proxy_agent_conntrack_gc_deleted_total{table=\"assured\"} 2",
            "proxy_agent_conntrack_gc_runs_total 1",
            "proxy_agent_conntrack_gc_errors_total 0",
            "proxy_agent_conntrack_gc_duration_seconds_count 1",
        ] {
            has(&text, line);
        }
    }

    #[test]
    fn counters_are_exported_by_event_while_readable() {
        let mut r = Registry::default();
        r.register_collector(Box::new(DatapathCounters::new(Box::new(|| {
            Ok(vec![("lb_translated", 7), ("ct_full", 0)])
        }))));
        let text = encode(&r);
        has(
            &text,
            "proxy_agent_datapath_events_total{event=\"lb_translated\"} 7",
        );
        has(
            &text,
            "proxy_agent_datapath_events_total{event=\"ct_full\"} 0",
        );
        has(&text, "proxy_agent_datapath_loaded 1");
    }

    #[test]
    fn unreadable_counters_read_as_not_loaded_instead_of_vanishing() {
        let mut r = Registry::default();
        r.register_collector(Box::new(DatapathCounters::new(Box::new(|| {
            Err("COUNTERS is not pinned".into())
        }))));
        let text = encode(&r);
        has(&text, "proxy_agent_datapath_loaded 0");
        assert!(!text.contains("proxy_agent_datapath_events"), "{text}");
        // The same through the pins, when nothing is pinned there.
        let mut r = Registry::default();
        let memory = Family::<MapName, Gauge>::default();
        memory
            .get_or_create(&MapName { map: "CONNTRACK" })
            .set(1 << 20);
        EbpfMetrics {
            gc: GcMetrics::default(),
            memory,
            bpffs: "/nonexistent/proxy-agent".into(),
            stats: crate::dataplane::ebpf::stats::StatsGauges::default(),
        }
        .register(&mut r);
        let text = encode(&r);
        has(&text, "proxy_agent_datapath_loaded 0");
        has(
            &text,
            "proxy_agent_map_memory_bytes{map=\"CONNTRACK\"} 1048576",
        );
    }
}
