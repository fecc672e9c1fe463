//! The data-path unit-test harness (Cilium's `bpf/tests` habit: PKTGEN builds a
//! packet, SETUP seeds the maps, the real program runs through BPF_PROG_TEST_RUN, CHECK
//! asserts the verdict, the bytes and the counters).
//!
//! Each test gets a [`Datapath`]: the compiled object loaded afresh (its own maps,
//! pinned only on a private bpffs), inside a network namespace of its own that looks
//! like a node: an external interface `ext0` with the client and a gateway behind it,
//! and a pod-facing `pod0` with a local backend, forwarding on, neighbours permanent.
//! So `bpf_fib_lookup` in the programs finds real routes and neighbours, and the
//! redirect verdicts are the ones a node would see; nothing leaves the namespace
//! (BPF_PROG_TEST_RUN returns the verdict without acting on it).
//!
//! Everything here needs root and BPF; a missing piece fails the test with the reason.

#![allow(dead_code, reason = "each test crate uses a part of the harness")]

pub mod nodeport;
pub mod packet;
pub mod stats;
pub mod sys;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, OnceLock};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader, Pod};
use proxy_agent::dataplane::ebpf::PROGRAMS;
use proxy_common::{
    Addr, AffinityMatchKey, AffinityValue, Backend, ClientAffinityKey, CtEntry, CtKey, CtOpenEntry,
    FrontendKey, FrontendValue, IFACE_F_EXTERNAL, IFACE_F_POD, Iface, NodeAddr, SlotKey,
    SourceRangeKey, TcConfig, counter, maps, programs,
};

use packet::{Mac, Macs};
use sys::{Netns, PrivateBpffs};

/// tc verdicts (`TC_ACT_*`).
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

// The node's namespace: addresses and MACs.
pub const NODE4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x10);
/// The gateway on `ext0` toward 198.51.100.0/24, another node's pods.
pub const GATEWAY4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// A pod on another node, routed through [`GATEWAY4`].
pub const REMOTE_BACKEND4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
pub const POD_NODE4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
pub const POD_NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 1);
pub const BACKEND4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
pub const BACKEND6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 5);
/// A pod address on `pod0` with no neighbour entry (yet).
pub const UNRESOLVED_BACKEND4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 6);
/// A router on the pod side (sends ICMP errors about flows to backends).
pub const POD_ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 0xfe);
/// No route at all.
pub const UNROUTED4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

pub const EXT_MAC: Mac = [2, 0, 0, 0, 1, 1];
pub const CLIENT_MAC: Mac = [2, 0, 0, 0, 1, 0x10];
pub const GATEWAY_MAC: Mac = [2, 0, 0, 0, 1, 0xfe];
pub const POD_MAC: Mac = [2, 0, 0, 0, 2, 1];
pub const BACKEND_MAC: Mac = [2, 0, 0, 0, 2, 5];

/// Frames arriving on `ext0` from the client, and on `pod0` from the backend.
pub const FROM_CLIENT: Macs = Macs {
    src: CLIENT_MAC,
    dst: EXT_MAC,
};
pub const FROM_BACKEND: Macs = Macs {
    src: BACKEND_MAC,
    dst: POD_MAC,
};

/// Frames the node sends to the local backend, to the client, to the gateway (the
/// FIB's answers).
pub const TO_BACKEND: Macs = Macs {
    src: POD_MAC,
    dst: BACKEND_MAC,
};
pub const TO_CLIENT: Macs = Macs {
    src: EXT_MAC,
    dst: CLIENT_MAC,
};
pub const TO_GATEWAY: Macs = Macs {
    src: EXT_MAC,
    dst: GATEWAY_MAC,
};

const TOPOLOGY: &str = "\
link add ext0 address 02:00:00:00:01:01 type veth peer name ext0p
link add pod0 address 02:00:00:00:02:01 type veth peer name pod0p
link set ext0p up
link set pod0p up
link set ext0 up
link set pod0 up
addr add 192.0.2.1/24 dev ext0
addr add fd00:2::1/64 dev ext0 nodad
addr add 10.244.0.1/24 dev pod0
addr add fd00:244::1/64 dev pod0 nodad
neigh add 192.0.2.10 lladdr 02:00:00:00:01:10 dev ext0 nud permanent
neigh add fd00:2::10 lladdr 02:00:00:00:01:10 dev ext0 nud permanent
neigh add 192.0.2.254 lladdr 02:00:00:00:01:fe dev ext0 nud permanent
route add 198.51.100.0/24 via 192.0.2.254 dev ext0
neigh add 10.244.0.5 lladdr 02:00:00:00:02:05 dev pod0 nud permanent
neigh add fd00:244::5 lladdr 02:00:00:00:02:05 dev pod0 nud permanent
";

/// Map sizes for tests: small, so that each load is quick (CONNTRACK is preallocated).
pub const CONNTRACK_MAX: u32 = 256;
/// `CT_OPEN`'s size in tests.
pub const CT_OPEN_MAX: u32 = 256;

/// One test's data plane. Fields drop in order: the object (closing its fds), then
/// the bpffs, then the namespace.
pub struct Datapath {
    ebpf: Ebpf,
    _bpffs: PrivateBpffs,
    netns: Netns,
    /// `ext0`'s index: the external interface.
    pub ext: u32,
    /// `pod0`'s index: the pod-facing interface.
    pub pod: u32,
}

/// What a program run returned.
#[derive(Debug)]
pub struct Run {
    pub verdict: u32,
    /// The packet as the program left it.
    pub frame: Vec<u8>,
}

impl Datapath {
    /// The node with both tc programs loaded and its interfaces and addresses in the
    /// maps, as the agent writes them; no services yet.
    pub fn new() -> Self {
        Self::with_tables(CONNTRACK_MAX, CT_OPEN_MAX)
    }

    /// Like [`Datapath::new`] with `CONNTRACK` (assured flows) and `CT_OPEN`
    /// (unassured ones) holding at most these many entries.
    pub fn with_tables(assured: u32, unassured: u32) -> Self {
        let mut dp = Self::load_with(assured, unassured);
        for name in [programs::TC_INGRESS, programs::TC_EGRESS] {
            dp.classifier_mut(name)
                .load()
                .unwrap_or_else(|e| panic!("loading {name} (verifier): {e:?}"));
        }
        dp.netns.sysctl("net/ipv4/conf/all/forwarding", "1");
        dp.netns.sysctl("net/ipv6/conf/all/forwarding", "1");
        dp.netns.ip_batch(TOPOLOGY);
        dp.ext = dp.netns.ifindex("ext0");
        dp.pod = dp.netns.ifindex("pod0");
        dp.set_tc_config(TcConfig::DEFAULT);
        for a in [IpAddr::V4(NODE4), IpAddr::V6(NODE6)] {
            dp.add_node_addr(a);
        }
        dp.set_iface(dp.ext, IFACE_F_EXTERNAL, Some(NODE4), Some(NODE6));
        dp.set_iface(dp.pod, IFACE_F_POD, Some(POD_NODE4), Some(POD_NODE6));
        dp
    }

    /// The object with its maps created (nothing verified yet), in a new namespace.
    pub fn load(conntrack_max: u32) -> Self {
        Self::load_with(conntrack_max, CT_OPEN_MAX)
    }

    fn load_with(conntrack_max: u32, ct_open_max: u32) -> Self {
        assert!(
            !PROGRAMS.is_empty(),
            "the eBPF object is empty: built with AYA_BUILD_SKIP=1? These tests need it"
        );
        let netns = Netns::enter();
        let bpffs = PrivateBpffs::mount();
        let ebpf = loader()
            .lock()
            // A test that panicked while loading left nothing half-set that matters:
            // every setting is made again below.
            .unwrap_or_else(|p| p.into_inner())
            .default_map_pin_directory(bpffs.path())
            .map_max_entries(maps::CONNTRACK, conntrack_max)
            .map_max_entries(maps::CT_OPEN, ct_open_max)
            .map_max_entries(maps::REV_SOCK, 256)
            .map_max_entries(maps::AFFINITY, 256)
            .map_max_entries(maps::CLIENT_AFFINITY, 256)
            .load(PROGRAMS)
            .unwrap_or_else(|e| panic!("loading the eBPF object: {e:?}"));
        Datapath {
            ebpf,
            _bpffs: bpffs,
            netns,
            ext: 0,
            pod: 0,
        }
    }

    /// The loaded object, for tests of other program types.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    fn classifier_mut(&mut self, name: &str) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("no program {name} in the object"))
            .try_into()
            .unwrap_or_else(|e| panic!("{name} is not a classifier: {e:?}"))
    }

    // --- running ---------------------------------------------------------------------

    /// Runs `ip -batch` lines in the node's namespace (a route's MTU, say).
    pub fn ip_batch(&self, script: &str) {
        self.netns.ip_batch(script);
    }

    /// Runs `tc_ingress` on `frame` as if it arrived on interface `ifindex`.
    pub fn ingress(&self, ifindex: u32, frame: &[u8]) -> Run {
        self.run(programs::TC_INGRESS, ifindex, frame)
    }

    /// Runs `tc_egress` on `frame` as if it left through interface `ifindex`.
    pub fn egress(&self, ifindex: u32, frame: &[u8]) -> Run {
        self.run(programs::TC_EGRESS, ifindex, frame)
    }

    fn run(&self, name: &str, ifindex: u32, frame: &[u8]) -> Run {
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .unwrap_or_else(|| panic!("no program {name}"))
            .try_into()
            .unwrap_or_else(|e| panic!("{name} is not a classifier: {e:?}"));
        let ctx = skb_ctx(ifindex);
        // Room to spare: the programs never grow a packet, a short buffer is ENOSPC.
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {name}: {e:?}"));
        out.truncate(r.data_size_out as usize);
        Run {
            verdict: r.return_value,
            frame: out,
        }
    }

    /// Loads `tc_floor`, the do-nothing program, for [`Datapath::time`].
    pub fn load_floor(&mut self) {
        self.classifier_mut(programs::TC_FLOOR)
            .load()
            .unwrap_or_else(|e| panic!("loading tc_floor: {e:?}"));
    }

    /// Runs program `name` `repeat` times on `frame` (on interface `ifindex`; the packet
    /// is not reset between runs) and returns the kernel's time per run.
    pub fn time(&self, name: &str, ifindex: u32, frame: &[u8], repeat: u32) -> (u32, f64) {
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .unwrap_or_else(|| panic!("no program {name}"))
            .try_into()
            .unwrap_or_else(|e| panic!("{name} is not a classifier: {e:?}"));
        let ctx = skb_ctx(ifindex);
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {name}: {e:?}"));
        (r.return_value, r.duration.as_nanos() as f64)
    }

    // --- SETUP: named map writers, as the agent writes them --------------------------

    fn hash<K: Pod, V: Pod>(&mut self, name: &str) -> HashMap<&mut MapData, K, V> {
        HashMap::try_from(
            self.ebpf
                .map_mut(name)
                .unwrap_or_else(|| panic!("no map {name}")),
        )
        .unwrap_or_else(|e| panic!("map {name}: {e:?}"))
    }

    fn hash_ro<K: Pod, V: Pod>(&self, name: &str) -> HashMap<&MapData, K, V> {
        HashMap::try_from(
            self.ebpf
                .map(name)
                .unwrap_or_else(|| panic!("no map {name}")),
        )
        .unwrap_or_else(|e| panic!("map {name}: {e:?}"))
    }

    pub fn set_tc_config(&mut self, c: TcConfig) {
        let mut a: Array<&mut MapData, TcConfig> = Array::try_from(
            self.ebpf
                .map_mut(maps::TC_CONFIG)
                .expect("no map TC_CONFIG"),
        )
        .expect("map TC_CONFIG");
        a.set(0, c, 0).expect("writing TC_CONFIG");
    }

    /// A node address NodePorts are served on.
    pub fn add_node_addr(&mut self, ip: IpAddr) {
        self.hash(maps::NODE_ADDRS)
            .insert(Addr::from(ip), NodeAddr { flags: 0 }, 0)
            .expect("writing NODE_ADDRS");
    }

    /// Interface `ifindex` with tc programs, `flags` (`IFACE_F_*`) and its addresses.
    pub fn set_iface(
        &mut self,
        ifindex: u32,
        flags: u32,
        v4: Option<Ipv4Addr>,
        v6: Option<Ipv6Addr>,
    ) {
        let iface = Iface {
            v4: v4.map(|a| Addr::from(IpAddr::V4(a))).unwrap_or_default(),
            v6: v6.map(|a| Addr::from(IpAddr::V6(a))).unwrap_or_default(),
            flags,
            _pad: 0,
        };
        self.hash(maps::IFACES)
            .insert(ifindex, iface, 0)
            .expect("writing IFACES");
    }

    /// Backend `id` at `addr`.
    pub fn set_backend(&mut self, id: u32, addr: SocketAddr, proto: u8) {
        let b = Backend {
            addr: Addr::from(addr.ip()),
            port_be: addr.port().to_be(),
            proto,
            flags: 0,
        };
        self.hash(maps::BACKENDS)
            .insert(id, b, 0)
            .expect("writing BACKENDS");
    }

    /// Slots `0..ids.len()` of service `service_id`, with their memberships.
    pub fn set_slots(&mut self, service_id: u32, ids: &[u32]) {
        for (slot, &backend_id) in ids.iter().enumerate() {
            let slot = u32::try_from(slot).expect("few slots");
            self.hash(maps::SLOTS)
                .insert(SlotKey { service_id, slot }, backend_id, 0)
                .expect("writing SLOTS");
            self.hash(maps::AFFINITY_MATCH)
                .insert(
                    AffinityMatchKey {
                        service_id,
                        backend_id,
                    },
                    1u32,
                    0,
                )
                .expect("writing AFFINITY_MATCH");
        }
    }

    /// Backend `backend_id` leaves service `service_id` (its slots must be rewritten
    /// by the caller, as the agent does first).
    pub fn remove_member(&mut self, service_id: u32, backend_id: u32) {
        self.hash::<AffinityMatchKey, u32>(maps::AFFINITY_MATCH)
            .remove(&AffinityMatchKey {
                service_id,
                backend_id,
            })
            .expect("deleting from AFFINITY_MATCH");
    }

    /// Remembers that `client` chose `backend_id` of `service_id` just now, as
    /// `tc_ingress` does for ClientIP affinity.
    pub fn set_client_affinity(&mut self, client: IpAddr, service_id: u32, backend_id: u32) {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes only into `ts`; CLOCK_MONOTONIC is bpf_ktime_get_ns's clock.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        // A second ago: the programs stamp with the coarse clock, which may lag this one.
        let now = u64::try_from(ts.tv_sec - 1).expect("time") * 1_000_000_000
            + u64::try_from(ts.tv_nsec).expect("time");
        self.hash(maps::CLIENT_AFFINITY)
            .insert(
                ClientAffinityKey {
                    client: Addr::from(client),
                    service_id,
                    _pad: 0,
                },
                AffinityValue {
                    last_used_ns: now,
                    backend_id,
                    _pad: 0,
                },
                0,
            )
            .expect("writing CLIENT_AFFINITY");
    }

    /// The frontend `vip:port/proto` in `scope` (a NodePort's `vip` is unspecified).
    pub fn set_frontend(&mut self, vip: IpAddr, port: u16, proto: u8, scope: u8, v: FrontendValue) {
        let k = FrontendKey {
            addr: Addr::from(vip),
            port_be: port.to_be(),
            proto,
            scope,
        };
        self.hash(maps::FRONTENDS)
            .insert(k, v, 0)
            .expect("writing FRONTENDS");
    }

    /// A whole service in the agent's update order (backends, slots, then the
    /// frontend): `backends[i]` gets backend id `first_backend_id + i`.
    pub fn add_service(&mut self, svc: &Service) {
        let ids: Vec<u32> = (0..svc.backends.len())
            .map(|i| svc.first_backend_id + u32::try_from(i).expect("few backends"))
            .collect();
        for (id, addr) in ids.iter().zip(&svc.backends) {
            self.set_backend(*id, *addr, svc.proto);
        }
        self.set_slots(svc.id, &ids);
        let v = FrontendValue {
            service_id: svc.id,
            backend_count: u32::try_from(ids.len()).expect("few backends"),
            flags: svc.flags,
            affinity_timeout_s: 10_800,
        };
        self.set_frontend(svc.vip, svc.port, svc.proto, svc.scope, v);
    }

    /// A `loadBalancerSourceRanges` entry of service `service_id`.
    pub fn add_source_range(&mut self, service_id: u32, net: IpAddr, prefix_len: u32) {
        // The prefix counts the service id's 32 bits, and an IPv4 range is IPv4-mapped.
        let family_bits = if net.is_ipv4() { 96 } else { 0 };
        let key = Key::new(
            32 + family_bits + prefix_len,
            SourceRangeKey {
                service_id_be: service_id.to_be(),
                addr: Addr::from(net),
            },
        );
        let mut t: LpmTrie<&mut MapData, SourceRangeKey, u32> = LpmTrie::try_from(
            self.ebpf
                .map_mut(maps::SOURCE_RANGES)
                .expect("no map SOURCE_RANGES"),
        )
        .expect("map SOURCE_RANGES");
        t.insert(&key, 1, 0).expect("writing SOURCE_RANGES");
    }

    /// The backend ClientIP affinity remembers for `client` and `service_id`.
    pub fn client_affinity(&self, client: IpAddr, service_id: u32) -> Option<u32> {
        let m: HashMap<&MapData, ClientAffinityKey, AffinityValue> =
            self.hash_ro(maps::CLIENT_AFFINITY);
        let k = ClientAffinityKey {
            client: Addr::from(client),
            service_id,
            _pad: 0,
        };
        m.get(&k, 0).ok().map(|v| v.backend_id)
    }

    /// One leg of a flow, as `tc_ingress` writes it.
    pub fn ct_insert(&mut self, key: CtKey, entry: CtEntry) {
        self.hash(maps::CONNTRACK)
            .insert(key, entry, 0)
            .expect("writing CONNTRACK");
    }

    // --- CHECK: readers --------------------------------------------------------------

    /// A leg in either table.
    pub fn ct_get(&self, key: &CtKey) -> Option<CtEntry> {
        self.ct_assured(key)
            .or_else(|| self.ct_unassured(key).map(|o| o.ct))
    }

    /// A leg in `CONNTRACK`, the table of assured flows.
    pub fn ct_assured(&self, key: &CtKey) -> Option<CtEntry> {
        let m: HashMap<&MapData, CtKey, CtEntry> = self.hash_ro(maps::CONNTRACK);
        m.get(key, 0).ok()
    }

    /// A leg in `CT_OPEN`, the table of unassured flows.
    pub fn ct_unassured(&self, key: &CtKey) -> Option<CtOpenEntry> {
        let m: HashMap<&MapData, CtKey, CtOpenEntry> = self.hash_ro(maps::CT_OPEN);
        m.get(key, 0).ok()
    }

    /// Entries in both tables.
    pub fn ct_len(&self) -> usize {
        self.ct_len_assured() + self.ct_len_unassured()
    }

    /// Entries in `CONNTRACK`.
    pub fn ct_len_assured(&self) -> usize {
        let m: HashMap<&MapData, CtKey, CtEntry> = self.hash_ro(maps::CONNTRACK);
        m.keys().count()
    }

    /// Entries in `CT_OPEN`.
    pub fn ct_len_unassured(&self) -> usize {
        let m: HashMap<&MapData, CtKey, CtOpenEntry> = self.hash_ro(maps::CT_OPEN);
        m.keys().count()
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&self) -> Counters {
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(maps::COUNTERS).expect("no map COUNTERS"))
                .expect("map COUNTERS");
        let mut c = BTreeMap::new();
        for (i, name) in counter::NAMES.iter().enumerate() {
            let v = a
                .get(&u32::try_from(i).expect("few counters"), 0)
                .unwrap_or_else(|e| panic!("reading counter {name}: {e:?}"));
            c.insert(*name, v.iter().sum());
        }
        Counters(c)
    }
}

/// One loader for the process: `EbpfLoader::new` parses the kernel's BTF (megabytes,
/// slow in a debug build) every time; this parses it once, and the loader keeps it for
/// its CO-RE relocations as the agent's does.
fn loader() -> &'static Mutex<EbpfLoader<'static>> {
    static LOADER: OnceLock<Mutex<EbpfLoader<'static>>> = OnceLock::new();
    LOADER.get_or_init(|| Mutex::new(EbpfLoader::new()))
}

/// A service for [`Datapath::add_service`].
pub struct Service {
    pub id: u32,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
    /// `FRONTEND_F_*`.
    pub flags: u32,
    pub first_backend_id: u32,
    pub backends: Vec<SocketAddr>,
}

/// The counters by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters(BTreeMap<&'static str, u64>);

impl Counters {
    /// One counter by name (0 when not counted).
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or_default()
    }

    /// The counters that are not zero, by name: a test asserts the whole list, so an
    /// unexpected counter fails it too.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        self.0
            .iter()
            .filter(|(_, v)| **v != 0)
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// The counters that grew since `before`, by how much.
    pub fn since(&self, before: &Counters) -> Vec<(&'static str, u64)> {
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let d = v.saturating_sub(before.0.get(k).copied().unwrap_or(0));
                (d != 0).then_some((*k, d))
            })
            .collect()
    }
}

/// A `CtKey` for `src -> dst` over `proto`.
pub fn tuple(src: SocketAddr, dst: SocketAddr, proto: u8) -> CtKey {
    CtKey {
        saddr: Addr::from(src.ip()),
        daddr: Addr::from(dst.ip()),
        sport_be: src.port().to_be(),
        dport_be: dst.port().to_be(),
        proto,
        _pad: [0; 3],
    }
}

/// The `struct __sk_buff` given as `ctx_in`: only `ifindex` (offset 40), which makes
/// the kernel run the program on that device of the current namespace (so
/// `skb->ifindex` is what the programs read), and `ingress_ifindex` (offset 36). The
/// kernel rejects any other non-zero field it does not take from user space.
fn skb_ctx(ifindex: u32) -> [u8; SK_BUFF_SIZE] {
    let mut c = [0u8; SK_BUFF_SIZE];
    c[36..40].copy_from_slice(&ifindex.to_ne_bytes());
    c[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    c
}

/// `sizeof(struct __sk_buff)` in the UAPI headers of 5.16 and later.
const SK_BUFF_SIZE: usize = 192;
