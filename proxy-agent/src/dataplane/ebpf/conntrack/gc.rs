//! The collector: deletes the flows [`plan_gc`] finds idle, through the [`CtTable`]
//! seam, and the periodic task the data plane runs it in.

use std::borrow::BorrowMut;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData, MapError};
use proxy_common::{CtEntry, CtKey, TcConfig, maps};
use tracing::{debug, info, warn};

use super::flows::plan_gc;
use super::{ConntrackError, monotonic_ns, open_table, read_config};
use crate::dataplane::ebpf::error::is_not_found;
use crate::dataplane::ebpf::metrics::GcMetrics;

/// One pass of the collector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Entries read.
    pub scanned: usize,
    /// Entries deleted.
    pub deleted: usize,
    /// Entries left (scanned - deleted; flows created during the pass are not counted).
    pub live: usize,
}

/// The connection table as the collector needs it: the pinned map, or a plain map in
/// tests.
pub trait CtTable {
    /// A snapshot of every entry.
    fn entries(&self) -> Result<Vec<(CtKey, CtEntry)>, MapError>;
    /// One entry, if present.
    fn get(&self, key: &CtKey) -> Result<Option<CtEntry>, MapError>;
    /// Deletes an entry; false if it was already gone.
    fn remove(&mut self, key: &CtKey) -> Result<bool, MapError>;
}

impl<T: BorrowMut<MapData>> CtTable for HashMap<T, CtKey, CtEntry> {
    fn entries(&self) -> Result<Vec<(CtKey, CtEntry)>, MapError> {
        // Entries deleted by the data plane while we walk are skipped by the iterator.
        self.iter().collect()
    }

    fn get(&self, key: &CtKey) -> Result<Option<CtEntry>, MapError> {
        match HashMap::get(self, key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn remove(&mut self, key: &CtKey) -> Result<bool, MapError> {
        match HashMap::remove(self, key) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// One collection: snapshots the table, plans with [`plan_gc`], and deletes. Each
/// entry is re-read just before it is deleted and kept if it changed since the
/// snapshot (a packet arrived, or a new flow took the tuple), together with the rest
/// of its group; a pair left half-deleted that way is an orphan for the next pass.
pub fn gc(
    table: &mut impl CtTable,
    now_ns: u64,
    config: &TcConfig,
) -> Result<GcStats, ConntrackError> {
    let map_err = |op| {
        move |source| ConntrackError::Map {
            op,
            name: maps::CONNTRACK,
            source,
        }
    };
    let entries = table.entries().map_err(map_err("reading"))?;
    let mut deleted = 0;
    for group in plan_gc(&entries, now_ns, config) {
        for (key, seen) in group {
            if table.get(&key).map_err(map_err("lookup"))? != Some(seen) {
                break;
            }
            if table.remove(&key).map_err(map_err("delete"))? {
                deleted += 1;
            }
        }
    }
    Ok(GcStats {
        scanned: entries.len(),
        deleted,
        live: entries.len().saturating_sub(deleted),
    })
}

/// One collection on the pinned maps; `None` while they are not pinned yet.
pub fn gc_pinned(bpffs: &Path) -> Result<Option<GcStats>, ConntrackError> {
    let config = match read_config(bpffs) {
        Err(e) if e.is_missing() => return Ok(None),
        r => r?,
    };
    let mut table = match open_table(bpffs) {
        Err(e) if e.is_missing() => return Ok(None),
        r => r?,
    };
    gc(&mut table, monotonic_ns(), &config).map(Some)
}

/// Runs [`gc_pinned`] every `interval` on a blocking thread, from now until the task is
/// aborted, and records each pass in `metrics`. Maps that are not pinned yet are
/// waited for; a failing pass is logged (once per distinct error) and counted, never
/// fatal. An `interval` of zero disables collection. Must be called within a Tokio
/// runtime.
pub fn spawn_gc(
    bpffs: PathBuf,
    interval: Duration,
    metrics: GcMetrics,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if interval.is_zero() {
            info!("conntrack garbage collection disabled (interval 0)");
            return;
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The last problem reported, so that a persisting one is logged once.
        let mut problem: Option<(String, bool)> = None;
        loop {
            tick.tick().await;
            let path = bpffs.clone();
            let started = Instant::now();
            let outcome = tokio::task::spawn_blocking(move || gc_pinned(&path)).await;
            // (message, whether it is a failure rather than "not there yet")
            let now_problem = match outcome {
                Ok(Ok(Some(stats))) => {
                    let elapsed = started.elapsed();
                    metrics.record(&stats, elapsed);
                    debug!(
                        scanned = stats.scanned,
                        deleted = stats.deleted,
                        live = stats.live,
                        elapsed_ms = elapsed.as_millis(),
                        "conntrack garbage collected"
                    );
                    None
                }
                Ok(Ok(None)) => Some(("the connection table is not pinned yet".to_owned(), false)),
                Ok(Err(e)) => {
                    metrics.errors.inc();
                    Some((format!("{:#}", anyhow::Error::new(e)), true))
                }
                Err(e) => {
                    metrics.errors.inc();
                    Some((format!("the collection task failed: {e}"), true))
                }
            };
            match (&now_problem, &problem) {
                (Some(p), Some(last)) if p == last => {}
                (Some((p, true)), _) => warn!(
                    bpffs = %bpffs.display(),
                    "conntrack garbage collection failed: {p}; retrying every {interval:?}"
                ),
                (Some((p, false)), _) => info!(
                    bpffs = %bpffs.display(),
                    "conntrack garbage collection waits: {p}"
                ),
                (None, Some(_)) => info!("conntrack garbage collection running"),
                (None, None) => {}
            }
            problem = now_problem;
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::collections::HashMap as StdHashMap;

    use super::super::fixtures::*;
    use super::super::flows::flows;
    use super::*;

    /// A table in memory; `touch` simulates a packet arriving on that key between the
    /// collector's snapshot and its delete.
    #[derive(Default)]
    struct Fake {
        map: StdHashMap<CtKey, CtEntry>,
        touch: Option<CtKey>,
        removes: usize,
    }

    impl CtTable for Fake {
        fn entries(&self) -> Result<Vec<(CtKey, CtEntry)>, MapError> {
            Ok(self.map.iter().map(|(k, v)| (*k, *v)).collect())
        }

        fn get(&self, key: &CtKey) -> Result<Option<CtEntry>, MapError> {
            let mut e = self.map.get(key).copied();
            if self.touch == Some(*key)
                && let Some(e) = e.as_mut()
            {
                e.last_seen_ns += 1;
                e.packets += 1;
            }
            Ok(e)
        }

        fn remove(&mut self, key: &CtKey) -> Result<bool, MapError> {
            self.removes += 1;
            Ok(self.map.remove(key).is_some())
        }
    }

    #[test]
    fn gc_deletes_expired_flows_and_orphans_and_keeps_live_ones() {
        let cfg = config();
        let old = |c: &str| Legs2 {
            fwd_seen_s: 0,
            rep_seen_s: 0,
            ..Legs2::tcp(c, "192.0.2.10:30080", "10.244.1.5:8080")
        };
        let mut t = Fake::default();
        t.map.extend(old("203.0.113.1:1000").entries());
        t.map.extend(
            Legs2::tcp("203.0.113.2:1000", "192.0.2.10:30080", "10.244.1.5:8080").entries(),
        );
        t.map.extend([old("203.0.113.3:1000").entries()[1]]);
        let stats = gc(&mut t, 3700 * S, &cfg).unwrap();
        assert_eq!(
            stats,
            GcStats {
                scanned: 5,
                deleted: 3,
                live: 2
            }
        );
        assert_eq!(t.map.len(), 2);
        let f = flows(&t.entries().unwrap(), 3700 * S, &cfg);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].client, sa("203.0.113.2:1000"));
        // Nothing left to do.
        assert_eq!(gc(&mut t, 3700 * S, &cfg).unwrap().deleted, 0);
    }

    #[test]
    fn gc_keeps_an_entry_that_changed_since_the_snapshot_and_the_rest_of_its_flow() {
        let cfg = config();
        let l = Legs2 {
            fwd_seen_s: 0,
            rep_seen_s: 0,
            ..Legs2::tcp("203.0.113.1:1000", "192.0.2.10:30080", "10.244.1.5:8080")
        };
        let [fwd, rep] = l.entries();
        // A packet on the forward leg: nothing of the flow is deleted.
        let mut t = Fake {
            touch: Some(fwd.0),
            ..Fake::default()
        };
        t.map.extend([fwd, rep]);
        assert_eq!(gc(&mut t, 3700 * S, &cfg).unwrap().deleted, 0);
        assert_eq!((t.map.len(), t.removes), (2, 0));
        // A packet on the reply leg after the forward leg went: the reply leg stays,
        // an orphan for the next pass to judge.
        let mut t = Fake {
            touch: Some(rep.0),
            ..Fake::default()
        };
        t.map.extend([fwd, rep]);
        let stats = gc(&mut t, 3700 * S, &cfg).unwrap();
        assert_eq!((stats.deleted, stats.live), (1, 1));
        assert!(t.map.contains_key(&rep.0));
    }

    #[tokio::test]
    async fn the_collector_waits_for_missing_pins_without_counting_errors() {
        let m = GcMetrics::default();
        let task = spawn_gc(
            PathBuf::from("/nonexistent/proxy-agent"),
            Duration::from_millis(5),
            m.clone(),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished());
        task.abort();
        assert_eq!((m.runs.get(), m.errors.get()), (0, 0));
        // Zero disables it rather than panicking in tokio's interval.
        let task = spawn_gc(PathBuf::from("/nonexistent"), Duration::ZERO, m);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
