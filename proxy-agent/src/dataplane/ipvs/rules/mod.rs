//! The constant netfilter rules of kube-proxy's IPVS mode: masquerading (ClusterIP
//! traffic from outside the cluster, NodePorts, load balancers, externalIPs, hairpin),
//! load balancer source ranges, health check node ports, and no answer on a VIP port
//! that no service has. They match the ipsets of [`super::sets`], which the backend
//! keeps, so they never change while services do.
//!
//! Installed with `iptables-restore` as kube-proxy does (both iptables backends take
//! it, and operators read the result with `iptables-save` as they know it):
//! [`render`] writes the text, [`Iptables`] applies and removes it.

pub mod chains;
pub mod error;
pub mod render;
pub mod restore;

pub use chains::{JUMPS, Jump, Table};
pub use error::RulesError;
pub use render::{MASQ_MARK, render};
pub use restore::{Iptables, Runner, System, apply, remove};
