//! How an error reads in a log line or on a terminal: every layer uses it, and it
//! imports nothing of the crate.

/// `e` and its sources, `: `-separated, each left out if an earlier message already
/// contains it. Many errors (here and in the crates below) display their source and
/// chain it too, so `{:#}` and anyhow's report repeat the same cause two or three
/// times; this prints it once.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// Displays its source and chains it, as thiserror writes `#[error("..: {source}")]`.
    #[derive(Debug, thiserror::Error)]
    #[error("reading {what}: {source}")]
    struct Both {
        what: &'static str,
        source: io::Error,
    }

    /// Chains its source without displaying it.
    #[derive(Debug, thiserror::Error)]
    #[error("listing")]
    struct Outer(#[source] Both);

    #[test]
    fn a_cause_both_displayed_and_chained_is_printed_once() {
        let e = Outer(Both {
            what: "the table",
            source: io::Error::from_raw_os_error(libc::ENOENT),
        });
        let enoent = io::Error::from_raw_os_error(libc::ENOENT).to_string();
        assert_eq!(chain(&e), format!("listing: reading the table: {enoent}"));
    }

    #[test]
    fn a_plain_error_is_its_message() {
        let e = io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(chain(&e), "connection refused");
    }
}
