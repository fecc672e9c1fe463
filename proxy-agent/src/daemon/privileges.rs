//! The capabilities each `--proxy-mode` needs, checked at startup before anything is
//! changed, so that a DaemonSet granting too few fails with the one missing and what it
//! is for, rather than with an `EPERM` from deep inside the loader (or, for
//! CAP_PERFMON, a verifier complaint about pointer arithmetic).
//!
//! The eBPF set was found by experiment (`tests/tests/privilege.rs` runs the agent with
//! exactly it, and with each one fewer): without CAP_BPF the first map cannot be
//! created, without CAP_NET_ADMIN the tc programs cannot be loaded, without CAP_PERFMON
//! the verifier rejects the tc programs ("pointer arithmetic ... prohibited for
//! !root": the Spectre hardening it applies to callers without CAP_PERFMON).
//! CAP_SYS_RESOURCE (memlock: kernels >= 5.11 charge BPF memory to the cgroup) and
//! CAP_NET_RAW are not needed.
//!
//! CAP_SYS_ADMIN is optional ([`EBPF_OPTIONAL`]): the data plane works without it, but
//! only with it can the agent enter pod network namespaces (`setns`) to destroy the
//! connected UDP sockets balanced to a backend that left its service
//! (`dataplane::ebpf::udp_sockets`). Without it the data plane warns once at start,
//! naming it, exports `proxy_agent_udp_socket_pod_namespaces 0`, and follows only the
//! sockets of its own namespace (sock_diag there needs just CAP_NET_ADMIN).
//! `deploy/daemonset.yaml` leaves it out (it grants far more than `setns`) and says
//! how to add it.

use std::io;

use super::ProxyMode;

/// A capability, by its number in `linux/capability.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    /// `CAP_NET_ADMIN`, ...
    pub name: &'static str,
    /// Its bit in the capability sets.
    pub bit: u32,
}

/// `CAP_NET_ADMIN`.
pub const CAP_NET_ADMIN: Cap = Cap {
    name: "CAP_NET_ADMIN",
    bit: 12,
};
/// `CAP_SYS_ADMIN`: the kernel accepts it wherever CAP_BPF or CAP_PERFMON is asked
/// for (and before 5.8, which has neither, it is the only way).
pub const CAP_SYS_ADMIN: Cap = Cap {
    name: "CAP_SYS_ADMIN",
    bit: 21,
};
/// `CAP_PERFMON` (Linux 5.8).
pub const CAP_PERFMON: Cap = Cap {
    name: "CAP_PERFMON",
    bit: 38,
};
/// `CAP_BPF` (Linux 5.8).
pub const CAP_BPF: Cap = Cap {
    name: "CAP_BPF",
    bit: 39,
};

/// One capability a mode needs, and what for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The capability.
    pub cap: Cap,
    /// Another that the kernel accepts instead, if any.
    pub or: Option<Cap>,
    /// What the agent does with it, for the error.
    pub needed_for: &'static str,
}

impl Requirement {
    fn met_by(&self, effective: u64) -> bool {
        std::iter::once(self.cap)
            .chain(self.or)
            .any(|c| effective & (1 << c.bit) != 0)
    }
}

/// What the eBPF data plane needs.
pub const EBPF: [Requirement; 3] = [
    Requirement {
        cap: CAP_BPF,
        or: Some(CAP_SYS_ADMIN),
        needed_for: "creating the BPF maps and loading and pinning the programs",
    },
    Requirement {
        cap: CAP_NET_ADMIN,
        or: None,
        needed_for: "loading and attaching the tc and cgroup socket programs, and \
                     removing the IPVS mode's leftovers",
    },
    Requirement {
        cap: CAP_PERFMON,
        or: Some(CAP_SYS_ADMIN),
        needed_for: "the verifier's accepting the tc programs (their pointer arithmetic \
                     is refused to callers without it, as Spectre hardening)",
    },
];

/// What the eBPF data plane can do without, and what it costs: checked by the data
/// plane itself (it tries `setns`, which also catches a seccomp or LSM refusal), listed
/// here so that the capability story is in one place.
pub const EBPF_OPTIONAL: [Requirement; 1] = [Requirement {
    cap: CAP_SYS_ADMIN,
    or: None,
    needed_for: "entering pod network namespaces to destroy connected UDP sockets \
                 balanced to a backend that left (without it only the agent's own \
                 namespace is followed)",
}];

/// What the IPVS data plane needs: every kernel interface it uses (IPVS and ipset
/// over netlink, the iptables tools, the dummy interface, the `net.*` sysctls) asks
/// for CAP_NET_ADMIN.
pub const IPVS: [Requirement; 1] = [Requirement {
    cap: CAP_NET_ADMIN,
    or: None,
    needed_for: "programming IPVS, ipsets, iptables rules and the kube-ipvs0 interface",
}];

/// The requirements of `mode`.
pub fn requirements(mode: ProxyMode) -> &'static [Requirement] {
    match mode {
        ProxyMode::Ebpf => &EBPF,
        ProxyMode::Ipvs => &IPVS,
    }
}

/// The capabilities could not be checked, or some are missing.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// `/proc/self/status` could not be read.
    #[error("reading /proc/self/status to check the capabilities")]
    Status(#[source] io::Error),
    /// It has no readable `CapEff:` line.
    #[error("/proc/self/status has no readable CapEff line")]
    NoCapEff,
    /// The process lacks capabilities its mode needs.
    #[error("{}", missing_message(*.mode, .missing))]
    Missing {
        /// The mode checked.
        mode: ProxyMode,
        /// What is missing, in the order of [`requirements`].
        missing: Vec<Requirement>,
    },
}

fn missing_message(mode: ProxyMode, missing: &[Requirement]) -> String {
    let each: Vec<String> = missing
        .iter()
        .map(|r| {
            let or = r.or.map(|c| format!(" or {}", c.name)).unwrap_or_default();
            format!("{} needs {} (missing){or}", r.needed_for, r.cap.name)
        })
        .collect();
    format!(
        "--proxy-mode {} cannot run with this process's capabilities: {} \
         (grant them in the container's securityContext, see deploy/daemonset.yaml)",
        mode_name(mode),
        each.join("; ")
    )
}

fn mode_name(mode: ProxyMode) -> &'static str {
    match mode {
        ProxyMode::Ebpf => "ebpf",
        ProxyMode::Ipvs => "ipvs",
    }
}

/// The effective set from the text of `/proc/<pid>/status` (`CapEff:\t000001ffffffffff`).
pub fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// What of `mode`'s requirements `effective` lacks.
pub fn missing(mode: ProxyMode, effective: u64) -> Vec<Requirement> {
    requirements(mode)
        .iter()
        .filter(|r| !r.met_by(effective))
        .copied()
        .collect()
}

/// Checks this process's effective capabilities against `mode`'s requirements.
pub fn check(mode: ProxyMode) -> Result<(), PrivilegeError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(PrivilegeError::Status)?;
    let effective = cap_eff(&status).ok_or(PrivilegeError::NoCapEff)?;
    let missing = missing(mode, effective);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Missing { mode, missing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(caps: &[Cap]) -> u64 {
        caps.iter().fold(0, |m, c| m | 1 << c.bit)
    }

    #[test]
    fn cap_eff_is_read_from_the_status_text() {
        let status = "Name:\tproxy-agent\nCapInh:\t0000000000000000\n\
                      CapEff:\t000000c000001000\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(
            cap_eff(status),
            Some(mask(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN]))
        );
        assert_eq!(cap_eff("Name:\tx\n"), None);
        assert_eq!(cap_eff("CapEff:\tzz\n"), None);
    }

    #[test]
    fn the_ebpf_set_is_enough_and_each_one_fewer_is_named() {
        let full = mask(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]);
        assert!(missing(ProxyMode::Ebpf, full).is_empty());
        for r in EBPF {
            let fewer = full & !(1 << r.cap.bit);
            assert_eq!(missing(ProxyMode::Ebpf, fewer), vec![r]);
            let message = PrivilegeError::Missing {
                mode: ProxyMode::Ebpf,
                missing: vec![r],
            }
            .to_string();
            assert!(
                message.contains(&format!("needs {} (missing)", r.cap.name)),
                "{message}"
            );
        }
    }

    #[test]
    fn cap_sys_admin_stands_in_for_cap_bpf_and_cap_perfmon_not_for_cap_net_admin() {
        let admin = mask(&[CAP_SYS_ADMIN]);
        assert_eq!(missing(ProxyMode::Ebpf, admin), vec![EBPF[1]]);
        assert!(missing(ProxyMode::Ebpf, admin | mask(&[CAP_NET_ADMIN])).is_empty());
    }

    #[test]
    fn cap_sys_admin_is_optional_and_never_refuses_a_start() {
        let set = mask(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]);
        assert!(missing(ProxyMode::Ebpf, set).is_empty());
        for r in EBPF_OPTIONAL {
            assert!(
                !EBPF.iter().any(|e| e.cap == r.cap),
                "{} is optional",
                r.cap.name
            );
            assert!(r.needed_for.contains("UDP"), "{}", r.needed_for);
        }
    }

    #[test]
    fn the_ipvs_mode_needs_only_cap_net_admin() {
        assert!(missing(ProxyMode::Ipvs, mask(&[CAP_NET_ADMIN])).is_empty());
        let message = PrivilegeError::Missing {
            mode: ProxyMode::Ipvs,
            missing: missing(ProxyMode::Ipvs, mask(&[CAP_BPF])),
        }
        .to_string();
        assert!(
            message.contains("needs CAP_NET_ADMIN (missing)") && message.contains("ipvs"),
            "{message}"
        );
    }
}
