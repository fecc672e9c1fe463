//! The daemon's loop: waits for inputs, records them in the [`Schedule`], and does what
//! it says. Every future raced here is cancel-safe (a source's `changed`, the data
//! plane's `node_changed`, `Interval::tick`, a fresh `sleep_until`, the shutdown
//! future), and all state lives in the schedule, so an input that loses a race is
//! never lost.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tracing::info;

use super::pipeline::{Pipeline, unix_now};
use super::schedule::{Event, Next, Schedule};
use crate::dataplane::Dataplane;
use crate::observe::http::Health;
use crate::observe::metrics::Metrics;
use crate::source::Source;

/// The loop's timing.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// `--sync-period`: full resyncs, on a fixed schedule.
    pub sync_period: Duration,
    /// `--min-sync-period`: the least time between the starts of two syncs.
    pub min_sync_period: Duration,
}

/// Runs syncs until `shutdown` resolves. The first sync starts at once.
pub async fn run<S: Source, D: Dataplane>(
    source: &mut S,
    pipeline: &mut Pipeline<D>,
    timing: Timing,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    shutdown: impl Future<Output = ()>,
) {
    let mut schedule = Schedule::new(timing.min_sync_period);
    let mut resync =
        tokio::time::interval_at(Instant::now() + timing.sync_period, timing.sync_period);
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let wait = match schedule.next(Instant::now()) {
            Next::Sync { full } => {
                schedule.sync_started(Instant::now());
                pipeline.sync(source, full);
                continue;
            }
            Next::RefreshNode => {
                schedule.node_refreshed();
                pipeline.refresh_node();
                continue;
            }
            Next::WaitUntil(t) => Some(t),
            Next::Idle => None,
        };
        let event = tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = pipeline.dataplane_mut().node_changed() => Event::NodeChanged,
            () = source.changed() => {
                health.queued();
                metrics.last_queued.set(unix_now());
                Event::SourceChanged
            }
            _ = resync.tick() => Event::ResyncDue,
            // Only wakes the loop: the schedule knows the rate limit has passed.
            () = tokio::time::sleep_until(wait.unwrap_or_else(Instant::now)), if wait.is_some() => continue,
        };
        schedule.note(event);
    }
    info!("stopping; the data plane stays programmed until the next agent adopts it");
}
