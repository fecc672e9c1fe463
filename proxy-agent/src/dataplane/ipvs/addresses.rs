//! The dummy interface `kube-ipvs0` and its addresses over rtnetlink: the virtual IPs
//! must be local addresses for IPVS to see their packets (at `LOCAL_IN`). As in
//! kube-proxy the interface stays down: a down interface's addresses are still
//! local, and it then answers nothing itself (no ARP for the VIPs from its side).
//!
//! Reading goes through [`netdev::list`]; writing is one acknowledged request each,
//! on the same blocking conversation the IPVS and ipset messages use.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::kernel::VipAddresses;
use super::netlink::NetlinkError;
use super::netlink::socket::{self, Conn, Kernel};
use crate::dataplane::{DataplaneError, netdev};
use crate::model::NodeAddresses;

/// kube-proxy's name for the interface.
pub const LINK_NAME: &str = "kube-ipvs0";

/// A dummy interface holding the virtual IPs, in the calling thread's namespace.
pub struct DummyLink {
    conn: Conn<Kernel>,
    name: String,
    /// The interface's index once seen, so that adding an address lists nothing;
    /// forgotten when a write fails (the interface may have been recreated).
    index: Option<u32>,
}

impl DummyLink {
    /// Opens a rtnetlink socket for the interface `name` (created on first use).
    pub fn open(name: &str) -> Result<DummyLink, DataplaneError> {
        let kernel = socket::open(NETLINK_ROUTE, "NETLINK_ROUTE")
            .map_err(|e| failed("opening", "a NETLINK_ROUTE socket".into(), e))?;
        Ok(DummyLink {
            conn: Conn::new(kernel),
            name: name.to_owned(),
            index: None,
        })
    }

    /// The interface's index and addresses, if it exists.
    fn find(&self) -> Result<Option<(u32, Vec<IpAddr>)>, DataplaneError> {
        let snapshot = netdev::list().map_err(|e| DataplaneError::Kernel {
            op: "listing",
            object: "the network interfaces".into(),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(snapshot
            .interfaces
            .into_iter()
            .find(|i| i.name == self.name)
            .map(|i| (i.index, i.addrs)))
    }

    fn index(&mut self) -> Result<u32, DataplaneError> {
        if let Some(index) = self.index {
            return Ok(index);
        }
        self.ensure_link()?;
        match self.find()? {
            Some((index, _)) => {
                self.index = Some(index);
                Ok(index)
            }
            None => Err(DataplaneError::Kernel {
                op: "finding",
                object: format!("interface {}", self.name),
                source: io::Error::from_raw_os_error(libc::ENODEV),
            }),
        }
    }

    /// Deletes the interface (and so its addresses); whether it was there.
    pub fn delete(&mut self) -> Result<bool, DataplaneError> {
        let Some((index, _)) = self.find()? else {
            return Ok(false);
        };
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.conn.request(RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(_) => {}
            // Gone meanwhile: as good.
            Err(e) if e.errno() == Some(libc::ENODEV) => {}
            Err(e) => return Err(failed("deleting", format!("interface {}", self.name), e)),
        }
        self.index = None;
        Ok(true)
    }

    fn address_message(&self, index: u32, ip: IpAddr) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.prefix_len = if ip.is_ipv4() { 32 } else { 128 };
        msg.header.index = index;
        msg.header.scope = AddressScope::Universe;
        if ip.is_ipv6() {
            // No duplicate address detection: the address is ours by construction,
            // and a tentative address would not be local yet.
            msg.header.flags = AddressHeaderFlags::Nodad;
        }
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        msg
    }
}

impl VipAddresses for DummyLink {
    fn ensure_link(&mut self) -> Result<(), DataplaneError> {
        if self.find()?.is_some() {
            return Ok(());
        }
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(self.name.clone()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Dummy,
            )]));
        match self
            .conn
            .request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
        {
            // Created meanwhile by someone else: as good.
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(failed("creating", format!("interface {}", self.name), e)),
        }
    }

    fn addresses(&mut self) -> Result<Vec<IpAddr>, DataplaneError> {
        Ok(self.find()?.map(|(_, addrs)| addrs).unwrap_or_default())
    }

    fn add(&mut self, ip: IpAddr) -> Result<(), DataplaneError> {
        let index = self.index()?;
        let msg = self.address_message(index, ip);
        match self.conn.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            Err(e) => {
                self.index = None;
                Err(failed("adding", format!("{ip} to {}", self.name), e))
            }
        }
    }

    fn del(&mut self, ip: IpAddr) -> Result<(), DataplaneError> {
        let Some((index, _)) = self.find()? else {
            return Ok(());
        };
        let msg = self.address_message(index, ip);
        match self.conn.request(RouteNetlinkMessage::DelAddress(msg), 0) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            Err(e) => {
                self.index = None;
                Err(failed("removing", format!("{ip} from {}", self.name), e))
            }
        }
    }

    fn node_addresses(&mut self, node: &NodeAddresses) -> Result<Vec<IpAddr>, DataplaneError> {
        let found = netdev::list().map_err(|e| DataplaneError::Kernel {
            op: "listing",
            object: "the network interfaces".into(),
            source: io::Error::other(e.to_string()),
        })?;
        // The VIPs are local too, but no NodePort is served on them (as kube-proxy).
        let interfaces: Vec<netdev::Interface> = found
            .interfaces
            .into_iter()
            .filter(|i| i.name != self.name)
            .collect();
        let plan = netdev::plan(
            &interfaces,
            &node.nodeport_addresses,
            &node.node_ips,
            &found.default_route_interfaces,
            &[],
        )
        .map_err(|e| {
            DataplaneError::Unsupported(format!(
                "--nodeport-addresses {}: {e}",
                node.nodeport_addresses
            ))
        })?;
        Ok(plan.nodeport_addrs)
    }
}

fn failed(op: &'static str, object: String, e: NetlinkError) -> DataplaneError {
    let source = match e.errno() {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::other(e.to_string()),
    };
    DataplaneError::Kernel { op, object, source }
}
