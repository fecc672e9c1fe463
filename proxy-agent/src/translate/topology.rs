//! Topology hints: which of the ready endpoints the Cluster traffic policy keeps.

use super::endpoints::Ep;

/// Which hints restrict the cluster endpoint set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TopologyMode {
    /// No restriction.
    None,
    /// Only endpoints hinted for this node.
    SameNode,
    /// Only endpoints hinted for this node's zone.
    SameZone,
}

impl TopologyMode {
    /// Whether the mode keeps endpoint `e` on node `node` in zone `zone`.
    pub(super) fn keeps(self, e: &Ep<'_>, node: &str, zone: &str) -> bool {
        match self {
            TopologyMode::None => true,
            TopologyMode::SameNode => e.node_hints.contains(node),
            TopologyMode::SameZone => e.zone_hints.contains(zone),
        }
    }
}

/// kube-proxy's `topologyModeFromHints`: hints count only if every ready endpoint has
/// one of the kind and at least one names this node (zone).
pub(super) fn topology_mode(endpoints: &[Ep<'_>], node: &str, zone: &str) -> TopologyMode {
    let ready: Vec<&Ep<'_>> = endpoints.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return TopologyMode::None;
    }
    if ready.iter().all(|e| !e.node_hints.is_empty())
        && ready.iter().any(|e| e.node_hints.contains(node))
    {
        return TopologyMode::SameNode;
    }
    if ready.iter().all(|e| !e.zone_hints.is_empty())
        && ready.iter().any(|e| e.zone_hints.contains(zone))
    {
        return TopologyMode::SameZone;
    }
    TopologyMode::None
}

#[cfg(test)]
mod tests;
