//! kube-proxy's conntrack reconciler (`pkg/proxy/conntrack`, `CleanStaleEntries`,
//! since 1.32), for the IPVS mode: netfilter entries of UDP service traffic whose
//! reply does not come from one of the service's serving endpoints are deleted.
//!
//! Why: UDP has no connection to end. An entry made while a datagram went to an
//! endpoint that has since left (or to a service without endpoints, whose reply
//! source is the VIP itself) keeps its NAT binding for as long as the client keeps
//! sending, so a client that reuses its source port (DNS resolvers, statsd) is
//! blackholed: IPVS sends its datagrams to a live destination, but the masquerading
//! still follows the dead entry and the replies are never un-translated. Deleting the
//! entry lets the next datagram make a fresh one.
//!
//! The matching is kube-proxy's, keyed more tightly: an entry is stale when its
//! original destination is one of the virtual servers of a UDP frontend (its VIP and
//! port, or a node address and the NodePort) and its reply source is not one of that
//! frontend's backends (address and port; kube-proxy compares addresses only). Entries
//! of removed services are left alone, as kube-proxy leaves them. One dump and the
//! deletions per family, timed and counted under kube-proxy's
//! `kubeproxy_conntrack_reconciler_*` names with an `ip_family` label.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::conntrack::{Entry, Family, Proto};
use super::{Ctnetlink, NetfilterError};
use crate::dataplane::ipvs::netlink::socket::Transport;

/// The UDP virtual servers of one family: where clients send (a VIP and port, or a
/// node address and NodePort) -> the backends that may answer.
pub type UdpServers = HashMap<SocketAddr, HashSet<SocketAddr>>;

/// The entries of `entries` that are stale for `servers` (see the module docs).
pub fn stale<'a>(entries: &'a [Entry], servers: &UdpServers) -> Vec<&'a Entry> {
    entries
        .iter()
        .filter(|e| e.protocol() == Proto::UDP)
        .filter(|e| {
            servers
                .get(&e.original.destination())
                .is_some_and(|backends| !backends.contains(&e.reply.source()))
        })
        .collect()
}

/// What one family's pass did.
#[derive(Debug, Default)]
pub struct Pass {
    /// Entries deleted.
    pub deleted: u64,
    /// Stale entries that were gone before their deletion (expired meanwhile).
    pub gone: u64,
    /// Deletions that failed.
    pub failed: Vec<NetfilterError>,
}

/// Dumps `family`'s entries and deletes the stale ones. A failed dump is the error;
/// failed deletions are in [`Pass::failed`] and the others still go.
pub fn reconcile<T: Transport>(
    ct: &mut Ctnetlink<T>,
    family: Family,
    servers: &UdpServers,
) -> Result<Pass, NetfilterError> {
    let entries = ct.dump_family(family)?;
    let mut pass = Pass::default();
    for entry in stale(&entries, servers) {
        match ct.delete(&entry.original, entry.zone) {
            Ok(()) => pass.deleted += 1,
            Err(NetfilterError::NotFound { .. }) => pass.gone += 1,
            Err(e) => pass.failed.push(e),
        }
    }
    Ok(pass)
}

/// The `ip_family` label, as kube-proxy writes it (`IPv4`, `IPv6`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IpFamily {
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
}

impl IpFamily {
    fn of(family: Family) -> Self {
        IpFamily {
            ip_family: match family {
                Family::Ipv4 => "IPv4",
                Family::Ipv6 => "IPv6",
            }
            .to_owned(),
        }
    }
}

/// The `ip_family` and `reason` labels of a failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Failure {
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
    /// [`NetfilterError::metric_label`], with `dump` or `delete` before it.
    pub reason: String,
}

type Histograms = MetricFamily<IpFamily, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // kube-proxy's buckets: 1 ms to 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The reconciler's series (cheap to clone: the handles share their values).
#[derive(Clone, Debug)]
pub struct ReconcilerMetrics {
    /// `kubeproxy_conntrack_reconciler_sync_duration_seconds{ip_family}`.
    pub duration: Histograms,
    /// `kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family}`.
    pub deleted: MetricFamily<IpFamily, Counter>,
    /// `proxy_agent_conntrack_reconciler_errors_total{ip_family,reason}` (kube-proxy
    /// only logs them).
    pub errors: MetricFamily<Failure, Counter>,
}

impl Default for ReconcilerMetrics {
    fn default() -> Self {
        let m = ReconcilerMetrics {
            duration: MetricFamily::new_with_constructor(duration_histogram),
            deleted: MetricFamily::default(),
            errors: MetricFamily::default(),
        };
        // Present at 0 from the start, so a rate() over them has data.
        for family in [Family::Ipv4, Family::Ipv6] {
            m.deleted.get_or_create(&IpFamily::of(family)).inc_by(0);
        }
        m
    }
}

impl ReconcilerMetrics {
    /// Registers the series in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            "How long one pass of the UDP conntrack reconciler took (dump and deletions)",
            self.duration.clone(),
        );
        registry.register(
            "kubeproxy_conntrack_reconciler_deleted_entries",
            "Stale UDP conntrack entries the reconciler deleted",
            self.deleted.clone(),
        );
        registry.register(
            "proxy_agent_conntrack_reconciler_errors",
            "Failed dumps and deletions of the UDP conntrack reconciler (retried at the next sync)",
            self.errors.clone(),
        );
    }

    fn failed(&self, family: Family, op: &str, e: &NetfilterError) {
        self.errors
            .get_or_create(&Failure {
                ip_family: IpFamily::of(family).ip_family,
                reason: format!("{op}_{}", e.metric_label()),
            })
            .inc();
    }
}

/// The reconciler: runs the passes in the calling thread's network namespace and
/// counts them.
#[derive(Debug, Default)]
pub struct ConntrackReconciler {
    metrics: ReconcilerMetrics,
    /// The last failure logged, so that a lasting one is logged once.
    last_error: Option<String>,
}

impl ConntrackReconciler {
    /// Its series, to register.
    pub fn metrics(&self) -> &ReconcilerMetrics {
        &self.metrics
    }

    /// One pass per family of `servers` over this namespace's table. Never fails:
    /// failures are logged and counted, and the result says whether everything went
    /// (if not, the caller runs it again at its next sync).
    pub fn run(&mut self, servers: &BTreeMap<Family, UdpServers>) -> bool {
        let _span = tracing::info_span!("conntrack_reconciler").entered();
        let mut ct = match Ctnetlink::open() {
            Ok(ct) => ct,
            Err(e) => {
                for family in servers.keys() {
                    self.metrics.failed(*family, "dump", &e);
                }
                self.log_failure(&e);
                return false;
            }
        };
        self.run_over(&mut ct, servers)
    }

    /// [`run`](Self::run) over an open conversation.
    pub fn run_over<T: Transport>(
        &mut self,
        ct: &mut Ctnetlink<T>,
        servers: &BTreeMap<Family, UdpServers>,
    ) -> bool {
        let mut clean = true;
        for (family, servers) in servers {
            let started = Instant::now();
            let label = IpFamily::of(*family);
            match reconcile(ct, *family, servers) {
                Ok(pass) => {
                    self.metrics
                        .deleted
                        .get_or_create(&label)
                        .inc_by(pass.deleted);
                    if pass.deleted > 0 || pass.gone > 0 {
                        tracing::info!(
                            family = %label.ip_family, deleted = pass.deleted, gone = pass.gone,
                            "deleted stale UDP conntrack entries"
                        );
                    }
                    for e in &pass.failed {
                        self.metrics.failed(*family, "delete", e);
                    }
                    if let Some(e) = pass.failed.first() {
                        clean = false;
                        self.log_failure(e);
                    }
                }
                Err(e) => {
                    clean = false;
                    self.metrics.failed(*family, "dump", &e);
                    self.log_failure(&e);
                }
            }
            self.metrics
                .duration
                .get_or_create(&label)
                .observe(started.elapsed().as_secs_f64());
        }
        if clean {
            self.last_error = None;
        }
        clean
    }

    fn log_failure(&mut self, e: &NetfilterError) {
        let text = e.to_string();
        if self.last_error.as_ref() != Some(&text) {
            tracing::warn!(
                error = %text,
                "the UDP conntrack reconciler failed; retrying at the next sync (stale UDP \
                 flows to removed endpoints may stay blackholed until then)"
            );
            self.last_error = Some(text);
        }
    }
}

#[cfg(test)]
#[path = "reconciler_tests.rs"]
mod tests;
