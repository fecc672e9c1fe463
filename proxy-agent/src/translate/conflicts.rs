//! Frontend conflicts between Services: who serves a frontend several Services claim.

use std::collections::BTreeMap;

use super::Skipped;
use super::service::Candidate;
use crate::model::{DesiredState, FrontendKey};

/// Settles frontend conflicts. Two Services on one frontend: the older wins, then the
/// smaller namespace/name. A timestamp-less Service (typical of hand-written manifests)
/// counts as newest. Claims are made in that order, so a Service is only ever displaced
/// by one that is actually served, and a loser is left out whole. Returns the desired
/// state and the losers by `namespace/name`.
pub(super) fn settle<'a>(
    candidates: impl Iterator<Item = &'a Candidate>,
) -> (DesiredState, BTreeMap<String, Skipped>) {
    let mut candidates: Vec<&Candidate> = candidates.collect();
    candidates.sort_by(|a, b| {
        (a.created.is_none(), a.created, &a.id).cmp(&(b.created.is_none(), b.created, &b.id))
    });
    let mut desired = DesiredState::default();
    let mut owner: BTreeMap<FrontendKey, &str> = BTreeMap::new();
    let mut losers = BTreeMap::new();
    for candidate in candidates {
        let clash = candidate
            .services
            .iter()
            .find_map(|vs| owner.get(&vs.frontend).map(|o| (vs.frontend, *o)));
        if let Some((frontend, winner)) = clash {
            losers.insert(
                candidate.id.clone(),
                Skipped {
                    object: format!("Service {}", candidate.id),
                    reason: format!(
                        "frontend {frontend} is already served by Service {winner}, which is older \
                         (or as old and sorts first); Service {} is not served",
                        candidate.id
                    ),
                },
            );
            continue;
        }
        for vs in &candidate.services {
            owner.insert(vs.frontend, &candidate.id);
            desired.insert(vs.clone());
        }
    }
    (desired, losers)
}

#[cfg(test)]
mod tests;
