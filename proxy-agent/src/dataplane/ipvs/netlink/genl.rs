//! Generic netlink family ids: "IPVS" has no fixed id, the controller (`nlctrl`)
//! assigns one when the module registers it; `CTRL_CMD_GETFAMILY` asks which.

use netlink_packet_core::DecodeError;
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};

use super::attr::{self, get_u16};
use super::error::NetlinkError;
use super::socket::{Conn, Reply, Transport};

/// `CTRL_ATTR_FAMILY_ID` of `<linux/genetlink.h>`.
const CTRL_ATTR_FAMILY_ID: u16 = 1;
/// `GENL_HDRLEN`.
const GENL_HDRLEN: usize = 4;

/// The `CTRL_CMD_GETFAMILY` request for `name`.
pub fn get_family(name: &str) -> GenlMessage<GenlCtrl> {
    GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_owned())],
    })
}

/// The family id in a `CTRL_CMD_NEWFAMILY` answer. Only that attribute is read, so
/// one the crate does not know (newer kernels add some) cannot fail the lookup.
pub fn parse_family_id(replies: &[Reply]) -> Result<u16, DecodeError> {
    for reply in replies {
        let body = reply.payload.get(GENL_HDRLEN..).unwrap_or_default();
        for nla in attr::iter(body) {
            let nla = nla?;
            if nla.kind() == CTRL_ATTR_FAMILY_ID {
                return get_u16(&nla);
            }
        }
    }
    Err(DecodeError::from(
        "CTRL_CMD_GETFAMILY answer without a family id",
    ))
}

/// Resolves `name` to its family id; `Ok(None)` when no such family is registered
/// (the controller answers `ENOENT`).
pub fn resolve<T: Transport>(conn: &mut Conn<T>, name: &str) -> Result<Option<u16>, NetlinkError> {
    match conn.request(get_family(name), 0) {
        Ok(replies) => Ok(Some(parse_family_id(&replies)?)),
        Err(NetlinkError::Kernel { errno }) if errno == libc::ENOENT => Ok(None),
        Err(e) => Err(e),
    }
}
