//! An ipset connection: one call per command, each kernel refusal an [`IpsetError`]
//! naming the set (and the member).

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::error::{IpsetErrno, IpsetError, NetlinkError};
use super::ipset::{
    Command, Entry, IpsetMessage, MAX_COMMENT_SIZE, MAXNAMELEN, SetInfo, SetSpec, create, list,
    list_headers_only, member, named, parse_sets, protocol, two_named,
};
use super::socket::{self, Conn, Kernel, Transport};

/// Requests to the kernel's ipset, in the calling thread's network namespace.
pub struct Ipset<T = Kernel> {
    conn: Conn<T>,
}

impl Ipset<Kernel> {
    /// Opens a `NETLINK_NETFILTER` socket and checks that ipset answers.
    pub fn open() -> Result<Ipset<Kernel>, IpsetError> {
        let kernel =
            socket::open(NETLINK_NETFILTER, "NETLINK_NETFILTER").map_err(|e| match e.errno() {
                // No nfnetlink at all.
                Some(libc::EPROTONOSUPPORT) => IpsetError::NoIpset("no NETLINK_NETFILTER"),
                _ => IpsetError::Netlink {
                    op: "socket",
                    set: String::new(),
                    source: e,
                },
            })?;
        Ipset::over(kernel)
    }
}

impl<T: Transport> Ipset<T> {
    /// Probes ipset over `transport` (`IPSET_CMD_PROTOCOL`).
    pub fn over(transport: T) -> Result<Ipset<T>, IpsetError> {
        let mut conn = Conn::new(transport);
        match conn.request(protocol(), 0) {
            Ok(_) => Ok(Ipset { conn }),
            // nfnetlink refuses a message for a subsystem nobody registered.
            Err(NetlinkError::Kernel { errno })
                if [
                    libc::EINVAL,
                    libc::EOPNOTSUPP,
                    libc::EPROTONOSUPPORT,
                    libc::ENOENT,
                ]
                .contains(&errno) =>
            {
                Err(IpsetError::NoIpset("nfnetlink subsystem 6 not registered"))
            }
            Err(source) => Err(IpsetError::Netlink {
                op: "protocol",
                set: String::new(),
                source,
            }),
        }
    }

    /// Creates a set; with `exist_ok`, an identical set already there is no error.
    pub fn create(&mut self, spec: &SetSpec, exist_ok: bool) -> Result<(), IpsetError> {
        check_name(Command::Create, &spec.name)?;
        let flags = NLM_F_CREATE | if exist_ok { 0 } else { NLM_F_EXCL };
        let bitmap = spec.kind.is_bitmap();
        self.ack(create(spec), flags, &spec.name, bitmap)
    }

    /// Destroys a set (refused with `IPSET_ERR_BUSY` while a rule references it). An
    /// absent set is no error: without `NLM_F_EXCL` the kernel takes it as destroyed
    /// already (seen in the VM test).
    pub fn destroy(&mut self, name: &str) -> Result<(), IpsetError> {
        check_name(Command::Destroy, name)?;
        self.ack(named(Command::Destroy, name), 0, name, false)
    }

    /// Removes every member of a set.
    pub fn flush(&mut self, name: &str) -> Result<(), IpsetError> {
        check_name(Command::Flush, name)?;
        self.ack(named(Command::Flush, name), 0, name, false)
    }

    /// Renames `from` to `to`.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), IpsetError> {
        check_name(Command::Rename, from)?;
        check_name(Command::Rename, to)?;
        let msg = two_named(Command::Rename, from, to);
        self.ack(msg, 0, &format!("{from} -> {to}"), false)
    }

    /// Swaps two sets of the same type and family (a staged set replaces the live
    /// one atomically).
    pub fn swap(&mut self, a: &str, b: &str) -> Result<(), IpsetError> {
        check_name(Command::Swap, a)?;
        check_name(Command::Swap, b)?;
        self.ack(
            two_named(Command::Swap, a, b),
            0,
            &format!("{a} {b}"),
            false,
        )
    }

    /// Adds a member; with `exist_ok`, one already there is no error.
    pub fn add(&mut self, name: &str, entry: &Entry, exist_ok: bool) -> Result<(), IpsetError> {
        self.change(Command::Add, name, entry, exist_ok)
    }

    /// Deletes a member; with `missing_ok`, one not there is no error.
    pub fn del(&mut self, name: &str, entry: &Entry, missing_ok: bool) -> Result<(), IpsetError> {
        self.change(Command::Del, name, entry, missing_ok)
    }

    /// Whether a member is in the set.
    pub fn test(&mut self, name: &str, entry: &Entry) -> Result<bool, IpsetError> {
        check_name(Command::Test, name)?;
        match self.ack(
            member(Command::Test, name, entry),
            0,
            name,
            entry.is_bitmap(),
        ) {
            Ok(()) => Ok(true),
            // TEST answers "not in the set" with IPSET_ERR_EXIST.
            Err(IpsetError::Kernel {
                code: IpsetErrno::Exist,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One set with its members, `None` if there is no such set.
    pub fn list(&mut self, name: &str) -> Result<Option<SetInfo>, IpsetError> {
        check_name(Command::List, name)?;
        match self.conn.dump(list(Some(name))) {
            Ok(replies) => Ok(parse_sets(&replies)
                .map_err(|e| decode(Command::List, name, e))?
                .into_iter()
                .find(|s| s.name == name)),
            Err(NetlinkError::Kernel { errno }) if errno == libc::ENOENT => Ok(None),
            Err(e) => Err(kernel_error(Command::List, name, false, e)),
        }
    }

    /// Every set with its members.
    pub fn list_all(&mut self) -> Result<Vec<SetInfo>, IpsetError> {
        let replies = self
            .conn
            .dump(list(None))
            .map_err(|e| kernel_error(Command::List, "", false, e))?;
        parse_sets(&replies).map_err(|e| decode(Command::List, "", e))
    }

    /// Every set's header, without members.
    pub fn headers(&mut self) -> Result<Vec<SetInfo>, IpsetError> {
        let replies = self
            .conn
            .dump(list_headers_only())
            .map_err(|e| kernel_error(Command::List, "", false, e))?;
        parse_sets(&replies).map_err(|e| decode(Command::List, "", e))
    }

    /// One set's type, revision and family (`HEADER`).
    pub fn header(&mut self, name: &str) -> Result<SetInfo, IpsetError> {
        check_name(Command::Header, name)?;
        let replies = self
            .conn
            .request(named(Command::Header, name), 0)
            .map_err(|e| kernel_error(Command::Header, name, false, e))?;
        parse_sets(&replies)
            .map_err(|e| decode(Command::Header, name, e))?
            .into_iter()
            .next()
            .ok_or_else(|| decode(Command::Header, name, "no set in the answer".into()))
    }

    fn change(
        &mut self,
        cmd: Command,
        name: &str,
        entry: &Entry,
        tolerant: bool,
    ) -> Result<(), IpsetError> {
        check_name(cmd, name)?;
        let what = format!("{name} {entry}");
        if entry
            .comment
            .as_ref()
            .is_some_and(|c| c.len() > MAX_COMMENT_SIZE)
        {
            return Err(IpsetError::Invalid {
                op: cmd.name(),
                set: what,
                reason: format!("comment over {MAX_COMMENT_SIZE} bytes"),
            });
        }
        // Without NLM_F_EXCL the kernel ignores a member already there (ADD) or
        // missing (DEL): ipset's `-exist`.
        let flags = if tolerant { 0 } else { NLM_F_EXCL };
        self.ack(member(cmd, name, entry), flags, &what, entry.is_bitmap())
    }

    fn ack(
        &mut self,
        msg: IpsetMessage,
        flags: u16,
        what: &str,
        bitmap: bool,
    ) -> Result<(), IpsetError> {
        let cmd = msg.cmd;
        self.conn
            .request(msg, flags)
            .map(drop)
            .map_err(|e| kernel_error(cmd, what, bitmap, e))
    }
}

fn check_name(cmd: Command, name: &str) -> Result<(), IpsetError> {
    if name.is_empty() || name.len() >= MAXNAMELEN || name.contains('\0') {
        return Err(IpsetError::Invalid {
            op: cmd.name(),
            set: name.to_owned(),
            reason: format!("a set name has 1 to {} bytes", MAXNAMELEN - 1),
        });
    }
    Ok(())
}

fn decode(cmd: Command, what: &str, e: netlink_packet_core::DecodeError) -> IpsetError {
    IpsetError::Netlink {
        op: cmd.name(),
        set: what.to_owned(),
        source: NetlinkError::Decode(e),
    }
}

/// Gives a kernel answer its ipset meaning (`bitmap`: the member or set is of a
/// bitmap type, whose type-specific codes differ from the hash types').
pub fn kernel_error(cmd: Command, what: &str, bitmap: bool, e: NetlinkError) -> IpsetError {
    match e {
        NetlinkError::Kernel { errno } => IpsetError::Kernel {
            op: cmd.name(),
            set: what.to_owned(),
            code: IpsetErrno::from_code(errno, bitmap),
        },
        source => IpsetError::Netlink {
            op: cmd.name(),
            set: what.to_owned(),
            source,
        },
    }
}
