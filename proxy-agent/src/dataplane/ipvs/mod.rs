//! The IPVS backend's kernel interface: IPVS virtual servers over generic netlink and
//! ipsets over nfnetlink, spoken directly (no `ipvsadm`, no `ipset` binary).
//!
//! Not yet wired into the daemon: `--proxy-mode=ipvs` will build its
//! [`Dataplane`](super::Dataplane) on these calls.

pub mod netlink;
