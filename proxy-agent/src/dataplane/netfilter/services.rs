//! Which of netfilter's entries are service traffic, and of which service: an entry
//! whose original destination is a programmed frontend (IPVS mode, and the tc path's
//! NodePorts), or whose reply comes from a programmed backend (the eBPF socket path
//! translates at `connect()`, so netfilter only ever sees the backend). Pure: the
//! entries and the data plane's listing ([`crate::dataplane::listing`]) come in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::conntrack::{Entry, Proto};
use crate::dataplane::listing::ServiceView;

/// An entry of service traffic, and why it counts as such.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServiceEntry {
    /// The service (`namespace/name:port`, or the frontend when the agent recorded no
    /// name).
    pub service: String,
    /// The frontend (`VIP:port/protocol`) it was matched by, as `proxyctl list` shows it.
    pub frontend: String,
    /// `frontend` (its original destination is the frontend) or `backend` (its reply
    /// comes from one of the service's backends).
    pub matched: &'static str,
    /// The entry.
    pub entry: Entry,
}

/// A frontend's address as the listing prints it: `*` for a NodePort (any node
/// address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Addr {
    Any(u16),
    Exact(SocketAddr),
}

/// Parses `10.96.0.10:80/TCP`, `[fd00::1]:53/UDP`, `*:30080/TCP (external)`.
fn parse_frontend(frontend: &str) -> Option<(Addr, Proto)> {
    let bare = frontend.split_whitespace().next()?;
    let (addr, protocol) = bare.rsplit_once('/')?;
    let protocol = match protocol.to_ascii_uppercase().as_str() {
        "TCP" => Proto::TCP,
        "UDP" => Proto::UDP,
        "SCTP" => Proto::SCTP,
        _ => return None,
    };
    let addr = match addr.strip_prefix("*:") {
        Some(port) => Addr::Any(port.parse().ok()?),
        None => Addr::Exact(addr.parse().ok()?),
    };
    Some((addr, protocol))
}

/// Whom an entry belongs to, by the frontends and backends of `services`.
struct Index<'a> {
    frontends: HashMap<(Addr, Proto), &'a ServiceView>,
    backends: HashMap<(SocketAddr, Proto), &'a ServiceView>,
}

impl<'a> Index<'a> {
    fn new(services: &'a [ServiceView]) -> Self {
        let mut index = Index {
            frontends: HashMap::new(),
            backends: HashMap::new(),
        };
        for view in services {
            let Some((addr, protocol)) = parse_frontend(&view.frontend) else {
                continue;
            };
            index.frontends.entry((addr, protocol)).or_insert(view);
            // A backend shared by several services (two ports onto one pod port)
            // names the first; the frontend match, when there is one, is exact.
            let ipvs_all = view
                .ipvs
                .iter()
                .flat_map(|i| i.destinations.iter().map(|d| d.address));
            for backend in view.backends.iter().copied().chain(ipvs_all) {
                index.backends.entry((backend, protocol)).or_insert(view);
            }
        }
        index
    }

    fn classify(&self, entry: &Entry) -> Option<(&'a ServiceView, &'static str)> {
        let protocol = entry.protocol();
        let dst = entry.original.destination();
        let by_frontend = self
            .frontends
            .get(&(Addr::Exact(unmapped(dst)), protocol))
            .or_else(|| self.frontends.get(&(Addr::Any(dst.port()), protocol)));
        if let Some(view) = by_frontend {
            return Some((view, "frontend"));
        }
        self.backends
            .get(&(unmapped(entry.reply.source()), protocol))
            .map(|view| (*view, "backend"))
    }
}

/// An IPv4-mapped IPv6 address as its IPv4 address (the listing shows plain IPv4).
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// The entries of `entries` that are traffic of one of `services`, annotated, in
/// service order then by original tuple.
pub fn service_entries(entries: Vec<Entry>, services: &[ServiceView]) -> Vec<ServiceEntry> {
    let index = Index::new(services);
    let mut out: Vec<ServiceEntry> = entries
        .into_iter()
        .filter_map(|entry| {
            let (view, matched) = index.classify(&entry)?;
            let service = if view.service.is_empty() {
                view.frontend.clone()
            } else {
                view.service.clone()
            };
            Some(ServiceEntry {
                service,
                frontend: view.frontend.clone(),
                matched,
                entry,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.service, a.entry.original.to_string()).cmp(&(&b.service, b.entry.original.to_string()))
    });
    out
}

/// Dumps this network namespace's table (run it in the agent's) and keeps the
/// entries of `services`' traffic.
pub fn list(services: &[ServiceView]) -> Result<Vec<ServiceEntry>, super::NetfilterError> {
    let entries = super::Ctnetlink::open()?.dump()?;
    Ok(service_entries(entries, services))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::netfilter::conntrack::{Family, Status, TcpState, Tuple};

    fn view(service: &str, frontend: &str, backends: &[&str]) -> ServiceView {
        ServiceView {
            service: service.to_owned(),
            frontend: frontend.to_owned(),
            // The matching reads `frontend` (and `backends`) only.
            ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
            port: 0,
            protocol: "TCP".to_owned(),
            scheduler: "random".to_owned(),
            endpoints: Vec::new(),
            kind: "ClusterIP".to_owned(),
            scope: "internal".to_owned(),
            service_id: 1,
            affinity_timeout_s: None,
            source_ranges: Vec::new(),
            backends: backends.iter().map(|b| sa(b)).collect(),
            stats: None,
            rate: None,
            ipvs: None,
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn entry(protocol: Proto, orig: (&str, &str), reply: (&str, &str)) -> Entry {
        Entry {
            family: Family::Ipv4,
            original: Tuple::ports(protocol, sa(orig.0), sa(orig.1)),
            reply: Tuple::ports(protocol, sa(reply.0), sa(reply.1)),
            tcp_state: Some(TcpState::ESTABLISHED),
            status: Status(Status::ASSURED),
            mark: 0,
            timeout_s: 100,
            zone: 0,
        }
    }

    #[test]
    fn frontends_parse_as_the_listing_prints_them() {
        assert_eq!(
            parse_frontend("10.96.0.10:80/TCP"),
            Some((Addr::Exact(sa("10.96.0.10:80")), Proto::TCP))
        );
        assert_eq!(
            parse_frontend("*:30080/UDP (external)"),
            Some((Addr::Any(30080), Proto::UDP))
        );
        assert_eq!(
            parse_frontend("[fd00::a]:53/UDP"),
            Some((Addr::Exact(sa("[fd00::a]:53")), Proto::UDP))
        );
        assert_eq!(parse_frontend("garbage"), None);
    }

    #[test]
    fn entries_to_a_frontend_or_from_a_backend_are_named_and_others_left_out() {
        let services = [
            view(
                "default/web:http",
                "10.96.0.10:80/TCP",
                &["10.244.1.5:8080"],
            ),
            view(
                "default/web:np",
                "*:30080/TCP (external)",
                &["10.244.1.5:8080"],
            ),
            view("", "10.96.0.53:53/UDP", &["10.244.2.7:53"]),
        ];
        let entries = vec![
            // IPVS or iptables DNAT: the original destination is the VIP.
            entry(
                Proto::TCP,
                ("10.244.0.9:40000", "10.96.0.10:80"),
                ("10.244.1.5:8080", "10.244.0.9:40000"),
            ),
            // A NodePort on any node address.
            entry(
                Proto::TCP,
                ("192.0.2.1:50000", "172.18.0.2:30080"),
                ("10.244.1.5:8080", "192.0.2.1:50000"),
            ),
            // The eBPF socket path: netfilter sees the backend only.
            entry(
                Proto::UDP,
                ("10.244.0.9:41000", "10.244.2.7:53"),
                ("10.244.2.7:53", "10.244.0.9:41000"),
            ),
            // Unrelated, and the right port of the wrong protocol.
            entry(
                Proto::TCP,
                ("10.244.0.9:42000", "1.1.1.1:443"),
                ("1.1.1.1:443", "10.244.0.9:42000"),
            ),
            entry(
                Proto::UDP,
                ("10.244.0.9:43000", "10.96.0.10:80"),
                ("10.96.0.10:80", "10.244.0.9:43000"),
            ),
        ];
        let got: Vec<(String, &str)> = service_entries(entries, &services)
            .into_iter()
            .map(|e| (e.service, e.matched))
            .collect();
        assert_eq!(
            got,
            [
                ("10.96.0.53:53/UDP".to_owned(), "backend"),
                ("default/web:http".to_owned(), "frontend"),
                ("default/web:np".to_owned(), "frontend"),
            ]
        );
    }
}
