//! `proxyctl explain`: what the eBPF data plane would do, right now, with the next
//! connection of a flow: which frontend it matches in which scope, each check the
//! programs make (a tracked flow, the backend count, the source ranges, the traffic
//! policy's result, affinity) and the backend they would pick, or why none.
//!
//! The decision is one pure function ([`decide::decide`]) of the map contents that
//! matter for the flow ([`decide::FlowMaps`]), written after the programs' own rules
//! and tested table by table; [`read::read`] copies those contents out of the pinned
//! maps; [`netns`] finds the client pod's network-namespace cookie, which keys the
//! socket layer's affinity.

pub mod decide;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod netns;
pub mod read;
#[cfg(test)]
mod tests;
pub mod view;

use std::path::Path;

pub use decide::{ClientNetns, FlowMaps, Query};
pub use view::{
    Candidate, Check, Choice, Explanation, FlowPath, MatchedFrontend, Outcome, Verdict,
};

/// Explains `q` from the maps pinned under `bpffs`; `netns` is the client pod's
/// namespace, if the operator named it.
pub fn explain(bpffs: &Path, q: Query, netns: Option<&Path>) -> anyhow::Result<Explanation> {
    let (q, maps) = read::read(bpffs, q, netns)?;
    Ok(decide::decide(&q, &maps))
}
