//! Connection-table entries for tests: the two legs the data plane writes for a flow.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::net::SocketAddr;

use proxy_common::{CT_F_REPLY, CT_F_SNAT, CtEntry, CtKey, TcConfig, ct_state, proto};

pub const S: u64 = 1_000_000_000;

pub fn config() -> TcConfig {
    TcConfig {
        tcp_opening_s: 60,
        tcp_established_s: 3600,
        tcp_closing_s: 10,
        udp_s: 30,
        udp_stream_s: 120,
        ..TcConfig::default()
    }
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn key(src: SocketAddr, dst: SocketAddr, proto: u8) -> CtKey {
    CtKey {
        saddr: src.ip().into(),
        daddr: dst.ip().into(),
        sport_be: src.port().to_be(),
        dport_be: dst.port().to_be(),
        proto,
        _pad: [0; 3],
    }
}

pub fn entry(src: SocketAddr, dst: SocketAddr, flags: u8, state: u8, last_seen_s: u64) -> CtEntry {
    CtEntry {
        nat_saddr: src.ip().into(),
        nat_daddr: dst.ip().into(),
        nat_sport_be: src.port().to_be(),
        nat_dport_be: dst.port().to_be(),
        flags,
        state,
        service_id: 7,
        backend_id: 3,
        created_ns: 100 * S,
        last_seen_ns: last_seen_s * S,
        packets: 0,
        bytes: 0,
        ..CtEntry::default()
    }
}

/// The two entries the data plane writes for one flow: forward leg first.
pub struct Legs2 {
    pub proto: u8,
    pub client: SocketAddr,
    pub frontend: SocketAddr,
    pub backend: SocketAddr,
    pub snat: Option<SocketAddr>,
    pub state: u8,
    pub fwd_seen_s: u64,
    pub rep_seen_s: u64,
}

impl Legs2 {
    pub fn tcp(client: &str, frontend: &str, backend: &str) -> Self {
        Legs2 {
            proto: proto::TCP,
            client: sa(client),
            frontend: sa(frontend),
            backend: sa(backend),
            snat: None,
            state: ct_state::ESTABLISHED,
            fwd_seen_s: 1000,
            rep_seen_s: 1000,
        }
    }

    pub fn entries(&self) -> [(CtKey, CtEntry); 2] {
        let snat_flag = if self.snat.is_some() { CT_F_SNAT } else { 0 };
        let seen_by_backend = self.snat.unwrap_or(self.client);
        let mut fwd = entry(
            seen_by_backend,
            self.backend,
            snat_flag,
            self.state,
            self.fwd_seen_s,
        );
        (fwd.packets, fwd.bytes) = (12, 1200);
        let mut rep = entry(
            self.frontend,
            self.client,
            CT_F_REPLY | snat_flag,
            self.state,
            self.rep_seen_s,
        );
        (rep.packets, rep.bytes) = (10, 9000);
        [
            (key(self.client, self.frontend, self.proto), fwd),
            (key(self.backend, seen_by_backend, self.proto), rep),
        ]
    }
}
