//! The reconciler: compares the desired state with what is programmed and applies the
//! difference, service by service, through a [`Dataplane`].
//!
//! Order: removals first (they free map capacity), then creations and updates. Each
//! service is applied on its own: one that fails keeps its previous state and is
//! retried on the next sync, and every other service is still applied.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{info_span, warn};

use crate::dataplane::{Dataplane, DataplaneError};
use crate::model::{DesiredState, FrontendKey, VirtualService};

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
    /// What the data plane holds, as far as we know.
    applied: BTreeMap<FrontendKey, VirtualService>,
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
        Ok(Reconciler { dataplane, applied })
    }

    /// The data plane.
    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// The data plane, for settings outside the desired state (devices).
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
            if self.applied.get(&svc.frontend) == Some(*svc) {
                report.unchanged += 1;
                continue;
            }
            match self.dataplane.upsert(svc) {
                Ok(()) => {
                    let previous = self.applied.insert(svc.frontend, (*svc).clone());
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

    /// Records every call; fails upserts of frontends on port 666.
    #[derive(Default)]
    struct Recorder {
        ops: Vec<String>,
        held: BTreeMap<FrontendKey, VirtualService>,
    }

    impl Dataplane for Recorder {
        fn mode(&self) -> &'static str {
            "recorder"
        }
        fn set_node(&mut self, _: &crate::model::NodeAddresses) -> Result<(), DataplaneError> {
            Ok(())
        }
        fn upsert(&mut self, svc: &VirtualService) -> Result<(), DataplaneError> {
            if svc.frontend.port == 666 {
                return Err(DataplaneError::Capacity {
                    table: "FRONTENDS",
                    capacity: 1,
                    what: svc.name.to_string(),
                });
            }
            self.ops.push(format!("upsert {}", svc.frontend));
            self.held.insert(svc.frontend, svc.clone());
            Ok(())
        }
        fn remove(&mut self, frontend: &FrontendKey) -> Result<(), DataplaneError> {
            self.ops.push(format!("remove {frontend}"));
            self.held.remove(frontend);
            Ok(())
        }
        fn programmed(&self) -> Result<Vec<VirtualService>, DataplaneError> {
            Ok(self.held.values().cloned().collect())
        }
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
        let mut r = Reconciler::new(Recorder::default()).unwrap();
        let d = state(&[svc(80, &["10.0.0.1:8080"])]);
        r.apply(&d);
        let report = r.apply(&d);
        assert_eq!(report.unchanged, 1);
        assert_eq!(r.dataplane().ops, vec!["upsert 10.96.0.1:80/TCP"]);
    }

    #[test]
    fn removals_come_before_additions() {
        let mut r = Reconciler::new(Recorder::default()).unwrap();
        r.apply(&state(&[svc(80, &["10.0.0.1:8080"])]));
        r.apply(&state(&[svc(81, &["10.0.0.1:8080"])]));
        assert_eq!(
            r.dataplane().ops,
            vec![
                "upsert 10.96.0.1:80/TCP",
                "remove 10.96.0.1:80/TCP",
                "upsert 10.96.0.1:81/TCP"
            ]
        );
    }

    #[test]
    fn a_failing_service_does_not_stop_the_others_and_is_retried() {
        let mut r = Reconciler::new(Recorder::default()).unwrap();
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
        let mut r = Reconciler::new(Recorder::default()).unwrap();
        // One Service, two ports; the second cannot be programmed.
        let mut bad = svc(666, &[]);
        bad.name = svc(80, &[]).name;
        let d = state(&[svc(80, &["10.0.0.1:8080"]), bad]);
        let report = r.apply(&d);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.upserted, 0);
        assert!(r.applied().is_empty(), "the first port was rolled back");
        assert!(r.dataplane().held.is_empty());
    }

    #[test]
    fn starts_from_what_the_dataplane_holds() {
        let mut dp = Recorder::default();
        dp.upsert(&svc(80, &["10.0.0.1:8080"])).unwrap();
        dp.ops.clear();
        let mut r = Reconciler::new(dp).unwrap();
        let report = r.apply(&state(&[svc(80, &["10.0.0.1:8080"])]));
        assert_eq!(report.unchanged, 1);
        assert!(r.dataplane().ops.is_empty());
    }

    #[test]
    fn a_changed_backend_set_is_one_upsert() {
        let mut r = Reconciler::new(Recorder::default()).unwrap();
        r.apply(&state(&[svc(80, &["10.0.0.1:8080"])]));
        let report = r.apply(&state(&[svc(80, &["10.0.0.1:8080", "10.0.0.2:8080"])]));
        assert_eq!(report.upserted, 1);
        assert_eq!(report.removed, 0);
    }
}
