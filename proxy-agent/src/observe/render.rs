//! Text renderings of what the data plane holds, for `proxyctl`: tables in the spirit
//! of `ipvsadm -Ln` and `conntrack -L`. The data comes from the backend's read-only
//! views ([`crate::dataplane::ebpf::inspect`]); showing it is the observer's job.

use std::fmt::Write as _;

use crate::dataplane::ebpf::conntrack::{Flow, Legs};
use crate::dataplane::ebpf::inspect::{AffinityView, ServiceView};

/// A table in the spirit of `ipvsadm -Ln`.
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
        let _ = writeln!(
            s,
            "{:<44} {:<12} {:>4}  {:<16} {:<8} {}",
            v.frontend,
            v.kind,
            v.service_id,
            aff,
            v.backends.len(),
            v.service
        );
        if !v.source_ranges.is_empty() {
            let ranges: Vec<String> = v.source_ranges.iter().map(ToString::to_string).collect();
            let _ = writeln!(s, "  source ranges: {}", ranges.join(", "));
        }
        if v.backends.is_empty() {
            let _ = writeln!(s, "  -> (none: connections are refused)");
        }
        for b in &v.backends {
            let _ = writeln!(s, "  -> {b}");
        }
    }
    s
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
}
