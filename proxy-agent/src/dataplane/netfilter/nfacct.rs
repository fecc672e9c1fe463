//! Named packet counters of netfilter's extended accounting (`nfnetlink_acct`,
//! nfnetlink subsystem `NFNL_SUBSYS_ACCT` = 7): what an iptables rule's
//! `-m nfacct --nfacct-name NAME` adds to, created, read and deleted over netlink.
//!
//! kube-proxy counts the packets its conntrack-INVALID rule drops this way (the
//! object `ct_state_invalid_dropped_pkts`, exported as
//! `kubeproxy_iptables_ct_state_invalid_dropped_packets_total`): a rule counter read
//! without listing the rules. Layouts from
//! `include/uapi/linux/netfilter/nfnetlink_acct.h`: a `nfgenmsg` (family
//! `AF_UNSPEC`) and `NFACCT_*` attributes, the counters big-endian.

use netlink_packet_core::{DefaultNla, Emitable, NLM_F_CREATE, NLM_F_EXCL, NetlinkSerializable};
use netlink_packet_core::{NlaBuffer, NlasIterator};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterProtoFamily};
use netlink_sys::protocols::NETLINK_NETFILTER;

use crate::dataplane::ipvs::netlink::NetlinkError;
use crate::dataplane::ipvs::netlink::error::errno_name;
use crate::dataplane::ipvs::netlink::socket::{self, Conn, Kernel, Reply, Transport};

/// `NFNL_SUBSYS_ACCT`.
pub const NFNL_SUBSYS_ACCT: u8 = 7;
/// `NFACCT_NAME_MAX`, with the NUL.
pub const NAME_MAX: usize = 32;

// `enum nfnl_acct_msg_types`.
const NFNL_MSG_ACCT_NEW: u8 = 0;
const NFNL_MSG_ACCT_GET: u8 = 1;
const NFNL_MSG_ACCT_DEL: u8 = 3;
// `enum nfnl_acct_type`.
const NFACCT_NAME: u16 = 1;
const NFACCT_PKTS: u16 = 2;
const NFACCT_BYTES: u16 = 3;
const NFACCT_USE: u16 = 4;
const NFGENMSG_LEN: usize = 4;

/// Why an accounting request failed, naming the counter.
#[derive(Debug, thiserror::Error)]
pub enum NfacctError {
    /// No `nfnetlink_acct` in this kernel: nfnetlink knows no subsystem 7.
    #[error(
        "netfilter accounting object {name}: the kernel has no nfnetlink_acct (it answered \
         {}): load it (modprobe nfnetlink_acct xt_nfacct)",
        errno_name(*errno)
    )]
    Unavailable {
        /// The counter.
        name: String,
        /// What the kernel answered.
        errno: i32,
    },
    /// nfnetlink wants `CAP_NET_ADMIN` in the namespace, even to read.
    #[error("netfilter accounting object {name}: permission denied (EPERM): run as root")]
    Denied {
        /// The counter.
        name: String,
    },
    /// No counter of that name.
    #[error("netfilter accounting object {name}: no such object (ENOENT)")]
    NotFound {
        /// The counter.
        name: String,
    },
    /// A rule still uses the counter, so it cannot be deleted.
    #[error(
        "netfilter accounting object {name}: still used by a rule (EBUSY): delete the rules \
         with `-m nfacct --nfacct-name {name}` first"
    )]
    Busy {
        /// The counter.
        name: String,
    },
    /// The name does not fit (`NFACCT_NAME_MAX`).
    #[error("netfilter accounting object {name:?}: a name is 1 to 31 bytes")]
    BadName {
        /// The name asked for.
        name: String,
    },
    /// Any other failure of the conversation.
    #[error("netfilter accounting object {name}: {op}: {source}")]
    Netlink {
        /// `create`, `get`, `delete` or `socket`.
        op: &'static str,
        /// The counter.
        name: String,
        /// The failure.
        #[source]
        source: NetlinkError,
    },
    /// A reply did not decode.
    #[error("netfilter accounting object {name}: malformed reply: {reason}")]
    Malformed {
        /// The counter.
        name: String,
        /// What was wrong.
        reason: String,
    },
}

impl NfacctError {
    fn from_netlink(op: &'static str, name: &str, source: NetlinkError) -> Self {
        let name = name.to_owned();
        match source.errno() {
            Some(libc::EPERM) => NfacctError::Denied { name },
            Some(libc::ENOENT) if op != "socket" => NfacctError::NotFound { name },
            Some(libc::EBUSY) if op == "delete" => NfacctError::Busy { name },
            // nfnetlink answers EINVAL for a subsystem nobody registered (our requests
            // are otherwise well formed), EOPNOTSUPP for a message type it lacks.
            Some(errno @ (libc::EINVAL | libc::EOPNOTSUPP | libc::EPROTONOSUPPORT)) => {
                NfacctError::Unavailable { name, errno }
            }
            _ => NfacctError::Netlink { op, name, source },
        }
    }
}

/// One counter as the kernel reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Its name.
    pub name: String,
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted.
    pub bytes: u64,
    /// How many rules (plus one for the object itself) hold it.
    pub refs: u32,
}

/// An accounting request: `nfgenmsg` (family `AF_UNSPEC`) and `NFACCT_NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfacctMessage {
    /// `NFNL_MSG_ACCT_*`.
    pub command: u8,
    /// The counter's name, sent NUL-terminated.
    pub name: String,
}

impl NfacctMessage {
    fn attrs(&self) -> [DefaultNla; 1] {
        let mut name = self.name.as_bytes().to_vec();
        name.push(0);
        [DefaultNla::new(NFACCT_NAME, name)]
    }
}

impl NetlinkSerializable for NfacctMessage {
    fn message_type(&self) -> u16 {
        (u16::from(NFNL_SUBSYS_ACCT) << 8) | u16::from(self.command)
    }

    fn buffer_len(&self) -> usize {
        NFGENMSG_LEN + self.attrs().as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0).emit(buffer);
        self.attrs().as_slice().emit(&mut buffer[NFGENMSG_LEN..]);
    }
}

/// An accounting conversation, in the network namespace of the thread that opened it.
pub struct Nfacct<T = Kernel> {
    conn: Conn<T>,
}

impl Nfacct<Kernel> {
    /// Opens a `NETLINK_NETFILTER` socket.
    pub fn open() -> Result<Nfacct<Kernel>, NfacctError> {
        socket::open(NETLINK_NETFILTER, "NETLINK_NETFILTER")
            .map(Nfacct::over)
            .map_err(|e| NfacctError::from_netlink("socket", "(any)", e))
    }
}

impl<T: Transport> Nfacct<T> {
    /// A conversation over `transport` (a script in tests).
    pub fn over(transport: T) -> Self {
        Nfacct {
            conn: Conn::new(transport),
        }
    }

    fn message(command: u8, name: &str) -> Result<NfacctMessage, NfacctError> {
        if name.is_empty() || name.len() >= NAME_MAX || name.contains('\0') {
            return Err(NfacctError::BadName {
                name: name.to_owned(),
            });
        }
        Ok(NfacctMessage {
            command,
            name: name.to_owned(),
        })
    }

    /// Creates the counter `name` at zero unless it exists (whose counts are kept, as
    /// they are the rule's since it was first installed). Whether it was created.
    pub fn ensure(&mut self, name: &str) -> Result<bool, NfacctError> {
        let request = Self::message(NFNL_MSG_ACCT_NEW, name)?;
        match self.conn.request(request, NLM_F_CREATE | NLM_F_EXCL) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(NfacctError::from_netlink("create", name, e)),
        }
    }

    /// Reads the counter `name`.
    pub fn get(&mut self, name: &str) -> Result<Counter, NfacctError> {
        let request = Self::message(NFNL_MSG_ACCT_GET, name)?;
        let replies = self
            .conn
            .request(request, 0)
            .map_err(|e| NfacctError::from_netlink("get", name, e))?;
        match replies.as_slice() {
            [one] => parse_counter(one),
            other => Err(format!("{} messages, expected 1", other.len())),
        }
        .map_err(|reason| NfacctError::Malformed {
            name: name.to_owned(),
            reason,
        })
    }

    /// Deletes the counter `name`; whether it was there. A counter a rule still uses
    /// is [`NfacctError::Busy`].
    pub fn delete(&mut self, name: &str) -> Result<bool, NfacctError> {
        let request = Self::message(NFNL_MSG_ACCT_DEL, name)?;
        match self.conn.request(request, 0) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(NfacctError::from_netlink("delete", name, e)),
        }
    }
}

/// Decodes the kernel's answer to a GET (`NFNL_MSG_ACCT_NEW` with the attributes).
pub fn parse_counter(reply: &Reply) -> Result<Counter, String> {
    let expected = (u16::from(NFNL_SUBSYS_ACCT) << 8) | u16::from(NFNL_MSG_ACCT_NEW);
    if reply.message_type != expected {
        return Err(format!(
            "message type {:#x}, expected {expected:#x}",
            reply.message_type
        ));
    }
    let attrs = reply
        .payload
        .get(NFGENMSG_LEN..)
        .ok_or("shorter than its nfgenmsg")?;
    let (mut name, mut packets, mut bytes) = (None, None, None);
    let mut refs = 0;
    for nla in NlasIterator::new(attrs) {
        let nla = nla.map_err(|e| e.to_string())?;
        match nla.kind() {
            NFACCT_NAME => {
                let raw = nla.value();
                let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
                name = Some(String::from_utf8_lossy(&raw[..end]).into_owned());
            }
            NFACCT_PKTS => packets = Some(be64(&nla)?),
            NFACCT_BYTES => bytes = Some(be64(&nla)?),
            NFACCT_USE => {
                refs = <[u8; 4]>::try_from(nla.value())
                    .map(u32::from_be_bytes)
                    .map_err(|_| "NFACCT_USE is not 4 bytes".to_owned())?;
            }
            // Flags, quota, padding.
            _ => {}
        }
    }
    Ok(Counter {
        name: name.ok_or("no NFACCT_NAME")?,
        packets: packets.ok_or("no NFACCT_PKTS")?,
        bytes: bytes.ok_or("no NFACCT_BYTES")?,
        refs,
    })
}

fn be64(nla: &NlaBuffer<&[u8]>) -> Result<u64, String> {
    <[u8; 8]>::try_from(nla.value())
        .map(u64::from_be_bytes)
        .map_err(|_| format!("attribute {} is not 8 bytes", nla.kind()))
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};

    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    use crate::dataplane::ipvs::netlink::socket::tests::{error, message};
    use crate::dataplane::netfilter::test_support::{Recorder, nfgenmsg, nla};

    const GET: u16 = 0x701;
    const NEW: u16 = 0x700;
    const DEL: u16 = 0x703;

    /// The request as `nfacct(8)` sends it: header, AF_UNSPEC nfgenmsg, the name with
    /// its NUL padded to 4 bytes.
    fn request(message_type: u16, flags: u16, seq: u32, name: &str) -> Vec<u8> {
        let mut payload = nfgenmsg(0, 0);
        let mut value = name.as_bytes().to_vec();
        value.push(0);
        payload.extend(nla(NFACCT_NAME, &value));
        message(message_type, flags, seq, &payload)
    }

    /// `nfnl_acct_fill_info`'s answer: name, packets, bytes (with the pad attribute
    /// `nla_put_be64` adds when unaligned), use.
    fn counter(seq: u32, name: &str, packets: u64, bytes: u64, refs: u32) -> Vec<u8> {
        let mut payload = nfgenmsg(0, 0);
        let mut value = name.as_bytes().to_vec();
        value.push(0);
        payload.extend(nla(NFACCT_NAME, &value));
        payload.extend(nla(8, &[]));
        payload.extend(nla(NFACCT_PKTS, &packets.to_be_bytes()));
        payload.extend(nla(NFACCT_BYTES, &bytes.to_be_bytes()));
        payload.extend(nla(NFACCT_USE, &refs.to_be_bytes()));
        message(NEW, 0, seq, &payload)
    }

    /// The requests a [`Recorder`] saw.
    type Sent = Rc<RefCell<Vec<Vec<u8>>>>;

    /// A conversation over `replies`, and what it sends.
    fn over(replies: Vec<Vec<u8>>) -> (Nfacct<Recorder>, Sent) {
        let recorder = Recorder {
            replies: replies.into(),
            ..Recorder::default()
        };
        let sent = Rc::clone(&recorder.sent);
        (Nfacct::over(recorder), sent)
    }

    #[test]
    fn ensure_creates_exclusively_and_takes_an_existing_counter_as_it_is() {
        let (mut n, sent) = over(vec![error(1, 0), error(2, libc::EEXIST)]);
        assert!(
            n.ensure("ct_state_invalid_dropped_pkts")
                .unwrap_or_else(|e| panic!("{e}"))
        );
        assert!(
            !n.ensure("ct_state_invalid_dropped_pkts")
                .unwrap_or_else(|e| panic!("{e}"))
        );
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        assert_eq!(
            *sent.borrow(),
            [
                request(NEW, flags, 1, "ct_state_invalid_dropped_pkts"),
                request(NEW, flags, 2, "ct_state_invalid_dropped_pkts"),
            ]
        );
    }

    #[test]
    fn get_reads_the_big_endian_counters() {
        let (mut n, sent) = over(vec![
            [
                counter(1, "ct_state_invalid_dropped_pkts", 7, 420, 3),
                error(1, 0),
            ]
            .concat(),
        ]);
        let got = n
            .get("ct_state_invalid_dropped_pkts")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got,
            Counter {
                name: "ct_state_invalid_dropped_pkts".to_owned(),
                packets: 7,
                bytes: 420,
                refs: 3,
            }
        );
        assert_eq!(
            *sent.borrow(),
            [request(
                GET,
                NLM_F_REQUEST | NLM_F_ACK,
                1,
                "ct_state_invalid_dropped_pkts"
            )]
        );
    }

    #[test]
    fn kernel_answers_become_errors_naming_the_counter() {
        let (mut n, sent) = over(vec![
            error(1, libc::ENOENT),
            error(2, libc::EBUSY),
            error(3, libc::ENOENT),
            error(4, libc::EINVAL),
        ]);
        let missing = n.get("c");
        assert!(
            matches!(&missing, Err(e @ NfacctError::NotFound { .. })
                if e.to_string().contains("object c: no such object")),
            "{missing:?}"
        );
        let busy = n.delete("c");
        assert!(matches!(busy, Err(NfacctError::Busy { .. })), "{busy:?}");
        assert!(
            !n.delete("c").unwrap_or_else(|e| panic!("{e}")),
            "gone already"
        );
        let missing = n.ensure("c");
        assert!(
            matches!(
                missing,
                Err(NfacctError::Unavailable {
                    errno: libc::EINVAL,
                    ..
                })
            ),
            "{missing:?}"
        );
        assert_eq!(
            sent.borrow()[1],
            request(DEL, NLM_F_REQUEST | NLM_F_ACK, 2, "c")
        );
    }

    #[test]
    fn names_that_do_not_fit_are_refused_before_asking() {
        let (mut n, sent) = over(Vec::new());
        for bad in ["", &"x".repeat(32)] {
            assert!(
                matches!(n.get(bad), Err(NfacctError::BadName { .. })),
                "{bad:?}"
            );
        }
        assert!(sent.borrow().is_empty());
    }
}
