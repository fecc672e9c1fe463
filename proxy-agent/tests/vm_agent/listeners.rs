//! What pods serve: named listeners, so that a client learns which backend answered.
//!
//! TCP: the server greets every connection with `NAME\n`, then answers each line `L`
//! with `NAME L\n` until the client closes (a held connection can keep exchanging
//! data). UDP: every datagram is answered with `NAME`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};

use super::netns::Netns;

/// Serves `name` over TCP on `addr`, bound in `ns`.
pub fn serve_tcp(ns: &Netns, addr: SocketAddr, name: &str) {
    let listener = ns.run(move || {
        TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding a listener on {addr}: {e}"))
    });
    let name = name.to_owned();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let name = name.clone();
            // One thread per connection: a held one must not block the others.
            std::thread::spawn(move || {
                let mut writer = match conn.try_clone() {
                    Ok(w) => w,
                    Err(_) => return,
                };
                if writer.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    if writer
                        .write_all(format!("{name} {line}\n").as_bytes())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
}

/// Answers every datagram on `addr` (bound in `ns`) with `name`.
pub fn serve_udp(ns: &Netns, addr: SocketAddr, name: &str) {
    let socket = ns.run(move || {
        UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding a UDP listener on {addr}: {e}"))
    });
    let name = name.to_owned();
    std::thread::spawn(move || {
        let mut buf = [0; 512];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(name.as_bytes(), from);
        }
    });
}

/// Greets every TCP connection on `addr` (bound in `ns`) with `NAME PEER-ADDRESS` and
/// closes it: what a backend sees as the client's address (masqueraded or kept).
pub fn serve_tcp_peer(ns: &Netns, addr: SocketAddr, name: &str) {
    let listener = ns.run(move || {
        TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding a listener on {addr}: {e}"))
    });
    let name = name.to_owned();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let peer = conn
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = conn.write_all(format!("{name} {peer}\n").as_bytes());
        }
    });
}

/// Greets every TCP connection on `addr` (bound in `ns`) with `name` and closes it at
/// once: the cheapest server, for counting connections per second.
pub fn serve_tcp_greet_and_close(ns: &Netns, addr: SocketAddr, name: &str) {
    let listener = ns.run(move || {
        TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding a listener on {addr}: {e}"))
    });
    let greeting = format!("{name}\n");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(greeting.as_bytes());
        }
    });
}
