//! Text renderings of what the data plane holds, for `proxyctl`: tables in the spirit
//! of `ipvsadm -Ln` and `conntrack -L`, plain or `wide` (kubectl's convention: more
//! columns). The data comes from the backends' read-only views
//! ([`crate::dataplane::listing`]); showing it is the observer's job. Each output has
//! a golden file under `observe/golden/` (see [`golden`]).

use std::fmt::Write as _;

use crate::dataplane::ebpf::conntrack::{Flow, Legs};
use crate::dataplane::ebpf::inspect::AffinityView;

mod explain;
mod list;
mod monitor;
pub use explain::render_explain;
pub use list::{Numbers, render_list, render_list_numbers};
pub use monitor::render_event;

#[cfg(test)]
pub(crate) mod golden;
#[cfg(test)]
pub(crate) mod tests;

/// Plain or with the extra columns (`-o wide`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// The default columns.
    Normal,
    /// The default columns and more.
    Wide,
}

/// Rows of cells as aligned columns, two spaces apart, without trailing blanks. The
/// columns in `right` are right-aligned (numbers). A row may be shorter than others;
/// its last cell is a note that runs on and does not widen its column.
fn grid(rows: &[Vec<String>], right: &[usize]) -> String {
    let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths: Vec<usize> = vec![0; longest];
    for row in rows {
        let sized = if row.len() < longest {
            row.len().saturating_sub(1)
        } else {
            row.len()
        };
        for (i, cell) in row.iter().take(sized).enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut s = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            if right.contains(&i) {
                let _ = write!(line, "{cell:>w$}");
            } else {
                let _ = write!(line, "{cell:<w$}");
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
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

/// `proxyctl affinity` as a table (`wide` adds nothing: every field is shown).
pub fn render_affinities(list: &[AffinityView]) -> String {
    let mut rows = vec![vec![
        "SERVICE".to_owned(),
        "CLIENT NETNS".into(),
        "BACKEND".into(),
        "IDLE".into(),
    ]];
    for a in list {
        rows.push(vec![
            dash(&a.service),
            a.client_netns_cookie.to_string(),
            dash(&a.backend),
            format!("{}s", a.idle_s),
        ]);
    }
    grid(&rows, &[1, 3])
}

/// `proxyctl conntrack` as a table, columns sized to their contents; `wide` adds each
/// flow's age and bytes.
pub fn render_conntrack(flows: &[Flow], width: Width) -> String {
    let mut header: Vec<String> = [
        "PROTO",
        "CLIENT",
        "FRONTEND",
        "BACKEND",
        "SNAT",
        "STATE",
        "IDLE",
        "SERVICE",
        "PKTS(in/out)",
    ]
    .map(String::from)
    .to_vec();
    if width == Width::Wide {
        header.extend(["AGE".into(), "BYTES(in/out)".into()]);
    }
    header.push("NOTE".into());
    let mut rows = vec![header];
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
        let mut row = vec![
            f.protocol.clone(),
            f.client.to_string(),
            f.frontend.to_string(),
            f.backend.to_string(),
            f.snat.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            f.state.to_string(),
            format!("{}s", f.idle_s),
            if f.service.is_empty() {
                format!("(id {})", f.service_id)
            } else {
                f.service.clone()
            },
            format!("{}/{}", f.packets_in, f.packets_out),
        ];
        if width == Width::Wide {
            row.extend([
                format!("{}s", f.age_s),
                format!("{}/{}", f.bytes_in, f.bytes_out),
            ]);
        }
        row.push(note.join(", "));
        rows.push(row);
    }
    // IDLE and AGE are numbers: right-aligned.
    let right: &[usize] = match width {
        Width::Normal => &[6],
        Width::Wide => &[6, 9],
    };
    grid(&rows, right)
}

/// `-` for an unknown (empty) value, so that columns stay countable.
fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}
