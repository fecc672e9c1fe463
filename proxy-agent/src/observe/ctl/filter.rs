//! `proxyctl list`'s filters: by service name, by frontend address and by backend.
//! Pure functions over the listing, so that both data planes filter alike.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::dataplane::listing::ServiceView;

/// `--service NAMESPACE/NAME[:PORT]`: every port of a service, or one port by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSel {
    /// `namespace/name`.
    pub service: String,
    /// The port's name, if given.
    pub port: Option<String>,
}

impl FromStr for ServiceSel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (service, port) = match s.split_once(':') {
            Some((svc, port)) => (svc, Some(port)),
            None => (s, None),
        };
        let valid = service
            .split_once('/')
            .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'));
        if !valid || port.is_some_and(str::is_empty) {
            return Err(format!(
                "{s:?} is not NAMESPACE/NAME or NAMESPACE/NAME:PORT (e.g. default/web:http)"
            ));
        }
        Ok(ServiceSel {
            service: service.to_owned(),
            port: port.map(str::to_owned),
        })
    }
}

impl ServiceSel {
    /// Whether it names `listed`, a `namespace/name[:port]` from the data plane.
    pub fn matches(&self, listed: &str) -> bool {
        let (service, port) = match listed.split_once(':') {
            Some((svc, port)) => (svc, port),
            None => (listed, ""),
        };
        service == self.service && self.port.as_deref().is_none_or(|p| p == port)
    }
}

/// `--vip` and `--backend`: an address, with or without a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrSel {
    /// The address.
    pub ip: IpAddr,
    /// The port, if given.
    pub port: Option<u16>,
}

impl FromStr for AddrSel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(AddrSel {
                ip: sa.ip(),
                port: Some(sa.port()),
            });
        }
        let bare = s
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(s);
        bare.parse::<IpAddr>()
            .map(|ip| AddrSel { ip, port: None })
            .map_err(|_| format!("{s:?} is not IP or IP:PORT (e.g. 10.96.0.10:80, [fd00::10]:80)"))
    }
}

impl AddrSel {
    /// Whether it names `addr` (any port if it gives none).
    pub fn matches(&self, addr: SocketAddr) -> bool {
        addr.ip() == self.ip && self.port.is_none_or(|p| p == addr.port())
    }

    /// Whether it names frontend `ip:port`. A NodePort frontend (unspecified address)
    /// is served on every node address, so any address with its port names it; an
    /// address alone does not, or every NodePort would match every VIP.
    fn matches_frontend(&self, ip: IpAddr, port: u16) -> bool {
        if ip.is_unspecified() && !self.ip.is_unspecified() {
            return self.port == Some(port) && ip.is_ipv4() == self.ip.is_ipv4();
        }
        self.matches(SocketAddr::new(ip, port))
    }
}

/// What `proxyctl list` keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `--service`.
    pub service: Option<ServiceSel>,
    /// `--vip`.
    pub vip: Option<AddrSel>,
    /// `--backend`: keeps the frontends holding it, each with only its matching
    /// backends.
    pub backend: Option<AddrSel>,
}

impl Filter {
    /// The frontends of `services` that pass, in their order.
    pub fn apply(&self, services: Vec<ServiceView>) -> Vec<ServiceView> {
        services
            .into_iter()
            .filter(|v| self.service.as_ref().is_none_or(|s| s.matches(&v.service)))
            .filter(|v| self.vip.is_none_or(|a| a.matches_frontend(v.ip, v.port)))
            .filter_map(|mut v| {
                let Some(b) = self.backend else {
                    return Some(v);
                };
                v.endpoints.retain(|e| b.matches(e.address));
                v.backends.retain(|a| b.matches(*a));
                if let Some(ipvs) = &mut v.ipvs {
                    ipvs.destinations.retain(|d| b.matches(d.address));
                }
                (!v.endpoints.is_empty()).then_some(v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::render::tests::{ebpf_services, ipvs_services};

    fn frontends(v: &[ServiceView]) -> Vec<&str> {
        v.iter().map(|s| s.frontend.as_str()).collect()
    }

    #[test]
    fn selectors_parse_and_refuse_with_an_example() {
        assert_eq!(
            "default/web:http".parse(),
            Ok(ServiceSel {
                service: "default/web".into(),
                port: Some("http".into())
            })
        );
        assert_eq!(
            "default/web".parse::<ServiceSel>().map(|s| s.port),
            Ok(None)
        );
        for bad in ["web", "/web", "default/", "default/web:", "a/b/c"] {
            let e = bad.parse::<ServiceSel>().expect_err(bad);
            assert!(e.contains("e.g. default/web:http"), "{e}");
        }
        let a = |s: &str| s.parse::<AddrSel>();
        assert_eq!(a("10.96.0.10").map(|a| a.port), Ok(None));
        assert_eq!(a("10.96.0.10:80").map(|a| a.port), Ok(Some(80)));
        assert_eq!(a("[fd00::10]:80").map(|a| a.port), Ok(Some(80)));
        assert_eq!(a("[fd00::10]").map(|a| a.port), Ok(None));
        assert!(a("web").is_err_and(|e| e.contains("is not IP or IP:PORT")));
    }

    #[test]
    fn a_service_selector_matches_all_its_ports_or_the_one_named() {
        let sel = |s: &str| s.parse::<ServiceSel>().expect("selector");
        assert!(sel("default/web").matches("default/web:http"));
        assert!(sel("default/web").matches("default/web"));
        assert!(sel("default/web:http").matches("default/web:http"));
        assert!(!sel("default/web:http").matches("default/web:https"));
        assert!(!sel("default/web").matches("default/webapp:http"));
        assert!(!sel("default/web").matches(""));
    }

    #[test]
    fn filters_table() {
        let filter = |service: Option<&str>, vip: Option<&str>, backend: Option<&str>| Filter {
            service: service.map(|s| s.parse().expect("service")),
            vip: vip.map(|s| s.parse().expect("vip")),
            backend: backend.map(|s| s.parse().expect("backend")),
        };
        let cases: [(Filter, &[&str]); 8] = [
            (
                Filter::default(),
                &[
                    "10.96.0.10:80/TCP",
                    "*:30080/TCP (external)",
                    "192.0.2.50:443/TCP (external)",
                ],
            ),
            (
                filter(Some("default/web"), None, None),
                &["10.96.0.10:80/TCP", "*:30080/TCP (external)"],
            ),
            (filter(Some("default/web:https"), None, None), &[]),
            (
                filter(None, Some("10.96.0.10"), None),
                &["10.96.0.10:80/TCP"],
            ),
            (filter(None, Some("10.96.0.10:81"), None), &[]),
            // A node address with the NodePort names the NodePort frontend.
            (
                filter(None, Some("192.0.2.10:30080"), None),
                &["*:30080/TCP (external)"],
            ),
            (
                filter(None, None, Some("10.244.1.5")),
                &["10.96.0.10:80/TCP", "*:30080/TCP (external)"],
            ),
            (
                filter(Some("default/web"), None, Some("10.244.3.9:8080")),
                &["*:30080/TCP (external)"],
            ),
        ];
        for (f, want) in cases {
            assert_eq!(frontends(&f.apply(ebpf_services())), want, "{f:?}");
        }
    }

    #[test]
    fn a_backend_filter_keeps_only_the_matching_backends_in_every_field() {
        let f = Filter {
            backend: Some("10.244.2.5:8080".parse().expect("backend")),
            ..Filter::default()
        };
        let v = f.apply(ipvs_services());
        assert_eq!(frontends(&v), ["10.96.0.10:80/TCP"]);
        assert_eq!(v[0].endpoints.len(), 1);
        assert!(
            v[0].backends.is_empty(),
            "the drained one takes no connections"
        );
        let ipvs = v[0].ipvs.as_ref().expect("ipvs");
        assert_eq!(ipvs.destinations.len(), 1);
    }
}
