//! Which EndpointSlices count, and for which Service: valid ones, of an IP family, not
//! ignored by kube-proxy's informers, grouped by the Service their label names.

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, Skipped};
use crate::source::Snapshot;
use crate::source::validate::{self, LABEL_SERVICE_NAME, namespace_of};

/// Valid IP slices grouped by (namespace, service name), in slice-name order.
pub(super) type SliceIndex<'a> = BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>;

pub(super) fn index_slices<'a>(
    snapshot: &'a Snapshot,
    skipped: &mut Vec<Skipped>,
) -> SliceIndex<'a> {
    let mut index = SliceIndex::new();
    for slice in snapshot.slices.values() {
        if let Some(service) = usable_slice(slice, skipped) {
            index
                .entry((namespace_of(&slice.metadata), service))
                .or_default()
                .push(slice);
        }
    }
    index
}

/// The Service a slice serves, if the slice is usable: valid, of an IP family, and not
/// one kube-proxy's informers ignore. Invalid slices are reported.
pub(super) fn usable_slice<'a>(
    slice: &'a EndpointSlice,
    skipped: &mut Vec<Skipped>,
) -> Option<&'a str> {
    let labels = slice.metadata.labels.as_ref();
    // kube-proxy's informers never see these.
    if labels.is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME))
        || labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS))
    {
        return None;
    }
    if let Err(e) = validate::endpoint_slice(slice) {
        skipped.push(Skipped {
            object: format!(
                "EndpointSlice {}/{}",
                namespace_of(&slice.metadata),
                slice.metadata.name.as_deref().unwrap_or("")
            ),
            reason: e.to_string(),
        });
        return None;
    }
    if slice.address_type == "FQDN" {
        return None;
    }
    labels
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .map(String::as_str)
}

#[cfg(test)]
mod tests;
