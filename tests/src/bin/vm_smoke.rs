//! `vm-smoke`: run by `cargo xtask vm-test` inside the VM, never on the host. Proves the
//! guest kernel has what the IPVS mode needs and that the harness ships and runs a host
//! binary: `/proc/net/ip_vs` exists, the "IPVS" generic netlink family resolves and
//! answers GET_INFO, ipset's nfnetlink subsystem answers a PROTOCOL request, and a dummy
//! link can be created. Prints one line per check; exits 1 if any failed.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;

// Netlink constants not worth a dependency (linux/netlink.h, genetlink.h, ip_vs.h,
// netfilter/nfnetlink.h, netfilter/ipset/ip_set.h, if_link.h).
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const IPVS_CMD_GET_INFO: u8 = 15;
const IPVS_INFO_ATTR_VERSION: u16 = 1;
const IPVS_INFO_ATTR_CONN_TAB_SIZE: u16 = 2;
const NFNL_SUBSYS_IPSET: u16 = 6;
const IPSET_CMD_PROTOCOL: u16 = 1;
const IPSET_ATTR_PROTOCOL: u16 = 1;
const IPSET_PROTOCOL: u8 = 7;
const RTM_NEWLINK: u16 = 16;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const DUMMY: &str = "kpt-smoke0";

/// A check: what it saw, or why it failed.
type Check = fn() -> Result<String, String>;

fn main() -> ExitCode {
    if let Some(arg) = std::env::args().nth(1) {
        println!("vm-smoke: FAILED: takes no arguments, got {arg:?}");
        return ExitCode::from(2);
    }
    let checks: [(&str, Check); 4] = [
        ("/proc/net/ip_vs", proc_ip_vs),
        ("IPVS generic netlink", ipvs_genl),
        ("ipset nfnetlink", ipset_protocol),
        ("dummy link", dummy_link),
    ];
    let mut failed = 0;
    for (name, check) in checks {
        match check() {
            Ok(what) => println!("vm-smoke: ok: {name}: {what}"),
            Err(e) => {
                failed += 1;
                println!("vm-smoke: FAILED: {name}: {e}");
            }
        }
    }
    if failed > 0 {
        println!("vm-smoke: {failed} check(s) failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn proc_ip_vs() -> Result<String, String> {
    let text = std::fs::read_to_string("/proc/net/ip_vs")
        .map_err(|e| format!("{e} (ip_vs not loaded?)"))?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

fn ipvs_genl() -> Result<String, String> {
    let sock = Netlink::open(libc::NETLINK_GENERIC)?;
    let mut name = b"IPVS\0".to_vec();
    let mut body = genl_header(CTRL_CMD_GETFAMILY, 1);
    attr(&mut body, CTRL_ATTR_FAMILY_NAME, &mut name);
    let replies = sock.request(GENL_ID_CTRL, NLM_F_ACK, &body)?;
    let family = replies
        .iter()
        .find(|(t, _)| *t == GENL_ID_CTRL)
        .and_then(|(_, p)| find_attr(p.get(4..)?, CTRL_ATTR_FAMILY_ID))
        .and_then(|v| Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?)))
        .ok_or("no family id in the CTRL_CMD_GETFAMILY answer")?;

    let replies = sock.request(family, NLM_F_ACK, &genl_header(IPVS_CMD_GET_INFO, 1))?;
    let payload = replies
        .iter()
        .find(|(t, _)| *t == family)
        .and_then(|(_, p)| p.get(4..))
        .ok_or("no answer to IPVS_CMD_GET_INFO")?;
    let u32_attr = |kind| {
        find_attr(payload, kind)
            .and_then(|v| Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?)))
    };
    let version = u32_attr(IPVS_INFO_ATTR_VERSION).ok_or("GET_INFO without a version")?;
    let table = u32_attr(IPVS_INFO_ATTR_CONN_TAB_SIZE).unwrap_or(0);
    Ok(format!(
        "family id {family}, IPVS {}.{}.{}, connection table {table}",
        version >> 16,
        (version >> 8) & 0xff,
        version & 0xff
    ))
}

fn ipset_protocol() -> Result<String, String> {
    let sock = Netlink::open(libc::NETLINK_NETFILTER)?;
    // nfgenmsg: family, version (NFNETLINK_V0), resource id (big-endian).
    let mut body = vec![libc::AF_INET as u8, 0, 0, 0];
    attr(&mut body, IPSET_ATTR_PROTOCOL, &mut vec![IPSET_PROTOCOL]);
    let kind = (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_PROTOCOL;
    let replies = sock.request(kind, NLM_F_ACK, &body)?;
    let protocol = replies
        .iter()
        .find(|(t, _)| *t == kind)
        .and_then(|(_, p)| find_attr(p.get(4..)?, IPSET_ATTR_PROTOCOL))
        .and_then(|v| v.first().copied())
        .ok_or("no protocol attribute in the answer (ip_set not loaded?)")?;
    Ok(format!("kernel speaks ipset protocol {protocol}"))
}

fn dummy_link() -> Result<String, String> {
    let sock = Netlink::open(libc::NETLINK_ROUTE)?;
    // ifinfomsg: family, pad, type, index, flags, change.
    let mut body = vec![0u8; 16];
    attr(
        &mut body,
        IFLA_IFNAME,
        &mut format!("{DUMMY}\0").into_bytes(),
    );
    let mut info = Vec::new();
    attr(&mut info, IFLA_INFO_KIND, &mut b"dummy".to_vec());
    attr(&mut body, IFLA_LINKINFO | NLA_F_NESTED, &mut info);
    sock.request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &body)?;
    let path = format!("/sys/class/net/{DUMMY}");
    if !std::path::Path::new(&path).exists() {
        return Err(format!("created, but {path} does not exist"));
    }
    Ok(format!("{DUMMY} created"))
}

/// A netlink socket of one protocol, with a receive timeout so a silent kernel fails
/// the check instead of hanging the VM.
struct Netlink(OwnedFd);

impl Netlink {
    fn open(protocol: i32) -> Result<Self, String> {
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(format!(
                "socket(AF_NETLINK, {protocol}): {}",
                io::Error::last_os_error()
            ));
        }
        // SAFETY: `fd` is a fresh, valid descriptor nothing else owns.
        let sock = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a valid timeval and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(format!("SO_RCVTIMEO: {}", io::Error::last_os_error()));
        }
        Ok(sock)
    }

    /// Sends one request and collects the answers `(type, payload)` up to the ACK;
    /// a netlink error becomes `Err`.
    fn request(&self, kind: u16, flags: u16, body: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, String> {
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        msg.extend_from_slice(body);
        let mut addr: libc::sockaddr_nl =
            // SAFETY: sockaddr_nl is plain data; all zeroes is valid (the kernel, no groups).
            unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `msg` and `addr` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(format!("sendto: {}", io::Error::last_os_error()));
        }
        let mut answers = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(format!("recv: {}", io::Error::last_os_error()));
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                if len < 16 || len > rest.len() {
                    return Err(format!("bad netlink message length {len}"));
                }
                let payload = &rest[16..len];
                match kind {
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map_or(-1, |e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]));
                        if code == 0 {
                            return Ok(answers);
                        }
                        return Err(format!(
                            "kernel answered {}",
                            io::Error::from_raw_os_error(-code)
                        ));
                    }
                    NLMSG_DONE => return Ok(answers),
                    _ => answers.push((kind, payload.to_vec())),
                }
                rest = &rest[align(len).min(rest.len())..];
            }
        }
    }
}

/// genlmsghdr: command, version, reserved.
fn genl_header(cmd: u8, version: u8) -> Vec<u8> {
    vec![cmd, version, 0, 0]
}

/// Appends attribute `kind` holding `value` (padded to four bytes).
fn attr(out: &mut Vec<u8>, kind: u16, value: &mut Vec<u8>) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.append(value);
    out.resize(align(out.len()), 0);
}

/// The value of the first attribute of `kind` in `attrs`.
fn find_attr(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let k = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if k & NLA_TYPE_MASK == kind {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[align(len).min(attrs.len())..];
    }
    None
}

fn align(n: usize) -> usize {
    n.div_ceil(4) * 4
}
