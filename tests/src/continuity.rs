//! Traffic watched over time, for tests that claim something keeps working while the
//! agent stops and a new one adopts its maps: probes run until SIGTERM with
//! `--timestamps`, and the instants of a restart to hold their lines against.

use std::time::{Duration, Instant};

use crate::{ChildGuard, Stamped};

/// Probes (`probe hold ... --rounds 0` or `probe tcp ... --count 0`, both with
/// `--timestamps`) whose every line says when it began and ended.
#[derive(Default)]
pub struct TrafficWatch {
    probes: Vec<(String, ChildGuard)>,
}

impl TrafficWatch {
    /// Watches `probe`, called `label` in messages.
    pub fn add(&mut self, label: &str, probe: ChildGuard) {
        self.probes.push((label.to_owned(), probe));
    }

    /// Waits until every probe printed `n` lines that began after `after_us`.
    ///
    /// # Panics
    /// On a failure line (`err ...`) or a probe that does not get there within
    /// `timeout`, saying `what` was awaited.
    pub fn wait_each(&mut self, what: &str, after_us: u64, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for (label, probe) in &mut self.probes {
            let mut seen = 0;
            while seen < n {
                let left = deadline.saturating_duration_since(Instant::now());
                let Some(line) = probe.next_line(left) else {
                    panic!(
                        "{label}: {seen} of {n} lines {what} within {timeout:?}; lines: {:?}; \
                         stderr: {}",
                        probe.seen_lines(),
                        probe.stderr()
                    );
                };
                let stamped = Stamped::parse(&line)
                    .unwrap_or_else(|| panic!("{label}: not a timestamped line: {line:?}"));
                assert!(!stamped.is_err(), "{label} failed {what}: {line}");
                if stamped.start_us > after_us {
                    seen += 1;
                }
            }
        }
    }

    /// Waits until some probe prints a failure line, and returns (its label, the line):
    /// the control that shows a watch does notice a gap in service.
    ///
    /// # Panics
    /// If none fails within `timeout`.
    pub fn wait_failure(&mut self, what: &str, timeout: Duration) -> (String, Stamped) {
        let deadline = Instant::now() + timeout;
        loop {
            for (label, probe) in &mut self.probes {
                // What is queued, a bounded number at a time so no probe starves another.
                for _ in 0..100 {
                    let Some(line) = probe.next_line(Duration::from_millis(5)) else {
                        break;
                    };
                    if let Some(s) = Stamped::parse(&line).filter(Stamped::is_err) {
                        return (label.clone(), s);
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no probe failed {what} within {timeout:?}"
            );
        }
    }

    /// Stops every probe (SIGTERM: each finishes what it does), checks that each exits
    /// 0, and returns each one's lines.
    ///
    /// # Panics
    /// If a probe does not exit cleanly within 10 s, or printed an untimestamped line.
    pub fn finish(mut self) -> Vec<(String, Vec<Stamped>)> {
        for (_, probe) in &self.probes {
            probe.signal(libc::SIGTERM);
        }
        let mut out = Vec::new();
        for (label, probe) in &mut self.probes {
            probe.drain_lines(Duration::from_secs(10));
            let status = probe.wait(Duration::from_secs(10));
            assert!(
                status.success(),
                "{label} exited with {status}: {:?}; stderr: {}",
                probe.seen_lines(),
                probe.stderr()
            );
            let lines = Stamped::parse_all(probe.seen_lines().iter().map(String::as_str));
            out.push((label.clone(), lines));
        }
        out
    }
}

/// The instants (unix µs) of an agent restart.
#[derive(Clone, Copy, Debug)]
pub struct Restart {
    /// Just before the old agent was sent SIGTERM.
    pub stopping: u64,
    /// Just after it had exited.
    pub stopped: u64,
    /// Just before the new agent was spawned ([`Agent::spawned_us`](crate::Agent::spawned_us)).
    pub spawned: u64,
    /// The new agent's "eBPF data plane loaded" line: programs attached (links
    /// replaced) and the maps adopted.
    pub adopted: u64,
    /// The new agent's first "synced" line.
    pub first_sync: u64,
}

impl Restart {
    /// The phases a watched probe must show traffic in: (name, from, to).
    pub fn phases(&self) -> [(&'static str, u64, u64); 4] {
        [
            ("before the old agent stopped", 0, self.stopping),
            ("while no agent ran", self.stopped, self.spawned),
            (
                "while the new agent loaded and adopted the maps",
                self.spawned,
                self.adopted,
            ),
            (
                "after the new agent's first sync",
                self.first_sync,
                u64::MAX,
            ),
        ]
    }

    /// Checks that `lines` of the probe `label` hold no failure and at least one line
    /// (round trip or connection) lying entirely inside each of [`phases`](Self::phases).
    ///
    /// # Panics
    /// Otherwise, with the phase and the lines.
    pub fn check(&self, label: &str, lines: &[Stamped]) {
        let failed: Vec<&Stamped> = lines.iter().filter(|l| l.is_err()).collect();
        assert!(failed.is_empty(), "{label} failed: {failed:?}");
        for (phase, from, to) in self.phases() {
            let n = lines.iter().filter(|l| l.within(from, to)).count();
            assert!(
                n > 0,
                "{label}: nothing exchanged {phase} ({from}..{to} µs; restart: {self:?}); \
                 lines: {lines:?}"
            );
        }
    }
}
