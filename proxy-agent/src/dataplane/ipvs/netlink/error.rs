//! Why an IPVS or ipset request failed, naming the object it was about.
//!
//! The kernel answers with a bare errno; what it means depends on the request
//! (`EEXIST` for a new service, `ESRCH` for a missing one, `ENOENT` for a missing
//! destination or scheduler), so the mapping lives here, per request kind.

use std::fmt;
use std::io;

use netlink_packet_core::DecodeError;

use crate::dataplane::DataplaneError;

/// Why a netlink conversation failed, before any family gives the errno a meaning.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened or bound.
    #[error("{protocol} socket: {call}: {source}")]
    Socket {
        /// `NETLINK_GENERIC` or `NETLINK_NETFILTER`.
        protocol: &'static str,
        /// The failed call (`socket`, `bind`).
        call: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("{call}: {source}")]
    Syscall {
        /// `sendto` or `recvfrom`.
        call: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the request (`NLMSG_ERROR`, or `NLMSG_DONE` with an error).
    #[error("the kernel answered {} ({errno})", errno_name(*errno))]
    Kernel {
        /// The positive errno (ipset's own codes are 4096 and up).
        errno: i32,
    },
    /// A reply did not parse.
    #[error("malformed reply: {0}")]
    Decode(#[from] DecodeError),
    /// A dump was interrupted by concurrent changes (`NLM_F_DUMP_INTR`) every time.
    #[error("dump interrupted by concurrent changes {0} times in a row")]
    Interrupted(u32),
}

impl NetlinkError {
    /// The kernel's errno, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno } => Some(*errno),
            NetlinkError::Socket { source, .. } | NetlinkError::Syscall { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

/// The symbolic name of the errnos these families answer with.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::ENOMEM => "ENOMEM",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::E2BIG => "E2BIG",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENOBUFS => "ENOBUFS",
        _ => "errno",
    }
}

/// What an IPVS request was about, for its error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpvsObject {
    /// A virtual service (`TCP 10.96.0.10:80`).
    Service(String),
    /// A real server of a service.
    Destination {
        /// The service (`TCP 10.96.0.10:80`).
        service: String,
        /// The destination (`10.244.1.5:8080`).
        destination: String,
    },
    /// Every service (dumps, flush).
    All,
    /// The connection timeouts (`SET_CONFIG`, `GET_CONFIG`).
    Timeouts,
}

impl fmt::Display for IpvsObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpvsObject::Service(s) => write!(f, "IPVS service {s}"),
            IpvsObject::Destination {
                service,
                destination,
            } => write!(f, "IPVS destination {destination} of service {service}"),
            IpvsObject::All => f.write_str("IPVS services"),
            IpvsObject::Timeouts => f.write_str("IPVS connection timeouts"),
        }
    }
}

/// Why an IPVS request failed.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// The generic netlink family "IPVS" is not registered.
    #[error(
        "the kernel has no IPVS (no generic netlink family \"IPVS\"): load the ip_vs module \
         (modprobe ip_vs)"
    )]
    NoIpvs,
    /// A new service or destination is already there (`EEXIST`).
    #[error("{object}: already exists (EEXIST)")]
    Exists {
        /// What was being created.
        object: IpvsObject,
    },
    /// The service is not there (`ESRCH`).
    #[error("{object}: no such service (ESRCH)")]
    NoSuchService {
        /// The object of the request.
        object: IpvsObject,
    },
    /// The destination is not there (`ENOENT` on a destination request).
    #[error("{object}: no such destination (ENOENT)")]
    NoSuchDestination {
        /// The object of the request.
        object: IpvsObject,
    },
    /// The scheduler is not in the kernel (`ENOENT` on a service request).
    #[error("{object}: scheduler {scheduler:?} not found (ENOENT): load ip_vs_{scheduler}")]
    NoScheduler {
        /// The service.
        object: IpvsObject,
        /// The scheduler's name.
        scheduler: String,
    },
    /// The request cannot be expressed (a scheduler name over 15 bytes).
    #[error("{object}: {reason}")]
    Invalid {
        /// What it was about.
        object: IpvsObject,
        /// Why.
        reason: String,
    },
    /// Any other refusal.
    #[error("{object}: {op}: the kernel answered {} ({errno})", errno_name(*errno))]
    Kernel {
        /// The command (`NEW_SERVICE`, ...).
        op: &'static str,
        /// What it was about.
        object: IpvsObject,
        /// The positive errno.
        errno: i32,
    },
    /// The conversation itself failed.
    #[error("{object}: {op}: {source}")]
    Netlink {
        /// The command.
        op: &'static str,
        /// What it was about.
        object: IpvsObject,
        /// The failure.
        #[source]
        source: NetlinkError,
    },
}

impl IpvsError {
    /// A short, fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            IpvsError::NoIpvs => "no_ipvs",
            IpvsError::Exists { .. } => "exists",
            IpvsError::NoSuchService { .. } => "no_such_service",
            IpvsError::NoSuchDestination { .. } => "no_such_destination",
            IpvsError::NoScheduler { .. } => "no_scheduler",
            IpvsError::Invalid { .. } => "invalid",
            IpvsError::Kernel { .. } => "kernel",
            IpvsError::Netlink { .. } => "netlink",
        }
    }

    /// The errno behind the error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            IpvsError::NoIpvs => Some(libc::ENOENT),
            IpvsError::Exists { .. } => Some(libc::EEXIST),
            IpvsError::NoSuchService { .. } => Some(libc::ESRCH),
            IpvsError::NoSuchDestination { .. } | IpvsError::NoScheduler { .. } => {
                Some(libc::ENOENT)
            }
            IpvsError::Kernel { errno, .. } => Some(*errno),
            IpvsError::Invalid { .. } => None,
            IpvsError::Netlink { source, .. } => source.errno(),
        }
    }
}

impl From<IpvsError> for DataplaneError {
    fn from(e: IpvsError) -> Self {
        match &e {
            IpvsError::NoIpvs => DataplaneError::Unavailable(e.to_string()),
            IpvsError::Invalid { .. } => DataplaneError::Unsupported(e.to_string()),
            _ => {
                let (op, object) = match &e {
                    IpvsError::Kernel { op, object, .. }
                    | IpvsError::Netlink { op, object, .. } => (*op, object.to_string()),
                    IpvsError::Exists { object }
                    | IpvsError::NoSuchService { object }
                    | IpvsError::NoSuchDestination { object }
                    | IpvsError::NoScheduler { object, .. } => ("ipvs", object.to_string()),
                    IpvsError::NoIpvs | IpvsError::Invalid { .. } => ("ipvs", String::new()),
                };
                let source = match e.errno() {
                    Some(errno) => io::Error::from_raw_os_error(errno),
                    None => io::Error::other(e.to_string()),
                };
                DataplaneError::Kernel { op, object, source }
            }
        }
    }
}

/// An ipset error code (`enum ipset_errno` of `ip_set.h`, the type-specific ones of
/// `ip_set_hash.h`/`ip_set_bitmap.h`), or a plain errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpsetErrno {
    /// `IPSET_ERR_PROTOCOL`: the message is malformed for this kernel (a missing
    /// attribute, a missing `NLA_F_NET_BYTEORDER`/`NLA_F_NESTED` flag).
    Protocol,
    /// `IPSET_ERR_FIND_TYPE`: no such set type or revision (module not loaded).
    FindType,
    /// `IPSET_ERR_MAX_SETS`: the kernel's set table is full.
    MaxSets,
    /// `IPSET_ERR_BUSY`: the set is referenced by a rule and cannot be destroyed.
    Busy,
    /// `IPSET_ERR_EXIST_SETNAME2`: the new name of a rename is taken.
    ExistSetname2,
    /// `IPSET_ERR_TYPE_MISMATCH`: the two sets of a swap differ in type or family.
    TypeMismatch,
    /// `IPSET_ERR_EXIST`: on ADD the element is already in, on DEL/TEST it is not;
    /// on CREATE a set of that name exists with other parameters.
    Exist,
    /// `IPSET_ERR_INVALID_CIDR`.
    InvalidCidr,
    /// `IPSET_ERR_INVALID_NETMASK`.
    InvalidNetmask,
    /// `IPSET_ERR_INVALID_FAMILY`: the address family does not match the set's.
    InvalidFamily,
    /// `IPSET_ERR_TIMEOUT`: the set was created without timeout support.
    Timeout,
    /// `IPSET_ERR_REFERENCED`: the set is referenced (by a rule or a list:set).
    Referenced,
    /// `IPSET_ERR_IPADDR_IPV4`: an IPv4 address was expected.
    IpaddrIpv4,
    /// `IPSET_ERR_IPADDR_IPV6`: an IPv6 address was expected.
    IpaddrIpv6,
    /// `IPSET_ERR_COUNTER`: the set was created without counters.
    Counter,
    /// `IPSET_ERR_COMMENT`: the set was created without comment support.
    Comment,
    /// `IPSET_ERR_INVALID_MARKMASK`.
    InvalidMarkmask,
    /// `IPSET_ERR_SKBINFO`: the set was created without skbinfo support.
    Skbinfo,
    /// `IPSET_ERR_BITMASK_NETMASK_EXCL`: bitmask and netmask are exclusive.
    BitmaskNetmaskExcl,
    /// `IPSET_ERR_HASH_FULL`: a hash set reached its maxelem.
    HashFull,
    /// `IPSET_ERR_HASH_ELEM`: a null-valued element.
    HashElem,
    /// `IPSET_ERR_INVALID_PROTO`: a protocol the set type does not take.
    InvalidProto,
    /// `IPSET_ERR_MISSING_PROTO`: the protocol is missing but must be given.
    MissingProto,
    /// `IPSET_ERR_HASH_RANGE_UNSUPPORTED`.
    HashRangeUnsupported,
    /// `IPSET_ERR_HASH_RANGE`: an invalid range.
    HashRange,
    /// `IPSET_ERR_BITMAP_RANGE`: the element is outside a bitmap set's range.
    BitmapRange,
    /// `IPSET_ERR_BITMAP_RANGE_SIZE`: the range exceeds the bitmap type's limit.
    BitmapRangeSize,
    /// Another ipset code.
    Other(i32),
    /// A plain errno (`ENOENT`: no such set; `EEXIST`: a set of that name exists).
    Os(i32),
}

const IPSET_ERR_PRIVATE: i32 = 4096;
const IPSET_ERR_TYPE_SPECIFIC: i32 = 4352;

/// The generic codes, in order from `IPSET_ERR_PRIVATE + 1`.
const GENERIC: [IpsetErrno; 19] = {
    use IpsetErrno::*;
    [
        Protocol,
        FindType,
        MaxSets,
        Busy,
        ExistSetname2,
        TypeMismatch,
        Exist,
        InvalidCidr,
        InvalidNetmask,
        InvalidFamily,
        Timeout,
        Referenced,
        IpaddrIpv4,
        IpaddrIpv6,
        Counter,
        Comment,
        InvalidMarkmask,
        Skbinfo,
        BitmaskNetmaskExcl,
    ]
};
/// The hash types' codes, in order from `IPSET_ERR_TYPE_SPECIFIC`.
const HASH: [IpsetErrno; 6] = {
    use IpsetErrno::*;
    [
        HashFull,
        HashElem,
        InvalidProto,
        MissingProto,
        HashRangeUnsupported,
        HashRange,
    ]
};
/// The bitmap types' codes, in order from `IPSET_ERR_TYPE_SPECIFIC`.
const BITMAP: [IpsetErrno; 2] = [IpsetErrno::BitmapRange, IpsetErrno::BitmapRangeSize];

impl IpsetErrno {
    /// Reads a code; the type-specific ones (4352 and up) mean different things for
    /// hash and bitmap sets, so the caller says which the request was about.
    pub fn from_code(code: i32, bitmap: bool) -> IpsetErrno {
        let index = |base: i32| usize::try_from(code - base).ok();
        let found = if code < IPSET_ERR_PRIVATE {
            return IpsetErrno::Os(code);
        } else if code < IPSET_ERR_TYPE_SPECIFIC {
            index(IPSET_ERR_PRIVATE + 1).and_then(|i| GENERIC.get(i))
        } else if bitmap {
            index(IPSET_ERR_TYPE_SPECIFIC).and_then(|i| BITMAP.get(i))
        } else {
            index(IPSET_ERR_TYPE_SPECIFIC).and_then(|i| HASH.get(i))
        };
        found.copied().unwrap_or(IpsetErrno::Other(code))
    }

    /// The code's name in the kernel headers.
    pub fn name(&self) -> &'static str {
        use IpsetErrno::*;
        match self {
            Protocol => "IPSET_ERR_PROTOCOL",
            FindType => "IPSET_ERR_FIND_TYPE",
            MaxSets => "IPSET_ERR_MAX_SETS",
            Busy => "IPSET_ERR_BUSY",
            ExistSetname2 => "IPSET_ERR_EXIST_SETNAME2",
            TypeMismatch => "IPSET_ERR_TYPE_MISMATCH",
            Exist => "IPSET_ERR_EXIST",
            InvalidCidr => "IPSET_ERR_INVALID_CIDR",
            InvalidNetmask => "IPSET_ERR_INVALID_NETMASK",
            InvalidFamily => "IPSET_ERR_INVALID_FAMILY",
            Timeout => "IPSET_ERR_TIMEOUT",
            Referenced => "IPSET_ERR_REFERENCED",
            IpaddrIpv4 => "IPSET_ERR_IPADDR_IPV4",
            IpaddrIpv6 => "IPSET_ERR_IPADDR_IPV6",
            Counter => "IPSET_ERR_COUNTER",
            Comment => "IPSET_ERR_COMMENT",
            InvalidMarkmask => "IPSET_ERR_INVALID_MARKMASK",
            Skbinfo => "IPSET_ERR_SKBINFO",
            BitmaskNetmaskExcl => "IPSET_ERR_BITMASK_NETMASK_EXCL",
            HashFull => "IPSET_ERR_HASH_FULL",
            HashElem => "IPSET_ERR_HASH_ELEM",
            InvalidProto => "IPSET_ERR_INVALID_PROTO",
            MissingProto => "IPSET_ERR_MISSING_PROTO",
            HashRangeUnsupported => "IPSET_ERR_HASH_RANGE_UNSUPPORTED",
            HashRange => "IPSET_ERR_HASH_RANGE",
            BitmapRange => "IPSET_ERR_BITMAP_RANGE",
            BitmapRangeSize => "IPSET_ERR_BITMAP_RANGE_SIZE",
            Other(_) => "IPSET_ERR_*",
            Os(errno) => errno_name(*errno),
        }
    }

    /// What the code means, in a few words.
    pub fn meaning(&self) -> &'static str {
        use IpsetErrno::*;
        match self {
            Protocol => "malformed request for this kernel's ipset protocol",
            FindType => "set type or revision not in the kernel (load its ip_set_* module)",
            MaxSets => "the kernel's set table is full",
            Busy => "set is in use",
            ExistSetname2 => "a set of the new name exists",
            TypeMismatch => "the sets differ in type or family",
            Exist => "element already added, or not present",
            InvalidCidr => "invalid CIDR",
            InvalidNetmask => "invalid netmask",
            InvalidFamily => "address family does not match the set",
            Timeout => "set created without timeout support",
            Referenced => "set is referenced",
            IpaddrIpv4 => "an IPv4 address was expected",
            IpaddrIpv6 => "an IPv6 address was expected",
            Counter => "set created without counter support",
            Comment => "set created without comment support",
            InvalidMarkmask => "invalid markmask",
            Skbinfo => "set created without skbinfo support",
            BitmaskNetmaskExcl => "bitmask and netmask are exclusive",
            HashFull => "hash is full",
            HashElem => "null-valued element",
            InvalidProto => "invalid protocol",
            MissingProto => "protocol missing",
            HashRangeUnsupported => "range not supported",
            HashRange => "invalid range",
            BitmapRange => "element outside the set's range",
            BitmapRangeSize => "range exceeds the set type's limit",
            Other(_) => "unknown ipset error",
            Os(libc::ENOENT) => "no such set",
            Os(libc::EEXIST) => "set exists",
            Os(_) => "refused",
        }
    }

    /// The raw code, as the kernel sent it: its place in the tables [`from_code`]
    /// reads.
    ///
    /// [`from_code`]: IpsetErrno::from_code
    pub fn code(&self) -> i32 {
        if let IpsetErrno::Other(code) | IpsetErrno::Os(code) = self {
            return *code;
        }
        let at = |table: &[IpsetErrno], base: i32| {
            table
                .iter()
                .position(|c| c == self)
                .and_then(|i| i32::try_from(i).ok())
                .map(|i| base + i)
        };
        at(&GENERIC, IPSET_ERR_PRIVATE + 1)
            .or_else(|| at(&HASH, IPSET_ERR_TYPE_SPECIFIC))
            .or_else(|| at(&BITMAP, IPSET_ERR_TYPE_SPECIFIC))
            .unwrap_or(IPSET_ERR_PRIVATE)
    }
}

impl fmt::Display for IpsetErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.meaning(), self.name())
    }
}

/// Why an ipset request failed.
#[derive(Debug, thiserror::Error)]
pub enum IpsetError {
    /// nfnetlink or its ipset subsystem is not in the kernel.
    #[error("the kernel has no ipset ({0}): load the ip_set module (modprobe ip_set)")]
    NoIpset(&'static str),
    /// The kernel refused the request.
    #[error("ipset {op} {set}: {code}")]
    Kernel {
        /// The command (`create`, `add`, ...).
        op: &'static str,
        /// The set, with the element for ADD/DEL/TEST (`KUBE-CLUSTER-IP 10.96.0.10,tcp:80`).
        set: String,
        /// What the kernel answered.
        code: IpsetErrno,
    },
    /// The request cannot be expressed (a name over 31 bytes, an entry of the wrong
    /// shape for the set type).
    #[error("ipset {op} {set}: {reason}")]
    Invalid {
        /// The command.
        op: &'static str,
        /// The set.
        set: String,
        /// Why.
        reason: String,
    },
    /// The conversation itself failed.
    #[error("ipset {op} {set}: {source}")]
    Netlink {
        /// The command.
        op: &'static str,
        /// The set (empty for a listing of all).
        set: String,
        /// The failure.
        #[source]
        source: NetlinkError,
    },
}

impl IpsetError {
    /// A short, fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            IpsetError::NoIpset(_) => "no_ipset",
            IpsetError::Kernel { .. } => "kernel",
            IpsetError::Invalid { .. } => "invalid",
            IpsetError::Netlink { .. } => "netlink",
        }
    }
}

impl From<IpsetError> for DataplaneError {
    fn from(e: IpsetError) -> Self {
        match e {
            IpsetError::NoIpset(_) => DataplaneError::Unavailable(e.to_string()),
            IpsetError::Invalid { .. } => DataplaneError::Unsupported(e.to_string()),
            IpsetError::Kernel {
                code: IpsetErrno::HashFull,
                set,
                ..
            } => DataplaneError::Capacity {
                table: "ipset",
                // The set's maxelem is not in the answer; 0 reads as "its limit".
                capacity: 0,
                what: set,
            },
            IpsetError::Kernel { op, set, code } => DataplaneError::Kernel {
                op,
                object: format!("ipset {set}"),
                source: io::Error::other(code.to_string()),
            },
            IpsetError::Netlink { op, set, source } => DataplaneError::Kernel {
                op,
                object: format!("ipset {set}"),
                source: match source.errno() {
                    Some(errno) => io::Error::from_raw_os_error(errno),
                    None => io::Error::other(source.to_string()),
                },
            },
        }
    }
}
