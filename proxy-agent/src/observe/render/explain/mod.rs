//! `proxyctl explain` as text: the flow, the frontend, each check in the programs'
//! order, the candidates with the chosen one marked, and the result.

use std::fmt::Write as _;

use super::grid;
use crate::dataplane::ebpf::inspect::explain::decide::plural;
use crate::dataplane::ebpf::inspect::explain::{Choice, Explanation, FlowPath, Outcome};

#[cfg(test)]
mod tests;

fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail => "FAIL",
        Outcome::Pin => "pin",
        Outcome::Skip => "-",
        Outcome::Unknown => "?",
    }
}

/// The explanation as the operator reads it.
pub fn render_explain(x: &Explanation) -> String {
    let mut s = String::new();
    let path = match x.path {
        FlowPath::Pod => "from a pod: the socket programs (connect, sendmsg)",
        FlowPath::External => "from outside the node: the tc program on an external interface",
    };
    let _ = writeln!(
        s,
        "flow:      {} -> {}/{}, {path}",
        x.source, x.destination, x.protocol
    );
    match &x.frontend {
        Some(f) => {
            let name = if f.service.is_empty() {
                "(unnamed)".to_owned()
            } else {
                f.service.clone()
            };
            let _ = writeln!(
                s,
                "frontend:  {}  {}, {} scope, {name} (id {}), {}",
                f.frontend,
                f.kind,
                f.scope,
                f.service_id,
                plural(f.backend_count, "slot")
            );
        }
        None => s.push_str("frontend:  none\n"),
    }
    s.push_str("checks:\n");
    let rows: Vec<Vec<String>> = x
        .checks
        .iter()
        .map(|c| {
            vec![
                format!("  {}", c.check),
                outcome(c.outcome).to_owned(),
                c.detail.clone(),
            ]
        })
        .collect();
    s.push_str(&grid(&rows, &[]));
    if !x.candidates.is_empty() {
        s.push_str("candidates:\n");
        let mark = match &x.choice {
            Choice::Affinity { .. } => "<- ClientIP affinity",
            Choice::Conntrack { .. } => "<- tracked flow",
            _ => "",
        };
        let rows: Vec<Vec<String>> = x
            .candidates
            .iter()
            .map(|c| {
                vec![
                    format!("  {}", c.backend),
                    plural(c.slots, "slot"),
                    if c.chosen {
                        mark.to_owned()
                    } else {
                        String::new()
                    },
                ]
            })
            .collect();
        s.push_str(&grid(&rows, &[]));
    }
    let _ = writeln!(
        s,
        "result:    {} [{}, exit {}]",
        x.reason,
        verdict_word(x),
        x.verdict.exit_code()
    );
    for n in &x.notes {
        let _ = writeln!(s, "note:      {n}");
    }
    s
}

fn verdict_word(x: &Explanation) -> &'static str {
    use crate::dataplane::ebpf::inspect::explain::Verdict;
    match x.verdict {
        Verdict::Translated => "translated",
        Verdict::Passed => "passed",
        Verdict::Refused => "refused",
        Verdict::Dropped => "dropped",
    }
}
