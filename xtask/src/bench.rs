//! `cargo xtask bench <name>`: benchmarks that report ratios against a baseline
//! measured in the same run (this machine is shared and noisy; absolute figures do not
//! carry over).

mod clusterip;
mod counting;
mod flood;
mod ipvs;
mod nodeport;
mod pkt;
mod sync;

use anyhow::{Result, bail};

use crate::{cargo, run_streamed, workspace_root};

/// Runs the benchmark `name`.
pub fn run(name: &str) -> Result<()> {
    match name {
        "clusterip" => clusterip::run(),
        "flood" => flood::run(),
        "ipvs" => ipvs::run(),
        "nodeport" => nodeport::run(),
        "pkt" => pkt::run(),
        "sync" => sync::run(),
        other => {
            bail!(
                "unknown benchmark {other:?}; available: clusterip, flood, ipvs, nodeport, pkt, sync"
            )
        }
    }
}

/// Sets up the machine and builds the agent, `proxyctl`, `probe` and `flood` in release mode, and
/// points the test harness at those builds (benchmarks never measure debug builds).
pub(crate) fn release_binaries() -> Result<()> {
    crate::setup::run()?;
    run_streamed(cargo().args([
        "build",
        "--release",
        "-p",
        "proxy-agent",
        "-p",
        "tests",
        "--bins",
    ]))?;
    let release = workspace_root().join("target/release");
    // SAFETY: single-threaded at this point; the harness reads these when spawning.
    unsafe {
        std::env::set_var("KPT_PROBE_BIN", release.join("probe"));
        std::env::set_var("KPT_FLOOD_BIN", release.join("flood"));
        std::env::set_var("KPT_AGENT_BIN", release.join("proxy-agent"));
        std::env::set_var("KPT_PROXYCTL_BIN", release.join("proxyctl"));
    }
    Ok(())
}

/// The median of `xs` (which must not be empty).
pub(crate) fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// `min..max` of `xs` (which must not be empty), with `prec` decimals: the spread the
/// README prints next to each median.
pub(crate) fn spread(xs: &[f64], prec: usize) -> String {
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.prec$}..{max:.prec$}")
}

/// The value after `key` in a probe summary line (`conns 123 secs 2.0 ...`).
pub(crate) fn field(line: &str, key: &str) -> Result<f64> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == key
            && let Some(v) = words.next()
        {
            return Ok(v.parse()?);
        }
    }
    bail!("no {key:?} in probe output {line:?}")
}

/// The `q`-quantile (0..=1) of `xs` (which must not be empty), nearest rank.
pub(crate) fn quantile(xs: &mut [f64], q: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_min_to_max_whatever_the_order() {
        assert_eq!(spread(&[3.0, 1.25, 2.0], 2), "1.25..3.00");
        assert_eq!(spread(&[7.0], 0), "7..7");
    }

    #[test]
    fn a_missing_field_is_an_error_not_zero() {
        assert_eq!(field("conns 12 secs 2.0", "secs").ok(), Some(2.0));
        assert!(field("conns 12", "secs").is_err());
    }
}
