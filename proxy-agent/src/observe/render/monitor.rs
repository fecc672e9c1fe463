//! `proxyctl monitor`'s lines, in the spirit of `cilium-dbg monitor`: one event per
//! line, what happened and why first, then the flow.

use crate::dataplane::ebpf::monitor::Event;

/// One line (with its newline) for `e`:
/// `drop nat_source_denied tc-ingress if 3 tcp 192.0.2.7:40000 -> 203.0.113.21:80 service default/web:http`,
/// `trace ct_new ... -> 203.0.113.20:80 => 10.244.1.11:8080 (from 192.0.2.1:40000) service ...`.
pub fn render_event(e: &Event) -> String {
    let mut line = format!("{:<5} {} {}", e.kind, e.reason, e.hook);
    if e.ifindex != 0 {
        line.push_str(&format!(" if {}", e.ifindex));
    }
    line.push_str(&format!(" {} ", e.protocol));
    if let Some(s) = e.source {
        line.push_str(&format!("{s} -> "));
    }
    line.push_str(&e.destination.to_string());
    if let Some(t) = e.translated {
        line.push_str(&format!(" => {t}"));
    }
    // Only when SNAT changed it: the usual case (source kept) stays short.
    if let Some(ts) = e.translated_source.filter(|ts| Some(*ts) != e.source) {
        line.push_str(&format!(" (from {ts})"));
    }
    match &e.service {
        Some(s) => line.push_str(&format!(" service {s}\n")),
        None => line.push('\n'),
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::render::golden;

    fn event(kind: &'static str, reason: &'static str, hook: &'static str) -> Event {
        Event {
            kind,
            reason,
            hook,
            ifindex: 0,
            protocol: "tcp",
            source: None,
            destination: "10.96.0.10:80".parse().expect("an address"),
            translated: None,
            translated_source: None,
            service: None,
            time_ns: 0,
        }
    }

    #[test]
    fn monitor_lines_match_the_golden_file() {
        let mut denied = event("drop", "nat_source_denied", "tc-ingress");
        denied.ifindex = 3;
        denied.source = Some("192.0.2.100:40000".parse().expect("an address"));
        denied.destination = "203.0.113.21:80".parse().expect("an address");
        denied.service = Some("default/denied:http".into());
        let mut refused = event("drop", "lb_no_backend", "sock");
        refused.service = Some("default/empty:http".into());
        let mut snat = event("trace", "ct_new", "tc-ingress");
        snat.ifindex = 3;
        snat.source = Some("192.0.2.100:40001".parse().expect("an address"));
        snat.destination = "192.0.2.1:30080".parse().expect("an address");
        snat.translated = Some("10.244.2.11:8080".parse().expect("an address"));
        snat.translated_source = Some("10.0.0.1:40001".parse().expect("an address"));
        snat.service = Some("default/web:http".into());
        let mut kept = snat.clone();
        kept.translated = Some("10.244.1.11:8080".parse().expect("an address"));
        kept.translated_source = kept.source;
        let mut sock = event("trace", "lb_translated", "sock");
        sock.protocol = "udp";
        sock.destination = "10.96.0.10:53".parse().expect("an address");
        sock.translated = Some("10.244.1.5:5353".parse().expect("an address"));
        sock.service = Some("kube-system/kube-dns:dns".into());
        let out: String = [denied, refused, snat, kept, sock]
            .iter()
            .map(render_event)
            .collect();
        golden::check("monitor.txt", &out);
    }
}
