//! How big the connection tables are: kube-proxy's `--conntrack-max-per-core` /
//! `--conntrack-min` rule for assured flows, and a table for unassured ones beside it.

/// The least number of unassured flows the default gives: below a few hundred
/// entries per CPU the kernel's LRU evicts early (each CPU keeps free entries of its
/// own).
const MIN_UNASSURED_FLOWS: u32 = 1024;

/// Flows each table holds (each flow takes two entries, one per direction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackSizes {
    /// Assured flows (`CONNTRACK`, never evicted).
    pub assured_flows: u32,
    /// Unassured flows (`CT_OPEN`, least recently used evicted first).
    pub unassured_flows: u32,
}

impl ConntrackSizes {
    /// `max` (flows) if non-zero; else max(`per_core` × `cores`, `min`), as kube-proxy
    /// sizes netfilter's table (a `per_core` of 0 leaves `min`). `unassured` 0 means a
    /// quarter of that, at least [`MIN_UNASSURED_FLOWS`]. Sizes stop where two entries
    /// per flow would overflow a map's `u32` capacity.
    pub fn new(max: u32, per_core: u32, min: u32, unassured: u32, cores: u32) -> Self {
        const MOST: u32 = u32::MAX / 2;
        let assured = if max != 0 {
            max
        } else {
            per_core.saturating_mul(cores.max(1)).max(min)
        }
        .clamp(1, MOST);
        let unassured = if unassured != 0 {
            unassured
        } else {
            (assured / 4).max(MIN_UNASSURED_FLOWS)
        }
        .min(MOST);
        ConntrackSizes {
            assured_flows: assured,
            unassured_flows: unassured,
        }
    }

    /// `max_entries` of `CONNTRACK`.
    pub fn assured_entries(&self) -> u32 {
        self.assured_flows * 2
    }

    /// `max_entries` of `CT_OPEN`.
    pub fn unassured_entries(&self) -> u32 {
        self.unassured_flows * 2
    }
}

/// The CPUs this process may run on, as kube-proxy counts them (Go's
/// `runtime.NumCPU`: the scheduler affinity mask); 1 if it cannot be read.
pub fn cores() -> u32 {
    // SAFETY: an all-zero cpu_set_t is valid; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the size is the set's.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return 1;
    }
    // SAFETY: reads the set filled above.
    let n = unsafe { libc::CPU_COUNT(&set) };
    u32::try_from(n).unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_kube_proxys_rule() {
        // (max, per_core, min, unassured, cores) -> (assured, unassured) flows
        let cases = [
            // Defaults on 2 cores: the floor wins.
            ((0, 32_768, 131_072, 0, 2), (131_072, 32_768)),
            // 16 cores: per core wins.
            ((0, 32_768, 131_072, 0, 16), (524_288, 131_072)),
            // --conntrack-max overrides both.
            ((1000, 32_768, 131_072, 0, 16), (1000, 1024)),
            // per-core 0: the floor alone.
            ((0, 0, 50_000, 0, 8), (50_000, 12_500)),
            // An explicit unassured size is taken as given.
            ((4, 0, 0, 8, 2), (4, 8)),
            // Nothing is ever zero or overflows two entries per flow.
            ((0, 0, 0, 0, 0), (1, 1024)),
            ((u32::MAX, 0, 0, u32::MAX, 1), (u32::MAX / 2, u32::MAX / 2)),
            ((0, u32::MAX, 0, 0, 64), (u32::MAX / 2, u32::MAX / 8)),
        ];
        for ((max, per_core, min, unassured, cores), (a, u)) in cases {
            let s = ConntrackSizes::new(max, per_core, min, unassured, cores);
            assert_eq!(
                (s.assured_flows, s.unassured_flows),
                (a, u),
                "max {max} per-core {per_core} min {min} unassured {unassured} cores {cores}"
            );
            assert_eq!(s.assured_entries(), a * 2);
            assert_eq!(s.unassured_entries(), u * 2);
        }
    }

    #[test]
    fn this_machine_has_at_least_one_core() {
        assert!(cores() >= 1);
    }
}
