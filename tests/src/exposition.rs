//! A strict reader of the Prometheus/OpenMetrics text format the agent serves: every
//! line must be a comment (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`) or a well-formed
//! sample of a family declared before it. Tests use it to show that a scrape parses
//! as a Prometheus server would parse it, and which series it holds.

use std::collections::BTreeMap;

/// One sample: its series name, labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The series name (`proxy_agent_x_total`, `..._bucket`).
    pub name: String,
    /// The labels, in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name -> its type (`counter`, `gauge`, `histogram`, ...).
    pub families: BTreeMap<String, String>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The samples of series `name`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }
}

/// Parses `text`, or says which line is wrong and why.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    for (n, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            return Err(at("empty line"));
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.splitn(3, ' ');
            match (w.next(), w.next(), w.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    valid_name(name).map_err(|e| at(&e))?;
                    if out
                        .families
                        .insert(name.to_owned(), kind.to_owned())
                        .is_some()
                    {
                        return Err(at("family declared twice"));
                    }
                }
                (Some("HELP" | "UNIT"), Some(name), _) => valid_name(name).map_err(|e| at(&e))?,
                (Some("EOF"), None, None) => {}
                _ => return Err(at("unknown comment")),
            }
            continue;
        }
        let sample = sample(line).map_err(|e| at(&e))?;
        if family_of(&sample.name, &out.families).is_none() {
            return Err(at("sample of no declared family"));
        }
        out.samples.push(sample);
    }
    Ok(out)
}

/// The declared family a series belongs to (`x_total` -> `x` counter, `x_bucket` ->
/// `x` histogram, ...).
fn family_of<'a>(name: &'a str, families: &BTreeMap<String, String>) -> Option<&'a str> {
    if families.contains_key(name) {
        return Some(name);
    }
    ["_total", "_created", "_bucket", "_sum", "_count", "_info"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .filter(|f| families.contains_key(*f))
}

fn valid_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    valid_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').ok_or("label without '='")?;
            let key = &rest[..eq];
            valid_name(key).map_err(|_| format!("bad label name {key:?}"))?;
            let r = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("unquoted label value")?;
            let (value, after) = quoted(r)?;
            labels.push((key.to_owned(), value));
            rest = after.strip_prefix(',').unwrap_or(after);
        }
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = rest.split(' ').next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|e| format!("bad value {v:?}: {e}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A label value up to its closing quote (escapes `\\`, `\"`, `\n`), and what follows.
fn quoted(s: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, 'n')) => out.push('\n'),
                other => return Err(format!("bad escape {other:?}")),
            },
            c => out.push(c),
        }
    }
    Err("unterminated label value".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_exposition_parses() {
        let e = parse(
            "# HELP x_events Events.\n# TYPE x_events counter\n\
             x_events_total{event=\"a \\\"b\\\"\",k=\"v\"} 3\n\
             # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n# EOF",
        )
        .expect("parses");
        assert_eq!(e.families["x_events"], "counter");
        let s = e.series("x_events_total").next().expect("a sample");
        assert_eq!(s.labels[0], ("event".into(), "a \"b\"".into()));
        assert_eq!(s.value, 3.0);
        assert_eq!(e.series("h_count").count(), 1);
    }

    #[test]
    fn malformed_lines_are_refused_with_the_line() {
        for bad in [
            "undeclared 1",
            "# TYPE x gauge\nx{a=b} 1",
            "# TYPE x gauge\nx one",
            "# TYPE x gauge\n\nx 1",
            "# TYPE 1x gauge",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
