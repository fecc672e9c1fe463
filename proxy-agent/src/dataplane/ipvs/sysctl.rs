//! The sysctls kube-proxy's IPVS mode sets, in the calling thread's network namespace
//! (`/proc/sys/net` follows the namespace of whoever opens it). The `vs/*` ones exist
//! once `ip_vs` is loaded, so [`apply`] runs after IPVS answered.
//!
//! As kube-proxy's `EnsureSysctl`, a value already right is not written: a read-only
//! `/proc/sys` (a container) that already holds it is no error.

use std::io;
use std::path::Path;

use crate::dataplane::DataplaneError;

/// `(path under /proc/sys/net/ipv4/vs, value)` always written, and why each.
pub const SETTINGS: [(&str, &str); 3] = [
    // Keep netfilter conntrack entries for IPVS connections, which the masquerading
    // and filtering rules match on.
    ("conntrack", "1"),
    // A packet of a connection whose destination was deleted is dropped (and the
    // connection expired) instead of going nowhere: a deleted UDP backend's flows move.
    ("expire_nodest_conn", "1"),
    // A persistence template of a drained (weight 0) destination expires, so an
    // affine client is rescheduled rather than stuck to it.
    ("expire_quiescent_template", "1"),
];

/// What the flags add to [`SETTINGS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `--ipvs-strict-arp`: `conf/all/arp_ignore=1`, `conf/all/arp_announce=2`, so
    /// that the node neither answers ARP for the VIPs on the dummy interface nor uses
    /// them as ARP sources (what MetalLB and kube-vip in L2 mode require).
    pub strict_arp: bool,
    /// `--conntrack-tcp-be-liberal`: `nf_conntrack_tcp_be_liberal=1`, so that
    /// out-of-window TCP segments are not marked INVALID (and not left un-NATed),
    /// which is what makes the INVALID drop rule unnecessary.
    pub tcp_be_liberal: bool,
    /// `--conntrack-tcp-timeout-close-wait`: `nf_conntrack_tcp_timeout_close_wait`, in
    /// seconds (kube-proxy's default 1 h, against the kernel's 60 s, so that a
    /// half-closed connection through a VIP is not forgotten while the backend still
    /// answers); `None` leaves the kernel's.
    pub tcp_close_wait_s: Option<u64>,
}

/// What `conn_reuse_mode` needs on a kernel (kube-proxy's rule, by version).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnReuse {
    /// Before 4.1 the sysctl does not exist.
    Absent,
    /// 4.1 to 5.8: with the default 1, a SYN reusing the port of a connection in
    /// TIME_WAIT is dropped until that connection expires (a 1 s stall per reused
    /// port, kubernetes issue 81775); 0 reuses the old connection's destination.
    SetZero,
    /// 5.9 and later fixed that (kernel commit 35dfb013149f): the default 1, which
    /// reschedules a reused port and so leaves drained destinations, is kept.
    Keep,
}

impl ConnReuse {
    /// The rule for a kernel release (`6.1.0-18-amd64`); `None` if it is not one.
    pub fn for_release(release: &str) -> Option<ConnReuse> {
        let mut parts = release.trim().split(['.', '-']);
        let major: u32 = parts.next()?.parse().ok()?;
        let minor: u32 = parts.next()?.parse().ok()?;
        Some(match (major, minor) {
            v if v < (4, 1) => ConnReuse::Absent,
            v if v < (5, 9) => ConnReuse::SetZero,
            _ => ConnReuse::Keep,
        })
    }
}

/// Sets the sysctls under `/proc/sys`.
pub fn apply(settings: &Settings) -> Result<(), DataplaneError> {
    apply_under(Path::new("/proc/sys"), settings).map(drop)
}

/// [`apply`] under `root` (a `/proc/sys`); returns the paths written, relative to it.
pub fn apply_under(root: &Path, settings: &Settings) -> Result<Vec<String>, DataplaneError> {
    let mut wanted: Vec<(String, &str)> = SETTINGS
        .iter()
        .map(|(name, value)| (format!("net/ipv4/vs/{name}"), *value))
        .collect();
    let release = read(&root.join("kernel/osrelease"))?;
    match ConnReuse::for_release(&release) {
        Some(ConnReuse::SetZero) => wanted.push(("net/ipv4/vs/conn_reuse_mode".into(), "0")),
        Some(ConnReuse::Keep) => {}
        Some(ConnReuse::Absent) | None => tracing::warn!(
            release = release.trim(),
            "not setting net.ipv4.vs.conn_reuse_mode: it needs kernel 4.1 or later"
        ),
    }
    // The VIPs' packets are forwarded to pods on other nodes.
    wanted.push(("net/ipv4/ip_forward".into(), "1"));
    if settings.strict_arp {
        wanted.push(("net/ipv4/conf/all/arp_ignore".into(), "1"));
        wanted.push(("net/ipv4/conf/all/arp_announce".into(), "2"));
    }
    if settings.tcp_be_liberal {
        wanted.push(("net/netfilter/nf_conntrack_tcp_be_liberal".into(), "1"));
    }
    let close_wait = settings.tcp_close_wait_s.map(|s| s.to_string());
    if let Some(secs) = &close_wait {
        wanted.push((
            "net/netfilter/nf_conntrack_tcp_timeout_close_wait".into(),
            secs.as_str(),
        ));
    }
    let mut written = Vec::new();
    for (name, value) in wanted {
        let path = root.join(&name);
        if read(&path)?.trim() == value {
            continue;
        }
        std::fs::write(&path, value).map_err(|e| failed("writing", &path, e))?;
        written.push(name);
    }
    check_bridge(root);
    Ok(written)
}

/// kube-proxy only checks this one: pods on one bridge reach each other's services
/// through the bridge, which netfilter sees only with `bridge-nf-call-iptables=1`.
/// An absent sysctl (no `br_netfilter`: no bridged pods, or a routed CNI) is fine.
fn check_bridge(root: &Path) {
    let path = root.join("net/bridge/bridge-nf-call-iptables");
    if let Ok(value) = std::fs::read_to_string(&path)
        && value.trim() != "1"
    {
        tracing::warn!(
            "net.bridge.bridge-nf-call-iptables is {}: traffic between pods on one bridge \
             skips the IPVS mode's netfilter rules; set it to 1",
            value.trim()
        );
    }
}

fn read(path: &Path) -> Result<String, DataplaneError> {
    std::fs::read_to_string(path).map_err(|e| failed("reading", path, e))
}

fn failed(op: &'static str, path: &Path, source: io::Error) -> DataplaneError {
    DataplaneError::Kernel {
        op,
        object: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A fake `/proc/sys` with every file the settings touch, holding the kernel's
    /// defaults; removed on drop.
    struct FakeProcSys(PathBuf);

    impl FakeProcSys {
        fn new(tag: &str, release: &str) -> FakeProcSys {
            let root = std::env::temp_dir()
                .join(format!("proxy-agent-sysctl-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let files = [
                ("kernel/osrelease", release),
                ("net/ipv4/vs/conntrack", "0"),
                ("net/ipv4/vs/expire_nodest_conn", "0"),
                ("net/ipv4/vs/expire_quiescent_template", "0"),
                ("net/ipv4/vs/conn_reuse_mode", "1"),
                ("net/ipv4/ip_forward", "0"),
                ("net/ipv4/conf/all/arp_ignore", "0"),
                ("net/ipv4/conf/all/arp_announce", "0"),
                ("net/netfilter/nf_conntrack_tcp_be_liberal", "0"),
                ("net/netfilter/nf_conntrack_tcp_timeout_close_wait", "60"),
            ];
            for (name, value) in files {
                let path = root.join(name);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).expect("creating the fake /proc/sys");
                }
                std::fs::write(&path, format!("{value}\n")).expect("writing a fake sysctl");
            }
            FakeProcSys(root)
        }

        fn get(&self, name: &str) -> String {
            std::fs::read_to_string(self.0.join(name))
                .expect("a fake sysctl")
                .trim()
                .to_owned()
        }
    }

    impl Drop for FakeProcSys {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn conn_reuse_mode_follows_kube_proxys_kernel_version_rule() {
        for (release, want) in [
            ("3.10.0-1160.el7.x86_64", Some(ConnReuse::Absent)),
            ("4.1.0", Some(ConnReuse::SetZero)),
            ("5.4.0-150-generic", Some(ConnReuse::SetZero)),
            ("5.8.18", Some(ConnReuse::SetZero)),
            ("5.9.0", Some(ConnReuse::Keep)),
            ("6.1.0-18-amd64\n", Some(ConnReuse::Keep)),
            ("6.18.0", Some(ConnReuse::Keep)),
            ("linux", None),
        ] {
            assert_eq!(ConnReuse::for_release(release), want, "{release:?}");
        }
    }

    #[test]
    fn defaults_write_the_ipvs_settings_and_forwarding_and_leave_arp_alone() {
        let sys = FakeProcSys::new("defaults", "6.1.0-18-amd64");
        let written = apply_under(&sys.0, &Settings::default()).expect("applying");
        assert_eq!(
            written,
            [
                "net/ipv4/vs/conntrack",
                "net/ipv4/vs/expire_nodest_conn",
                "net/ipv4/vs/expire_quiescent_template",
                "net/ipv4/ip_forward",
            ]
        );
        assert_eq!(sys.get("net/ipv4/vs/conntrack"), "1");
        assert_eq!(sys.get("net/ipv4/ip_forward"), "1");
        // 5.9+: the kernel's default stays.
        assert_eq!(sys.get("net/ipv4/vs/conn_reuse_mode"), "1");
        assert_eq!(sys.get("net/ipv4/conf/all/arp_ignore"), "0");
        assert_eq!(sys.get("net/netfilter/nf_conntrack_tcp_be_liberal"), "0");
        assert_eq!(
            sys.get("net/netfilter/nf_conntrack_tcp_timeout_close_wait"),
            "60"
        );
        // Applied again: everything already right, nothing written.
        let again = apply_under(&sys.0, &Settings::default()).expect("applying again");
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn strict_arp_liberal_tcp_and_an_old_kernel_add_their_settings() {
        let sys = FakeProcSys::new("flags", "5.4.0-150-generic");
        let settings = Settings {
            strict_arp: true,
            tcp_be_liberal: true,
            tcp_close_wait_s: Some(3600),
        };
        let written = apply_under(&sys.0, &settings).expect("applying");
        assert!(written.contains(&"net/ipv4/vs/conn_reuse_mode".to_owned()));
        assert_eq!(sys.get("net/ipv4/vs/conn_reuse_mode"), "0");
        assert_eq!(sys.get("net/ipv4/conf/all/arp_ignore"), "1");
        assert_eq!(sys.get("net/ipv4/conf/all/arp_announce"), "2");
        assert_eq!(sys.get("net/netfilter/nf_conntrack_tcp_be_liberal"), "1");
        assert_eq!(
            sys.get("net/netfilter/nf_conntrack_tcp_timeout_close_wait"),
            "3600"
        );
    }

    #[test]
    fn a_missing_sysctl_is_an_error_naming_its_path() {
        let sys = FakeProcSys::new("missing", "6.1.0");
        std::fs::remove_file(sys.0.join("net/ipv4/vs/conntrack")).expect("removing");
        let e = apply_under(&sys.0, &Settings::default()).expect_err("no vs/conntrack");
        assert!(e.to_string().contains("net/ipv4/vs/conntrack"), "{e}");
        assert_eq!(e.errno(), Some(libc::ENOENT));
    }
}
