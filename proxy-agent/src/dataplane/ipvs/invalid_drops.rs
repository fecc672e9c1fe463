//! kube-proxy's count of the packets its conntrack-INVALID rule drops,
//! `kubeproxy_iptables_ct_state_invalid_dropped_packets_total`: the INVALID drop
//! rules (`KUBE-FORWARD`'s, and `KUBE-IPVS-FILTER`'s for masqueraded replies) add to
//! the nfacct object [`INVALID_DROPPED_COUNTER`], which is read over netlink at each
//! scrape, as kube-proxy reads it. No rule lister runs.
//!
//! The object is created before the rules reference it (a rule naming a missing
//! object does not load). Without nfacct in the kernel the rules drop uncounted and
//! the series is absent; with `--conntrack-tcp-be-liberal` there is no rule, and no
//! series either: nothing of ours drops INVALID packets then
//! (`proxy_agent_netfilter_conntrack_invalid_total` still counts netfilter's own
//! INVALID verdicts in both cases).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

pub use super::rules::render::INVALID_DROPPED_COUNTER;
use crate::dataplane::netfilter::nfacct::{Nfacct, NfacctError};

/// Creates the counter unless it exists; whether the rules may name it. A kernel
/// without nfacct is told once in the log, and the drops go uncounted.
pub fn ensure_counter() -> bool {
    match Nfacct::open().and_then(|mut n| n.ensure(INVALID_DROPPED_COUNTER)) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(
                error = %e,
                "INVALID packets will be dropped uncounted \
                 (no kubeproxy_iptables_ct_state_invalid_dropped_packets_total)"
            );
            false
        }
    }
}

/// Deletes the counter (`--cleanup`, after the rules); whether it was there. A
/// counter a rule of someone else's still uses stays.
pub fn remove_counter() -> Result<bool, NfacctError> {
    match Nfacct::open().and_then(|mut n| n.delete(INVALID_DROPPED_COUNTER)) {
        Err(NfacctError::Busy { .. } | NfacctError::Unavailable { .. }) => Ok(false),
        other => other,
    }
}

/// Reads the counter's packets.
pub type PacketsReader = Box<dyn Fn() -> Result<u64, NfacctError> + Send + Sync + 'static>;

/// The collector: exports the counter while `counting` (the rules name the object).
pub struct InvalidDropped {
    counting: Arc<AtomicBool>,
    read: PacketsReader,
}

impl InvalidDropped {
    /// A collector over `read`, exporting while `counting` holds.
    pub fn new(counting: Arc<AtomicBool>, read: PacketsReader) -> Self {
        InvalidDropped { counting, read }
    }

    /// A collector over this network namespace's kernel, one socket per scrape.
    pub fn kernel(counting: Arc<AtomicBool>) -> Self {
        InvalidDropped::new(
            counting,
            Box::new(|| Ok(Nfacct::open()?.get(INVALID_DROPPED_COUNTER)?.packets)),
        )
    }
}

impl fmt::Debug for InvalidDropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidDropped").finish_non_exhaustive()
    }
}

impl Collector for InvalidDropped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        if !self.counting.load(Ordering::Relaxed) {
            return Ok(());
        }
        match (self.read)() {
            Ok(packets) => {
                let c = ConstCounter::new(packets);
                c.encode(encoder.encode_descriptor(
                    "kubeproxy_iptables_ct_state_invalid_dropped_packets",
                    "packets dropped by iptables to work around conntrack problems",
                    None,
                    c.metric_type(),
                )?)
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading the INVALID drop counter");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    fn scrape(counting: bool, read: PacketsReader) -> String {
        let mut r = Registry::default();
        r.register_collector(Box::new(InvalidDropped::new(
            Arc::new(AtomicBool::new(counting)),
            read,
        )));
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &r).unwrap_or_else(|e| panic!("{e}"));
        s
    }

    #[test]
    fn the_counter_is_exported_under_kube_proxys_name_while_the_rules_count() {
        let text = scrape(true, Box::new(|| Ok(42)));
        for line in [
            "# TYPE kubeproxy_iptables_ct_state_invalid_dropped_packets counter",
            "kubeproxy_iptables_ct_state_invalid_dropped_packets_total 42",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn without_counting_rules_or_a_readable_counter_the_series_is_absent() {
        for text in [
            scrape(false, Box::new(|| Ok(42))),
            scrape(
                true,
                Box::new(|| {
                    Err(NfacctError::NotFound {
                        name: INVALID_DROPPED_COUNTER.to_owned(),
                    })
                }),
            ),
        ] {
            assert!(!text.contains("invalid_dropped"), "{text}");
        }
    }
}
