//! `capwrap`: runs a program with exactly the given capabilities, as a container
//! runtime does for `securityContext.capabilities: {drop: [ALL], add: [...]}`.
//!
//! ```text
//! capwrap --caps CAP_BPF,CAP_NET_ADMIN,CAP_PERFMON -- PROGRAM [ARGS]...
//! capwrap --caps none -- PROGRAM [ARGS]...
//! ```
//!
//! Run as root. The process stays uid 0 (as a container's root does) but keeps only the
//! listed capabilities in every set: bounding, permitted, effective, inheritable and
//! ambient. `SECBIT_NOROOT` (locked) stops the kernel from handing uid 0 the full
//! set again at `exec`; the ambient set is what carries the list across `exec` of a
//! program without file capabilities, and on to its own children (`mount`, the iptables
//! tools). `no_new_privs` is set too, as `allowPrivilegeEscalation: false` does: the
//! program cannot gain anything back through a setuid or file-capability binary.
//! Names are `CAP_X` or `x`, case-insensitive.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets in two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// `SECBIT_NOROOT | SECBIT_NOROOT_LOCKED` from `linux/securebits.h`.
const SECBITS_NOROOT_LOCKED: libc::c_ulong = 0b11;

/// The capabilities by number (`linux/capability.h`), up to CAP_CHECKPOINT_RESTORE.
const NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`, one per 32-bit half.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The capability number of `name` (`CAP_BPF`, `bpf`).
fn number(name: &str) -> anyhow::Result<u32> {
    let lower = name.trim().to_ascii_lowercase();
    let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
    NAMES
        .iter()
        .position(|n| *n == bare)
        .and_then(|i| u32::try_from(i).ok())
        .with_context(|| format!("unknown capability {name:?}"))
}

/// The set `--caps` names, as a bit mask.
fn parse_caps(list: &str) -> anyhow::Result<u64> {
    if list.trim().eq_ignore_ascii_case("none") || list.trim().is_empty() {
        return Ok(0);
    }
    list.split(',')
        .try_fold(0u64, |mask, name| Ok(mask | 1 << number(name)?))
}

/// The highest capability this kernel knows.
fn last_cap() -> anyhow::Result<u32> {
    let text = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .context("reading /proc/sys/kernel/cap_last_cap")?;
    text.trim()
        .parse()
        .with_context(|| format!("cap_last_cap is {text:?}"))
}

fn prctl(what: &str, op: libc::c_int, a: libc::c_ulong, b: libc::c_ulong) -> anyhow::Result<()> {
    // SAFETY: these prctl operations take integer arguments only.
    let rc = unsafe { libc::prctl(op, a, b, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if rc != 0 {
        bail!("prctl({what}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Leaves exactly `mask` in every capability set of this process.
fn restrict_to(mask: u64) -> anyhow::Result<()> {
    let last = last_cap()?;
    if let Some(unknown) = (last + 1..64).find(|c| mask & (1 << c) != 0) {
        bail!("this kernel has no capability {unknown} (cap_last_cap is {last})");
    }
    // First, while CAP_SETPCAP is still effective.
    prctl(
        "PR_SET_SECUREBITS",
        libc::PR_SET_SECUREBITS,
        SECBITS_NOROOT_LOCKED,
        0,
    )?;
    for cap in (0..=last).filter(|c| mask & (1 << c) == 0) {
        prctl(
            "PR_CAPBSET_DROP",
            libc::PR_CAPBSET_DROP,
            libc::c_ulong::from(cap),
            0,
        )?;
    }
    let half = |shift: u32| -> u32 {
        // Truncation picks the half: the mask is split in two 32-bit words.
        (mask >> shift) as u32
    };
    let data = [0, 32].map(|shift| CapData {
        effective: half(shift),
        permitted: half(shift),
        inheritable: half(shift),
    });
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: the header and the two data words are valid for the call, as version 3
    // requires.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        bail!("capset: {}", std::io::Error::last_os_error());
    }
    for cap in (0..=last).filter(|c| mask & (1 << c) != 0) {
        prctl(
            "PR_CAP_AMBIENT_RAISE",
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
            libc::c_ulong::from(cap),
        )?;
    }
    // Last: as a runtime does for allowPrivilegeEscalation: false.
    prctl("PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS, 1, 0)?;
    Ok(())
}

#[derive(clap::Parser)]
#[command(about = "Run a program with exactly the given capabilities (as root)")]
struct Args {
    /// Comma-separated capabilities (`CAP_BPF,CAP_NET_ADMIN`), or `none`.
    #[arg(long)]
    caps: String,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    use clap::Parser as _;
    let args = Args::parse();
    let result = (|| -> anyhow::Result<std::io::Error> {
        let mask = parse_caps(&args.caps)?;
        restrict_to(mask)?;
        let (program, rest) = args.command.split_first().context("no program to run")?;
        // exec returns only on failure.
        Ok(Command::new(program).args(rest).exec())
    })();
    match result {
        Ok(exec_error) => eprintln!("capwrap: exec {:?}: {exec_error}", args.command),
        Err(e) => eprintln!("capwrap: {e:#}"),
    }
    ExitCode::from(127)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn names_are_read_with_or_without_the_prefix_in_any_case() {
        assert_eq!(number("CAP_BPF").unwrap(), 39);
        assert_eq!(number("net_admin").unwrap(), 12);
        assert_eq!(number("Cap_PerfMon").unwrap(), 38);
        assert!(number("CAP_FLY").is_err());
    }

    #[test]
    fn a_list_is_a_mask_and_none_is_empty() {
        assert_eq!(
            parse_caps("CAP_BPF,CAP_NET_ADMIN").unwrap(),
            1 << 39 | 1 << 12
        );
        assert_eq!(parse_caps("none").unwrap(), 0);
        assert!(parse_caps("CAP_BPF,bogus").is_err());
    }
}
