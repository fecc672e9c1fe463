//! `proxyctl list` as operators know it from `ipvsadm -Ln`: a line per virtual server
//! (protocol, address:port, scheduler, affinity, service), then a line per backend
//! (`->`, address:port, weight, state, active and inactive connections), in one grid
//! so that both kinds of line share their columns. The same for both data planes;
//! what a data plane does not know is `-`.

use super::{Width, dash, grid};
use crate::dataplane::listing::{EndpointState, ServiceView, TrafficRate, TrafficStats};

/// The header, then each frontend and its backends. `wide` adds the frontend's kind,
/// service id and enforced source ranges, and (IPVS) each destination's forwarding
/// method and persistence templates.
pub fn render_list(services: &[ServiceView], width: Width) -> String {
    let wide = width == Width::Wide;
    let mut header = vec![
        vec![
            "PROT",
            "FRONTEND",
            "SCOPE",
            "SCHEDULER",
            "AFFINITY",
            "SERVICE",
        ],
        vec!["  ->", "BACKEND", "WEIGHT", "STATE", "ACTIVE", "INACTIVE"],
    ];
    if wide {
        header[0].extend(["KIND", "ID", "SOURCE RANGES"]);
        header[1].extend(["FORWARD", "PERSISTENT"]);
    }
    let mut rows: Vec<Vec<String>> = header
        .into_iter()
        .map(|r| r.into_iter().map(String::from).collect())
        .collect();
    for v in services {
        rows.push(frontend_row(v, wide));
        if !v
            .endpoints
            .iter()
            .any(|e| e.state == EndpointState::Serving)
        {
            rows.push(vec!["  ->".into(), "(no serving backend)".into()]);
        }
        for e in &v.endpoints {
            let count = |c: Option<u32>| c.map_or_else(|| "-".to_owned(), |n| n.to_string());
            let mut row = vec![
                "  ->".to_owned(),
                e.address.to_string(),
                e.weight.to_string(),
                e.state.to_string(),
                count(e.active_connections),
                count(e.inactive_connections),
            ];
            if wide {
                // Only IPVS has these; its destinations are keyed by address.
                let dest = v
                    .ipvs
                    .as_ref()
                    .and_then(|i| i.destinations.iter().find(|d| d.address == e.address));
                row.extend([
                    dest.map_or_else(|| "-".to_owned(), |d| d.forward.clone()),
                    count(dest.map(|d| d.persistent_connections)),
                ]);
            }
            rows.push(row);
        }
    }
    grid(&rows, &[])
}

/// A frontend's line: `*` stands for every node address (a NodePort).
fn frontend_row(v: &ServiceView, wide: bool) -> Vec<String> {
    let address = if v.ip.is_unspecified() {
        format!("*:{}", v.port)
    } else {
        std::net::SocketAddr::new(v.ip, v.port).to_string()
    };
    let mut row = vec![
        v.protocol.clone(),
        address,
        dash(&v.scope),
        dash(&v.scheduler),
        v.affinity_timeout_s
            .map_or_else(|| "-".to_owned(), |t| format!("ClientIP {t}s")),
        dash(&v.service),
    ];
    if wide {
        let ranges: Vec<String> = v.source_ranges.iter().map(ToString::to_string).collect();
        row.extend([
            dash(&v.kind),
            // IPVS has no service ids.
            if v.ipvs.is_some() {
                "-".to_owned()
            } else {
                v.service_id.to_string()
            },
            dash(&ranges.join(",")),
        ]);
    }
    row
}

/// Which numbers `proxyctl list --stats` / `--rate` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numbers {
    /// `--stats`: totals (`ipvsadm -Ln --stats`).
    Totals,
    /// `--rate`: per second (`ipvsadm -Ln --rate`).
    Rate,
}

/// `proxyctl list --stats` (or `--rate`): per frontend and per backend, connections,
/// packets and bytes in (from clients) and out (to clients), or their rates. `-` is a
/// number the data plane does not see (the eBPF socket programs see no packets) or
/// does not count (a draining eBPF backend). `wide` adds the frontend's kind and id.
pub fn render_list_numbers(services: &[ServiceView], numbers: Numbers, width: Width) -> String {
    let wide = width == Width::Wide;
    let names: [&str; 5] = match numbers {
        Numbers::Totals => ["CONNS", "INPKTS", "OUTPKTS", "INBYTES", "OUTBYTES"],
        Numbers::Rate => ["CPS", "INPPS", "OUTPPS", "INBPS", "OUTBPS"],
    };
    let mut head: Vec<String> = ["PROT", "FRONTEND", "SCOPE", "SERVICE"]
        .into_iter()
        .chain(names)
        .map(String::from)
        .collect();
    if wide {
        head.extend(["KIND".into(), "ID".into()]);
    }
    let mut rows = vec![head, vec!["  ->".into(), "BACKEND".into(), "STATE".into()]];
    for v in services {
        let address = if v.ip.is_unspecified() {
            format!("*:{}", v.port)
        } else {
            std::net::SocketAddr::new(v.ip, v.port).to_string()
        };
        let mut row = vec![
            v.protocol.clone(),
            address,
            dash(&v.scope),
            dash(&v.service),
        ];
        row.extend(cells(numbers, v.stats.as_ref(), v.rate.as_ref()));
        if wide {
            row.extend([
                dash(&v.kind),
                if v.ipvs.is_some() {
                    "-".to_owned()
                } else {
                    v.service_id.to_string()
                },
            ]);
        }
        rows.push(row);
        for e in &v.endpoints {
            let mut row = vec![
                "  ->".to_owned(),
                e.address.to_string(),
                e.state.to_string(),
                String::new(),
            ];
            row.extend(cells(numbers, e.stats.as_ref(), e.rate.as_ref()));
            rows.push(row);
        }
    }
    grid(&rows, &[4, 5, 6, 7, 8])
}

/// The five numbers of a line, `-` where unknown.
fn cells(
    numbers: Numbers,
    stats: Option<&TrafficStats>,
    rate: Option<&TrafficRate>,
) -> Vec<String> {
    let n = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let r = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.0}"));
    match numbers {
        Numbers::Totals => match stats {
            Some(s) => vec![
                s.connections.to_string(),
                n(s.packets_in),
                n(s.packets_out),
                n(s.bytes_in),
                n(s.bytes_out),
            ],
            None => vec!["-".to_owned(); 5],
        },
        Numbers::Rate => match rate {
            Some(x) => vec![
                r(Some(x.connections)),
                r(x.packets_in),
                r(x.packets_out),
                r(x.bytes_in),
                r(x.bytes_out),
            ],
            None => vec!["-".to_owned(); 5],
        },
    }
}
