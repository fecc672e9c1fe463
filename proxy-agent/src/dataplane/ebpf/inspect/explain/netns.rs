//! The client pod's identity at the socket layer: the cookie of its network namespace
//! (`SO_NETNS_COOKIE`, which is `bpf_get_netns_cookie()` in the programs), which keys
//! the socket programs' ClientIP affinity.

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::decide::ClientNetns;

/// Runs `f` on a thread that entered the network namespace at `path`.
fn in_netns<R: Send>(path: &Path, f: impl FnOnce() -> io::Result<R> + Send) -> io::Result<R> {
    let ns = File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: plain syscall on an open descriptor; only this thread moves.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// The network-namespace cookie of a socket's namespace.
fn socket_cookie(sock: &UdpSocket) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `cookie`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cookie of the network namespace at `path` (`/run/netns/NAME`,
/// `/proc/PID/ns/net`).
pub fn cookie_of(path: &Path) -> io::Result<u64> {
    in_netns(path, || {
        let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
        socket_cookie(&sock)
    })
}

/// Every network namespace on the host, once each: the ones `ip netns` names, then
/// those of processes.
fn namespaces() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        let mut named: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        named.sort();
        paths.extend(named);
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        let mut pids: Vec<u32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        pids.sort_unstable();
        paths.extend(
            pids.into_iter()
                .map(|p| PathBuf::from(format!("/proc/{p}/ns/net"))),
        );
    }
    let mut seen = std::collections::HashSet::new();
    paths
        .into_iter()
        .filter(|p| {
            std::fs::metadata(p)
                .map(|m| seen.insert((m.dev(), m.ino())))
                .unwrap_or(false)
        })
        .collect()
}

/// The namespace holding `addr` as one of its own addresses (it can bind it), found
/// among every namespace on the host: its cookie, or why there is none to tell.
pub fn find(addr: IpAddr) -> ClientNetns {
    let found: Vec<(PathBuf, u64)> = namespaces()
        .into_iter()
        .filter_map(|p| {
            let cookie = in_netns(&p, || {
                let sock = UdpSocket::bind(SocketAddr::new(addr, 0))?;
                socket_cookie(&sock)
            })
            .ok()?;
            Some((p, cookie))
        })
        .collect();
    pick(addr, found)
}

/// The one namespace found, or why not.
fn pick(addr: IpAddr, found: Vec<(PathBuf, u64)>) -> ClientNetns {
    match found.as_slice() {
        [(path, cookie)] => ClientNetns::Known {
            cookie: *cookie,
            from: path.display().to_string(),
        },
        [] => ClientNetns::Unknown(format!(
            "no network namespace on this host has {addr} as its address"
        )),
        many => ClientNetns::Unknown(format!(
            "{} network namespaces have {addr} as their address ({})",
            many.len(),
            many.iter()
                .map(|(p, _)| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_namespace_is_the_client_none_or_several_are_reported_by_path() {
        let a: IpAddr = "10.244.0.2".parse().expect("an address");
        assert_eq!(
            pick(a, vec![("/run/netns/client".into(), 7)]),
            ClientNetns::Known {
                cookie: 7,
                from: "/run/netns/client".into()
            }
        );
        let none = pick(a, Vec::new());
        assert!(
            matches!(&none, ClientNetns::Unknown(w) if w.contains("no network namespace")),
            "{none:?}"
        );
        let two = pick(
            a,
            vec![("/run/netns/a".into(), 1), ("/run/netns/b".into(), 2)],
        );
        assert!(
            matches!(&two, ClientNetns::Unknown(w) if w.starts_with("2 network namespaces") && w.contains("/run/netns/a, /run/netns/b")),
            "{two:?}"
        );
    }

    #[test]
    fn this_threads_namespace_has_a_cookie_and_holds_loopback() {
        // Needs nothing but a socket: the test's own namespace.
        let own = cookie_of(Path::new("/proc/self/ns/net")).expect("a cookie");
        assert_ne!(own, 0);
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        assert_eq!(socket_cookie(&sock).expect("cookie"), own);
    }
}
