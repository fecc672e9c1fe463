//! A blocking netlink conversation: one request, then its acknowledgement, its
//! reply or its dump, read until the end; `NLMSG_ERROR` becomes an error.
//!
//! Blocking on purpose: IPVS and ipset requests are answered in microseconds and the
//! callers are synchronous. The socket lives in the network namespace of the thread
//! that opened it.

use std::fmt::Debug;
use std::io;

use netlink_packet_core::{
    DecodeError, DoneBuffer, ErrorBuffer, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
    NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};

use super::error::NetlinkError;

/// A dump with `NLM_F_DUMP_INTR` set is retried this many times: the kernel sets it
/// when the table changed while it was walked.
const DUMP_ATTEMPTS: u32 = 5;

pub use crate::dataplane::nlsocket::{Kernel, Transport};

/// Opens a socket of `protocol`, named `name` (`NETLINK_GENERIC`, ...) in errors.
pub fn open(protocol: isize, name: &'static str) -> Result<Kernel, NetlinkError> {
    Kernel::open(protocol).map_err(|e| NetlinkError::Socket {
        protocol: name,
        call: e.call,
        source: e.source,
    })
}

/// A message of a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// `nlmsg_type`.
    pub message_type: u16,
    /// What follows the `nlmsghdr` (the family header and the attributes).
    pub payload: Vec<u8>,
}

/// Requests and their replies over one transport.
pub struct Conn<T> {
    transport: T,
    seq: u32,
    buf: Vec<u8>,
}

impl<T: Transport> Conn<T> {
    /// A conversation over `transport`.
    pub fn new(transport: T) -> Self {
        Conn {
            transport,
            seq: 0,
            buf: Vec::with_capacity(32 * 1024),
        }
    }

    /// Sends `message` with `NLM_F_REQUEST | NLM_F_ACK | flags` and returns what
    /// came before the acknowledgement (a GET's answer; nothing for a change).
    pub fn request<M>(&mut self, message: M, flags: u16) -> Result<Vec<Reply>, NetlinkError>
    where
        M: NetlinkSerializable + Debug,
    {
        let request = self.encode(message, NLM_F_REQUEST | NLM_F_ACK | flags);
        self.exchange(&request).map(|r| r.entries)
    }

    /// Sends `message` as a dump (`NLM_F_REQUEST | NLM_F_DUMP`) and returns every
    /// entry until `NLMSG_DONE`, retrying a dump interrupted by a change.
    pub fn dump<M>(&mut self, message: M) -> Result<Vec<Reply>, NetlinkError>
    where
        M: NetlinkSerializable + Debug + Clone,
    {
        for _ in 0..DUMP_ATTEMPTS {
            let request = self.encode(message.clone(), NLM_F_REQUEST | NLM_F_DUMP);
            let reply = self.exchange(&request)?;
            if !reply.interrupted {
                return Ok(reply.entries);
            }
        }
        Err(NetlinkError::Interrupted(DUMP_ATTEMPTS))
    }

    /// The next request's bytes, with a fresh sequence number.
    fn encode<M: NetlinkSerializable + Debug>(&mut self, message: M, flags: u16) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        encode(message, flags, self.seq)
    }

    fn exchange(&mut self, request: &[u8]) -> Result<Collected, NetlinkError> {
        retrying(|| self.transport.send(request)).map_err(|source| NetlinkError::Syscall {
            call: "sendto",
            source,
        })?;
        let mut reply = Collected::default();
        while !reply.done {
            retrying(|| self.transport.recv(&mut self.buf)).map_err(|source| {
                NetlinkError::Syscall {
                    call: "recvfrom",
                    source,
                }
            })?;
            reply.read(&self.buf, self.seq, self.transport.port())?;
        }
        Ok(reply)
    }
}

/// A request's bytes: `nlmsghdr` (port 0, the kernel fills ours in) and `message`.
pub fn encode<M: NetlinkSerializable + Debug>(message: M, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// A reply as it arrives, datagram after datagram.
#[derive(Default)]
struct Collected {
    entries: Vec<Reply>,
    interrupted: bool,
    done: bool,
}

impl Collected {
    /// Takes in one datagram. Messages for another sequence number or port (a stale
    /// reply to an earlier, abandoned request) are skipped.
    fn read(&mut self, datagram: &[u8], seq: u32, port: u32) -> Result<(), NetlinkError> {
        let mut rest = datagram;
        while !rest.is_empty() && !self.done {
            let msg = NetlinkBuffer::new_checked(rest)?;
            rest = after(rest, msg.length());
            if msg.sequence_number() != seq || (port != 0 && msg.port_number() != port) {
                continue;
            }
            if msg.flags() & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            let payload = msg.payload();
            match msg.message_type() {
                NLMSG_NOOP => {}
                NLMSG_DONE => {
                    self.done = true;
                    // A bare NLMSG_DONE is fine; an errno < 0 means the dump failed
                    // part way.
                    let code = if payload.is_empty() {
                        0
                    } else {
                        DoneBuffer::new_checked(payload)?.code()
                    };
                    if code < 0 {
                        return Err(NetlinkError::Kernel {
                            errno: code.saturating_neg(),
                        });
                    }
                }
                NLMSG_ERROR => {
                    self.done = true;
                    // Code 0 is the acknowledgement.
                    if let Some(code) = ErrorBuffer::new_checked(payload)?.code() {
                        return Err(NetlinkError::Kernel {
                            errno: code.get().saturating_neg(),
                        });
                    }
                }
                NLMSG_OVERRUN => {
                    return Err(DecodeError::from("NLMSG_OVERRUN: data was lost").into());
                }
                message_type => self.entries.push(Reply {
                    message_type,
                    payload: payload.to_vec(),
                }),
            }
        }
        Ok(())
    }
}

/// What follows a message of `len` bytes (messages are 4-byte aligned).
fn after(buf: &[u8], len: u32) -> &[u8] {
    let next = (len as usize).saturating_add(3) & !3;
    // A length below a header's would never advance; the checked buffer refuses it,
    // this keeps the loop finite regardless.
    buf.get(next.max(16)..).unwrap_or_default()
}

/// Retries a system call interrupted by a signal.
fn retrying<R>(mut call: impl FnMut() -> io::Result<R>) -> io::Result<R> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
#[path = "socket_tests.rs"]
pub(crate) mod tests;
