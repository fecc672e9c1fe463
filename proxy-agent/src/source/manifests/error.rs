//! What can go wrong: the source cannot start ([`SourceError`]), or a manifest has a
//! problem ([`ManifestError`]).

use std::fmt;
use std::path::PathBuf;

/// Why a manifest source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory does not exist or cannot be accessed.
    #[error("manifest directory {}: {source}", dir.display())]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is not a directory.
    #[error("manifest directory {}: not a directory", dir.display())]
    NotADirectory {
        /// The path.
        dir: PathBuf,
    },
    /// inotify refused to watch the directory.
    #[error("cannot watch manifest directory {}: {source}", dir.display())]
    Watch {
        /// The directory.
        dir: PathBuf,
        /// What notify said.
        #[source]
        source: notify::Error,
    },
}

impl SourceError {
    /// What the operator should check or do.
    pub fn fix(&self) -> &'static str {
        match self {
            SourceError::Directory { .. } | SourceError::NotADirectory { .. } => {
                "--manifests takes an existing directory of Service and EndpointSlice \
                 manifests (YAML or JSON); leave it out to read a Kubernetes API server"
            }
            SourceError::Watch { .. } => {
                "the directory is watched with inotify: check fs.inotify.max_user_instances \
                 and max_user_watches (sysctl)"
            }
        }
    }
}

/// One problem in the manifest directory.
///
/// Displays as `file: object: field: message`, leaving out what is unknown, e.g.
/// `examples/bad.yaml: Service default/web: spec.ports[0].port: 70000 is not in 1..=65535`
/// or `bad.yaml: document 2: did not parse: <the parser's message with line and column>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The file (the directory itself when it cannot be listed).
    pub file: PathBuf,
    /// `Kind namespace/name` when known, else `document N` (1-based, counting the
    /// non-empty documents of the file), or `None` for a problem with the whole file.
    pub object: Option<String>,
    /// The field at fault, e.g. `spec.ports[0].port`.
    pub field: Option<String>,
    /// What is wrong, and what the source did about it.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[cfg(test)]
mod tests;
