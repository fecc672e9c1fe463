//! Differential check of a change to the tc programs: the embedded object and another
//! build (`KPT_DIFF_BASE`, e.g. the object of the commit before) get the same maps and
//! the same long pseudo-random stream of packets (IPv4 and IPv6, TCP and UDP, every
//! flag that matters, IPv4 options, zero UDP checksums, payloads, ICMP errors about the
//! flows, both programs on both interfaces), and must answer alike: the same verdict
//! and bytes for every packet, and in the end the same counters and connection table
//! (timestamps aside). Ignored by default (it needs the other build):
//! `KPT_DIFF_BASE=old.o cargo test -p proxy-agent --test datapath_diff -- --ignored`
//! (`KPT_DIFF_SEED=n` for another stream).
//!
//! Every service has one backend and no remote one, and pods do not reach services
//! (whose backends are behind the same interface: SNAT), so nothing depends on
//! `bpf_get_prandom_u32` (backend choice, SNAT ports); the SNAT path is checked byte for
//! byte by `datapath_tc`.

mod datapath;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use datapath::nodeport::*;
use datapath::packet::{self, L4, Macs};
use datapath::*;
use proxy_agent::dataplane::ebpf::PROGRAMS;
use proxy_common::{CtEntry, CtKey, FRONTEND_KIND_SHIFT, kind, maps, scope};

/// Packets in the stream.
const PACKETS: usize = 20_000;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("small")
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

/// One side of the comparison, set up as the node of `datapath/mod.rs` with NodePorts
/// (TCP and UDP, both families) to the local backends.
fn node(object: &[u8]) -> Datapath {
    let mut dp = Datapath::with_object(CONNTRACK_MAX * 64, object);
    let mut id = 1;
    for proto in [packet::TCP, packet::UDP] {
        for backend in [IpAddr::V4(BACKEND4), IpAddr::V6(BACKEND6)] {
            let mut svc = nodeport(proto, backend);
            svc.id = id;
            svc.first_backend_id = id * 10;
            dp.add_service(&svc);
            id += 1;
        }
    }
    // A ClusterIP, for node processes at egress.
    dp.add_service(&Service {
        id,
        vip: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
        port: 80,
        proto: packet::TCP,
        scope: scope::INTERNAL,
        flags: kind::CLUSTER_IP << FRONTEND_KIND_SHIFT,
        first_backend_id: id * 10,
        backends: vec![sa(BACKEND4, BACKEND_PORT)],
    });
    dp
}

/// The endpoints packets travel between, per family: the client, the node (NodePort
/// and a ClusterIP), the local backend, and a stranger.
fn endpoints(v4: bool) -> [IpAddr; 5] {
    if v4 {
        [
            CLIENT4.into(),
            NODE4.into(),
            BACKEND4.into(),
            Ipv4Addr::new(10, 96, 0, 10).into(),
            Ipv4Addr::new(192, 0, 2, 77).into(),
        ]
    } else {
        [
            CLIENT6.into(),
            NODE6.into(),
            BACKEND6.into(),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 10)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x77)),
        ]
    }
}

/// A pseudo-random frame, and the interface and program to run it through.
fn frame(rng: &mut Rng, dp: &Datapath) -> (Vec<u8>, u32, bool) {
    let v4 = rng.below(3) != 0;
    let ends = endpoints(v4);
    let ingress = rng.below(3) != 0;
    let ifindex = if rng.below(2) == 0 { dp.ext } else { dp.pod };
    let src = rng.pick(&ends);
    // A pod reaching a service whose backend is behind pod0 again is SNATed, to a
    // random port when its own is taken: not to services from pod0.
    let dst = if ingress && ifindex == dp.pod {
        rng.pick(&[ends[0], ends[2], ends[4]])
    } else {
        rng.pick(&ends)
    };
    let ports = [CLIENT_PORT, CLIENT_PORT + 1, NODE_PORT, BACKEND_PORT, 80, 9];
    let (mut sport, mut dport) = (rng.pick(&ports), rng.pick(&ports));
    let clients = [
        CLIENT_PORT,
        CLIENT_PORT + 1,
        CLIENT_PORT + 2,
        CLIENT_PORT + 3,
    ];
    // Mostly packets of the flows the services see: client to NodePort on ext0 (or
    // the stack's egress there), and the backend's replies on pod0 (or at egress).
    let (src, dst) = match rng.below(5) {
        0 | 1 if ingress && ifindex == dp.ext => {
            (sport, dport) = (rng.pick(&clients), NODE_PORT);
            (ends[0], ends[1])
        }
        0 | 1 => {
            (sport, dport) = (BACKEND_PORT, rng.pick(&clients));
            (ends[2], ends[0])
        }
        _ => (src, dst),
    };
    let flags = rng.pick(&[0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x01, 0x00]);
    let payload: Vec<u8> = (0..rng.pick(&[0usize, 1, 7, 100, 1400]))
        .map(|i| (i * 7) as u8)
        .collect();
    let macs = Macs {
        src: rng.pick(&[CLIENT_MAC, BACKEND_MAC, GATEWAY_MAC]),
        dst: rng.pick(&[EXT_MAC, POD_MAC]),
    };
    let kind = rng.below(10);
    let ip = if kind == 0 {
        // An ICMP error about a packet between two of the endpoints.
        let (qs, qd) = (rng.pick(&ends), rng.pick(&ends));
        let quoted = packet::ip(qs, qd, &L4::tcp(sport, dport, 0x02));
        let (ty, code) = if v4 {
            (3, rng.pick(&[3u8, 4]))
        } else {
            (rng.pick(&[1u8, 2]), 0)
        };
        let cut = if v4 { 28 } else { 48 };
        packet::icmp(src, dst, ty, code, 1280, &quoted[..cut])
    } else if kind == 1 && v4 {
        // IPv4 with options.
        let l4 = L4::tcp(sport, dport, flags);
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
            unreachable!("IPv4 endpoints")
        };
        packet::ipv4(s, d, packet::TCP, &[1, 1, 1, 0], 0, &l4.bytes(src, dst))
    } else if kind < 5 {
        let l4 = L4::udp(sport, dport, &payload);
        let mut b = packet::ip(src, dst, &l4);
        if v4 && rng.below(3) == 0 {
            // "No checksum": the field just before the payload.
            let at = b.len() - payload.len() - 2;
            b[at..at + 2].copy_from_slice(&[0, 0]);
        }
        b
    } else {
        let mut l4 = L4::tcp(sport, dport, flags);
        l4.payload = payload;
        packet::ip(src, dst, &l4)
    };
    (packet::eth(macs, &ip), ifindex, ingress)
}

/// The connection table without timestamps, sorted.
fn table(dp: &Datapath) -> Vec<(CtKey, CtEntry)> {
    let mut t = dp.ct_entries();
    for (_, e) in &mut t {
        *e = untimed(*e);
    }
    t.sort_by_key(|(k, _)| format!("{k:?}"));
    t
}

#[test]
#[ignore = "needs another build of the object: KPT_DIFF_BASE"]
fn the_same_packets_get_the_same_answers() {
    let path = std::env::var("KPT_DIFF_BASE").expect("KPT_DIFF_BASE: the object to compare with");
    let base = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let (new, old) = (node(PROGRAMS), node(&base));
    let seed = std::env::var("KPT_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1u64);
    let mut rng = Rng(0x5eed_1234_abcd_0000 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut redirected = 0;
    for i in 0..PACKETS {
        let (f, ifindex, ingress) = frame(&mut rng, &new);
        let (a, b) = if ingress {
            (new.ingress(ifindex, &f), old.ingress(ifindex, &f))
        } else {
            (new.egress(ifindex, &f), old.egress(ifindex, &f))
        };
        assert_eq!(
            (a.verdict, &a.frame),
            (b.verdict, &b.frame),
            "packet {i} ({} on {ifindex}): {f:02x?}",
            if ingress { "ingress" } else { "egress" }
        );
        redirected += usize::from(a.verdict == TC_ACT_REDIRECT);
    }
    assert_eq!(new.counters(), old.counters(), "counters");
    assert_eq!(table(&new), table(&old), "connection table");
    let translated: u64 = new
        .counters()
        .nonzero()
        .iter()
        .filter(|(k, _)| k.contains("translated") || *k == "ct_new")
        .map(|(_, v)| v)
        .sum();
    println!(
        "{PACKETS} packets: {redirected} redirected, {translated} translated or opened; {} \
         entries in {}; counters {:?}",
        new.ct_len(),
        maps::CONNTRACK,
        new.counters().nonzero()
    );
    assert!(translated > 1000, "the stream exercised too few flows");
}
