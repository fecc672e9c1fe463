//! `cargo xtask setup`: make a fresh Debian 12 machine (as root) able to build and test
//! the project. Every step checks first and skips when its work is already done, so a
//! second run takes seconds. One line per step says what it did.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, display, run_streamed};

/// Debian packages: LLVM 22 for bpf-linker, the tools the tests and demo use, and what
/// `cargo xtask vm-test` needs on the host.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "iproute2",
    "iptables",
    "conntrack",
    "nftables",
    "ipset",
    "iperf3",
    "tcpdump",
    // `sysctl`, used by the test harness inside namespaces.
    "procps",
    // `vm-test`: the emulator, `depmod` for the guest's module index, and `xz` to take the
    // uncompressed kernel out of the guest's bzImage. `cpio` to inspect the initramfs
    // (xtask writes it itself).
    "qemu-system-x86",
    "kmod",
    "xz-utils",
    "cpio",
];

/// Where Debian's llvm-22 packages put LLVM.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The bpf-linker release line that matches rustc nightly's LLVM 22.
const BPF_LINKER_REQ: &str = "^0.13";
const BPF_LINKER_SERIES: &str = "0.13.";
/// Where the agent expects bpffs.
const BPFFS: &str = "/sys/fs/bpf";

/// Runs every setup step.
pub fn run() -> Result<()> {
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    bpffs()?;
    Ok(())
}

fn step(name: &str, what: &str) {
    println!("setup: {name}: {what}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn require_root(name: &str, todo: &str) -> Result<()> {
    if !is_root() {
        bail!("{name}: need root to {todo}; rerun `cargo xtask setup` as root");
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "--showformat=${Status}", package])
        .output();
    match out {
        Ok(out) => Ok(out.status.success() && out.stdout == b"install ok installed"),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("dpkg-query not found: setup supports Debian (12) only")
        }
        Err(e) => Err(e).context("running dpkg-query"),
    }
}

fn missing_packages() -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for p in APT_PACKAGES {
        if !dpkg_installed(p)? {
            missing.push(*p);
        }
    }
    Ok(missing)
}

fn apt_packages() -> Result<()> {
    const NAME: &str = "apt packages";
    let missing = missing_packages()?;
    if missing.is_empty() {
        step(
            NAME,
            &format!("all {} installed, skipped", APT_PACKAGES.len()),
        );
        return Ok(());
    }
    step(NAME, &format!("installing {}", missing.join(" ")));
    require_root(NAME, "install packages")?;
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        cmd
    };
    run_streamed(&mut apt(&["update"]))?;
    let mut install = apt(&[
        "install",
        "-y",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ]);
    install.args(&missing);
    run_streamed(&mut install)?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!(
            "{NAME}: still missing after apt-get install: {}",
            still.join(" ")
        );
    }
    step(NAME, &format!("installed {}", missing.join(" ")));
    Ok(())
}

fn rust_src() -> Result<()> {
    const NAME: &str = "rust-src (nightly)";
    let mut list = Command::new("rustup");
    list.args(["component", "list", "--toolchain", "nightly", "--installed"]);
    let out = list
        .output()
        .with_context(|| format!("running `{}` (is rustup on PATH?)", display(&list)))?;
    if !out.status.success() {
        bail!(
            "{NAME}: `{}` failed (is the nightly toolchain installed?): {}",
            display(&list),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let installed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "rust-src" || l.trim().starts_with("rust-src-"));
    if installed {
        step(NAME, "installed, skipped");
        return Ok(());
    }
    step(NAME, "installing");
    run_streamed(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))?;
    step(NAME, "installed");
    Ok(())
}

/// `Some(version)` of the `bpf-linker` on `PATH` (or in `$CARGO_HOME/bin`).
fn bpf_linker_version() -> Option<String> {
    let candidates = [
        PathBuf::from("bpf-linker"),
        cargo_home().join("bin/bpf-linker"),
    ];
    candidates.iter().find_map(|bin| {
        let out = Command::new(bin).arg("--version").output().ok()?;
        if !out.status.success() {
            return None;
        }
        // "bpf-linker 0.13.0"
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .map(str::to_owned)
    })
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn bpf_linker() -> Result<()> {
    const NAME: &str = "bpf-linker";
    match bpf_linker_version() {
        Some(v) if v.starts_with(BPF_LINKER_SERIES) => {
            step(NAME, &format!("{v} installed, skipped"));
            return Ok(());
        }
        Some(v) => step(
            NAME,
            &format!("{v} installed, want {BPF_LINKER_REQ}: building against LLVM 22"),
        ),
        None => step(NAME, "not found: building against LLVM 22 (1-3 minutes)"),
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(Path::new(LLVM_PREFIX).join("bin")).chain(std::env::split_paths(&path)),
    )
    .context("building PATH")?;
    let mut install = cargo();
    install
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("PATH", path)
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_REQ,
            "--no-default-features",
            "--features",
            "llvm-22",
        ]);
    run_streamed(&mut install)?;
    match bpf_linker_version() {
        Some(v) if v.starts_with(BPF_LINKER_SERIES) => {
            step(NAME, &format!("{v} installed"));
            Ok(())
        }
        other => bail!("{NAME}: after cargo install, --version reports {other:?}"),
    }
}

fn bpffs_mounted() -> Result<bool> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    Ok(info.lines().any(|line| {
        let Some((left, right)) = line.split_once(" - ") else {
            return false;
        };
        left.split_whitespace().nth(4) == Some(BPFFS)
            && right.split_whitespace().next() == Some("bpf")
    }))
}

fn bpffs() -> Result<()> {
    const NAME: &str = "bpffs";
    if bpffs_mounted()? {
        step(NAME, &format!("mounted at {BPFFS}, skipped"));
        return Ok(());
    }
    require_root(NAME, &format!("mount bpffs at {BPFFS}"))?;
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    run_streamed(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    step(NAME, &format!("mounted at {BPFFS}"));
    Ok(())
}
