//! When the daemon syncs: a pure state machine over the loop's inputs, so that the
//! loop itself only races cancel-safe futures and keeps no state of its own.
//!
//! - A source change is synced at once after a quiet spell; during a burst, syncs start
//!   at most every `--min-sync-period` (kube-proxy's rate limit) and whatever arrives
//!   meanwhile joins the next one.
//! - A full resync (re-read the kernel, repair drift) is due every `--sync-period`,
//!   on a fixed schedule, so a busy cluster still gets it.
//! - A change of the node's devices is applied at once: a new pod interface must get
//!   its program within milliseconds, and re-planning devices is cheap.

use std::time::Duration;

use tokio::time::Instant;

/// An input of the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The source has something new.
    SourceChanged,
    /// The periodic full resync is due.
    ResyncDue,
    /// The node's interfaces or addresses changed.
    NodeChanged,
}

/// What the loop should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Sync now; `full` re-reads the kernel state and re-translates everything.
    Sync {
        /// A full resync.
        full: bool,
    },
    /// Re-apply the node addresses (the devices changed).
    RefreshNode,
    /// Something is pending but rate-limited: wait for inputs until this instant.
    WaitUntil(Instant),
    /// Nothing is pending: wait for inputs.
    Idle,
}

/// The loop's state. Every input is recorded here before anything else happens, so
/// dropping a raced future can never lose work.
#[derive(Debug)]
pub struct Schedule {
    min_sync_period: Duration,
    /// When the last sync started (None before the first).
    last_sync: Option<Instant>,
    changes: bool,
    full: bool,
    node: bool,
}

impl Schedule {
    /// A schedule whose first sync is due at once.
    pub fn new(min_sync_period: Duration) -> Self {
        Schedule {
            min_sync_period,
            last_sync: None,
            changes: true,
            full: false,
            node: false,
        }
    }

    /// Records an input.
    pub fn note(&mut self, event: Event) {
        match event {
            Event::SourceChanged => self.changes = true,
            Event::ResyncDue => self.full = true,
            Event::NodeChanged => self.node = true,
        }
    }

    /// What to do at `now`.
    pub fn next(&self, now: Instant) -> Next {
        if self.node {
            return Next::RefreshNode;
        }
        if !(self.changes || self.full) {
            return Next::Idle;
        }
        match self.last_sync {
            Some(last) if now < last + self.min_sync_period => {
                Next::WaitUntil(last + self.min_sync_period)
            }
            _ => Next::Sync { full: self.full },
        }
    }

    /// A sync starts at `now`: everything pending so far is part of it.
    pub fn sync_started(&mut self, now: Instant) {
        self.last_sync = Some(now);
        self.changes = false;
        self.full = false;
    }

    /// The node addresses are being re-applied.
    pub fn node_refreshed(&mut self) {
        self.node = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(50);

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn the_first_sync_is_due_at_once() {
        let s = Schedule::new(MIN);
        assert_eq!(s.next(Instant::now()), Next::Sync { full: false });
    }

    #[test]
    fn a_change_after_a_quiet_spell_is_synced_at_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(MIN);
        s.sync_started(t0);
        assert_eq!(s.next(at(t0, 1)), Next::Idle);
        s.note(Event::SourceChanged);
        assert_eq!(s.next(at(t0, 60)), Next::Sync { full: false });
    }

    #[test]
    fn changes_during_a_burst_wait_for_the_min_sync_period_and_are_coalesced() {
        let t0 = Instant::now();
        let mut s = Schedule::new(MIN);
        s.sync_started(t0);
        s.note(Event::SourceChanged);
        assert_eq!(s.next(at(t0, 10)), Next::WaitUntil(at(t0, 50)));
        s.note(Event::SourceChanged);
        assert_eq!(s.next(at(t0, 30)), Next::WaitUntil(at(t0, 50)));
        assert_eq!(s.next(at(t0, 50)), Next::Sync { full: false });
        s.sync_started(at(t0, 50));
        assert_eq!(s.next(at(t0, 51)), Next::Idle, "one sync took both changes");
    }

    #[test]
    fn a_due_resync_is_full_and_absorbs_pending_changes() {
        let t0 = Instant::now();
        let mut s = Schedule::new(MIN);
        s.sync_started(t0);
        s.note(Event::SourceChanged);
        s.note(Event::ResyncDue);
        assert_eq!(s.next(at(t0, 100)), Next::Sync { full: true });
        s.sync_started(at(t0, 100));
        assert_eq!(s.next(at(t0, 200)), Next::Idle);
    }

    #[test]
    fn a_device_change_is_applied_at_once_even_during_the_rate_limit() {
        let t0 = Instant::now();
        let mut s = Schedule::new(MIN);
        s.sync_started(t0);
        s.note(Event::SourceChanged);
        s.note(Event::NodeChanged);
        assert_eq!(s.next(at(t0, 1)), Next::RefreshNode);
        s.node_refreshed();
        assert_eq!(
            s.next(at(t0, 1)),
            Next::WaitUntil(at(t0, 50)),
            "the pending change is still pending"
        );
    }
}
