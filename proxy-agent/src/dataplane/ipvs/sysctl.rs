//! The IPVS sysctls kube-proxy's IPVS mode sets, in the calling thread's network
//! namespace (`/proc/sys/net` follows the namespace of whoever opens it). They exist
//! once `ip_vs` is loaded, so [`apply`] runs after IPVS answered.

use std::io;

use crate::dataplane::DataplaneError;

/// `(path under /proc/sys/net/ipv4/vs, value)`, and why each.
pub const SETTINGS: [(&str, &str); 3] = [
    // Keep netfilter conntrack entries for IPVS connections, which the masquerading
    // and filtering rules of later work match on.
    ("conntrack", "1"),
    // A packet of a connection whose destination was deleted is dropped (and the
    // connection expired) instead of going nowhere: a deleted UDP backend's flows move.
    ("expire_nodest_conn", "1"),
    // A persistence template of a drained (weight 0) destination expires, so an
    // affine client is rescheduled rather than stuck to it.
    ("expire_quiescent_template", "1"),
];

/// Writes [`SETTINGS`].
pub fn apply() -> Result<(), DataplaneError> {
    for (name, value) in SETTINGS {
        let path = format!("/proc/sys/net/ipv4/vs/{name}");
        std::fs::write(&path, value).map_err(|source: io::Error| DataplaneError::Kernel {
            op: "writing",
            object: path,
            source,
        })?;
    }
    Ok(())
}
