//! One sync: what the source has -> the world -> translation -> the reconciler, with
//! the observers (metrics, health, health-check servers) told what happened.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::{info, info_span, warn};

use crate::dataplane::Dataplane;
use crate::model::{NodeAddresses, NodePortAddresses};
use crate::observe::healthcheck::HealthCheckServers;
use crate::observe::http::Health;
use crate::observe::metrics::{Metrics, Reason, TrafficPolicy};
use crate::reconcile::Reconciler;
use crate::source::{NodeInfo, Source, Taken, Update, World, trigger_time};
use crate::translate::{NodeContext, Translator};

/// Everything a sync reads and writes, between syncs.
pub struct Pipeline<D> {
    node_name: String,
    nodeport_addresses: NodePortAddresses,
    world: World,
    translator: Translator,
    reconciler: Reconciler<D>,
    /// The node context of the last translation (None before the first).
    node: Option<NodeContext>,
    health_checks: HealthCheckServers,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The last node-address problem logged, so that a lasting one is logged once.
    node_error: Option<String>,
    /// `--bind-address`, when it names one address: the node's primary of its family.
    bind_ip: Option<std::net::IpAddr>,
}

impl<D: Dataplane> Pipeline<D> {
    /// A pipeline over `reconciler`, for node `node_name`.
    pub fn new(
        node_name: String,
        nodeport_addresses: NodePortAddresses,
        reconciler: Reconciler<D>,
        health_checks: HealthCheckServers,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Pipeline {
            node_name,
            nodeport_addresses,
            world: World::default(),
            translator: Translator::new(reconciler.dataplane().capabilities()),
            reconciler,
            node: None,
            health_checks,
            metrics,
            health,
            node_error: None,
            bind_ip: None,
        }
    }

    /// Takes `--bind-address` as kube-proxy does: an address other than the unspecified
    /// (and loopback) ones is this node's primary address of its family, before the
    /// Node object's InternalIPs.
    pub fn with_bind_address(mut self, ip: std::net::IpAddr) -> Self {
        self.bind_ip = (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip);
        self
    }

    /// The data plane, for its device events.
    pub fn dataplane_mut(&mut self) -> &mut D {
        self.reconciler.dataplane_mut()
    }

    /// Re-applies the node addresses after the node's devices changed.
    pub fn refresh_node(&mut self) {
        let result = self.reconciler.refresh_node();
        self.log_node_result(result);
    }

    fn log_node_result(&mut self, result: Result<(), crate::dataplane::DataplaneError>) {
        match result {
            Ok(()) => self.node_error = None,
            Err(e) => {
                let e = format!("{e}; NodePorts may not be served");
                if self.node_error.as_ref() != Some(&e) {
                    warn!("{e}");
                    self.node_error = Some(e);
                }
            }
        }
    }

    /// Takes what the source has and applies it. `full` re-translates everything and
    /// re-reads the kernel state (the periodic resync that repairs drift).
    pub fn sync(&mut self, source: &mut impl Source, full: bool) {
        let _span = info_span!("sync", full).entered();
        let started = Instant::now();
        let info = source.node();
        self.health
            .node_deleting
            .store(info.deleting, std::sync::atomic::Ordering::Relaxed);
        let node = self.node_context(&info);
        let Taken {
            update,
            errors,
            changes,
        } = source.take();
        let m = Arc::clone(&self.metrics);
        m.service_changes.inc_by(changes.services);
        m.endpoint_changes.inc_by(changes.endpoint_slices);
        m.input_errors.inc_by(errors.len() as u64);
        for e in &errors {
            warn!("{e}");
        }
        let Some(update) = update else {
            info!("waiting for the initial lists; the data plane keeps its current state");
            return;
        };
        let mut triggers = Vec::new();
        let dirty = match update {
            Update::Reset(snapshot) => {
                self.world.reset(snapshot);
                None
            }
            Update::Changes { services, slices } => {
                triggers.extend(
                    slices
                        .iter()
                        .filter_map(|(_, s)| trigger_time(s.as_deref()?)),
                );
                Some(self.world.apply(services, slices))
            }
        };
        // The node addresses first: NodePort frontends are served on them.
        let addresses = NodeAddresses {
            nodeport_addresses: self.nodeport_addresses.clone(),
            node_ips: primary_first(self.bind_ip, &info.internal_ips),
        };
        let result = self.reconciler.set_node(&addresses, full);
        self.log_node_result(result);

        let rebuild = full || self.node.as_ref() != Some(&node);
        let translate_started = Instant::now();
        let incremental = dirty.is_some() && !rebuild;
        let changed = match dirty {
            Some(dirty) if !rebuild => self.translator.update(&self.world, dirty, &node),
            _ => self.translator.rebuild(&self.world, &node),
        };
        self.node = Some(node);
        for s in self.translator.last_skipped() {
            warn!(object = %s.object, reason = %s.reason, "skipped");
        }
        let desired = self.translator.desired();
        let translate_us = translate_started.elapsed().as_micros();
        let apply_started = Instant::now();
        // After a reset the translator's previous state says nothing about what the
        // maps hold (a restarted agent adopted them): compare everything.
        let report = if full {
            self.reconciler.resync(desired)
        } else if incremental {
            self.reconciler.apply_changed(desired, &changed)
        } else {
            self.reconciler.apply(desired)
        };
        let apply_us = apply_started.elapsed().as_micros();
        let now = SystemTime::now();
        for t in triggers {
            if let Ok(d) = now.duration_since(t) {
                m.network_programming.observe(d.as_secs_f64());
            }
        }
        let reason = |r: &str| Reason {
            reason: r.to_owned(),
        };
        for (_, e) in &report.failed {
            m.programming_failures
                .get_or_create(&reason(e.metric_label()))
                .inc();
        }
        m.skipped
            .get_or_create(&reason("translation"))
            .set(self.translator.skipped_count() as i64);
        let policy = |p: &str| TrafficPolicy {
            traffic_policy: p.to_owned(),
        };
        m.no_local_endpoints
            .get_or_create(&policy("internal"))
            .set(self.translator.no_local_endpoints() as i64);
        m.no_local_endpoints
            .get_or_create(&policy("external"))
            .set(self.translator.no_local_endpoints_external() as i64);
        let health_checks = self.translator.health_checks();
        let bind_errors = self.health_checks.sync(&health_checks);
        m.health_check_bind_errors.inc_by(bind_errors.len() as u64);
        let ports: Vec<u16> = health_checks.iter().map(|h| h.port).collect();
        if let Err(e) = self
            .reconciler
            .dataplane_mut()
            .set_health_check_ports(&ports)
        {
            warn!(error = %e, "letting the health check node ports in failed; will retry");
            m.programming_failures
                .get_or_create(&reason(e.metric_label()))
                .inc();
        }
        self.reconciler.dataplane_mut().after_sync();
        let applied = self.reconciler.applied();
        m.services.set(applied.len() as i64);
        m.backends
            .set(applied.values().map(|s| s.backends.len() as i64).sum());
        m.sync_duration.observe(started.elapsed().as_secs_f64());
        m.last_sync.set(unix_now());
        self.health.updated();
        // From the first change of this batch reaching the agent to the maps holding it.
        let latency_us = changes.since.map(|t| t.elapsed().as_micros()).unwrap_or(0);
        info!(
            latency_us,
            translate_us,
            apply_us,
            services = desired.services.len(),
            changed = changed.len(),
            upserted = report.upserted,
            removed = report.removed,
            unchanged = report.unchanged,
            failed = report.failed.len(),
            input_errors = errors.len(),
            skipped = self.translator.skipped_count(),
            "synced"
        );
    }

    /// This node as translation sees it. Without a Node object (manifest mode, or
    /// before it is seen) both families are assumed.
    fn node_context(&self, info: &NodeInfo) -> NodeContext {
        let (ipv4, ipv6) = info.families.unwrap_or((true, true));
        NodeContext {
            name: self.node_name.clone(),
            zone: info.zone.clone(),
            ipv4,
            ipv6,
        }
    }
}

/// Now, in unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The node's addresses with `primary` (if any) first, so it is the one of its family
/// that `--nodeport-addresses=primary` takes.
fn primary_first(
    primary: Option<std::net::IpAddr>,
    ips: &[std::net::IpAddr],
) -> Vec<std::net::IpAddr> {
    primary
        .into_iter()
        .chain(ips.iter().copied().filter(|ip| Some(*ip) != primary))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::primary_first;

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter()
            .map(|i| i.parse().unwrap_or_else(|e| panic!("{i}: {e}")))
            .collect()
    }

    #[test]
    fn the_bind_address_is_the_primary_of_its_family_before_the_nodes_internal_ips() {
        let node = ips(&["10.0.0.5", "fd00::5"]);
        let bind = ips(&["10.0.0.9"])[0];
        assert_eq!(
            primary_first(Some(bind), &node),
            ips(&["10.0.0.9", "10.0.0.5", "fd00::5"])
        );
        // Named twice, listed once; without one, the Node's order stays.
        let same = ips(&["10.0.0.5"])[0];
        assert_eq!(primary_first(Some(same), &node), node);
        assert_eq!(primary_first(None, &node), node);
    }
}
