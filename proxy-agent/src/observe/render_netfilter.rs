//! `proxyctl conntrack --netfilter`: netfilter's entries of service traffic as a table
//! (`-o json|yaml` serialize them). Apart from `render/` so the two change independently.

use std::fmt::Write;

use crate::dataplane::netfilter::services::ServiceEntry;

/// The table: one line per entry, with its service, both tuples, TCP state, status
/// flags that matter when debugging (the rest are in `-o json`), mark and timeout.
pub fn render(entries: &[ServiceEntry]) -> String {
    const COLUMNS: usize = 9;
    let mut rows: Vec<[String; COLUMNS]> = vec![[
        "SERVICE".into(),
        "PROTO".into(),
        "ORIGINAL".into(),
        "REPLY".into(),
        "STATE".into(),
        "FLAGS".into(),
        "MARK".into(),
        "TIMEOUT".into(),
        "MATCHED".into(),
    ]];
    for e in entries {
        let ct = &e.entry;
        let flags: Vec<String> = ct
            .status
            .names()
            .into_iter()
            // CONFIRMED and the *_DONE bits are set on every settled entry: noise.
            .filter(|n| !matches!(n.as_str(), "CONFIRMED" | "SRC_NAT_DONE" | "DST_NAT_DONE"))
            .collect();
        let tuple = |t: &crate::dataplane::netfilter::Tuple| match t.icmp {
            Some(i) => format!("{} -> {} id {}", t.src, t.dst, i.id),
            None => format!("{} -> {}", t.source(), t.destination()),
        };
        let zone = if ct.zone == 0 {
            String::new()
        } else {
            format!(" zone {}", ct.zone)
        };
        rows.push([
            e.service.clone(),
            ct.protocol().to_string(),
            tuple(&ct.original),
            tuple(&ct.reply),
            ct.tcp_state.map(|s| s.name()).unwrap_or("-").to_owned(),
            if flags.is_empty() {
                "-".to_owned()
            } else {
                flags.join(",")
            },
            format!("{:#x}", ct.mark),
            format!("{}s", ct.timeout_s),
            format!("{}{zone}", e.matched),
        ]);
    }
    let mut widths = [0usize; COLUMNS];
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
            // TIMEOUT is a number: right-aligned.
            if i == 7 {
                let _ = write!(line, "{cell:>w$}");
            } else {
                let _ = write!(line, "{cell:<w$}");
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    if entries.is_empty() {
        s.push_str("(no netfilter conntrack entries of programmed services)\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::netfilter::conntrack::{Proto, Status, TcpState};
    use crate::dataplane::netfilter::{Entry, Family, Tuple};

    fn sa(s: &str) -> std::net::SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn entries() -> Vec<ServiceEntry> {
        vec![
            ServiceEntry {
                service: "default/web:http".into(),
                frontend: "10.96.0.10:80/TCP".into(),
                matched: "frontend",
                entry: Entry {
                    family: Family::Ipv4,
                    original: Tuple::ports(Proto::TCP, sa("10.0.0.1:40000"), sa("10.96.0.10:80")),
                    reply: Tuple::ports(Proto::TCP, sa("10.244.1.5:8080"), sa("10.0.0.1:40000")),
                    tcp_state: Some(TcpState::ESTABLISHED),
                    status: Status(0x12e),
                    mark: 0x4000,
                    timeout_s: 431_999,
                    zone: 0,
                },
            },
            ServiceEntry {
                service: "kube-system/dns:dns".into(),
                frontend: "10.96.0.53:53/UDP".into(),
                matched: "backend",
                entry: Entry {
                    family: Family::Ipv4,
                    original: Tuple::ports(Proto::UDP, sa("10.244.0.9:41000"), sa("10.244.2.7:53")),
                    reply: Tuple::ports(Proto::UDP, sa("10.244.2.7:53"), sa("10.244.0.9:41000")),
                    tcp_state: None,
                    status: Status(0x8),
                    mark: 0,
                    timeout_s: 28,
                    zone: 3,
                },
            },
        ]
    }

    #[test]
    fn the_table_shows_service_tuples_state_flags_mark_and_timeout() {
        let golden = "\
SERVICE              PROTO  ORIGINAL                           REPLY                              STATE        FLAGS                       MARK    TIMEOUT  MATCHED
default/web:http     tcp    10.0.0.1:40000 -> 10.96.0.10:80    10.244.1.5:8080 -> 10.0.0.1:40000  ESTABLISHED  SEEN_REPLY,ASSURED,DST_NAT  0x4000  431999s  frontend
kube-system/dns:dns  udp    10.244.0.9:41000 -> 10.244.2.7:53  10.244.2.7:53 -> 10.244.0.9:41000  -            -                           0x0         28s  backend zone 3
";
        assert_eq!(render(&entries()), golden);
        assert!(render(&[]).contains("(no netfilter conntrack entries"));
    }

    #[test]
    fn the_json_names_flags_protocols_and_states() {
        let json = serde_json::to_value(entries()).unwrap_or_else(|e| panic!("{e}"));
        let first = &json[0];
        assert_eq!(first["service"], "default/web:http");
        assert_eq!(first["entry"]["original"]["protocol"], "tcp");
        assert_eq!(first["entry"]["reply"]["src"], "10.244.1.5");
        assert_eq!(first["entry"]["tcp_state"], "ESTABLISHED");
        assert_eq!(
            first["entry"]["status"],
            serde_json::json!([
                "SEEN_REPLY",
                "ASSURED",
                "CONFIRMED",
                "DST_NAT",
                "DST_NAT_DONE"
            ])
        );
        assert!(json[1]["entry"].get("tcp_state").is_none());
    }
}
