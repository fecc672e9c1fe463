//! A scripted kernel for the ctnetlink unit tests, and netlink attributes built byte
//! by byte as the kernel lays them out.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use crate::dataplane::ipvs::netlink::socket::Transport;

/// Plays back prepared datagrams and records the requests where the test can still
/// read them after the conversation took the transport.
#[derive(Default)]
pub(crate) struct Recorder {
    pub sent: Rc<RefCell<Vec<Vec<u8>>>>,
    pub replies: VecDeque<Vec<u8>>,
}

impl Transport for Recorder {
    fn port(&self) -> u32 {
        0
    }

    fn send(&mut self, request: &[u8]) -> io::Result<()> {
        self.sent.borrow_mut().push(request.to_vec());
        Ok(())
    }

    fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        *buf = self
            .replies
            .pop_front()
            .ok_or_else(|| io::Error::other("script exhausted"))?;
        Ok(())
    }
}

/// One attribute: `struct nlattr` (length, type) and the value, padded to 4 bytes.
pub(crate) fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
    let mut out = Vec::new();
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

/// A nest flagged `NLA_F_NESTED` (0x8000), as the kernel's `nla_nest_start` sends it.
pub(crate) fn nest(kind: u16, children: &[Vec<u8>]) -> Vec<u8> {
    nla(kind | 0x8000, &children.concat())
}

/// A `nfgenmsg`: family, version 0, `res_id` (big-endian).
pub(crate) fn nfgenmsg(family: u8, res_id: u16) -> Vec<u8> {
    let mut out = vec![family, 0];
    out.extend_from_slice(&res_id.to_be_bytes());
    out
}
