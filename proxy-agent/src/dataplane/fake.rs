//! An in-memory data plane for tests of everything above the backends: it records
//! every call, holds what it was given, and fails on request. Its state is shared
//! (`FakeDataplane::state`) so a test can look while the daemon's loop owns it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{Dataplane, DataplaneError};
use crate::model::{FrontendKey, NodeAddresses, VirtualService};

/// What the fake holds and did.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Every call, in order: `upsert <frontend>`, `remove <frontend>`, `set_node`.
    pub ops: Vec<String>,
    /// The programmed services.
    pub held: BTreeMap<FrontendKey, VirtualService>,
    /// The node addresses last set.
    pub node: Option<NodeAddresses>,
    /// Upserts of frontends on this port fail with a capacity error.
    pub fail_port: Option<u16>,
}

/// The fake data plane; clones share one state.
#[derive(Clone, Debug, Default)]
pub struct FakeDataplane {
    state: Arc<Mutex<FakeState>>,
    devices: Arc<Notify>,
}

impl FakeDataplane {
    /// A fake whose upserts on port 666 fail (as a full table would).
    pub fn new() -> Self {
        let fake = FakeDataplane::default();
        fake.state().fail_port = Some(666);
        fake
    }

    /// The shared state.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock has failed already.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulates a device change (an interface appeared).
    pub fn devices_changed(&self) {
        self.devices.notify_one();
    }
}

impl Dataplane for FakeDataplane {
    fn mode(&self) -> &'static str {
        "fake"
    }

    fn set_node(&mut self, node: &NodeAddresses) -> Result<(), DataplaneError> {
        let mut st = self.state();
        st.ops.push("set_node".into());
        st.node = Some(node.clone());
        Ok(())
    }

    fn upsert(&mut self, svc: &VirtualService) -> Result<(), DataplaneError> {
        let mut st = self.state();
        if st.fail_port == Some(svc.frontend.port) {
            return Err(DataplaneError::Capacity {
                table: "FRONTENDS",
                capacity: 1,
                what: svc.name.to_string(),
            });
        }
        st.ops.push(format!("upsert {}", svc.frontend));
        st.held.insert(svc.frontend, svc.clone());
        Ok(())
    }

    fn remove(&mut self, frontend: &FrontendKey) -> Result<(), DataplaneError> {
        let mut st = self.state();
        st.ops.push(format!("remove {frontend}"));
        st.held.remove(frontend);
        Ok(())
    }

    fn programmed(&self) -> Result<Vec<VirtualService>, DataplaneError> {
        Ok(self.state().held.values().cloned().collect())
    }

    fn node_changed(&mut self) -> impl std::future::Future<Output = ()> + Send {
        let devices = Arc::clone(&self.devices);
        // notify_one keeps a permit while nobody waits: cancel-safe.
        async move { devices.notified().await }
    }
}
