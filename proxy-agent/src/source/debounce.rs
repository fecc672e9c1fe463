//! Turns a stream of "something changed" signals into one wake-up per burst: it
//! resolves once the signals have been quiet for `quiet` (or `max` after the first
//! of a burst, so a never-ending trickle still syncs).
//!
//! It is cancel-safe, which a `tokio::select!` loop needs: the burst's state lives in
//! the struct, not in the future, so a future dropped mid-burst loses nothing and the
//! next call resumes the same burst. (An earlier version took the first signal from the
//! channel, then debounced inside the future; a timer winning the select dropped the
//! future and the change waited for the next full resync.)

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// See the module docs.
#[derive(Debug)]
pub struct Debounce {
    signals: mpsc::Receiver<()>,
    quiet: Duration,
    max: Duration,
    /// The first and the latest signal of the burst in progress.
    burst: Option<(Instant, Instant)>,
}

impl Debounce {
    /// Debounces `signals`.
    pub fn new(signals: mpsc::Receiver<()>, quiet: Duration, max: Duration) -> Self {
        Debounce {
            signals,
            quiet,
            max,
            burst: None,
        }
    }

    /// Resolves when a burst of signals is over. Cancel-safe.
    pub async fn changed(&mut self) {
        loop {
            let Some((first, last)) = self.burst else {
                if self.signals.recv().await.is_none() {
                    // The sender is gone: nothing will ever change again.
                    std::future::pending::<()>().await;
                }
                let now = Instant::now();
                self.burst = Some((now, now));
                continue;
            };
            let deadline = (last + self.quiet).min(first + self.max);
            tokio::select! {
                signal = self.signals.recv() => match signal {
                    Some(()) => self.burst = Some((first, Instant::now())),
                    None => {
                        self.burst = None;
                        return;
                    }
                },
                () = tokio::time::sleep_until(deadline) => {
                    self.burst = None;
                    return;
                }
            }
        }
    }

    /// Whether no signal waits in the channel (tests).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.signals.is_empty()
    }

    /// Forgets signals already received (the caller has just read the current state).
    pub fn clear(&mut self) {
        while self.signals.try_recv().is_ok() {}
        self.burst = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);

    fn debounce() -> (mpsc::Sender<()>, Debounce) {
        let (tx, rx) = mpsc::channel(1);
        (tx, Debounce::new(rx, QUIET, MAX))
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_resolves_once_it_has_been_quiet() {
        let (tx, mut d) = debounce();
        let start = Instant::now();
        tokio::spawn(async move {
            for _ in 0..3 {
                let _ = tx.try_send(());
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            // Keep the channel open.
            std::future::pending::<()>().await;
        });
        d.changed().await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(160) && took < Duration::from_millis(200),
            "resolved after {took:?}: 100 ms after the third signal at 60 ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_dropped_mid_burst_loses_nothing() {
        let (tx, mut d) = debounce();
        tx.try_send(()).expect("a free slot");
        // Three times a timer wins the race while the burst is being debounced.
        for _ in 0..3 {
            let raced = tokio::time::timeout(Duration::from_millis(20), d.changed()).await;
            assert!(raced.is_err(), "the burst is not over yet");
        }
        let resumed = tokio::time::timeout(QUIET, d.changed()).await;
        assert!(
            resumed.is_ok(),
            "the signal taken by a dropped future was kept"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_never_ending_trickle_still_resolves_after_max() {
        let (tx, mut d) = debounce();
        tokio::spawn(async move {
            loop {
                let _ = tx.try_send(());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let start = Instant::now();
        d.changed().await;
        assert!(start.elapsed() <= MAX + Duration::from_millis(1));
    }
}
