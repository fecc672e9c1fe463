//! `cargo xtask bench ipvs`: the agent's `--proxy-mode=ipvs` in Debian's kernel under
//! qemu (this host's kernel has no IPVS), in one boot, release builds:
//!
//! - new TCP connections per second from a client namespace through an IPVS ClusterIP,
//!   against the same connections straight to the pod, in alternating rounds (the
//!   ratio is the median of the rounds' own ratios), with 2 services and with 10,000
//!   more programmed;
//! - one endpoint change written to the manifests until IPVS has the new destination
//!   (polled over netlink), 100 times with 2 services programmed (p50, p99), and 3
//!   times among the 10,000;
//! - the cold start: 10,000 services x 10 endpoints in the manifests before the agent
//!   starts, until its first sync holds them all.
//!
//! The VM runs `vm_ipvs_bench` (proxy-agent/tests/vm_ipvs_bench.rs), which prints raw
//! samples as `@@kpt-bench` lines; the figures are made here. Software emulation
//! slows everything by an order of magnitude or more, and unevenly: absolute times
//! say little about a real machine, the same-run ratios are what to compare.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{median, quantile, spread};
use crate::vm::{self, Kind, VmBinary};

const MARKER: &str = "@@kpt-bench";

/// The guest side, with its arguments.
const BENCH: VmBinary = VmBinary {
    package: "proxy-agent",
    kind: Kind::Test,
    name: "vm_ipvs_bench",
    args: &[
        "--rounds",
        "9",
        "--round-ms",
        "1500",
        "--services",
        "10000",
        "--changes",
        "100",
        // Each change re-reads all 10,000 services' manifests: minutes under emulation.
        "--loaded-changes",
        "3",
    ],
    needs: &["proxy-agent"],
};

/// Runs the benchmark and prints its figures.
pub fn run() -> Result<()> {
    let opts = vm::Options {
        bins: Vec::new(),
        // 10,000 services under emulation: the cold sync alone takes a quarter of an
        // hour, each change among them minutes.
        timeout: Duration::from_secs(5400),
        release: true,
        // 10,000 virtual servers, 100,000 destinations and VIPs, the agent's own
        // state, and the binaries unpacked in RAM.
        memory_mib: 3072,
    };
    let outcome = vm::boot(&[&BENCH], &opts)?;
    let failures = vm::summary(&[&BENCH], &outcome.report);
    if !failures.is_empty() {
        bail!(
            "the benchmark failed in the VM: {}; see the console above",
            failures.join(", ")
        );
    }
    let samples = Samples::parse(&outcome.log)?;
    print!("{}", samples.report()?);
    Ok(())
}

/// One `@@kpt-bench KIND key=value...` line.
#[derive(Debug, PartialEq)]
struct Line {
    kind: String,
    fields: Vec<(String, String)>,
}

impl Line {
    fn parse(line: &str) -> Option<Line> {
        let at = line.find(MARKER)?;
        let mut words = line[at + MARKER.len()..].split_whitespace();
        let kind = words.next()?.to_owned();
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some(Line { kind, fields })
    }

    fn get(&self, key: &str) -> Result<f64> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .with_context(|| format!("no {key} in {self:?}"))?
            .1
            .parse()
            .with_context(|| format!("{key} in {self:?}"))
    }
}

/// Everything the guest measured.
#[derive(Debug, Default)]
struct Samples {
    /// `(services programmed, direct conn/s, VIP conn/s)` per round.
    rounds: Vec<(f64, f64, f64)>,
    /// `(services, ms, virtual servers, destinations)`.
    cold: Option<(f64, f64, f64, f64)>,
    /// Per change: services loaded, ms until IPVS had it, ms until the agent's sync
    /// ended, that sync's translate and apply (us).
    changes: Vec<[f64; 5]>,
    rss_kib: Option<f64>,
    done: bool,
}

impl Samples {
    fn parse(log: &str) -> Result<Samples> {
        let mut s = Samples::default();
        for line in log.lines().filter_map(Line::parse) {
            match line.kind.as_str() {
                "crr" => {
                    s.rounds
                        .push((line.get("services")?, line.get("direct")?, line.get("vip")?))
                }
                "cold" => {
                    s.cold = Some((
                        line.get("services")?,
                        line.get("ms")?,
                        line.get("virtual_servers")?,
                        line.get("dests")?,
                    ));
                }
                "change" => s.changes.push([
                    line.get("services")?,
                    line.get("ms")?,
                    line.get("sync_end_ms")?,
                    line.get("translate_us")?,
                    line.get("apply_us")?,
                ]),
                "rss" => s.rss_kib = Some(line.get("kib")?),
                "done" => s.done = true,
                _ => {}
            }
        }
        if !s.done {
            bail!("the guest never said it was done: no figures");
        }
        Ok(s)
    }

    fn report(&self) -> Result<String> {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nipvs: Debian 12's kernel under qemu, software emulation (TCG), one vCPU, \
             release builds.\nEmulation distorts absolute times (an order of magnitude \
             or more, unevenly): compare the ratios, not the figures.\n"
        );
        let _ = writeln!(
            out,
            "{:>8}  {:<22} {:>10} {:>10} {:>7}",
            "services", "metric", "direct", "VIP", "ratio"
        );
        let mut groups: Vec<f64> = self.rounds.iter().map(|r| r.0).collect();
        groups.dedup();
        let mut spreads = String::new();
        for services in groups {
            let rounds: Vec<&(f64, f64, f64)> =
                self.rounds.iter().filter(|r| r.0 == services).collect();
            let mut direct: Vec<f64> = rounds.iter().map(|r| r.1).collect();
            let mut vip: Vec<f64> = rounds.iter().map(|r| r.2).collect();
            let mut ratios: Vec<f64> = rounds.iter().map(|r| r.2 / r.1).collect();
            let _ = writeln!(
                spreads,
                "  {services:>6} services, {} rounds: direct {} conn/s, VIP {} conn/s, \
                 ratio {}",
                rounds.len(),
                spread(&direct, 0),
                spread(&vip, 0),
                spread(&ratios, 3)
            );
            let _ = writeln!(
                out,
                "{services:>8}  {:<22} {:>10.0} {:>10.0} {:>7.3}",
                "new connections/s",
                median(&mut direct),
                median(&mut vip),
                median(&mut ratios)
            );
        }
        let _ = writeln!(
            out,
            "\nspread (min..max) over the rounds; ratio = VIP / direct, the median of \
             the rounds' own ratios\n{spreads}"
        );
        let Some((services, ms, vs, dests)) = self.cold else {
            bail!("no cold-start figure");
        };
        let _ = writeln!(
            out,
            "{:<58} {:>10.0} ms   ({vs:.0} virtual servers, {dests:.0} destinations)",
            format!("cold start, {services:.0} services x 10 endpoints -> first sync"),
            ms
        );
        if self.changes.is_empty() {
            bail!("no endpoint-change samples");
        }
        let mut loads: Vec<f64> = self.changes.iter().map(|c| c[0]).collect();
        loads.dedup();
        for services in loads {
            let of = |i: usize| -> Vec<f64> {
                self.changes
                    .iter()
                    .filter(|c| c[0] == services)
                    .map(|c| c[i])
                    .collect()
            };
            let mut ms = of(1);
            let label = format!(
                "endpoint change -> IPVS destination, {services:.0} services ({} changes)",
                ms.len()
            );
            let _ = writeln!(
                out,
                "{label:<58} {:>10.1} ms p50, {:.1} ms p99 (min {:.1}, max {:.1})",
                quantile(&mut ms, 0.5),
                quantile(&mut ms, 0.99),
                quantile(&mut ms, 0.0),
                quantile(&mut ms, 1.0)
            );
            let _ = writeln!(
                out,
                "{:<58} {:>10.1} ms p50 to the sync's end; its translate {:.1} ms, apply {:.1} ms",
                "  of which, by the agent's log",
                median(&mut of(2)),
                median(&mut of(3)) / 1000.0,
                median(&mut of(4)) / 1000.0
            );
        }
        if let Some(kib) = self.rss_kib {
            let _ = writeln!(out, "{:<58} {:>10.0} MB", "agent peak RSS", kib / 1024.0);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_found_among_console_output_and_summed_up() {
        let log = "[ 1.0] random: crng init done\r\n\
                   @@kpt-bench crr services=1 round=0 direct=200.0 vip=190.0\r\n\
                   @@kpt-bench crr services=1 round=1 vip=210.0 direct=200.0\r\n\
                   @@kpt-bench cold services=10000 endpoints=10 ms=1234.5 virtual_servers=10001 dests=100001\r\n\
                   @@kpt-bench crr services=10001 round=0 direct=100.0 vip=100.0\r\n\
                   @@kpt-bench change services=2 ms=150.00 sync_end_ms=140 translate_us=1000 apply_us=2000\r\n\
                   @@kpt-bench change services=2 ms=250.00 sync_end_ms=240 translate_us=1000 apply_us=2000\r\n\
                   @@kpt-bench rss services=10000 kib=204800\r\n\
                   @@kpt-bench done\r\n";
        let s = Samples::parse(log).expect("parses");
        assert_eq!(
            s.rounds,
            [
                (1.0, 200.0, 190.0),
                (1.0, 200.0, 210.0),
                (10001.0, 100.0, 100.0)
            ]
        );
        assert_eq!(s.cold, Some((10000.0, 1234.5, 10001.0, 100001.0)));
        let report = s.report().expect("a report");
        assert!(report.contains("1.000"), "{report}");
        assert!(report.contains("250.0 ms p99"), "{report}");
        assert!(report.contains("200 MB"), "{report}");
    }

    #[test]
    fn a_run_that_did_not_finish_has_no_figures() {
        let log = "@@kpt-bench crr services=1 round=0 direct=200.0 vip=190.0\n";
        assert!(Samples::parse(log).is_err());
        assert!(
            Line::parse("@@kpt-bench crr vip=x")
                .expect("a line")
                .get("vip")
                .is_err()
        );
    }
}
