//! Netlink messages for IPVS (generic netlink family "IPVS") and ipset (nfnetlink
//! subsystem 6), and the blocking socket that carries them.
//!
//! Each message is built as plain attributes ([`attr`]) on the rust-netlink crates'
//! headers (`nlmsghdr`, `genlmsghdr`, `nfgenmsg`); the layouts follow the kernel's
//! `include/uapi/linux/ip_vs.h` and `include/uapi/linux/netfilter/ipset/ip_set*.h`.

pub mod attr;
pub mod error;
pub mod genl;
pub mod ipset;
pub mod ipset_conn;
pub mod ipvs;
pub mod ipvs_conn;
pub mod socket;

pub use error::{IpsetErrno, IpsetError, IpvsError, NetlinkError};
pub use ipset::{Entry, SetFamily, SetInfo, SetSpec, SetType};
pub use ipset_conn::Ipset;
pub use ipvs::{
    Destination, DestinationInfo, ForwardMethod, Protocol, Service, ServiceFlags, ServiceId,
    ServiceInfo, Stats, TimeoutConfig,
};
pub use ipvs_conn::Ipvs;
