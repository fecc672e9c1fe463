//! The sock_diag messages against the layouts of `linux/inet_diag.h` and
//! `linux/sock_diag.h`, and the conversation against a scripted kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST};

use super::*;
use crate::dataplane::ipvs::netlink::socket::encode;
use crate::dataplane::ipvs::netlink::socket::tests::{Script, done, error, message};

/// `SOCK_DIAG_BY_FAMILY` and `SOCK_DESTROY` (`linux/sock_diag.h`).
const BY_FAMILY: u16 = 20;
const DESTROY: u16 = 21;
/// `1 << TCP_ESTABLISHED`.
const ESTABLISHED: u32 = 1 << 1;

/// `struct inet_diag_sockid`, laid out by hand: `__be16 sport, dport; __be32 src[4],
/// dst[4]; __u32 if; __u32 cookie[2]` (48 bytes).
fn sockid(
    sport: u16,
    dport: u16,
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: u64,
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&dport.to_be_bytes());
    b.extend_from_slice(&src);
    b.extend_from_slice(&dst);
    b.extend_from_slice(&ifindex.to_ne_bytes());
    b.extend_from_slice(&(cookie as u32).to_ne_bytes());
    b.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    assert_eq!(b.len(), 48);
    b
}

/// `struct inet_diag_req_v2`: `__u8 family, protocol, ext, pad; __u32 states;
/// struct inet_diag_sockid id` (56 bytes).
fn req_v2(family: u8, states: u32, id: &[u8]) -> Vec<u8> {
    let mut b = vec![family, 17, 0, 0];
    b.extend_from_slice(&states.to_ne_bytes());
    b.extend_from_slice(id);
    assert_eq!(b.len(), 56);
    b
}

/// `struct inet_diag_msg`: `__u8 family, state, timer, retrans; struct
/// inet_diag_sockid id; __u32 expires, rqueue, wqueue, uid, inode` (72 bytes), then
/// one attribute as a kernel appends them (INET_DIAG_SOCKOPT, 4 bytes).
fn diag_msg(family: u8, id: &[u8]) -> Vec<u8> {
    let mut b = vec![family, 1, 0, 0];
    b.extend_from_slice(id);
    for v in [0u32, 0, 0, 0, 4242] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    assert_eq!(b.len(), 72);
    b.extend_from_slice(&[8, 0, 22, 0, 1, 0, 0, 0]);
    b
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut b = [0; 16];
    b[..4].copy_from_slice(&a);
    b
}

fn header(bytes: &[u8]) -> (u32, u16, u16) {
    let len = u32::from_ne_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let ty = u16::from_ne_bytes(bytes[4..6].try_into().expect("2 bytes"));
    let flags = u16::from_ne_bytes(bytes[6..8].try_into().expect("2 bytes"));
    (len, ty, flags)
}

#[test]
fn the_dump_request_is_an_inet_diag_req_v2_for_established_udp() {
    let bytes = encode(dump_request(AF_INET), NLM_F_REQUEST | NLM_F_DUMP, 7);
    let (len, ty, flags) = header(&bytes);
    assert_eq!(
        (len as usize, ty, flags),
        (16 + 56, BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP)
    );
    let want = req_v2(2, ESTABLISHED, &sockid(0, 0, [0; 16], [0; 16], 0, 0));
    assert_eq!(&bytes[16..], &want[..]);

    let bytes = encode(dump_request(AF_INET6), NLM_F_REQUEST | NLM_F_DUMP, 8);
    assert_eq!(bytes[16], 10, "AF_INET6");
    assert_eq!(bytes.len(), 16 + 56);
}

#[test]
fn the_destroy_request_carries_the_tuple_interface_and_cookie_as_the_kernel_reads_them() {
    let cookie = 0x0000_0001_8000_0002_u64;
    let id = sockid(
        40000,
        5353,
        v4([10, 244, 0, 2]),
        v4([10, 244, 0, 11]),
        3,
        cookie,
    );
    let socket = parse(BY_FAMILY, &diag_msg(2, &id))
        .expect("parses")
        .expect("connected");
    assert_eq!(socket.cookie(), cookie);
    assert_eq!(socket.local(), "10.244.0.2:40000".parse().expect("addr"));
    assert_eq!(socket.peer(), "10.244.0.11:5353".parse().expect("addr"));
    assert_eq!(socket.id.interface_id, 3);

    let bytes = encode(destroy_request(&socket), NLM_F_REQUEST | NLM_F_ACK, 9);
    let (len, ty, flags) = header(&bytes);
    assert_eq!(
        (len as usize, ty, flags),
        (16 + 56, DESTROY, NLM_F_REQUEST | NLM_F_ACK)
    );
    assert_eq!(&bytes[16..], &req_v2(2, ESTABLISHED, &id)[..]);
}

#[test]
fn ipv6_and_ipv4_mapped_sockets_keep_all_sixteen_address_bytes() {
    let mapped = Ipv4Addr::new(10, 244, 0, 11).to_ipv6_mapped().octets();
    let src = "fd00:244::2".parse::<Ipv6Addr>().expect("addr").octets();
    let id = sockid(1234, 53, src, mapped, 0, 5);
    let socket = parse(BY_FAMILY, &diag_msg(10, &id))
        .expect("parses")
        .expect("connected");
    assert_eq!(socket.family, 10);
    assert_eq!(socket.peer().ip(), IpAddr::V6(Ipv6Addr::from(mapped)));
    let bytes = encode(destroy_request(&socket), NLM_F_REQUEST | NLM_F_ACK, 1);
    assert_eq!(&bytes[16..], &req_v2(10, ESTABLISHED, &id)[..]);
}

#[test]
fn sockets_without_a_destination_and_other_messages_are_not_connected_ones() {
    let unconnected = sockid(1234, 0, v4([10, 244, 0, 2]), [0; 16], 0, 1);
    assert_eq!(
        parse(BY_FAMILY, &diag_msg(2, &unconnected)).expect("parses"),
        None
    );
    assert_eq!(parse(99, &[0; 8]).expect("not ours"), None);
    assert!(
        parse(BY_FAMILY, &[2, 1, 0]).is_err(),
        "a short header is an error"
    );
}

#[test]
fn a_dump_collects_every_entry_and_a_destroy_reads_its_acknowledgement() {
    let a = sockid(40000, 5353, v4([10, 244, 0, 2]), v4([10, 244, 0, 11]), 0, 1);
    let b = sockid(40001, 5353, v4([10, 244, 0, 2]), v4([10, 244, 0, 12]), 0, 2);
    let mut script = Script::default();
    // One datagram with two entries, then the end.
    let mut first = message(BY_FAMILY, NLM_F_MULTIPART, 1, &diag_msg(2, &a));
    first.extend(message(BY_FAMILY, NLM_F_MULTIPART, 1, &diag_msg(2, &b)));
    script.replies.push_back(first);
    script.replies.push_back(done(1));
    // Destroying the first: acknowledged; the second: gone since; a third: refused.
    script.replies.push_back(error(2, 0));
    script.replies.push_back(error(3, libc::ENOENT));
    script.replies.push_back(error(4, libc::EOPNOTSUPP));
    let mut diag = Diag::new(script);
    let sockets = diag.connected(AF_INET).expect("dump");
    assert_eq!(sockets.len(), 2);
    assert_eq!(sockets[1].cookie(), 2);
    assert!(diag.destroy(&sockets[0]).is_ok());
    assert!(matches!(diag.destroy(&sockets[1]), Err(Destroy::Gone)));
    let refused = diag.destroy(&sockets[0]).expect_err("refused");
    assert_eq!(refused.errno(), Some(libc::EOPNOTSUPP));
}

/// Brings `lo` of the calling thread's namespace up (SIOCSIFFLAGS).
fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // SAFETY: an all-zero ifreq is valid; the name is set below.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *b as libc::c_char;
    }
    // SAFETY: ioctls on our socket with an ifreq we own, as SIOC[GS]IFFLAGS expect.
    unsafe {
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &raw mut req) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `SO_COOKIE`: what `bpf_get_socket_cookie()` returns for the socket.
fn so_cookie(s: &std::net::UdpSocket) -> u64 {
    use std::os::fd::AsRawFd;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt into a u64 we own, with its size.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    assert_eq!(rc, 0, "SO_COOKIE: {}", std::io::Error::last_os_error());
    cookie
}

/// The real kernel, in a namespace of the test thread's own: the dump reports a
/// connected socket with the cookie SO_COOKIE gives, and SOCK_DESTROY makes its next
/// call fail with ECONNABORTED, while its neighbour stays connected.
#[test]
fn the_kernel_lists_a_connected_socket_with_its_cookie_and_destroy_aborts_only_it() {
    let t = std::thread::spawn(|| {
        // SAFETY: no pointers; moves only this thread into a new namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "unshare(CLONE_NEWNET): {} (this test must run as root)",
                std::io::Error::last_os_error()
            );
        }
        loopback_up().expect("bringing lo up in the test namespace");
        let doomed = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        doomed.connect("127.0.0.1:5353").expect("connect");
        let kept = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        kept.connect("127.0.0.1:5354").expect("connect");
        let _unconnected = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        doomed
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");

        let mut diag = Diag::open().expect("NETLINK_SOCK_DIAG");
        let listed = diag.connected(AF_INET).expect("dump");
        assert_eq!(listed.len(), 2, "the connected sockets only: {listed:?}");
        let local = doomed.local_addr().expect("local");
        let entry = listed
            .iter()
            .find(|s| s.local() == local)
            .unwrap_or_else(|| panic!("{local} not listed: {listed:?}"));
        assert_eq!(entry.peer(), "127.0.0.1:5353".parse().expect("addr"));
        assert_eq!(entry.cookie(), so_cookie(&doomed), "the cookie BPF sees");
        assert!(diag.connected(AF_INET6).expect("dump v6").is_empty());

        diag.destroy(entry)
            .expect("SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY)");
        let mut buf = [0u8; 16];
        let e = doomed
            .recv(&mut buf)
            .expect_err("a destroyed socket's recv fails");
        assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}");
        // Disconnected: a send without an address has nowhere to go.
        let e = doomed.send(b"x").expect_err("no destination any more");
        assert_eq!(e.raw_os_error(), Some(libc::EDESTADDRREQ), "{e}");
        assert!(kept.peer_addr().is_ok(), "the other socket is untouched");
        // Destroying it again: gone.
        assert!(matches!(diag.destroy(entry), Err(Destroy::Gone)));
        let left = diag.connected(AF_INET).expect("dump");
        assert_eq!(left.len(), 1, "{left:?}");
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}
