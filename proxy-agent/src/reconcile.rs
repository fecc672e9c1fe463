//! The reconciler: compares the desired state with what is programmed and applies the
//! difference, service by service, through a [`Dataplane`].
//!
//! Order: removals first (they free map capacity), then creations and updates. Each
//! service is applied on its own: one that fails keeps its previous state and is
//! retried on the next sync, and every other service is still applied.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{info_span, warn};

use crate::dataplane::{Dataplane, DataplaneError};
use crate::model::{DesiredState, FrontendKey, NodeAddresses, VirtualService};

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Services created or changed.
    pub upserted: usize,
    /// Services removed.
    pub removed: usize,
    /// Services already right.
    pub unchanged: usize,
    /// Services that could not be applied, with why.
    pub failed: Vec<(VirtualService, DataplaneError)>,
}

/// Applies desired states to a data plane.
pub struct Reconciler<D> {
    dataplane: D,
    /// What the data plane holds, as far as we know, in the form
    /// [`Dataplane::held`] gives it.
    applied: BTreeMap<FrontendKey, VirtualService>,
    /// The node addresses last applied successfully.
    node: Option<NodeAddresses>,
    /// The node addresses last asked for (re-applied when the devices change).
    wanted_node: Option<NodeAddresses>,
}

impl<D: Dataplane> Reconciler<D> {
    /// Starts from what the data plane already holds (a restarted agent adopts the
    /// previous one's services and rewrites only what changed).
    pub fn new(dataplane: D) -> Result<Self, DataplaneError> {
        let applied = dataplane
            .programmed()?
            .into_iter()
            .map(|s| (s.frontend, s))
            .collect();
        Ok(Reconciler {
            dataplane,
            applied,
            node: None,
            wanted_node: None,
        })
    }

    /// Applies the node addresses when they changed (or `force`, at a full resync).
    /// On failure the data plane keeps its previous devices and the next sync retries.
    pub fn set_node(&mut self, node: &NodeAddresses, force: bool) -> Result<(), DataplaneError> {
        self.wanted_node = Some(node.clone());
        if !force && self.node.as_ref() == Some(node) {
            return Ok(());
        }
        self.node = None;
        self.dataplane.set_node(node)?;
        self.node = Some(node.clone());
        Ok(())
    }

    /// Re-applies the wanted node addresses (the node's devices changed).
    pub fn refresh_node(&mut self) -> Result<(), DataplaneError> {
        match self.wanted_node.clone() {
            Some(node) => self.set_node(&node, true),
            None => Ok(()),
        }
    }

    /// The data plane.
    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// The data plane, to wait for its device events.
    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dataplane
    }

    /// What is applied.
    pub fn applied(&self) -> &BTreeMap<FrontendKey, VirtualService> {
        &self.applied
    }

    /// Makes the data plane match `desired` for the `changed` frontends only (the
    /// incremental path: the cost follows the change, not the number of services).
    pub fn apply_changed(
        &mut self,
        desired: &DesiredState,
        changed: &BTreeSet<FrontendKey>,
    ) -> SyncReport {
        let _span = info_span!("apply_changed", frontends = changed.len()).entered();
        let mut report = SyncReport::default();
        for frontend in changed.iter().filter(|f| !desired.services.contains_key(f)) {
            self.remove_one(*frontend, &mut report);
        }
        self.upsert_all(
            changed.iter().filter_map(|f| desired.services.get(f)),
            &mut report,
        );
        report
    }

    fn remove_one(&mut self, frontend: FrontendKey, report: &mut SyncReport) {
        if !self.applied.contains_key(&frontend) {
            return;
        }
        match self.dataplane.remove(&frontend) {
            Ok(()) => {
                self.applied.remove(&frontend);
                report.removed += 1;
            }
            Err(e) => {
                warn!(%frontend, error = %e, "removing service failed; will retry");
                if let Some(svc) = self.applied.get(&frontend) {
                    report.failed.push((svc.clone(), e));
                }
            }
        }
    }

    /// Programs the frontends of one Service together: if one fails, those already
    /// written go back to their previous state, so a Service is never half-programmed.
    fn upsert_service(&mut self, frontends: &[&VirtualService], report: &mut SyncReport) {
        let mut done: Vec<(FrontendKey, Option<VirtualService>)> = Vec::new();
        for svc in frontends {
            let held = self.dataplane.held(svc);
            if self.applied.get(&svc.frontend) == Some(held.as_ref()) {
                report.unchanged += 1;
                continue;
            }
            match self.dataplane.upsert(svc) {
                Ok(()) => {
                    let previous = self.applied.insert(svc.frontend, held.into_owned());
                    done.push((svc.frontend, previous));
                    report.upserted += 1;
                }
                Err(e) => {
                    warn!(service = %svc.name, frontend = %svc.frontend, error = %e,
                        "programming service failed; its previous state is kept");
                    for (frontend, previous) in done.into_iter().rev() {
                        let undo = match &previous {
                            Some(p) => self.dataplane.upsert(p),
                            None => self.dataplane.remove(&frontend),
                        };
                        match undo {
                            Ok(()) => {
                                match previous {
                                    Some(p) => self.applied.insert(frontend, p),
                                    None => self.applied.remove(&frontend),
                                };
                                report.upserted -= 1;
                            }
                            Err(e) => {
                                warn!(%frontend, error = %e, "undoing a partial update failed")
                            }
                        }
                    }
                    report.failed.push(((*svc).clone(), e));
                    return;
                }
            }
        }
    }

    /// Upserts `frontends` grouped by Service.
    fn upsert_all<'a>(
        &mut self,
        frontends: impl Iterator<Item = &'a VirtualService>,
        report: &mut SyncReport,
    ) {
        let mut by_service: BTreeMap<(&str, &str), Vec<&VirtualService>> = BTreeMap::new();
        for vs in frontends {
            by_service
                .entry((&vs.name.namespace, &vs.name.name))
                .or_default()
                .push(vs);
        }
        for group in by_service.values() {
            self.upsert_service(group, report);
        }
    }

    /// Re-reads what the kernel holds, then makes it match `desired`: entries changed
    /// or deleted behind the agent's back are rewritten (the periodic full resync).
    pub fn resync(&mut self, desired: &DesiredState) -> SyncReport {
        match self
            .dataplane
            .refresh()
            .and_then(|()| self.dataplane.programmed())
        {
            Ok(held) => self.applied = held.into_iter().map(|s| (s.frontend, s)).collect(),
            Err(e) => warn!(error = %e, "re-reading the data plane failed; applying the diff only"),
        }
        self.apply(desired)
    }

    /// Makes the data plane match `desired`.
    pub fn apply(&mut self, desired: &DesiredState) -> SyncReport {
        let _span = info_span!("apply", services = desired.services.len()).entered();
        let mut report = SyncReport::default();
        let gone: Vec<FrontendKey> = self
            .applied
            .keys()
            .filter(|f| !desired.services.contains_key(f))
            .copied()
            .collect();
        for frontend in gone {
            self.remove_one(frontend, &mut report);
        }
        self.upsert_all(desired.services.values(), &mut report);
        report
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::model::{FrontendKind, Protocol, ServicePortName};

    use crate::dataplane::fake::FakeDataplane;

    fn ops(r: &Reconciler<FakeDataplane>) -> Vec<String> {
        r.dataplane().state().ops.clone()
    }

    fn svc(port: u16, backends: &[&str]) -> VirtualService {
        VirtualService {
            name: ServicePortName {
                namespace: "default".into(),
                name: format!("s{port}"),
                port: String::new(),
            },
            frontend: FrontendKey::internal("10.96.0.1".parse().unwrap(), port, Protocol::Tcp),
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
            affinity_timeout_s: None,
            kind: FrontendKind::ClusterIp,
            source_ranges: Vec::new(),
            node_local: false,
        }
    }

    fn state(svcs: &[VirtualService]) -> DesiredState {
        let mut d = DesiredState::default();
        for s in svcs {
            d.insert(s.clone());
        }
        d
    }

    #[test]
    fn unchanged_services_cause_no_writes() {
        let mut r = Reconciler::new(FakeDataplane::new()).unwrap();
        let d = state(&[svc(80, &["10.0.0.1:8080"])]);
        r.apply(&d);
        let report = r.apply(&d);
        assert_eq!(report.unchanged, 1);
        assert_eq!(ops(&r), vec!["upsert 10.96.0.1:80/TCP"]);
    }

    #[test]
    fn removals_come_before_additions() {
        let mut r = Reconciler::new(FakeDataplane::new()).unwrap();
        r.apply(&state(&[svc(80, &["10.0.0.1:8080"])]));
        r.apply(&state(&[svc(81, &["10.0.0.1:8080"])]));
        assert_eq!(
            ops(&r),
            vec![
                "upsert 10.96.0.1:80/TCP",
                "remove 10.96.0.1:80/TCP",
                "upsert 10.96.0.1:81/TCP"
            ]
        );
    }

    #[test]
    fn a_failing_service_does_not_stop_the_others_and_is_retried() {
        let mut r = Reconciler::new(FakeDataplane::new()).unwrap();
        let d = state(&[svc(666, &[]), svc(80, &["10.0.0.1:8080"])]);
        let report = r.apply(&d);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.upserted, 1);
        let report = r.apply(&d);
        assert_eq!(report.failed.len(), 1, "retried on the next sync");
        assert_eq!(report.unchanged, 1);
    }

    #[test]
    fn a_service_is_programmed_whole_or_not_at_all() {
        let mut r = Reconciler::new(FakeDataplane::new()).unwrap();
        // One Service, two ports; the second cannot be programmed.
        let mut bad = svc(666, &[]);
        bad.name = svc(80, &[]).name;
        let d = state(&[svc(80, &["10.0.0.1:8080"]), bad]);
        let report = r.apply(&d);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.upserted, 0);
        assert!(r.applied().is_empty(), "the first port was rolled back");
        assert!(r.dataplane().state().held.is_empty());
    }

    #[test]
    fn starts_from_what_the_dataplane_holds() {
        let mut dp = FakeDataplane::new();
        dp.upsert(&svc(80, &["10.0.0.1:8080"])).unwrap();
        dp.state().ops.clear();
        let mut r = Reconciler::new(dp).unwrap();
        let report = r.apply(&state(&[svc(80, &["10.0.0.1:8080"])]));
        assert_eq!(report.unchanged, 1);
        assert!(ops(&r).is_empty());
    }

    #[test]
    fn a_changed_backend_set_is_one_upsert() {
        let mut r = Reconciler::new(FakeDataplane::new()).unwrap();
        r.apply(&state(&[svc(80, &["10.0.0.1:8080"])]));
        let report = r.apply(&state(&[svc(80, &["10.0.0.1:8080", "10.0.0.2:8080"])]));
        assert_eq!(report.upserted, 1);
        assert_eq!(report.removed, 0);
    }

    fn node(cidr: &str) -> NodeAddresses {
        NodeAddresses {
            nodeport_addresses: cidr.parse().unwrap(),
            node_ips: Vec::new(),
        }
    }

    #[test]
    fn node_addresses_are_applied_when_they_change_and_reapplied_on_request() {
        let mut r = Reconciler::new(FakeDataplane::new()).unwrap();
        r.set_node(&node("192.0.2.0/24"), false).unwrap();
        r.set_node(&node("192.0.2.0/24"), false).unwrap();
        assert_eq!(
            ops(&r),
            vec!["set_node"],
            "unchanged addresses are not re-applied"
        );
        r.set_node(&node("198.51.100.0/24"), false).unwrap();
        r.refresh_node().unwrap();
        r.set_node(&node("198.51.100.0/24"), true).unwrap();
        assert_eq!(
            ops(&r).len(),
            4,
            "a change, a device refresh and a full resync"
        );
        assert_eq!(r.dataplane().state().node, Some(node("198.51.100.0/24")));
    }
}
