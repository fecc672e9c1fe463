//! The guest's `/init` (a busybox shell script) and the markers it prints on the serial
//! console, which are the only way results leave the VM (it has no network card).
//!
//! Each test binary is framed by `@@kpt-vm begin NAME` and `@@kpt-vm end NAME rc=N`, the
//! run ends with `@@kpt-vm done`, then the guest powers off. A missing marker means the
//! kernel panicked or hung.

use super::initramfs::MODULES;

const MARKER: &str = "@@kpt-vm";

/// A binary to run in the guest: `/tests/NAME ARGS...`.
pub struct Run<'a> {
    pub name: &'a str,
    pub args: &'a [String],
}

/// The `/init` script that runs `tests` in order.
pub fn script(tests: &[Run]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         # The firmware's last line has no newline: start the markers on a line of their own.\n\
         echo\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n\
         # The host's glibc finds its libraries here (there is no ld.so.cache).\n\
         export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t tmpfs tmpfs /tmp\n\
         mount -t tmpfs tmpfs /run\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         mkdir -p /run/netns\n",
    );
    s += &format!("for m in {}; do\n", MODULES.join(" "));
    s += &format!("  modprobe \"$m\" || echo \"{MARKER} modprobe-failed $m\"\ndone\n");
    s += "ip link set lo up\ncd /tmp\n";
    for t in tests {
        let name = quote(t.name);
        let mut cmd = format!("/tests/{name}");
        for a in t.args {
            cmd.push(' ');
            cmd += &quote(a);
        }
        s += &format!("echo \"{MARKER} begin \"{name}\n{cmd}\n");
        s += &format!("echo \"{MARKER} end \"{name}\" rc=$?\"\n");
    }
    s += &format!("echo \"{MARKER} done\"\npoweroff -f\n");
    s
}

/// `arg` as one shell word.
fn quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', "'\\''"))
}

/// What the console says about a run.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    /// `(name, exit code)` for each binary that began; `None` if it never ended.
    pub results: Vec<(String, Option<i32>)>,
    pub modprobe_failed: Vec<String>,
    /// The script reached its end.
    pub done: bool,
}

/// Reads the markers out of the console log. A marker may follow other output on the
/// same line (the kernel's messages share the console), so it is searched for.
pub fn parse(log: &str) -> Report {
    let mut report = Report::default();
    for line in log.lines() {
        let Some(at) = line.find(MARKER) else {
            continue;
        };
        let mut words = line[at + MARKER.len()..].split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("begin"), Some(name), _) => report.results.push((name.to_owned(), None)),
            (Some("end"), Some(name), Some(rc)) => {
                let code = rc.strip_prefix("rc=").and_then(|c| c.parse().ok());
                if let Some(r) = report.results.iter_mut().rev().find(|r| r.0 == name) {
                    // An unparsable code counts as a failure, never as success.
                    r.1 = Some(code.unwrap_or(-1));
                }
            }
            (Some("modprobe-failed"), Some(name), _) => {
                report.modprobe_failed.push(name.to_owned());
            }
            (Some("done"), None, _) => report.done = true,
            _ => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_after_other_console_output() {
        let log = "[ 1.2] random: crng init done\r\n\
                   @@kpt-vm modprobe-failed xt_ipvs\r\n\
                   @@kpt-vm begin vm-smoke\r\n\
                   vm-smoke: ok\r\n\
                   [ 2.0] some message @@kpt-vm end vm-smoke rc=0\r\n\
                   @@kpt-vm begin other\r\n\
                   @@kpt-vm done\r\n";
        assert_eq!(
            parse(log),
            Report {
                results: vec![("vm-smoke".into(), Some(0)), ("other".into(), None)],
                modprobe_failed: vec!["xt_ipvs".into()],
                done: true,
            }
        );
    }

    #[test]
    fn a_log_without_markers_reports_nothing_done() {
        assert_eq!(parse("Kernel panic - not syncing\n"), Report::default());
    }

    #[test]
    fn arguments_are_quoted_for_the_shell() {
        let args = vec!["it's".to_owned(), "--x=a b".to_owned()];
        let s = script(&[Run {
            name: "t",
            args: &args,
        }]);
        assert!(s.contains("/tests/'t' 'it'\\''s' '--x=a b'\n"), "{s}");
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.ends_with("poweroff -f\n"));
    }
}
