//! Services that need a feature the data plane lacks are refused whole, here, with the
//! reason, rather than failing in the data plane at every sync (and never half
//! programmed).

use super::Skipped;
use super::service::Candidate;
use crate::model::Capabilities;

/// `candidate`, unless one of its frontends needs a feature `capabilities` lacks; then
/// `None`, and the Service is reported in `skipped`.
pub(super) fn supported(
    candidate: Option<Candidate>,
    capabilities: &Capabilities,
    skipped: &mut Vec<Skipped>,
) -> Option<Candidate> {
    let candidate = candidate?;
    let missing = candidate
        .services
        .iter()
        .find_map(|vs| capabilities.missing(vs).map(|f| (vs, f)));
    match missing {
        None => Some(candidate),
        Some((vs, feature)) => {
            skipped.push(Skipped {
                object: format!("Service {}", candidate.id),
                reason: format!(
                    "frontend {} needs {feature}, which this data plane does not support; \
                     the Service is not served",
                    vs.frontend
                ),
            });
            None
        }
    }
}

#[cfg(test)]
mod tests;
