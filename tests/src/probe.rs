//! Finding, starting and reading the `probe` traffic tool.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{Cgroup, ChildGuard, Netns, spawn_guarded};

/// Path of the `probe` binary.
///
/// Looks at `$KPT_PROBE_BIN`, then `$CARGO_BIN_EXE_probe`, then next to the running
/// executable and in its parent directory: an integration test runs from
/// `target/<profile>/deps/`, xtask from `target/<profile>/`, and the binary is
/// `target/<profile>/probe`.
///
/// # Panics
/// If it is not found, saying how to build it.
pub fn probe_bin() -> PathBuf {
    own_bin("probe")
}

/// Path of the `capwrap` binary (`src/bin/capwrap.rs`), found as [`probe_bin`] is.
///
/// # Panics
/// If it is not found, saying how to build it.
pub fn capwrap_bin() -> PathBuf {
    own_bin("capwrap")
}

/// Path of the binary `name` of this package (`probe`, `flood`): `$KPT_<NAME>_BIN`,
/// `$CARGO_BIN_EXE_<name>`, then next to the running executable and in its parent
/// directory (see [`probe_bin`]).
///
/// # Panics
/// If it is not found, saying how to build it.
pub(crate) fn own_bin(name: &str) -> PathBuf {
    for var in [
        format!("KPT_{}_BIN", name.to_ascii_uppercase()),
        format!("CARGO_BIN_EXE_{name}"),
    ] {
        if let Some(p) = std::env::var_os(&var).map(PathBuf::from)
            && p.is_file()
        {
            return p;
        }
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} binary not found (looked at {candidates:?}); build it with \
                 `cargo build -p tests --bin {name}` (cargo test builds it for the \
                 integration tests of the `tests` package) or set KPT_{}_BIN",
                name.to_ascii_uppercase()
            )
        })
}

/// Starts `probe serve --name <name>` in `netns` with the given TCP and UDP listen
/// addresses, and waits until it prints `ready`.
///
/// # Panics
/// If it does not become ready within 10 s (with its stderr).
pub fn start_probe_server(
    netns: &Netns,
    name: &str,
    tcp: &[SocketAddr],
    udp: &[SocketAddr],
) -> ChildGuard {
    start_probe_server_in(netns, None, name, tcp, udp)
}

/// [`start_probe_server`] inside `cgroup` too.
pub(crate) fn start_probe_server_in(
    netns: &Netns,
    cgroup: Option<&Cgroup>,
    name: &str,
    tcp: &[SocketAddr],
    udp: &[SocketAddr],
) -> ChildGuard {
    let mut cmd = Command::new(probe_bin());
    cmd.args(["serve", "--name", name]);
    for a in tcp {
        cmd.arg("--tcp").arg(a.to_string());
    }
    for a in udp {
        cmd.arg("--udp").arg(a.to_string());
    }
    let mut child = spawn_guarded(netns, cgroup, &mut cmd);
    let line = child.expect_line(Duration::from_secs(10));
    assert_eq!(
        line,
        "ready",
        "probe serve {name}: unexpected first line; stderr: {}",
        child.stderr()
    );
    child
}

/// One result line of `probe tcp`, `probe udp` or the first line of `probe hold`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeReply {
    /// `ok <name> <addr> [<peer>]`: the server `name` answered; `addr` is the socket's
    /// peer (TCP: `getpeername()`, UDP: the source `recvfrom()` reported); `peer` is the
    /// client address as the server saw it, when `--peer` was given.
    Ok {
        /// The server's `--name`.
        name: String,
        /// Peer address seen by the client.
        addr: SocketAddr,
        /// Client address seen by the server (with `--peer`).
        peer: Option<SocketAddr>,
    },
    /// `err <reason> <ms> ...`: `reason` is an errno name (`ECONNREFUSED`, `EPERM`,
    /// `ETIMEDOUT` for a connect timeout, ...) or `timeout` / `EOF` / `mismatch`.
    Err {
        /// Errno name or `timeout`/`EOF`/`mismatch`.
        reason: String,
        /// Milliseconds until the failure.
        ms: u64,
    },
}

impl ProbeReply {
    /// Parses one line; `None` if it is neither an `ok` nor an `err` line.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        match words.next()? {
            "ok" => Some(Self::Ok {
                name: words.next()?.to_owned(),
                addr: words.next()?.parse().ok()?,
                peer: match words.next() {
                    Some(p) => Some(p.parse().ok()?),
                    None => None,
                },
            }),
            "err" => Some(Self::Err {
                reason: words.next()?.to_owned(),
                ms: words.next()?.parse().ok()?,
            }),
            _ => None,
        }
    }

    /// Parses every `ok`/`err` line of a probe's stdout.
    ///
    /// # Panics
    /// On a line that is neither.
    pub fn parse_all(stdout: &str) -> Vec<Self> {
        stdout
            .lines()
            .map(|l| Self::parse(l).unwrap_or_else(|| panic!("not a probe reply: {l:?}")))
            .collect()
    }

    /// The server name of an `ok` reply.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Ok { name, .. } => Some(name),
            Self::Err { .. } => None,
        }
    }

    /// The reason of an `err` reply.
    pub fn error(&self) -> Option<&str> {
        match self {
            Self::Ok { .. } => None,
            Self::Err { reason, .. } => Some(reason),
        }
    }
}

/// A line of `probe tcp --timestamps` or `probe hold --timestamps`: when the connection
/// (or round) began and ended, in microseconds since the Unix epoch (the clock of
/// [`unix_us`] and of the agent's log lines), and the line itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamped {
    /// When it began (unix µs).
    pub start_us: u64,
    /// When it ended (unix µs).
    pub end_us: u64,
    /// The rest of the line: `ok ...`, `err ...` or `round <k> ok`.
    pub text: String,
}

impl Stamped {
    /// Parses `<start_us> <end_us> <text>`; `None` for any other shape.
    pub fn parse(line: &str) -> Option<Self> {
        let mut parts = line.splitn(3, ' ');
        let start_us = parts.next()?.parse().ok()?;
        let end_us = parts.next()?.parse().ok()?;
        let text = parts.next()?.to_owned();
        (start_us <= end_us).then_some(Self {
            start_us,
            end_us,
            text,
        })
    }

    /// Parses every line of a `--timestamps` probe's output.
    ///
    /// # Panics
    /// On a line without timestamps.
    pub fn parse_all<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Self> {
        lines
            .into_iter()
            .map(|l| Self::parse(l).unwrap_or_else(|| panic!("not a timestamped line: {l:?}")))
            .collect()
    }

    /// The `ok`/`err` reply of the line, if it is one.
    pub fn reply(&self) -> Option<ProbeReply> {
        ProbeReply::parse(&self.text)
    }

    /// Whether it is a failure (`err ...`).
    pub fn is_err(&self) -> bool {
        self.text.starts_with("err ")
    }

    /// Whether it lay entirely inside `[from_us, to_us]`.
    pub fn within(&self, from_us: u64, to_us: u64) -> bool {
        from_us <= self.start_us && self.end_us <= to_us
    }
}

/// Microseconds since the Unix epoch now (CLOCK_REALTIME): the clock of
/// [`Stamped`] lines and of the agent's log.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_and_err_lines_parse() {
        assert_eq!(
            ProbeReply::parse("ok backend-0 10.244.0.11:80"),
            Some(ProbeReply::Ok {
                name: "backend-0".into(),
                addr: "10.244.0.11:80".parse().expect("addr"),
                peer: None,
            })
        );
        assert_eq!(
            ProbeReply::parse("ok b [fd00:244::11]:80 [fd00:244::2]:4000"),
            Some(ProbeReply::Ok {
                name: "b".into(),
                addr: "[fd00:244::11]:80".parse().expect("addr"),
                peer: Some("[fd00:244::2]:4000".parse().expect("addr")),
            })
        );
        assert_eq!(
            ProbeReply::parse("err ECONNREFUSED 3"),
            Some(ProbeReply::Err {
                reason: "ECONNREFUSED".into(),
                ms: 3
            })
        );
        assert_eq!(ProbeReply::parse("round 1 ok"), None);
    }

    #[test]
    fn stamped_lines_parse() {
        let s = Stamped::parse("100 250 ok backend-0 10.96.0.10:80").expect("stamped");
        assert_eq!((s.start_us, s.end_us), (100, 250));
        assert_eq!(
            s.reply()
                .and_then(|r| r.name().map(str::to_owned))
                .as_deref(),
            Some("backend-0")
        );
        assert!(s.within(100, 250) && !s.within(101, 250) && !s.within(100, 249));
        let r = Stamped::parse("1 2 round 7 ok").expect("stamped");
        assert_eq!(r.reply(), None);
        assert!(!r.is_err());
        assert!(
            Stamped::parse("1 2 err ECONNRESET 3 round 4")
                .expect("stamped")
                .is_err()
        );
        assert_eq!(Stamped::parse("ok backend-0 10.96.0.10:80"), None);
        assert_eq!(
            Stamped::parse("250 100 ok b 10.0.0.1:80"),
            None,
            "ends before it starts"
        );
    }
}
