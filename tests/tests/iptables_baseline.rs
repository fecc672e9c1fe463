//! The kube-proxy iptables baseline: a NodePort programmed with kube-proxy-style nat rules
//! on node-a of a [`NodesTopology`], reached from the external client.

use std::collections::BTreeSet;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::{
    Netns, NodesTopology, ProbeReply, install_kube_proxy_nodeport, probe_bin, spawn_guarded, tool,
};

const POD_PORT: u16 = 8080;
const NODE_PORT: u16 = 30080;

fn netns_list() -> String {
    let out = Command::new(tool("ip"))
        .args(["netns", "list"])
        .output()
        .unwrap_or_else(|e| panic!("ip netns list: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn nodeport_spreads_over_local_and_remote_pods() {
    let start = Instant::now();
    let topo = NodesTopology::new("ipt-np", 2);
    eprintln!("topology ready in {:?}", start.elapsed());
    let names = topo.netns_names();
    let servers = topo.serve_pods(&[POD_PORT], &[]);
    let node_a = topo.node_a();
    let backends: Vec<SocketAddrV4> = topo
        .pods()
        .map(|p| SocketAddrV4::new(p.ipv4, POD_PORT))
        .collect();
    assert_eq!(backends.len(), 4);
    install_kube_proxy_nodeport(&node_a.netns, node_a.ipv4, NODE_PORT, &backends);

    let to = format!("{}:{NODE_PORT}", node_a.ipv4);
    let out = topo.client_probe(&["tcp", "--to", &to, "--count", "40", "--peer"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let replies = ProbeReply::parse_all(&stdout);
    assert_eq!(replies.len(), 40, "stdout: {stdout}");
    let errors: Vec<_> = replies.iter().filter_map(ProbeReply::error).collect();
    assert!(
        errors.is_empty(),
        "failed requests: {errors:?}; stdout: {stdout}"
    );
    assert!(out.status.success(), "probe failed: {out:?}");
    let seen: BTreeSet<&str> = replies.iter().filter_map(ProbeReply::name).collect();
    let expected: BTreeSet<&str> = topo.pods().map(|p| p.name.as_str()).collect();
    assert_eq!(seen, expected, "stdout: {stdout}");
    // externalTrafficPolicy=Cluster: masqueraded to node-a's address toward each pod.
    for reply in &replies {
        let ProbeReply::Ok {
            name,
            peer: Some(peer),
            ..
        } = reply
        else {
            panic!("no peer in {reply:?}");
        };
        let masq = if name.starts_with("a-") {
            node_a.gateway_v4
        } else {
            node_a.ipv4
        };
        assert_eq!(peer.ip(), masq, "{name} saw {peer}");
    }
    eprintln!("test done in {:?}", start.elapsed());

    drop(servers);
    drop(topo);
    let left = netns_list();
    for name in &names {
        assert!(
            !left
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} left behind: {left}"
        );
    }
}

/// Sum of the `invalid` counters of `conntrack -S` in `ns`.
fn conntrack_invalid(ns: &Netns) -> u64 {
    let out = ns.exec(&[&tool("conntrack").to_string_lossy(), "-S"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("invalid="))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// A TCP/IPv4 segment seen by the capture socket.
#[derive(Debug, Clone, Copy)]
struct Segment {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    payload_len: u32,
}

const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an IPv4 packet (no link header) carrying TCP.
fn parse_segment(p: &[u8]) -> Option<Segment> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 6 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(be16(p, 2)).min(p.len());
    let tcp = p.get(ihl..total)?;
    if tcp.len() < 20 {
        return None;
    }
    let doff = usize::from(tcp[12] >> 4) * 4;
    Some(Segment {
        src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        sport: be16(tcp, 0),
        dport: be16(tcp, 2),
        seq: be32(tcp, 4),
        ack: be32(tcp, 8),
        flags: tcp[13],
        window: be16(tcp, 14),
        payload_len: u32::try_from(tcp.len().saturating_sub(doff)).expect("fits"),
    })
}

/// An `AF_PACKET` socket (cooked, `ETH_P_ALL`: only those also see outgoing packets) for every interface of the calling thread's
/// namespace, with a 100 ms receive timeout.
fn capture_socket() -> OwnedFd {
    let proto = i32::from(u16::try_from(libc::ETH_P_ALL).expect("fits").to_be());
    // SAFETY: plain syscalls; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto) };
    assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: tv outlives the call; the size matches.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            u32::try_from(mem::size_of::<libc::timeval>()).expect("fits"),
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
    fd
}

/// Reads segments until `pred` accepts one or `timeout` passes.
fn capture_until(
    fd: &OwnedFd,
    timeout: Duration,
    pred: impl Fn(&Segment) -> bool,
) -> Option<Segment> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else { continue };
        if let Some(seg) = parse_segment(&buf[..n])
            && pred(&seg)
        {
            return Some(seg);
        }
    }
    None
}

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let bytes: Vec<u8> = chunks.concat();
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded to 16 bits")
}

/// Sends one hand-made TCP segment through a raw socket of the calling thread's namespace.
fn inject(seg: &Segment, payload: &[u8]) {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&seg.sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&seg.dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seg.seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&seg.ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = seg.flags;
    tcp[14..16].copy_from_slice(&seg.window.to_be_bytes());
    tcp.extend_from_slice(payload);
    let tcp_len = u16::try_from(tcp.len()).expect("fits");
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&seg.src.octets());
    pseudo.extend_from_slice(&seg.dst.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&tcp_len.to_be_bytes());
    let sum = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20 + tcp_len).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&seg.src.octets());
    ip[16..20].copy_from_slice(&seg.dst.octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&tcp);

    // SAFETY: plain syscall; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut to: libc::sockaddr_in = unsafe { mem::zeroed() };
    to.sin_family = libc::sa_family_t::try_from(libc::AF_INET).expect("fits");
    to.sin_addr.s_addr = u32::from_ne_bytes(seg.dst.octets());
    // SAFETY: buffers valid for their lengths.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            ip.as_ptr().cast(),
            ip.len(),
            0,
            (&raw const to).cast(),
            u32::try_from(mem::size_of::<libc::sockaddr_in>()).expect("fits"),
        )
    };
    assert_eq!(
        usize::try_from(n).ok(),
        Some(ip.len()),
        "sendto: {}",
        io::Error::last_os_error()
    );
}

/// kubernetes issue 74839 with the kube-proxy rules of the test above (no
/// `--ctstate INVALID -j DROP`): an out-of-window segment from a node-a-local backend is
/// INVALID for node-a's conntrack, so it skips un-NAT; node-a answers it with an RST that
/// the pod accepts, and the client's held connection breaks.
#[test]
fn invalid_segment_resets_a_nodeport_connection() {
    let topo = NodesTopology::new("ipt-inv", 2);
    let servers = topo.serve_pods(&[POD_PORT], &[]);
    let node_a = topo.node_a();
    let backends: Vec<SocketAddrV4> = topo
        .pods()
        .map(|p| SocketAddrV4::new(p.ipv4, POD_PORT))
        .collect();
    install_kube_proxy_nodeport(&node_a.netns, node_a.ipv4, NODE_PORT, &backends);
    let captures: Vec<OwnedFd> = node_a
        .pods
        .iter()
        .map(|p| p.netns.run(capture_socket))
        .collect();

    // Hold a connection on a node-a-local pod (the rules spread randomly: retry).
    let to = format!("{}:{NODE_PORT}", node_a.ipv4);
    let mut found = None;
    for _ in 0..30 {
        let mut hold = spawn_guarded(
            &topo.client,
            None,
            Command::new(probe_bin()).args([
                "hold",
                "--to",
                &to,
                "--rounds",
                "30",
                "--interval-ms",
                "1000",
            ]),
        );
        let first = hold.expect_line(Duration::from_secs(5));
        let name = ProbeReply::parse(&first)
            .and_then(|r| r.name().map(str::to_owned))
            .unwrap_or_else(|| panic!("hold failed: {first}"));
        if let Some(i) = node_a.pods.iter().position(|p| p.name == name) {
            found = Some((hold, i));
            break;
        }
    }
    let (mut hold, i) = found.expect("no hold landed on a node-a pod in 30 tries");
    let pod = &node_a.pods[i];
    let capture = &captures[i];

    // The pod's echo of a ping: its seq + len is the pod's snd_nxt, its ack the pod's
    // rcv_nxt; the client then stays quiet for the rest of the 1 s interval.
    let from_pod = |s: &Segment| s.src == pod.ipv4 && s.sport == POD_PORT && s.payload_len > 0;
    let mut echo = capture_until(capture, Duration::from_secs(5), from_pod)
        .expect("no data segment from the pod captured");
    // Take the newest one queued, should the test have been slow.
    while let Some(newer) = capture_until(capture, Duration::from_millis(50), from_pod) {
        echo = newer;
    }
    eprintln!("captured {echo:?}");
    let before = conntrack_invalid(&node_a.netns);
    let bogus = Segment {
        seq: echo
            .seq
            .wrapping_add(echo.payload_len)
            .wrapping_add(0x4000_0000),
        flags: TCP_ACK | TCP_PSH,
        ..echo
    };
    pod.netns.run(|| inject(&bogus, b"bogus\n"));
    let rst = capture_until(capture, Duration::from_secs(2), |s| {
        s.dst == pod.ipv4 && s.dport == POD_PORT && s.flags & TCP_RST != 0
    })
    .expect("no RST came back for the INVALID segment");
    eprintln!("RST {rst:?}");
    let after = conntrack_invalid(&node_a.netns);
    assert!(after > before, "conntrack invalid {before} -> {after}");
    assert_eq!(
        rst.src, echo.dst,
        "the RST comes from the masquerade address, not un-NATed"
    );
    assert_eq!(rst.seq, echo.ack, "the RST is in the pod's window");

    let err = hold.wait_for_line(Duration::from_secs(10), |l| l.starts_with("err "));
    assert!(err.contains("ECONNRESET"), "hold ended with {err}");
    drop(servers);
}
