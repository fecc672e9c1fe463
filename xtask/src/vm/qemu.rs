//! Boots the guest in qemu and collects its serial console.
//!
//! Software emulation only (`-accel tcg`): KVM hangs or aborts on the machines this runs
//! on. `-nic none` gives the VM no network card, so nothing a test sends can leave it.
//! qemu is killed on timeout, on error and if this process unwinds: it never outlives
//! the run.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The kernel command line: console on the serial port, quiet, reboot (= qemu exits,
/// with `-no-reboot`) at once on panic; `mitigations=off` and `nokaslr` save boot time.
const APPEND: &str = "console=ttyS0 panic=-1 quiet loglevel=3 mitigations=off nokaslr";

/// How a boot ended.
pub struct Console {
    /// Everything qemu and the guest printed.
    pub log: String,
    /// `None` when the timeout killed qemu.
    pub status: Option<ExitStatus>,
}

/// Boots `vmlinux` with `initrd` (concatenated cpio archives) and `memory_mib` of
/// memory, echoing the console to stdout line by line, until qemu exits or `timeout`
/// passes.
pub fn boot(vmlinux: &Path, initrd: &Path, timeout: Duration, memory_mib: u32) -> Result<Console> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        "1",
        "-m",
        &memory_mib.to_string(),
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-kernel",
    ])
    .arg(vmlinux)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", APPEND])
    // Not a terminal: qemu would otherwise put ours in raw mode.
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut qemu = Qemu(cmd.spawn().context(
        "starting qemu-system-x86_64 (apt-get install qemu-system-x86, or `cargo xtask setup`)",
    )?);

    let (tx, rx) = mpsc::channel();
    let readers = [
        qemu.0.stdout.take().map(|s| reader(s, tx.clone())),
        qemu.0.stderr.take().map(|s| reader(s, tx)),
    ];
    let deadline = Instant::now() + timeout;
    let mut log = String::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                println!("vm| {}", printable(line.trim_end()));
                log += &line;
            }
            // Both pipes closed: qemu has exited (or closed them on its way out).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    let status = if timed_out {
        qemu.kill();
        None
    } else {
        Some(qemu.0.wait().context("waiting for qemu")?)
    };
    for r in readers.into_iter().flatten() {
        let _ = r.join();
    }
    Ok(Console { log, status })
}

/// `line` without terminal escape sequences (the firmware clears the screen).
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // ESC [ parameters final-byte, or ESC and one character.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// Sends `pipe`'s output line by line (lossily decoded, `\r` kept) until it closes.
fn reader(pipe: impl Read + Send + 'static, tx: mpsc::Sender<String>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut pipe = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match pipe.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// The qemu process, killed when dropped unless it has exited.
struct Qemu(Child);

impl Qemu {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_not_echoed() {
        let line = "\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2)";
        assert_eq!(printable(line), "SeaBIOS (version 1.16.2)");
        assert_eq!(printable("plain"), "plain");
    }
}
