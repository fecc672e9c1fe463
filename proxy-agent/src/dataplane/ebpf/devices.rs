//! The node's devices for the tc programs: which interfaces get them (NodePort
//! interfaces: ingress and egress; pod interfaces: ingress) and which addresses serve
//! NodePorts (`NODE_ADDRS`, also read by the socket programs).
//!
//! Each tc link is pinned as `<bpffs>/links/tc-<in|out>-<ifindex>-<name>`; a new agent
//! replaces the program of a pinned link in one step, so NodePort traffic keeps being
//! translated while the agent restarts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::{HashMap, MapData};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::{SchedClassifier, TcAttachType};
use proxy_common as pc;
use proxy_common::{Addr, maps, sizes};
use tracing::{debug, info, warn};

use super::error::{kernel, map_error, program_error};
use super::load::{LoadError, program, take_map};
use crate::dataplane::DataplaneError;
use crate::dataplane::netdev::{self, Device, DevicePlan};
use crate::model::NodeAddresses;

/// Pins of tc links start with this (`tc-in-<ifindex>-<name>`, `tc-out-...`).
pub(super) const TC_PIN_PREFIX: &str = "tc-";

/// The tc attachment and the maps describing it.
pub(super) struct Devices {
    ifaces: HashMap<MapData, u32, pc::Iface>,
    node_addrs: HashMap<MapData, Addr, pc::NodeAddr>,
    links_dir: PathBuf,
    /// `--pod-interfaces`: names, or prefixes ending in `*`.
    pod_interfaces: Vec<String>,
    /// The plan last applied (None: none yet in this process).
    current: Option<DevicePlan>,
}

impl Devices {
    /// Takes the device maps out of the loaded object.
    pub(super) fn new(
        ebpf: &mut Ebpf,
        links_dir: &Path,
        pod_interfaces: Vec<String>,
    ) -> Result<Self, LoadError> {
        Ok(Devices {
            ifaces: take_map(ebpf, maps::IFACES, HashMap::try_from)?,
            node_addrs: take_map(ebpf, maps::NODE_ADDRS, HashMap::try_from)?,
            links_dir: links_dir.to_owned(),
            pod_interfaces,
            current: None,
        })
    }

    /// Plans the devices from the interfaces of this network namespace and attaches
    /// accordingly. A failure before attaching (the interfaces cannot be listed, no
    /// address matches `--nodeport-addresses`) keeps the previous attachment.
    pub(super) fn set_node(
        &mut self,
        ebpf: &mut Ebpf,
        node: &NodeAddresses,
    ) -> Result<(), DataplaneError> {
        let found = netdev::list().map_err(|e| {
            kernel(
                "listing",
                "the network interfaces",
                std::io::Error::other(e.to_string()),
            )
        })?;
        let plan = netdev::plan(
            &found.interfaces,
            &node.nodeport_addresses,
            &node.node_ips,
            &found.default_route_interfaces,
            &self.pod_interfaces,
        )
        .map_err(|e| {
            DataplaneError::Unsupported(format!(
                "--nodeport-addresses {}: {e}",
                node.nodeport_addresses
            ))
        })?;
        self.set_devices(ebpf, &plan)
    }

    /// Attaches the tc programs to the planned interfaces (replacing a previous agent's
    /// links atomically, detaching from interfaces no longer planned) and writes the
    /// interface and NodePort address maps. Nothing changes when the plan is the same
    /// as last time.
    pub(super) fn set_devices(
        &mut self,
        ebpf: &mut Ebpf,
        plan: &DevicePlan,
    ) -> Result<(), DataplaneError> {
        if self.current.as_ref() == Some(plan) {
            return Ok(());
        }
        // Maps first, so that the programs find their interface when they start.
        let mut want_ifaces = HashSet::new();
        for (dev, flags) in plan
            .external
            .iter()
            .map(|d| (d, pc::IFACE_F_EXTERNAL))
            .chain(plan.pod.iter().map(|d| (d, pc::IFACE_F_POD)))
        {
            let value = pc::Iface {
                v4: dev.v4.map(Addr::from).unwrap_or_default(),
                v6: dev.v6.map(Addr::from).unwrap_or_default(),
                flags,
                _pad: 0,
            };
            self.ifaces
                .insert(dev.index, value, 0)
                .map_err(|e| map_error("insert", maps::IFACES, sizes::IFACES, e))?;
            want_ifaces.insert(dev.index);
        }
        let want_addrs: Vec<Addr> = plan
            .nodeport_addrs
            .iter()
            .map(|ip| Addr::from(*ip))
            .collect();
        for a in &want_addrs {
            self.node_addrs
                .insert(a, pc::NodeAddr { flags: 0 }, 0)
                .map_err(|e| map_error("insert", maps::NODE_ADDRS, sizes::NODE_ADDRS, e))?;
        }

        let mut wanted_pins = Vec::new();
        for dev in &plan.external {
            for kind in [TcAttachType::Ingress, TcAttachType::Egress] {
                wanted_pins.push(self.attach_tc(ebpf, kind, dev)?);
            }
        }
        for dev in &plan.pod {
            wanted_pins.push(self.attach_tc(ebpf, TcAttachType::Ingress, dev)?);
        }
        self.detach_unplanned(&wanted_pins);
        // Entries of interfaces and addresses no longer planned: the programs ignore
        // what these maps do not name.
        let stale_ifaces: Vec<u32> = self
            .ifaces
            .keys()
            .filter_map(Result::ok)
            .filter(|i| !want_ifaces.contains(i))
            .collect();
        for i in stale_ifaces {
            if let Err(e) = self.ifaces.remove(&i) {
                debug!(ifindex = i, error = %e, "removing a stale interface entry");
            }
        }
        let stale_addrs: Vec<Addr> = self
            .node_addrs
            .keys()
            .filter_map(Result::ok)
            .filter(|a| !want_addrs.contains(a))
            .collect();
        for a in stale_addrs {
            if let Err(e) = self.node_addrs.remove(&a) {
                debug!(addr = %a.ip(), error = %e, "removing a stale NodePort address");
            }
        }
        info!(
            external = ?plan.external.iter().map(|d| &d.name).collect::<Vec<_>>(),
            pod = ?plan.pod.iter().map(|d| &d.name).collect::<Vec<_>>(),
            nodeport_addresses = ?plan.nodeport_addrs,
            "tc programs attached"
        );
        self.current = Some(plan.clone());
        Ok(())
    }

    /// Removes the pins of tc links on interfaces no longer planned: removing the pin
    /// detaches the program.
    fn detach_unplanned(&self, wanted_pins: &[PathBuf]) {
        let Ok(entries) = std::fs::read_dir(&self.links_dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let is_tc = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(TC_PIN_PREFIX));
            if is_tc && !wanted_pins.contains(&path) {
                info!(pin = %path.display(), "detaching tc program");
                if let Err(e) = std::fs::remove_file(&path) {
                    warn!(pin = %path.display(), error = %e, "removing a tc link pin");
                }
            }
        }
    }

    /// Attaches the tc program of direction `kind` to `dev` and pins the link,
    /// replacing the program of a link pinned for the same interface in one step.
    /// Returns the pin.
    fn attach_tc(
        &mut self,
        ebpf: &mut Ebpf,
        kind: TcAttachType,
        dev: &Device,
    ) -> Result<PathBuf, DataplaneError> {
        let (name, dir) = match kind {
            TcAttachType::Ingress => (pc::programs::TC_INGRESS, "in"),
            _ => (pc::programs::TC_EGRESS, "out"),
        };
        let pin = self
            .links_dir
            .join(format!("{TC_PIN_PREFIX}{dir}-{}-{}", dev.index, dev.name));
        let object = || format!("{name} on {}", dev.name);
        let link_err = |op, message: String| kernel(op, object(), std::io::Error::other(message));
        let program = program::<SchedClassifier>(ebpf, name)
            .map_err(|e| link_err("finding", e.to_string()))?;
        let mut id = None;
        if pin.exists() {
            // Atomic replacement of the previous agent's program on this interface.
            match PinnedLink::from_pin(&pin) {
                Ok(old) => match SchedClassifierLink::try_from(FdLink::from(old)) {
                    Ok(link) => match program.attach_to_link(link) {
                        Ok(i) => id = Some(i),
                        Err(e) => debug!(pin = %pin.display(), error = %e, "replacing a tc link"),
                    },
                    Err(e) => debug!(pin = %pin.display(), error = %e, "adopting a tc link"),
                },
                Err(e) => debug!(pin = %pin.display(), error = %e, "opening a tc link pin"),
            }
            if id.is_none()
                && let Err(e) = std::fs::remove_file(&pin)
            {
                debug!(pin = %pin.display(), error = %e, "removing an unusable tc link pin");
            }
        }
        let id = match id {
            Some(id) => id,
            None => program
                .attach(&dev.name, kind)
                .map_err(|e| program_error("attach", object(), e))?,
        };
        let link = program
            .take_link(id)
            .map_err(|e| program_error("take_link", object(), e))?;
        let link: FdLink = link
            .try_into()
            .map_err(|e: LinkError| link_err("converting the link of", e.to_string()))?;
        if pin.exists() {
            // Already pinned (the link we replaced the program of).
            return Ok(pin);
        }
        link.pin(&pin)
            .map_err(|e| link_err("pinning", format!("{}: {e}", pin.display())))?;
        Ok(pin)
    }
}
