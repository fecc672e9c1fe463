//! The IPVS backend (kube-proxy's IPVS mode): [`IpvsDataplane`] over its kernel
//! interface, IPVS virtual servers over generic netlink and ipsets over nfnetlink,
//! spoken directly (no `ipvsadm`, no `ipset` binary), the VIPs on a dummy
//! interface over rtnetlink, and kube-proxy's constant netfilter rules through
//! `iptables-restore` (see [`rules`]).
//!
//! `--proxy-mode=ipvs` builds it with [`IpvsDataplane::open`]; [`cleanup`] removes
//! what it leaves; [`inspect`] reads it back for `proxyctl`.

pub mod addresses;
pub mod adopt;
pub mod backend;
pub mod cleanup;
#[cfg(test)]
mod fake;
pub mod inspect;
pub mod invalid_drops;
pub mod kernel;
pub mod netlink;
pub mod plan;
pub mod rules;
pub mod sets;
pub mod stale;
pub mod sysctl;
pub mod timeouts;
mod undo;

pub use backend::{DEFAULT_SCHEDULER, IpvsDataplane, Options, RuleOptions, Timeouts};
