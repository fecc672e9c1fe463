//! IPVS's connection timeouts (`--ipvs-tcp-timeout`, `--ipvs-tcpfin-timeout`,
//! `--ipvs-udp-timeout`), set once at start as kube-proxy does (its `ipvsadm --set`):
//! only those given; the others keep the kernel's values (900 s, 120 s, 300 s unless
//! someone changed them).

use std::time::Duration;

use super::backend::Timeouts;
use super::netlink::{Ipvs, TimeoutConfig};
use crate::dataplane::DataplaneError;

/// The netlink form of `timeouts`: whole seconds, a part of a second rounded up (IPVS
/// counts seconds, and rounding down could make 0, which the kernel reads as "keep").
pub fn config(timeouts: &Timeouts) -> TimeoutConfig {
    let secs = |d: Option<Duration>| {
        d.filter(|d| !d.is_zero()).map(|d| {
            let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            u32::try_from(whole).unwrap_or(u32::MAX)
        })
    };
    TimeoutConfig {
        tcp: secs(timeouts.tcp),
        tcp_fin: secs(timeouts.tcp_fin),
        udp: secs(timeouts.udp),
    }
}

/// Sets the timeouts given in `ipvs`'s network namespace.
pub fn apply(ipvs: &mut Ipvs, timeouts: &Timeouts) -> Result<(), DataplaneError> {
    Ok(ipvs.set_timeouts(&config(timeouts))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_timeouts_given_are_sent_in_whole_seconds() {
        let t = Timeouts {
            tcp: Some(Duration::from_secs(900)),
            tcp_fin: None,
            udp: Some(Duration::from_millis(1500)),
        };
        assert_eq!(
            config(&t),
            TimeoutConfig {
                tcp: Some(900),
                tcp_fin: None,
                udp: Some(2),
            }
        );
        let zero = Timeouts {
            tcp: Some(Duration::ZERO),
            ..Timeouts::default()
        };
        assert!(config(&zero).is_empty(), "0 leaves the kernel's");
        assert!(config(&Timeouts::default()).is_empty());
    }
}
