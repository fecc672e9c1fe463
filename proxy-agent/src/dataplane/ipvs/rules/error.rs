//! Why applying or removing the rules failed, with what iptables said.

use std::io;

use crate::dataplane::DataplaneError;

/// A failed iptables tool.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The tool is not installed (or not on `PATH`).
    #[error(
        "{program} not found: the IPVS mode needs the iptables tools (iptables, \
         iptables-restore, iptables-save and their ip6tables forms; Debian and Ubuntu: \
         apt-get install iptables)"
    )]
    NotFound {
        /// The program looked for.
        program: String,
    },
    /// The tool could not be started or waited for.
    #[error("running {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// iptables-restore refused the input (nothing of it was applied).
    #[error(
        "{program} failed ({status}){}: {stderr}",
        line.as_ref().map(|(n, text)| format!(" at line {n} `{text}`")).unwrap_or_default()
    )]
    Restore {
        /// `iptables-restore` or `ip6tables-restore`.
        program: String,
        /// The table the failed line is in (`nat` if no line was named).
        table: &'static str,
        /// How it exited.
        status: String,
        /// The line it names, if it names one: its number (from 1) and text.
        line: Option<(usize, String)>,
        /// What it printed.
        stderr: String,
    },
    /// An `iptables` command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The table it was about.
        table: &'static str,
        /// The whole command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it printed.
        stderr: String,
    },
}

impl RulesError {
    /// The family's command name and the table, for a [`DataplaneError`]'s object.
    fn object(&self) -> String {
        match self {
            RulesError::NotFound { program } | RulesError::Spawn { program, .. } => program.clone(),
            RulesError::Restore { program, table, .. } => {
                let tool = program.trim_end_matches("-restore");
                format!("{tool} table {table}")
            }
            RulesError::Command { table, command, .. } => {
                let tool = command.split_whitespace().next().unwrap_or("iptables");
                format!("{tool} table {table}")
            }
        }
    }
}

impl From<RulesError> for DataplaneError {
    fn from(e: RulesError) -> Self {
        let op = match &e {
            RulesError::NotFound { .. } => return DataplaneError::Unsupported(e.to_string()),
            RulesError::Spawn { .. } => "running",
            RulesError::Restore { .. } => "iptables-restore",
            RulesError::Command { .. } => "iptables",
        };
        DataplaneError::Kernel {
            op,
            object: e.object(),
            source: io::Error::other(e.to_string()),
        }
    }
}
