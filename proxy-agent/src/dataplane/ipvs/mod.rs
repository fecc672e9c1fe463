//! The IPVS backend (kube-proxy's IPVS mode): [`IpvsDataplane`] over its kernel
//! interface, IPVS virtual servers over generic netlink and ipsets over nfnetlink,
//! spoken directly (no `ipvsadm`, no `ipset` binary), and the VIPs on a dummy
//! interface over rtnetlink.
//!
//! Not yet wired into the daemon: `--proxy-mode=ipvs` will build its
//! [`Dataplane`](super::Dataplane) with [`IpvsDataplane::open`].

pub mod addresses;
pub mod backend;
#[cfg(test)]
mod fake;
pub mod kernel;
pub mod netlink;
pub mod sets;
pub mod sysctl;
mod undo;

pub use backend::{DEFAULT_SCHEDULER, IpvsDataplane, Options};
