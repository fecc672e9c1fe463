//! `cargo xtask vm-test`: runs test binaries inside a VM whose kernel has IPVS.
//!
//! The host's kernel has no IPVS and loads no modules, so the proxy's `--proxy-mode=ipvs`
//! is tested under Debian 12's own kernel booted in qemu (software emulation). The guest
//! is built from packages downloaded once and cached (see [`guest`]); each run builds the
//! binaries listed in [`BINARIES`] for the host, puts them in a small initramfs next to
//! the cached base (see [`initramfs`]), boots, and reads their exit codes off the serial
//! console (see [`init`]).

mod cpio;
mod guest;
mod init;
mod initramfs;
mod qemu;
mod vmlinux;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, run_streamed, workspace_root};

/// A binary the VM runs, built with `cargo build -p PACKAGE --bin BIN` for the host.
pub struct VmBinary {
    pub package: &'static str,
    pub bin: &'static str,
    pub args: &'static [&'static str],
}

/// Everything `vm-test` runs by default, in order. The IPVS integration tests (the agent
/// in `--proxy-mode=ipvs`, namespaces inside the VM) belong here as further entries.
pub const BINARIES: &[VmBinary] = &[
    // Proves the harness and the guest kernel: IPVS, ipset, a dummy link.
    VmBinary {
        package: "tests",
        bin: "vm-smoke",
        args: &[],
    },
];

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Names from [`BINARIES`] to run; empty: all of them.
    pub bins: Vec<String>,
    /// For the whole boot; qemu is killed when it passes.
    pub timeout: Duration,
}

/// The whole boot's default limit: a cached run takes 4–9 s, a small `cargo test`
/// binary inside 25–30 s under emulation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Everything in [`BINARIES`], as `cargo xtask test` would run it.
impl Default for Options {
    fn default() -> Self {
        Self {
            bins: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Builds, boots, runs, reports. Fails if any binary fails or the VM does not finish.
pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    let selected = select(&opts.bins)?;
    let target = target_dir();
    build(&selected)?;
    let built = Instant::now();

    let cache = target.join("vm");
    let guest = guest::prepare(&cache)?;
    let prepared = Instant::now();

    let run_dir = guest::TempDir::new(cache.join(format!("run-{}", std::process::id())))?;
    let args: Vec<Vec<String>> = selected
        .iter()
        .map(|b| b.args.iter().map(|a| (*a).to_owned()).collect())
        .collect();
    let runs: Vec<init::Run> = selected
        .iter()
        .zip(&args)
        .map(|(b, args)| init::Run { name: b.bin, args })
        .collect();
    let binaries: Vec<(String, PathBuf)> = selected
        .iter()
        .map(|b| (b.bin.to_owned(), target.join("debug").join(b.bin)))
        .collect();
    let initrd = run_dir.path().join("initrd.cpio");
    initramfs::write_run(
        &initrd,
        &guest.base_initramfs,
        &init::script(&runs),
        &binaries,
    )?;

    println!(
        "vm-test: booting {} (timeout {} s)",
        guest.kernel_version,
        opts.timeout.as_secs()
    );
    let boot_start = Instant::now();
    let console = qemu::boot(&guest.vmlinux, &initrd, opts.timeout)?;
    let booted = Instant::now();
    let log_path = cache.join("last-console.log");
    fs::write(&log_path, &console.log)
        .with_context(|| format!("writing {}", log_path.display()))?;

    let report = init::parse(&console.log);
    println!("vm-test: summary");
    let mut failures = Vec::new();
    for b in &selected {
        let result = report.results.iter().find(|r| r.0 == b.bin);
        let line = match result.map(|r| r.1) {
            Some(Some(0)) => format!("ok       {}", b.bin),
            Some(Some(rc)) => format!("FAILED   {} (exit code {rc})", b.bin),
            Some(None) => format!("FAILED   {} (began, never ended)", b.bin),
            None => format!("FAILED   {} (never began)", b.bin),
        };
        if !line.starts_with("ok") {
            failures.push(b.bin.to_owned());
        }
        println!("vm-test:   {line}");
    }
    for m in &report.modprobe_failed {
        println!("vm-test:   FAILED   modprobe {m}");
        failures.push(format!("modprobe {m}"));
    }
    println!(
        "vm-test: build {:.1} s, guest image {:.1} s, boot and run {:.1} s, total {:.1} s",
        (built - started).as_secs_f64(),
        (prepared - built).as_secs_f64(),
        (booted - boot_start).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let how_ended = match console.status {
        None => format!(
            "the VM did not finish within {} s and was killed",
            opts.timeout.as_secs()
        ),
        Some(_) if !report.done => {
            "the VM stopped before its last marker (kernel panic?)".to_owned()
        }
        Some(_) => String::new(),
    };
    if !how_ended.is_empty() {
        bail!(
            "{how_ended}; console log in {} (last lines:)\n{}",
            log_path.display(),
            tail(&console.log, 40)
        );
    }
    if !failures.is_empty() {
        bail!(
            "failed in the VM: {}; console log in {}",
            failures.join(", "),
            log_path.display()
        );
    }
    Ok(())
}

/// The entries of [`BINARIES`] named in `names` (all when empty).
fn select(names: &[String]) -> Result<Vec<&'static VmBinary>> {
    if names.is_empty() {
        return Ok(BINARIES.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            BINARIES.iter().find(|b| b.bin == n).with_context(|| {
                let known: Vec<&str> = BINARIES.iter().map(|b| b.bin).collect();
                format!("no VM test binary {n:?} (known: {})", known.join(", "))
            })
        })
        .collect()
}

/// One `cargo build` per package (a `--bin` must exist in every selected package).
fn build(selected: &[&VmBinary]) -> Result<()> {
    let mut packages: Vec<&str> = selected.iter().map(|b| b.package).collect();
    packages.sort_unstable();
    packages.dedup();
    for package in packages {
        let mut cmd = cargo();
        cmd.args(["build", "-p", package]);
        for b in selected.iter().filter(|b| b.package == package) {
            cmd.args(["--bin", b.bin]);
        }
        run_streamed(&mut cmd)?;
    }
    Ok(())
}

/// Where cargo puts build output (and we the VM cache).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The last `n` lines of `log`.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
