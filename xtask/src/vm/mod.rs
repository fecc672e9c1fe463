//! `cargo xtask vm-test`: runs test binaries inside a VM whose kernel has IPVS.
//!
//! The host's kernel has no IPVS and loads no modules, so the proxy's `--proxy-mode=ipvs`
//! is tested under Debian 12's own kernel booted in qemu (software emulation). The guest
//! is built from packages downloaded once and cached (see [`guest`]); each run builds the
//! binaries listed in [`BINARIES`] for the host (see [`build`]), puts them in a small
//! initramfs next to the cached base (see [`initramfs`]), boots (see [`qemu`]), and
//! reads their exit codes off the serial console (see [`init`]).

mod build;
mod cpio;
mod guest;
mod init;
mod initramfs;
mod iptables;
mod qemu;
mod vmlinux;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::workspace_root;

/// What kind of cargo target a [`VmBinary`] is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A `[[bin]]`, built with `cargo build --bin NAME`.
    Bin,
    /// A `[[test]]` (an integration-test binary), built with `cargo test --no-run --test
    /// NAME`; give it `--test-threads=1` and the like in `args`.
    Test,
}

/// A binary the VM runs as `/tests/NAME ARGS...`, built for the host.
#[derive(Debug)]
pub struct VmBinary {
    pub package: &'static str,
    pub kind: Kind,
    pub name: &'static str,
    pub args: &'static [&'static str],
    /// Entries of [`SHIPPED`] it runs, copied next to it as `/tests/NAME`.
    pub needs: &'static [&'static str],
}

/// Binaries copied into the VM as `/tests/NAME` for the tests that name them in
/// [`VmBinary::needs`], never run as tests themselves: the agent and its CLI, which
/// the VM tests drive as a node would.
pub const SHIPPED: &[VmBinary] = &[
    VmBinary {
        package: "proxy-agent",
        kind: Kind::Bin,
        name: "proxy-agent",
        args: &[],
        needs: &[],
    },
    VmBinary {
        package: "proxy-agent",
        kind: Kind::Bin,
        name: "proxyctl",
        args: &[],
        needs: &[],
    },
];

/// Everything `vm-test` runs by default, in order, in one boot: `[[test]]` targets with
/// `test = false` (or binaries) that `cargo test` on the host leaves out.
pub const BINARIES: &[VmBinary] = &[
    // Proves the harness and the guest kernel: IPVS, ipset, a dummy link.
    VmBinary {
        package: "tests",
        kind: Kind::Bin,
        name: "vm-smoke",
        args: &[],
        needs: &[],
    },
    // The IPVS and ipset netlink messages, taken by the kernel and read back.
    VmBinary {
        package: "proxy-agent",
        kind: Kind::Test,
        name: "vm_netlink",
        args: &[],
        needs: &[],
    },
    // The IPVS backend programming a ClusterIP that carries connections.
    VmBinary {
        package: "proxy-agent",
        kind: Kind::Test,
        name: "vm_ipvs_backend",
        args: &[],
        needs: &[],
    },
    // The IPVS mode's netfilter rules through the host's iptables: applied once however
    // often applied, removed without a trace, refusing VIP ports no service has.
    VmBinary {
        package: "proxy-agent",
        kind: Kind::Test,
        name: "vm_rules",
        args: &[],
        needs: &[],
    },
    // The real agent binary in --proxy-mode=ipvs, from manifests, in a node namespace
    // with clients and pods around it. One test at a time: each starts agents and
    // counts connections, and the VM has one CPU.
    VmBinary {
        package: "proxy-agent",
        kind: Kind::Test,
        name: "vm_ipvs_agent",
        args: &["--test-threads=1"],
        needs: &["proxy-agent", "proxyctl"],
    },
    // The same for clients outside the node (NodePort, externalIP, LB IP, policies,
    // source ranges, the conntrack-INVALID reset).
    VmBinary {
        package: "proxy-agent",
        kind: Kind::Test,
        name: "vm_ipvs_external",
        args: &["--test-threads=1"],
        needs: &["proxy-agent"],
    },
    // netfilter conntrack under the agent: `proxyctl list` and `conntrack --netfilter`
    // after traffic, and the UDP conntrack reconciler moving a connected UDP client off
    // a removed endpoint.
    VmBinary {
        package: "proxy-agent",
        kind: Kind::Test,
        name: "vm_ipvs_conntrack",
        args: &["--test-threads=1"],
        needs: &["proxy-agent", "proxyctl"],
    },
];

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Names from [`BINARIES`] to run; empty: all of them.
    pub bins: Vec<String>,
    /// For the whole boot; qemu is killed when it passes.
    pub timeout: Duration,
    /// Build with `--release` (benchmarks).
    pub release: bool,
    /// The guest's memory.
    pub memory_mib: u32,
}

/// The whole boot's default limit: a cached run takes 4–9 s, a small `cargo test`
/// binary inside 25–30 s under emulation, the agent tests a few minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);

/// The guest's default memory: enough for the initramfs (the binaries are unpacked
/// into RAM) and the tests' namespaces.
pub const DEFAULT_MEMORY_MIB: u32 = 1024;

/// Everything in [`BINARIES`], as `cargo xtask test` would run it.
impl Default for Options {
    fn default() -> Self {
        Self {
            bins: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            release: false,
            memory_mib: DEFAULT_MEMORY_MIB,
        }
    }
}

/// What a boot left: the console and the markers read from it.
pub struct Outcome {
    /// The whole console (`bench ipvs` reads its figures from it).
    pub log: String,
    pub report: init::Report,
}

/// Builds, boots, runs, reports. Fails if any binary fails or the VM does not finish.
pub fn run(opts: &Options) -> Result<()> {
    let selected = select(&opts.bins)?;
    let outcome = boot(&selected, opts)?;
    let failures = summary(&selected, &outcome.report);
    if !failures.is_empty() {
        bail!(
            "failed in the VM: {}; console log in {}",
            failures.join(", "),
            console_log_path().display()
        );
    }
    Ok(())
}

/// Builds `selected` (and what they need from [`SHIPPED`]), boots, runs them in order
/// and returns the console. Fails if the VM does not reach its end; the binaries'
/// own results are in the report.
pub fn boot(selected: &[&VmBinary], opts: &Options) -> Result<Outcome> {
    let started = Instant::now();
    let shipped = shipped_for(selected)?;
    let binaries = selected
        .iter()
        .chain(&shipped)
        .map(|b| Ok((b.name.to_owned(), build::build(b, opts.release)?)))
        .collect::<Result<Vec<(String, PathBuf)>>>()?;
    let built = Instant::now();

    let cache = target_dir().join("vm");
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
        .map(|(b, args)| init::Run { name: b.name, args })
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
    let console = qemu::boot(&guest.vmlinux, &initrd, opts.timeout, opts.memory_mib)?;
    let booted = Instant::now();
    let log_path = console_log_path();
    fs::write(&log_path, &console.log)
        .with_context(|| format!("writing {}", log_path.display()))?;

    let report = init::parse(&console.log);
    println!(
        "vm-test: build {:.1} s, guest image {:.1} s, boot and run {:.1} s, total {:.1} s",
        (built - started).as_secs_f64(),
        (prepared - built).as_secs_f64(),
        (booted - boot_start).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let how_ended = match console.status {
        None => Some(format!(
            "the VM did not finish within {} s and was killed",
            opts.timeout.as_secs()
        )),
        Some(_) if !report.done => {
            Some("the VM stopped before its last marker (kernel panic?)".to_owned())
        }
        Some(_) => None,
    };
    if let Some(how_ended) = how_ended {
        bail!(
            "{how_ended}; console log in {} (last lines:)\n{}",
            log_path.display(),
            tail(&console.log, 40)
        );
    }
    Ok(Outcome {
        log: console.log,
        report,
    })
}

/// Where the last boot's console is kept.
fn console_log_path() -> PathBuf {
    target_dir().join("vm").join("last-console.log")
}

/// The entries of [`SHIPPED`] that `selected` need, each once.
fn shipped_for(selected: &[&VmBinary]) -> Result<Vec<&'static VmBinary>> {
    let mut out: Vec<&'static VmBinary> = Vec::new();
    for name in selected.iter().flat_map(|b| b.needs) {
        let b = SHIPPED
            .iter()
            .find(|s| s.name == *name)
            .with_context(|| format!("no shipped binary {name:?} (see vm::SHIPPED)"))?;
        if !out.iter().any(|o| o.name == b.name) {
            out.push(b);
        }
    }
    Ok(out)
}

/// Prints one line per binary (and per module that did not load); returns what failed.
pub fn summary(selected: &[&VmBinary], report: &init::Report) -> Vec<String> {
    println!("vm-test: summary");
    let mut failures = Vec::new();
    for b in selected {
        let result = report.results.iter().find(|r| r.0 == b.name).map(|r| r.1);
        let failure = match result {
            Some(Some(0)) => None,
            Some(Some(rc)) => Some(format!("exit code {rc}")),
            Some(None) => Some("began, never ended".to_owned()),
            None => Some("never began".to_owned()),
        };
        match failure {
            None => println!("vm-test:   ok       {}", b.name),
            Some(why) => {
                println!("vm-test:   FAILED   {} ({why})", b.name);
                failures.push(b.name.to_owned());
            }
        }
    }
    for m in &report.modprobe_failed {
        println!("vm-test:   FAILED   modprobe {m}");
        failures.push(format!("modprobe {m}"));
    }
    failures
}

/// The entries of [`BINARIES`] named in `names` (all when empty).
fn select(names: &[String]) -> Result<Vec<&'static VmBinary>> {
    if names.is_empty() {
        return Ok(BINARIES.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            BINARIES.iter().find(|b| b.name == n).with_context(|| {
                let known: Vec<&str> = BINARIES.iter().map(|b| b.name).collect();
                format!("no VM test binary {n:?} (known: {})", known.join(", "))
            })
        })
        .collect()
}

/// Where cargo puts build output, and we the VM cache.
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
