//! `proxyctl list --rate`: [`TrafficRate`]s from two readings of the listing taken
//! `secs` apart, as `ipvsadm -Ln --rate` shows them.
//!
//! A counter lower in the second reading started over in between (an eBPF stats id
//! handed to a new membership, an IPVS destination made anew): its rate is what it
//! counted since, as Prometheus' `rate()` treats a reset. An eBPF frontend's rate is
//! the sum of its backends' (present in both readings), since its totals are theirs
//! and drop when one leaves; an IPVS virtual server has counters of its own.

use crate::dataplane::listing::{ServiceView, TrafficRate, TrafficStats};

/// Per second from `before` to `after`, over `secs` (> 0).
pub fn rate(before: &TrafficStats, after: &TrafficStats, secs: f64) -> TrafficRate {
    let per_s = |a: u64, b: u64| {
        let delta = if b >= a { b - a } else { b };
        delta as f64 / secs
    };
    let opt = |a: Option<u64>, b: Option<u64>| Some(per_s(a?, b?));
    TrafficRate {
        connections: per_s(before.connections, after.connections),
        packets_in: opt(before.packets_in, after.packets_in),
        packets_out: opt(before.packets_out, after.packets_out),
        bytes_in: opt(before.bytes_in, after.bytes_in),
        bytes_out: opt(before.bytes_out, after.bytes_out),
    }
}

/// The sum of rates: a packet or byte rate is known if it is in every part.
fn sum(parts: &[TrafficRate]) -> TrafficRate {
    let add = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
    parts.iter().fold(
        TrafficRate {
            connections: 0.0,
            packets_in: Some(0.0),
            packets_out: Some(0.0),
            bytes_in: Some(0.0),
            bytes_out: Some(0.0),
        },
        |acc, p| TrafficRate {
            connections: acc.connections + p.connections,
            packets_in: add(acc.packets_in, p.packets_in),
            packets_out: add(acc.packets_out, p.packets_out),
            bytes_in: add(acc.bytes_in, p.bytes_in),
            bytes_out: add(acc.bytes_out, p.bytes_out),
        },
    )
}

/// Sets the rates of `after` (frontends and backends found in `before` too, by
/// frontend and address) from the two readings, `secs` apart.
pub fn apply(before: &[ServiceView], after: &mut [ServiceView], secs: f64) {
    for v in after.iter_mut() {
        let Some(old) = before.iter().find(|o| o.frontend == v.frontend) else {
            continue;
        };
        let mut parts = Vec::new();
        for e in &mut v.endpoints {
            let was = old
                .endpoints
                .iter()
                .find(|o| o.address == e.address)
                .and_then(|o| o.stats);
            if let (Some(a), Some(b)) = (was, e.stats) {
                let r = rate(&a, &b, secs);
                parts.push(r);
                e.rate = Some(r);
            }
        }
        v.rate = match (&v.ipvs, old.stats, v.stats) {
            (Some(_), Some(a), Some(b)) => Some(rate(&a, &b, secs)),
            (None, Some(_), Some(_)) => Some(sum(&parts)),
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(connections: u64, packets: Option<u64>) -> TrafficStats {
        TrafficStats {
            connections,
            packets_in: packets,
            packets_out: packets,
            bytes_in: packets.map(|p| p * 100),
            bytes_out: packets,
        }
    }

    #[test]
    fn rates_are_per_second_unknown_stays_unknown_and_a_reset_counts_from_zero() {
        let r = rate(&stats(10, Some(100)), &stats(30, Some(300)), 2.0);
        assert_eq!(
            (r.connections, r.packets_in, r.bytes_in),
            (10.0, Some(100.0), Some(10_000.0))
        );
        let r = rate(&stats(10, None), &stats(14, None), 0.5);
        assert_eq!((r.connections, r.packets_out), (8.0, None));
        // Started over in between: 6 since.
        assert_eq!(
            rate(&stats(50, None), &stats(6, None), 1.0).connections,
            6.0
        );
    }

    #[test]
    fn an_ebpf_frontend_sums_its_backends_present_both_times() {
        let svc = crate::observe::render::tests::ebpf_services();
        let mut before = svc.clone();
        let mut after = svc;
        // The NodePort: a backend that stays, one that left (its counts with it).
        let np = 1;
        before[np].endpoints[0].stats = Some(stats(100, Some(1000)));
        before[np].endpoints[1].stats = Some(stats(900, Some(9000)));
        before[np].stats = Some(stats(1000, Some(10_000)));
        after[np].endpoints[0].stats = Some(stats(110, Some(1100)));
        after[np].endpoints[1].stats = None;
        after[np].stats = Some(stats(110, Some(1100)));
        after[0].stats = None;
        apply(&before, &mut after, 1.0);
        let r = after[np].rate.expect("a rate");
        assert_eq!((r.connections, r.packets_in), (10.0, Some(100.0)));
        assert_eq!(
            after[np].endpoints[0].rate.map(|r| r.connections),
            Some(10.0)
        );
        assert_eq!(after[np].endpoints[1].rate, None);
        // Without statistics, no rate.
        assert_eq!(after[0].rate, None);
    }

    #[test]
    fn an_ipvs_virtual_server_has_its_own_counters() {
        let svc = crate::observe::render::tests::ipvs_services();
        let before = svc.clone();
        let mut after = svc;
        after[0].stats = Some(TrafficStats::all(
            before[0].stats.map_or(0, |s| s.connections) + 5,
            (0, 0),
            (0, 0),
        ));
        apply(&before, &mut after, 1.0);
        assert_eq!(after[0].rate.map(|r| r.connections), Some(5.0));
    }
}
