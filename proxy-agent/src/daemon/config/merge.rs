//! The command line over the `--config` file, with kube-proxy's precedence: a flag
//! given on the command line (or by its environment variable) wins; the file fills in
//! the rest; the flags' defaults fill what neither sets.

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

use super::file::{FileFlag, Translation};

/// Why the file's values could not be taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// A file value its flag's parser refuses.
    #[error("{field}: {message} (the value of --{flag})")]
    Field {
        /// The field's path (`conntrack.min`).
        field: &'static str,
        /// The flag it sets.
        flag: &'static str,
        /// The parser's reason.
        message: String,
    },
    /// The command line and the file together do not parse (a conflict).
    #[error("the command line with the configuration file: {0}")]
    Combined(String),
}

/// What to log about `file` under `cli` (its mode, the flags overriding it, the fields
/// ignored), and the file without what cannot apply: its kubeconfig when `--manifests`
/// is the source.
pub fn notes(cli: &ArgMatches, mut file: Translation) -> (Translation, Vec<String>) {
    let mut notes = Vec::new();
    if given(cli, "manifests") {
        file.flags.retain(|f| {
            let drop = f.flag == "kubeconfig";
            if drop {
                file.ignored
                    .push(format!("{} (--manifests is the source)", f.field));
            }
            !drop
        });
    }
    if let Some(note) = file.mode_note.take()
        && !given(cli, "proxy-mode")
    {
        notes.push(note);
    }
    let overridden: Vec<String> = file
        .flags
        .iter()
        .filter(|f| given(cli, f.flag))
        .map(|f| format!("--{} ({})", f.flag, f.field))
        .collect();
    if !overridden.is_empty() {
        notes.push(format!(
            "flags given on the command line override the configuration file: {}",
            overridden.join(", ")
        ));
    }
    if !file.ignored.is_empty() {
        notes.push(format!(
            "configuration file fields with no meaning for this proxy, ignored: {}",
            file.ignored.join(", ")
        ));
    }
    (file, notes)
}

/// The flags `file` sets that the command line does not, checked one by one.
pub fn file_args(
    cmd: &Command,
    cli: &ArgMatches,
    file: &Translation,
) -> Result<Vec<OsString>, MergeError> {
    let mut args = Vec::new();
    for FileFlag { field, flag, value } in &file.flags {
        if given(cli, flag) {
            continue;
        }
        let arg = match value {
            Some(v) => format!("--{flag}={v}"),
            None => format!("--{flag}"),
        };
        cmd.clone()
            .try_get_matches_from(["proxy-agent", arg.as_str()])
            .map_err(|e| MergeError::Field {
                field,
                flag,
                message: reason(&e),
            })?;
        args.push(arg.into());
    }
    Ok(args)
}

/// Whether the command line (or the environment) sets `flag` (a long name).
pub fn given(cli: &ArgMatches, flag: &str) -> bool {
    matches!(
        cli.value_source(&flag.replace('-', "_")),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// The command line `cli_args` (program name first) with `file_args` under it.
pub fn merged(
    cmd: &Command,
    cli_args: &[OsString],
    file_args: Vec<OsString>,
) -> Result<ArgMatches, MergeError> {
    let mut all: Vec<OsString> = cli_args.iter().take(1).cloned().collect();
    all.extend(file_args);
    all.extend(cli_args.iter().skip(1).cloned());
    cmd.clone()
        .try_get_matches_from(all)
        .map_err(|e| MergeError::Combined(reason(&e)))
}

/// A clap error's reason without its usage text: the value parser's message where
/// there is one.
fn reason(e: &clap::Error) -> String {
    match std::error::Error::source(e) {
        Some(inner) => inner.to_string(),
        None => e
            .to_string()
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ")
            .to_owned(),
    }
}
