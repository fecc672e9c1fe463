//! `proxyctl list` as operators know it from `ipvsadm -Ln`: a line per virtual server
//! (protocol, address:port, scheduler, affinity, service), then a line per backend
//! (`->`, address:port, weight, state, active and inactive connections), in one grid
//! so that both kinds of line share their columns. The same for both data planes;
//! what a data plane does not know is `-`.

use super::{Width, dash, grid};
use crate::dataplane::listing::ServiceView;

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
            .any(|e| e.state == crate::dataplane::listing::EndpointState::Serving)
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
