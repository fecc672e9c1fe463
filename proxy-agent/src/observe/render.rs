//! Text renderings of what the data plane holds, for `proxyctl`: tables in the spirit
//! of `ipvsadm -Ln` and `conntrack -L`. The data comes from the backend's read-only
//! views ([`crate::dataplane::ebpf::inspect`]); showing it is the observer's job.

use std::fmt::Write as _;

use crate::dataplane::ebpf::conntrack::{Flow, Legs};
use crate::dataplane::ebpf::inspect::AffinityView;
use crate::dataplane::listing::{IpvsCounters, IpvsView, ServiceView};

/// A table in the spirit of `ipvsadm -Ln`, the same for both data planes; IPVS adds a
/// line of options and counters per virtual server and its numbers per destination.
pub fn render_table(services: &[ServiceView]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<44} {:<12} {:>4}  {:<16} {:<8} SERVICE",
        "FRONTEND", "KIND", "ID", "AFFINITY", "BACKENDS"
    );
    for v in services {
        let aff = v
            .affinity_timeout_s
            .map(|t| format!("ClientIP {t}s"))
            .unwrap_or_else(|| "-".into());
        let dash = |t: &str| {
            if t.is_empty() {
                "-".to_owned()
            } else {
                t.to_owned()
            }
        };
        // IPVS has no service ids.
        let id = match (v.service_id, &v.ipvs) {
            (0, Some(_)) => "-".to_owned(),
            (id, _) => id.to_string(),
        };
        let _ = writeln!(
            s,
            "{:<44} {:<12} {:>4}  {:<16} {:<8} {}",
            v.frontend,
            dash(&v.kind),
            id,
            aff,
            v.backends.len(),
            v.service
        );
        if !v.source_ranges.is_empty() {
            let ranges: Vec<String> = v.source_ranges.iter().map(ToString::to_string).collect();
            let _ = writeln!(s, "  source ranges: {}", ranges.join(", "));
        }
        match &v.ipvs {
            Some(ipvs) => render_ipvs(&mut s, ipvs, v.backends.is_empty()),
            None => {
                if v.backends.is_empty() {
                    let _ = writeln!(s, "  -> (none: connections are refused)");
                }
                for b in &v.backends {
                    let _ = writeln!(s, "  -> {b}");
                }
            }
        }
    }
    s
}

/// The IPVS lines of a virtual server: options and counters, then each destination.
fn render_ipvs(s: &mut String, ipvs: &IpvsView, no_backends: bool) {
    let persistence = if ipvs.persistent {
        format!(", persistent {}s /{}", ipvs.timeout_s, ipvs.netmask)
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "  ipvs: scheduler {}{persistence}; {}",
        ipvs.scheduler,
        counters(&ipvs.counters)
    );
    if no_backends {
        let _ = writeln!(s, "  -> (none takes new connections)");
    }
    for d in &ipvs.destinations {
        let draining = if d.weight == 0 { " (draining)" } else { "" };
        let forward = if d.forward == "masquerade" {
            String::new()
        } else {
            format!("  {}", d.forward)
        };
        let _ = writeln!(
            s,
            "  -> {:<42} weight {}{draining}{forward}  active {}  inactive {}; {}",
            d.address.to_string(),
            d.weight,
            d.active_connections,
            d.inactive_connections,
            counters(&d.counters)
        );
    }
}

fn counters(c: &IpvsCounters) -> String {
    format!(
        "{} connections, in {} packets {} bytes, out {} packets {} bytes",
        c.connections, c.packets_in, c.bytes_in, c.packets_out, c.bytes_out
    )
}

/// `proxyctl stats`: the data plane's counters as a table.
pub fn render_counters(counters: &[(&str, u64)]) -> String {
    let width = counters.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let mut s = String::new();
    for (name, value) in counters {
        let _ = writeln!(s, "{name:<width$} {value}");
    }
    s
}

/// `proxyctl affinity` as a table.
pub fn render_affinities(list: &[AffinityView]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<28} {:>20} {:<44} {:>8}",
        "SERVICE", "CLIENT NETNS", "BACKEND", "IDLE (s)"
    );
    for a in list {
        let _ = writeln!(
            s,
            "{:<28} {:>20} {:<44} {:>8}",
            a.service, a.client_netns_cookie, a.backend, a.idle_s
        );
    }
    s
}

/// `proxyctl conntrack` as a table, columns sized to their contents.
pub fn render_conntrack(flows: &[Flow]) -> String {
    let dash = || "-".to_owned();
    let mut rows: Vec<[String; 10]> = vec![[
        "PROTO".into(),
        "CLIENT".into(),
        "FRONTEND".into(),
        "BACKEND".into(),
        "SNAT".into(),
        "STATE".into(),
        "IDLE".into(),
        "SERVICE".into(),
        "PKTS(in/out)".into(),
        "NOTE".into(),
    ]];
    for f in flows {
        let mut note = Vec::new();
        match f.legs {
            Legs::Both => {}
            Legs::ForwardOnly => note.push("no reply leg"),
            Legs::ReplyOnly => note.push("no forward leg"),
        }
        if !f.assured {
            note.push("unassured");
        }
        if f.expired {
            note.push("expired");
        }
        rows.push([
            f.protocol.clone(),
            f.client.to_string(),
            f.frontend.to_string(),
            f.backend.to_string(),
            f.snat.map(|a| a.to_string()).unwrap_or_else(dash),
            f.state.to_string(),
            format!("{}s", f.idle_s),
            if f.service.is_empty() {
                format!("(id {})", f.service_id)
            } else {
                f.service.clone()
            },
            format!("{}/{}", f.packets_in, f.packets_out),
            note.join(", "),
        ]);
    }
    let mut widths = [0usize; 10];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            // IDLE is a number: right-aligned.
            if i == 6 {
                let _ = write!(line, "{cell:>w$}");
            } else {
                let _ = write!(line, "{cell:<w$}");
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
    s
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::dataplane::ebpf::conntrack::FlowState;

    fn flow(service: &str, legs: Legs, expired: bool, snat: Option<&str>) -> Flow {
        let sa = |s: &str| s.parse::<SocketAddr>().expect("address");
        Flow {
            protocol: "TCP".into(),
            client: sa("203.0.113.7:40001"),
            frontend: sa("192.0.2.10:30080"),
            backend: sa("10.244.1.5:8080"),
            snat: snat.map(sa),
            state: FlowState::Established,
            service_id: 7,
            service: service.into(),
            idle_s: 3,
            age_s: 60,
            packets_in: 12,
            packets_out: 10,
            bytes_in: 1200,
            bytes_out: 9000,
            expired,
            legs,
            assured: true,
        }
    }

    #[test]
    fn the_conntrack_table_has_a_header_and_one_aligned_row_per_flow() {
        let flows = [
            flow(
                "demo/echo:http",
                Legs::Both,
                false,
                Some("192.0.2.10:40001"),
            ),
            flow("", Legs::ReplyOnly, true, None),
        ];
        let t = render_conntrack(&flows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("PROTO  CLIENT"), "{t}");
        let col = |l: &str, name: &str| l.find(name).unwrap_or(usize::MAX);
        let backend_col = col(lines[0], "BACKEND");
        assert_eq!(col(lines[1], "10.244.1.5:8080"), backend_col, "{t}");
        assert_eq!(col(lines[2], "10.244.1.5:8080"), backend_col, "{t}");
        assert!(lines[1].contains("192.0.2.10:40001") && lines[1].contains("demo/echo:http"));
        assert!(lines[1].contains("12/10") && lines[1].contains("established"));
        assert!(
            lines[2].contains("(id 7)") && lines[2].ends_with("no forward leg, expired"),
            "{t}"
        );
    }

    #[test]
    fn service_views_serialize_kind_scope_and_ranges() {
        let v = ServiceView {
            service: "demo/web:http".into(),
            frontend: "*:30080/TCP (external)".into(),
            kind: "NodePort".into(),
            scope: "external".into(),
            service_id: 3,
            affinity_timeout_s: None,
            source_ranges: vec!["10.0.0.0/8".parse().expect("cidr")],
            backends: vec!["10.244.0.11:8080".parse().expect("address")],
            ipvs: None,
        };
        let json = serde_json::to_value(&v).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "service": "demo/web:http",
                "frontend": "*:30080/TCP (external)",
                "kind": "NodePort",
                "scope": "external",
                "service_id": 3,
                "affinity_timeout_s": null,
                "source_ranges": ["10.0.0.0/8"],
                "backends": ["10.244.0.11:8080"],
            })
        );
        let t = render_table(&[v]);
        assert!(
            t.contains("NodePort") && t.contains("source ranges: 10.0.0.0/8"),
            "{t}"
        );
    }

    #[test]
    fn an_ipvs_virtual_server_shows_its_options_counters_and_destinations() {
        use crate::dataplane::listing::IpvsDestinationView;
        let c = |connections| IpvsCounters {
            connections,
            packets_in: 100,
            packets_out: 90,
            bytes_in: 6400,
            bytes_out: 12800,
        };
        let dest = |address: &str, weight, active, inactive| IpvsDestinationView {
            address: address.parse().expect("address"),
            forward: "masquerade".into(),
            weight,
            active_connections: active,
            inactive_connections: inactive,
            persistent_connections: 0,
            counters: c(6),
        };
        let v = ServiceView {
            service: "default/web:http".into(),
            frontend: "10.96.0.10:80/TCP".into(),
            kind: "ClusterIP".into(),
            scope: "internal".into(),
            service_id: 0,
            affinity_timeout_s: Some(10800),
            source_ranges: Vec::new(),
            backends: vec!["10.244.1.5:8080".parse().expect("address")],
            ipvs: Some(IpvsView {
                scheduler: "rr".into(),
                persistent: true,
                timeout_s: 10800,
                netmask: 32,
                counters: c(12),
                destinations: vec![
                    dest("10.244.1.5:8080", 1, 1, 0),
                    dest("10.244.2.5:8080", 0, 0, 2),
                ],
            }),
        };
        let t = render_table(&[v]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        // The same columns as the eBPF table; no id.
        assert_eq!(lines[0].find("KIND"), lines[1].find("ClusterIP"), "{t}");
        assert!(
            lines[1].contains("   -  ClientIP 10800s") && lines[1].ends_with("default/web:http"),
            "{t}"
        );
        assert_eq!(
            lines[2],
            "  ipvs: scheduler rr, persistent 10800s /32; 12 connections, in 100 packets \
             6400 bytes, out 90 packets 12800 bytes"
        );
        assert!(
            lines[3].starts_with("  -> 10.244.1.5:8080") && lines[3].contains("weight 1  active 1"),
            "{t}"
        );
        assert!(
            lines[4].contains("weight 0 (draining)  active 0  inactive 2; 6 connections"),
            "{t}"
        );
    }
}
