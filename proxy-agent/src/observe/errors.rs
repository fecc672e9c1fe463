//! How the binaries print the error that ends them: the object and the cause once,
//! then what to check. anyhow's own report (`Error: ...` and a `Caused by:` list)
//! repeats a cause whenever an error both displays its source and chains it, which
//! several error types here and in the crates below do; printing the chain with each
//! message only once fixes that for every one of them in one place.

use std::process::ExitCode;

use crate::dataplane::ebpf::pins::PinError;
use crate::error_text::chain;

/// A failure with what the operator should check: `problem` is printed as the error,
/// `fix` as a `hint:` line after it.
#[derive(Debug, thiserror::Error)]
#[error("{problem}")]
pub struct Advice {
    /// What went wrong, with the object it concerns.
    pub problem: String,
    /// What to check or do about it.
    pub fix: String,
}

/// `error: ` and the messages of `e`'s chain joined by `: `, each left out if an
/// earlier one already contains it; then a `hint: ` line per piece of advice found
/// in the chain.
pub fn report(e: &anyhow::Error) -> String {
    // Advice given as context is only found on the error itself (anyhow's chain shows
    // its message, not its type).
    let mut hints: Vec<String> = e
        .downcast_ref::<Advice>()
        .map(|a| a.fix.clone())
        .into_iter()
        .collect();
    for cause in e.chain() {
        if let Some(h) = hint(cause).filter(|h| !hints.contains(h)) {
            hints.push(h);
        }
    }
    let mut out = format!("error: {}\n", chain(e.as_ref()));
    for h in hints {
        out.push_str(&format!("hint: {h}\n"));
    }
    out
}

/// What to check for the errors a newcomer meets first.
fn hint(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(a) = e.downcast_ref::<Advice>() {
        return Some(a.fix.clone());
    }
    if let Some(PinError::Open { path, .. }) = e.downcast_ref::<PinError>() {
        return Some(format!(
            "{} exists but is not a map the kernel lets proxyctl open: run proxyctl as root \
             (it needs CAP_BPF), and pass the agent's --bpffs (a directory on a bpf \
             filesystem)",
            path.display()
        ));
    }
    None
}

/// The exit of a binary whose work ended with `result`: the [`report`] on stderr and
/// failure, or success.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", report(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;
    use std::io;

    use super::*;

    /// An error that displays its source and chains it too, as thiserror writes
    /// `#[error("...: {source}")]` with a `source` field.
    #[derive(Debug, thiserror::Error)]
    #[error("reading {what}: {source}")]
    struct Both {
        what: &'static str,
        source: io::Error,
    }

    #[test]
    fn each_cause_is_printed_once() {
        let e = Err::<(), _>(Both {
            what: "the table",
            source: io::Error::from_raw_os_error(libc::ENOENT),
        })
        .context("listing")
        .expect_err("an error");
        let r = report(&e);
        assert_eq!(
            r,
            format!(
                "error: listing: reading the table: {}\n",
                io::Error::from_raw_os_error(libc::ENOENT)
            )
        );
    }

    #[test]
    fn advice_given_as_context_is_a_hint_and_its_cause_printed_once() {
        let e = anyhow::Error::new(Both {
            what: "manifest directory /nonexistent",
            source: io::Error::from_raw_os_error(libc::ENOENT),
        })
        .context(Advice {
            problem: "watching /nonexistent".into(),
            fix: "--manifests takes an existing directory".into(),
        });
        let r = report(&e);
        assert_eq!(r.matches("No such file or directory").count(), 1, "{r}");
        assert!(
            r.starts_with(
                "error: watching /nonexistent: reading manifest directory /nonexistent: "
            ) && r.ends_with("\nhint: --manifests takes an existing directory\n"),
            "{r}"
        );
    }

    #[test]
    fn advice_becomes_a_hint_line() {
        let e = anyhow::Error::new(Advice {
            problem: "no agent state under /x".into(),
            fix: "is the agent running?".into(),
        });
        assert_eq!(
            report(&e),
            "error: no agent state under /x\nhint: is the agent running?\n"
        );
    }
}
