//! The eBPF backend's own metrics, registered in the agent's `/metrics` through
//! [`crate::dataplane::Dataplane::register_metrics`]: the connection-table collector's
//! statistics and the programs' event counters.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::conntrack::GcStats;

/// What the connection-table collector did. Cloning shares the metrics.
#[derive(Clone, Debug)]
pub struct GcMetrics {
    /// Connection-tracking entries (two per flow) left after the last collection.
    pub entries: Gauge,
    /// Connection-tracking entries deleted by the collector.
    pub deleted: Counter,
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
            entries: Gauge::default(),
            deleted: Counter::default(),
            runs: Counter::default(),
            errors: Counter::default(),
            // 1 ms .. ~16 s: a full table of 262,144 entries is read in well under that.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        }
    }
}

impl GcMetrics {
    /// Records one completed collection.
    pub fn record(&self, stats: &GcStats, elapsed: Duration) {
        self.runs.inc();
        self.deleted.inc_by(stats.deleted as u64);
        self.entries
            .set(i64::try_from(stats.live).unwrap_or(i64::MAX));
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Registers them under their `proxy_agent_conntrack_*` names.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "proxy_agent_conntrack_entries",
            "Connection-tracking entries of the tc path (two per flow) after the last collection",
            self.entries.clone(),
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
            super::counters::read(&bpffs).map_err(|e| format!("{:#}", anyhow::Error::new(e)))
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
    /// The pin root the counters are read from.
    pub bpffs: PathBuf,
}

impl EbpfMetrics {
    /// Registers the collector's metrics and the counters' collector.
    pub fn register(&self, r: &mut Registry) {
        self.gc.register(r);
        r.register_collector(Box::new(DatapathCounters::pinned(self.bpffs.clone())));
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
            &GcStats {
                scanned: 6,
                deleted: 2,
                live: 4,
            },
            Duration::from_millis(2),
        );
        let text = encode(&r);
        for line in [
            "proxy_agent_conntrack_entries 4",
            "proxy_agent_conntrack_gc_deleted_total 2",
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
        EbpfMetrics {
            gc: GcMetrics::default(),
            bpffs: "/nonexistent/proxy-agent".into(),
        }
        .register(&mut r);
        has(&encode(&r), "proxy_agent_datapath_loaded 0");
    }
}
