//! The traffic statistics (`STATS`), as the agent writes and `proxyctl` reads them.

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuValues};
use proxy_common::{AffinityMatchKey, Stats, maps, stats};

use super::Datapath;

impl Datapath {
    fn stats_map(&mut self) -> PerCpuArray<&mut MapData, Stats> {
        PerCpuArray::try_from(self.ebpf.map_mut(maps::STATS).expect("no map STATS"))
            .expect("map STATS")
    }

    /// Writes slot `id` on every CPU: zero counts, tagged as `service_id`'s
    /// `backend_id`'s (the agent's reset).
    pub fn reset_stats(&mut self, id: u16, service_id: u32, backend_id: u32) {
        let cpus = aya::util::nr_cpus().expect("the CPUs");
        let v = Stats {
            service_id,
            backend_id,
            ..Stats::default()
        };
        let values = PerCpuValues::try_from(vec![v; cpus]).expect("per-CPU values");
        self.stats_map()
            .set(u32::from(id), values, 0)
            .expect("writing STATS");
    }

    /// Gives backend `backend_id` of service `service_id` (a member already) stats id
    /// `id`, its slot reset, as the agent does.
    pub fn count_member(&mut self, service_id: u32, backend_id: u32, id: u16) {
        self.reset_stats(id, service_id, backend_id);
        let key = AffinityMatchKey {
            service_id,
            backend_id,
        };
        let mut m: HashMap<&mut MapData, AffinityMatchKey, u32> =
            HashMap::try_from(self.ebpf.map_mut(maps::AFFINITY_MATCH).expect("no map"))
                .expect("map AFFINITY_MATCH");
        m.insert(key, stats::ID_F | u32::from(id), 0)
            .expect("writing AFFINITY_MATCH");
    }

    /// Turns the counting on or off (`STATS[0]`).
    pub fn set_stats_on(&mut self, on: bool) {
        self.reset_stats(0, if on { 0 } else { stats::OFF }, 0);
    }

    /// Slot `id` summed over CPUs (the tag is CPU 0's).
    pub fn stats(&self, id: u16) -> Stats {
        let a: PerCpuArray<&MapData, Stats> =
            PerCpuArray::try_from(self.ebpf.map(maps::STATS).expect("no map STATS"))
                .expect("map STATS");
        let per_cpu = a.get(&u32::from(id), 0).expect("reading STATS");
        let mut t = per_cpu[0];
        for s in per_cpu.iter().skip(1) {
            t.sock_connections += s.sock_connections;
            t.connections += s.connections;
            t.packets_in += s.packets_in;
            t.packets_out += s.packets_out;
            t.bytes_in += s.bytes_in;
            t.bytes_out += s.bytes_out;
        }
        t
    }
}
