//! The collector: deletes the flows [`plan_gc`] finds idle from both tables, through
//! the [`CtTable`] seam, and the periodic task the data plane runs it in, which also
//! measures how full each table is and how many unassured entries were evicted.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData, MapError};
use proxy_common::{CtEntry, CtKey, CtOpenEntry, TcConfig, counter, maps};
use tracing::{debug, info, warn};

use super::batch::lookup_all;
use super::flows::plan_gc;
use super::{ConntrackError, monotonic_ns, open_table, open_unassured, read_config};
use crate::dataplane::ebpf::counters;
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

/// One pass over both tables, with their capacities as the kernel has them (a pinned
/// table adopted from an earlier agent keeps its size).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// `CONNTRACK`: assured flows.
    pub assured: GcStats,
    /// Its `max_entries`.
    pub assured_capacity: u32,
    /// `CT_OPEN`: unassured flows.
    pub unassured: GcStats,
    /// Its `max_entries`.
    pub unassured_capacity: u32,
}

/// A connection table as the collector needs it: a pinned map, or a plain map in
/// tests.
pub trait CtTable {
    /// A snapshot of every entry, each once.
    fn entries(&self) -> Result<Vec<(CtKey, CtEntry)>, MapError>;
    /// One entry, if present.
    fn get(&self, key: &CtKey) -> Result<Option<CtEntry>, MapError>;
    /// Deletes an entry; false if it was already gone.
    fn remove(&mut self, key: &CtKey) -> Result<bool, MapError>;
}

/// A pinned table with the capacity the kernel gave it.
pub struct Pinned<V> {
    map: HashMap<MapData, CtKey, V>,
    /// The same map, for the batch walk (aya's typed maps do not lend their fd).
    data: MapData,
    capacity: u32,
}

impl<V: Leg> Pinned<V> {
    /// Wraps `map`, also open as `data`, whose `max_entries` is `capacity`.
    pub fn new(map: HashMap<MapData, CtKey, V>, data: MapData, capacity: u32) -> Self {
        Pinned {
            map,
            data,
            capacity,
        }
    }
}

/// A value of either table, as the leg the collector judges.
pub trait Leg: aya::Pod {
    /// The leg.
    fn leg(self) -> CtEntry;
}

impl Leg for CtEntry {
    fn leg(self) -> CtEntry {
        self
    }
}

impl Leg for CtOpenEntry {
    fn leg(self) -> CtEntry {
        self.ct
    }
}

impl<V: Leg> CtTable for Pinned<V> {
    /// One batch walk, bounded by the capacity (entries inserted during the walk may
    /// be seen or not).
    fn entries(&self) -> Result<Vec<(CtKey, CtEntry)>, MapError> {
        let all = lookup_all::<CtKey, V>(self.data.fd().as_fd(), self.capacity as usize).map_err(
            |io_error| {
                MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error,
                })
            },
        )?;
        Ok(all.into_iter().map(|(k, v)| (k, v.leg())).collect())
    }

    fn get(&self, key: &CtKey) -> Result<Option<CtEntry>, MapError> {
        match HashMap::get(&self.map, key, 0) {
            Ok(e) => Ok(Some(e.leg())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn remove(&mut self, key: &CtKey) -> Result<bool, MapError> {
        match self.map.remove(key) {
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
    name: &'static str,
    now_ns: u64,
    config: &TcConfig,
) -> Result<GcStats, ConntrackError> {
    let map_err = |op| move |source| ConntrackError::Map { op, name, source };
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

/// One collection of both pinned tables; `None` while they are not pinned yet.
pub fn gc_pinned(bpffs: &Path) -> Result<Option<GcReport>, ConntrackError> {
    let config = match read_config(bpffs) {
        Err(e) if e.is_missing() => return Ok(None),
        r => r?,
    };
    let (mut assured, mut unassured) = match (open_table(bpffs), open_unassured(bpffs)) {
        (Err(e), _) | (_, Err(e)) if e.is_missing() => return Ok(None),
        (a, u) => (a?, u?),
    };
    let now = monotonic_ns();
    Ok(Some(GcReport {
        assured: gc(&mut assured, maps::CONNTRACK, now, &config)?,
        assured_capacity: assured.capacity,
        unassured: gc(&mut unassured, maps::CT_OPEN, now, &config)?,
        unassured_capacity: unassured.capacity,
    }))
}

/// The unassured table's accounting at one collection: the data plane's counters of
/// what entered and left it, the collector's deletions, and what the walk found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenSample {
    /// `ct_new`: flows opened (two entries each).
    pub opened: u64,
    /// `ct_promoted`: flows moved to the assured table (two entries each).
    pub promoted: u64,
    /// `ct_reopened`: flows replaced by a new one on their tuple (two entries each).
    pub reopened: u64,
    /// Entries the collector deleted, in total.
    pub collected: u64,
    /// Entries present.
    pub live: u64,
}

impl OpenSample {
    /// The sample of a collection that found `live` entries, with the counters read
    /// just after it and the collector's running total of deletions.
    pub fn new(counters: &[(&'static str, u64)], collected: u64, live: u64) -> Self {
        let get = |index: u32| {
            counters
                .get(index as usize)
                .map(|(_, v)| *v)
                .unwrap_or_default()
        };
        OpenSample {
            opened: get(counter::CT_NEW),
            promoted: get(counter::CT_PROMOTED),
            reopened: get(counter::CT_REOPENED),
            collected,
            live,
        }
    }
}

/// Entries the LRU evicted between two samples: what came in, less what left by the
/// known ways, less what is still there. The kernel does not count LRU evictions, so
/// this is an estimate (the walk is not atomic); `None` when the counters went back
/// (a replaced COUNTERS map), as nothing can be said then.
pub fn evicted(prev: &OpenSample, now: &OpenSample) -> Option<u64> {
    let delta = |a: u64, b: u64| b.checked_sub(a);
    let came = delta(prev.opened, now.opened)?.saturating_mul(2);
    let left = delta(prev.promoted, now.promoted)?
        .saturating_add(delta(prev.reopened, now.reopened)?)
        .saturating_mul(2)
        .saturating_add(delta(prev.collected, now.collected)?);
    let stayed = i128::from(now.live) - i128::from(prev.live);
    let gone = i128::from(came) - i128::from(left) - stayed;
    Some(u64::try_from(gone.max(0)).unwrap_or(u64::MAX))
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
        let mut collected = 0u64;
        let mut last: Option<OpenSample> = None;
        loop {
            tick.tick().await;
            let path = bpffs.clone();
            let started = Instant::now();
            let outcome = tokio::task::spawn_blocking(move || {
                gc_pinned(&path).map(|r| r.map(|r| (r, counters::read(&path).ok())))
            })
            .await;
            // (message, whether it is a failure rather than "not there yet")
            let now_problem = match outcome {
                Ok(Ok(Some((report, counts)))) => {
                    let elapsed = started.elapsed();
                    collected += report.unassured.deleted as u64;
                    let sample = counts
                        .map(|c| OpenSample::new(&c, collected, report.unassured.live as u64));
                    let evictions = match (&last, &sample) {
                        (Some(a), Some(b)) => evicted(a, b),
                        _ => None,
                    };
                    last = sample;
                    metrics.record(&report, evictions.unwrap_or(0), elapsed);
                    debug!(
                        assured = report.assured.live,
                        unassured = report.unassured.live,
                        deleted = report.assured.deleted + report.unassured.deleted,
                        evicted = evictions,
                        elapsed_ms = elapsed.as_millis(),
                        "conntrack garbage collected"
                    );
                    None
                }
                Ok(Ok(None)) => Some(("the connection table is not pinned yet".to_owned(), false)),
                Ok(Err(e)) => {
                    metrics.errors.inc();
                    Some((crate::error_text::chain(&e), true))
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
        let stats = gc(&mut t, maps::CONNTRACK, 3700 * S, &cfg).unwrap();
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
        assert_eq!(
            gc(&mut t, maps::CONNTRACK, 3700 * S, &cfg).unwrap().deleted,
            0
        );
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
        assert_eq!(
            gc(&mut t, maps::CONNTRACK, 3700 * S, &cfg).unwrap().deleted,
            0
        );
        assert_eq!((t.map.len(), t.removes), (2, 0));
        // A packet on the reply leg after the forward leg went: the reply leg stays,
        // an orphan for the next pass to judge.
        let mut t = Fake {
            touch: Some(rep.0),
            ..Fake::default()
        };
        t.map.extend([fwd, rep]);
        let stats = gc(&mut t, maps::CONNTRACK, 3700 * S, &cfg).unwrap();
        assert_eq!((stats.deleted, stats.live), (1, 1));
        assert!(t.map.contains_key(&rep.0));
    }

    #[test]
    fn evictions_are_what_came_in_less_what_left_and_what_stayed() {
        let at = |opened, promoted, reopened, collected, live| OpenSample {
            opened,
            promoted,
            reopened,
            collected,
            live,
        };
        let cases = [
            // Quiet: two flows opened and promoted, nothing evicted.
            (at(10, 5, 0, 0, 4), at(12, 7, 0, 0, 4), Some(0)),
            // A flood of 1000 flows into a table that stays full at 100 entries.
            (at(0, 0, 0, 0, 100), at(1000, 0, 0, 0, 100), Some(2000)),
            // The same, with the collector and reopened flows taking some.
            (at(0, 0, 0, 0, 100), at(1000, 0, 10, 30, 100), Some(1950)),
            // The table grew by what came in: nothing evicted.
            (at(0, 0, 0, 0, 0), at(50, 0, 0, 0, 100), Some(0)),
            // An estimate never goes negative (a walk that missed entries).
            (at(0, 0, 0, 0, 100), at(0, 0, 0, 0, 150), Some(0)),
            // Counters that went back (a replaced COUNTERS map) say nothing.
            (at(100, 0, 0, 0, 0), at(3, 0, 0, 0, 0), None),
            (at(0, 0, 0, 9, 0), at(0, 0, 0, 3, 0), None),
        ];
        for (prev, now, want) in cases {
            assert_eq!(evicted(&prev, &now), want, "{prev:?} -> {now:?}");
        }
    }

    #[test]
    fn a_sample_reads_its_counters_by_index_and_tolerates_a_short_map() {
        let mut counts: Vec<(&'static str, u64)> = proxy_common::counter::NAMES
            .iter()
            .map(|n| (*n, 0))
            .collect();
        counts[counter::CT_NEW as usize].1 = 7;
        counts[counter::CT_PROMOTED as usize].1 = 3;
        counts[counter::CT_REOPENED as usize].1 = 1;
        assert_eq!(
            OpenSample::new(&counts, 4, 9),
            OpenSample {
                opened: 7,
                promoted: 3,
                reopened: 1,
                collected: 4,
                live: 9
            }
        );
        // An older data plane's map has no promotion counters: they read 0.
        let old = &counts[..counter::CT_PROMOTED as usize];
        assert_eq!(OpenSample::new(old, 0, 0).promoted, 0);
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
