//! The node's network devices: which addresses serve NodePorts (`--nodeport-addresses`)
//! and which interfaces get the tc programs. [`plan`] is pure; [`list`] reads the
//! interfaces and default routes of the agent's network namespace over rtnetlink, and
//! [`DeviceWatch`] says when to read them again.

#[cfg(test)]
mod netns_tests;
mod rtnl;
mod watch;

pub use rtnl::{Dump, RtnlError, Snapshot, list};
pub use watch::{Change, DEFAULT_RESYNC, DeviceWatch};

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::model::NodePortAddresses;

/// A network interface and its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Its addresses, in the order the kernel lists them.
    pub addrs: Vec<IpAddr>,
    /// Whether it is a loopback device.
    pub loopback: bool,
}

/// What the tc programs are attached to, and the addresses they serve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DevicePlan {
    /// Interfaces holding NodePort addresses: ingress and egress programs.
    pub external: Vec<Device>,
    /// Pod-facing interfaces: the ingress program.
    pub pod: Vec<Device>,
    /// Every NodePort address (also used by the socket programs).
    pub nodeport_addrs: Vec<IpAddr>,
}

/// One interface with programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// The node's IPv4 address on it: the source toward backends it leads to.
    pub v4: Option<IpAddr>,
    /// Likewise for IPv6.
    pub v6: Option<IpAddr>,
}

/// An address that may serve NodePorts: not link-local, not multicast, and not
/// loopback unless `loopback_ok` (a range naming loopback explicitly).
fn usable(ip: &IpAddr, loopback_ok: bool) -> bool {
    if ip.is_multicast() || ip.is_unspecified() || (ip.is_loopback() && !loopback_ok) {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_unicast_link_local(),
    }
}

/// Decides the NodePort addresses and the interfaces to attach to.
///
/// `primary_ips`: the Node's InternalIPs (empty when unknown); `default_route_ifaces`:
/// names of interfaces holding a default route; `pod_patterns`: `--pod-interfaces`
/// (exact names, or a prefix ending in `*`).
pub fn plan(
    ifaces: &[Interface],
    selection: &NodePortAddresses,
    primary_ips: &[IpAddr],
    default_route_ifaces: &BTreeSet<String>,
    pod_patterns: &[String],
) -> Result<DevicePlan, String> {
    let mut chosen: Vec<(usize, IpAddr)> = Vec::new();
    match selection {
        NodePortAddresses::Cidrs(cidrs) => {
            for (i, iface) in ifaces.iter().enumerate() {
                for ip in &iface.addrs {
                    let within = cidrs
                        .iter()
                        .any(|c| c.contains(*ip) && usable(ip, c.ip().is_loopback()));
                    if within {
                        chosen.push((i, *ip));
                    }
                }
            }
        }
        NodePortAddresses::None => {}
        NodePortAddresses::Primary => {
            for want_v4 in [true, false] {
                let known = primary_ips.iter().find(|ip| ip.is_ipv4() == want_v4);
                let found = ifaces.iter().enumerate().find_map(|(i, iface)| {
                    iface
                        .addrs
                        .iter()
                        .find(|ip| match known {
                            Some(k) => *ip == k,
                            None => {
                                ip.is_ipv4() == want_v4
                                    && usable(ip, false)
                                    && default_route_ifaces.contains(&iface.name)
                            }
                        })
                        .map(|ip| (i, *ip))
                });
                if let Some(c) = found {
                    chosen.push(c);
                }
            }
            if chosen.is_empty() {
                return Err(
                    "no primary node address: the node has no InternalIP on a local \
                     interface and no default route; pass --nodeport-addresses CIDRs"
                        .into(),
                );
            }
        }
    }
    let mut plan = DevicePlan::default();
    for (i, iface) in ifaces.iter().enumerate() {
        let mine: Vec<IpAddr> = chosen
            .iter()
            .filter(|(j, _)| *j == i)
            .map(|(_, ip)| *ip)
            .collect();
        plan.nodeport_addrs.extend(&mine);
        let pod = pod_patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => iface.name.starts_with(prefix),
            None => iface.name == *p,
        });
        // Loopback NodePorts are served by the socket programs alone.
        if iface.loopback || (mine.is_empty() && !pod) {
            continue;
        }
        let pick = |v4: bool| {
            mine.iter()
                .find(|ip| ip.is_ipv4() == v4)
                .or_else(|| {
                    iface
                        .addrs
                        .iter()
                        .find(|ip| ip.is_ipv4() == v4 && usable(ip, false))
                })
                .copied()
        };
        let dev = Device {
            name: iface.name.clone(),
            index: iface.index,
            v4: pick(true),
            v6: pick(false),
        };
        if mine.is_empty() {
            plan.pod.push(dev);
        } else {
            plan.external.push(dev);
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn iface(name: &str, index: u32, addrs: &[&str]) -> Interface {
        Interface {
            name: name.into(),
            index,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            loopback: name == "lo",
        }
    }

    fn node() -> Vec<Interface> {
        vec![
            iface("lo", 1, &["127.0.0.1", "::1"]),
            iface("eth0", 2, &["192.0.2.1", "2001:db8::1", "fe80::1"]),
            iface("eth1", 3, &["198.51.100.7"]),
            iface("cbr0", 4, &["10.244.1.1", "fd00:244:1::1"]),
            iface("vp0", 5, &[]),
        ]
    }

    fn names(d: &[Device]) -> Vec<&str> {
        d.iter().map(|d| d.name.as_str()).collect()
    }

    fn ips(v: &[IpAddr]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn cidrs_select_every_address_inside_them_and_their_interfaces() {
        let sel: NodePortAddresses = "192.0.2.0/24,2001:db8::/64".parse().unwrap();
        let p = plan(&node(), &sel, &[], &BTreeSet::new(), &["cbr0".into()]).unwrap();
        assert_eq!(ips(&p.nodeport_addrs), ["192.0.2.1", "2001:db8::1"]);
        assert_eq!(names(&p.external), ["eth0"]);
        assert_eq!(names(&p.pod), ["cbr0"]);
        assert_eq!(p.external[0].v4, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(p.external[0].v6, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(p.pod[0].v4, Some("10.244.1.1".parse().unwrap()));
    }

    #[test]
    fn loopback_is_never_chosen_unless_a_range_names_it() {
        let all: NodePortAddresses = "0.0.0.0/0,::/0".parse().unwrap();
        let p = plan(&node(), &all, &[], &BTreeSet::new(), &[]).unwrap();
        assert!(!p.nodeport_addrs.iter().any(IpAddr::is_loopback));
        assert!(!p.nodeport_addrs.contains(&"fe80::1".parse().unwrap()));
        assert_eq!(names(&p.external), ["eth0", "eth1", "cbr0"]);

        let lo: NodePortAddresses = "127.0.0.0/8".parse().unwrap();
        let p = plan(&node(), &lo, &[], &BTreeSet::new(), &[]).unwrap();
        assert_eq!(ips(&p.nodeport_addrs), ["127.0.0.1"]);
        assert!(p.external.is_empty(), "no tc on lo: {p:?}");
    }

    #[test]
    fn primary_prefers_the_nodes_internal_ips() {
        let p = plan(
            &node(),
            &NodePortAddresses::Primary,
            &["198.51.100.7".parse().unwrap()],
            &["eth0".to_string()].into(),
            &[],
        )
        .unwrap();
        // IPv4 from the Node object; IPv6 from the default-route interface.
        assert_eq!(ips(&p.nodeport_addrs), ["2001:db8::1", "198.51.100.7"]);
        assert_eq!(names(&p.external), ["eth0", "eth1"]);
    }

    #[test]
    fn primary_without_node_ips_uses_the_default_route_interface() {
        let p = plan(
            &node(),
            &NodePortAddresses::Primary,
            &[],
            &["eth0".to_string()].into(),
            &[],
        )
        .unwrap();
        assert_eq!(ips(&p.nodeport_addrs), ["192.0.2.1", "2001:db8::1"]);
    }

    #[test]
    fn primary_with_nothing_to_go_on_is_an_error() {
        let e = plan(
            &node(),
            &NodePortAddresses::Primary,
            &[],
            &BTreeSet::new(),
            &[],
        );
        assert!(e.unwrap_err().contains("--nodeport-addresses"));
    }

    #[test]
    fn none_serves_no_node_ports_but_keeps_pod_interfaces() {
        let p = plan(
            &node(),
            &"none".parse().unwrap(),
            &[],
            &["eth0".to_string()].into(),
            &["cbr0".into()],
        )
        .unwrap();
        assert!(
            p.nodeport_addrs.is_empty() && p.external.is_empty(),
            "{p:?}"
        );
        assert_eq!(names(&p.pod), ["cbr0"]);
    }

    #[test]
    fn pod_patterns_match_names_and_prefixes() {
        let sel: NodePortAddresses = "192.0.2.0/24".parse().unwrap();
        let p = plan(&node(), &sel, &[], &BTreeSet::new(), &["vp*".into()]).unwrap();
        assert_eq!(names(&p.pod), ["vp0"]);
        assert_eq!(p.pod[0].v4, None);
    }

    #[test]
    fn bad_selections_are_rejected_with_the_reason() {
        for (s, want) in [
            ("", "expected"),
            ("10.0.0.1/8", "host bits"),
            ("nonsense", "not a CIDR"),
        ] {
            let e = s.parse::<NodePortAddresses>().unwrap_err();
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }
}
