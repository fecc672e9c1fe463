//! Prometheus metrics. Names follow kube-proxy's (`kubeproxy_...`) where the meaning
//! matches, so existing dashboards and alerts keep working; the rest are
//! `proxy_agent_...`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

/// A `code` label (HTTP status).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    /// The status code.
    pub code: u16,
}

/// A `traffic_policy` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficPolicy {
    /// `internal` or `external`.
    pub traffic_policy: String,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    /// How long each sync took (translate + apply).
    pub sync_duration: Histogram,
    /// When the last sync finished (unix seconds).
    pub last_sync: Gauge<f64, AtomicU64>,
    /// When the last change was noticed (unix seconds).
    pub last_queued: Gauge<f64, AtomicU64>,
    /// From an EndpointSlice's last-change-trigger-time to the map write.
    pub network_programming: Histogram,
    /// Service objects seen changing.
    pub service_changes: Counter,
    /// EndpointSlice objects seen changing.
    pub endpoint_changes: Counter,
    /// Input problems reported (an invalid object or file, a failed watch); the
    /// object is skipped and its last good version, if any, kept.
    pub input_errors: Counter,
    /// Services, ports or families the translation skipped in the last sync
    /// (conflicting VIPs, unsupported protocols or families).
    pub skipped: Family<Reason, Gauge>,
    /// Services the data plane refused (full map, ...), by reason.
    pub programming_failures: Family<Reason, Counter>,
    /// Frontends currently programmed.
    pub services: Gauge,
    /// Backends currently programmed, summed over frontends.
    pub backends: Gauge,
    /// Services with a Local policy and no local endpoint, by policy.
    pub no_local_endpoints: Family<TrafficPolicy, Gauge>,
    /// /healthz answers by code.
    pub healthz: Family<Code, Counter>,
    /// /livez answers by code.
    pub livez: Family<Code, Counter>,
    /// `healthCheckNodePort`s that could not be listened on (retried at each sync).
    pub health_check_bind_errors: Counter,
}

impl Metrics {
    /// A registry with every metric; `register_backend` adds the data plane's own
    /// (see [`crate::dataplane::Dataplane::register_metrics`]).
    pub fn new(register_backend: impl FnOnce(&mut Registry)) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let m = Metrics {
            sync_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            last_sync: Gauge::default(),
            last_queued: Gauge::default(),
            network_programming: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            service_changes: Counter::default(),
            endpoint_changes: Counter::default(),
            input_errors: Counter::default(),
            skipped: Family::default(),
            programming_failures: Family::default(),
            services: Gauge::default(),
            backends: Gauge::default(),
            no_local_endpoints: Family::default(),
            healthz: Family::default(),
            livez: Family::default(),
            health_check_bind_errors: Counter::default(),
            registry: Registry::default(),
        };
        // Families are exported only once they have a series: the ones the dashboard
        // and alerts read start at 0 for every label value they can take, rather than
        // being absent until the first failure or probe.
        for reason in crate::dataplane::DataplaneError::METRIC_LABELS {
            m.programming_failures
                .get_or_create(&Reason {
                    reason: reason.to_owned(),
                })
                .inc_by(0);
        }
        for code in [200, 503] {
            m.healthz.get_or_create(&Code { code }).inc_by(0);
            m.livez.get_or_create(&Code { code }).inc_by(0);
        }
        let r = &mut registry;
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "Time to translate and apply one sync",
            m.sync_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "When the last sync finished",
            m.last_sync.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "When the last change was queued",
            m.last_queued.clone(),
        );
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "From an EndpointSlice's last-change-trigger-time until the data plane held it",
            m.network_programming.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Service changes seen",
            m.service_changes.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "EndpointSlice changes seen",
            m.endpoint_changes.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints",
            "Services with a Local traffic policy and no local endpoint",
            m.no_local_endpoints.clone(),
        );
        r.register(
            "kubeproxy_proxy_healthz",
            "/healthz answers",
            m.healthz.clone(),
        );
        r.register("kubeproxy_proxy_livez", "/livez answers", m.livez.clone());
        r.register(
            "proxy_agent_input_errors",
            "Input problems reported (invalid objects or files, failed watches)",
            m.input_errors.clone(),
        );
        r.register(
            "proxy_agent_skipped",
            "Services, ports or families skipped by the last translation",
            m.skipped.clone(),
        );
        r.register(
            "proxy_agent_programming_failures",
            "Services the data plane could not take (previous state kept)",
            m.programming_failures.clone(),
        );
        r.register(
            "proxy_agent_services",
            "Frontends (VIP, port, protocol) programmed",
            m.services.clone(),
        );
        r.register(
            "proxy_agent_backends",
            "Backends programmed, summed over frontends",
            m.backends.clone(),
        );
        r.register(
            "proxy_agent_health_check_bind_errors",
            "healthCheckNodePorts that could not be listened on (retried at each sync)",
            m.health_check_bind_errors.clone(),
        );
        // netfilter's table carries IPVS mode, the node's own traffic and the INVALID
        // verdicts in either mode: read at scrape time, in the agent's namespace.
        r.register_collector(Box::new(
            crate::dataplane::netfilter::metrics::NetfilterStats::kernel(),
        ));
        register_backend(r);
        Arc::new(Metrics { registry, ..m })
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut s, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_check_and_backend_metrics_are_exported_under_their_names() {
        // The conntrack metrics moved to the eBPF backend (`dataplane::ebpf::metrics`).
        let m = Metrics::new(|r| {
            let c = Counter::<u64>::default();
            c.inc();
            r.register("proxy_agent_backend_test", "A backend's metric", c);
        });
        m.health_check_bind_errors.inc();
        let text = m.encode();
        for line in [
            "proxy_agent_health_check_bind_errors_total 1",
            "proxy_agent_backend_test_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
