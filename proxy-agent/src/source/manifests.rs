//! The standalone source: `proxy-agent --manifests DIR`.
//!
//! Reads `v1/Service` and `discovery.k8s.io/v1/EndpointSlice` objects (also the items
//! of a `List`, `ServiceList` or `EndpointSliceList`) from the `*.yaml`, `*.yml` and
//! `*.json` files directly in a directory (multi-document YAML allowed; hidden files and
//! subdirectories are skipped), and watches the directory with inotify. Resources of
//! other kinds are ignored with a debug log, but a kind unknown to the `v1` or
//! `discovery.k8s.io/v1` groups, or a Service or EndpointSlice under another apiVersion,
//! is an error (a typo must not look like "ignored"). An object without a namespace is
//! in `default`.
//!
//! A broken input never withdraws a working service: an object still present but now
//! invalid keeps its last good version, and so do the objects last read from a file that
//! cannot be read or has a document that cannot be identified (a YAML syntax error, a
//! truncated write), until the file is fixed or deleted. An object removed from the
//! files is removed from the snapshot.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Snapshot;
use crate::source::validate::{self, DEFAULT_NAMESPACE, FieldError};

/// How long the directory must stay quiet before [`ManifestSource::changed`] returns.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// The longest [`ManifestSource::changed`] waits for a quiet spell once something
/// changed, so a directory that never stops changing is still re-read.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// Kinds of the core `v1` API group; any other kind there is a typo, not a resource
/// this source merely ignores.
const CORE_V1_KINDS: &[&str] = &[
    "Binding",
    "ComponentStatus",
    "ConfigMap",
    "Endpoints",
    "Event",
    "LimitRange",
    "List",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Pod",
    "PodTemplate",
    "ReplicationController",
    "ResourceQuota",
    "Secret",
    "Service",
    "ServiceAccount",
];

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

/// The kinds this source reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Service,
    EndpointSlice,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::Service => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    fn from_name(kind: &str) -> Option<Kind> {
        match kind {
            "Service" => Some(Kind::Service),
            "EndpointSlice" => Some(Kind::EndpointSlice),
            _ => None,
        }
    }
}

/// Kind, namespace, name.
type ObjectId = (Kind, String, String);

fn label(id: &ObjectId) -> String {
    format!("{} {}/{}", id.0.name(), id.1, id.2)
}

#[derive(Clone, Debug)]
enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
}

/// A good object and the file it came from.
#[derive(Clone, Debug)]
struct Known {
    file: PathBuf,
    object: Object,
}

/// What one document (or List item) turned out to be.
enum Outcome {
    /// A valid object.
    Good(ObjectId, Object),
    /// An object we can name, but invalid.
    Invalid(ObjectId, ManifestError),
    /// Something we cannot even name.
    Unidentified(ManifestError),
    /// A resource this source does not read.
    Ignored,
}

/// Services and EndpointSlices from a directory of manifests.
pub struct ManifestSource {
    dir: PathBuf,
    /// Kept alive for its inotify watch.
    _watcher: RecommendedWatcher,
    /// One pending "something changed", coalesced.
    events: mpsc::Receiver<()>,
    /// What the last [`load`](Self::load) returned, with the files it came from.
    last_good: BTreeMap<ObjectId, Known>,
}

impl fmt::Debug for ManifestSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManifestSource")
            .field("dir", &self.dir)
            .field("objects", &self.last_good.len())
            .finish_non_exhaustive()
    }
}

impl ManifestSource {
    /// Starts watching `dir`; fails if it is missing, not a directory or cannot be
    /// watched.
    pub fn new(dir: PathBuf) -> Result<Self, SourceError> {
        let meta = match std::fs::metadata(&dir) {
            Ok(meta) => meta,
            Err(source) => return Err(SourceError::Directory { dir, source }),
        };
        if !meta.is_dir() {
            return Err(SourceError::NotADirectory { dir });
        }
        let (tx, events) = mpsc::channel(1);
        let handler = move |event: notify::Result<notify::Event>| {
            match event {
                Ok(event) if !is_change(&event.kind) => return,
                Ok(_) => {}
                Err(e) => warn!(error = %e, "watching the manifest directory; re-reading it"),
            }
            // A full channel already holds a pending change: nothing to add.
            let _ = tx.try_send(());
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(source) => return Err(SourceError::Watch { dir, source }),
        };
        if let Err(source) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            return Err(SourceError::Watch { dir, source });
        }
        Ok(ManifestSource {
            dir,
            _watcher: watcher,
            events,
            last_good: BTreeMap::new(),
        })
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the directory. Objects that fail validation or parsing are reported and
    /// skipped; everything else is returned.
    ///
    /// An object that was good before and is now invalid keeps its last good version (so
    /// a typo never withdraws a working service), and the error says so.
    pub fn load(&mut self) -> (Snapshot, Vec<ManifestError>) {
        // Changes from here on are seen by the next `changed`.
        while self.events.try_recv().is_ok() {}

        let mut errors = Vec::new();
        let files = match manifest_files(&self.dir) {
            Ok(files) => files,
            Err(e) => {
                errors.push(ManifestError {
                    file: self.dir.clone(),
                    object: None,
                    field: None,
                    message: format!(
                        "could not list the directory: {e} (keeping the last good objects)"
                    ),
                });
                return (snapshot(&self.last_good), errors);
            }
        };

        let mut good: BTreeMap<ObjectId, Known> = BTreeMap::new();
        // Objects present but invalid, with the index of their first error.
        let mut invalid: BTreeMap<ObjectId, usize> = BTreeMap::new();
        // Files with something unidentifiable, with the index of its first error.
        let mut broken: BTreeMap<PathBuf, usize> = BTreeMap::new();

        for file in files {
            let text = match read_text(&file) {
                Ok(text) => text,
                Err(message) => {
                    broken.entry(file.clone()).or_insert(errors.len());
                    errors.push(ManifestError {
                        file,
                        object: None,
                        field: None,
                        message,
                    });
                    continue;
                }
            };
            let json = file.extension().is_some_and(|e| e == "json");
            for outcome in parse_file(&file, &text, json) {
                match outcome {
                    Outcome::Good(id, object) => {
                        if let Some(first) = good.get(&id) {
                            errors.push(ManifestError {
                                file: file.clone(),
                                object: Some(label(&id)),
                                field: None,
                                message: format!(
                                    "also defined in {}; this definition is ignored",
                                    first.file.display()
                                ),
                            });
                        } else {
                            let file = file.clone();
                            good.insert(id, Known { file, object });
                        }
                    }
                    Outcome::Invalid(id, error) => {
                        invalid.entry(id).or_insert(errors.len());
                        errors.push(error);
                    }
                    Outcome::Unidentified(error) => {
                        broken.entry(file.clone()).or_insert(errors.len());
                        errors.push(error);
                    }
                    Outcome::Ignored => {}
                }
            }
        }

        // An object present but invalid keeps its last good version.
        for (id, index) in invalid {
            if good.contains_key(&id) {
                continue;
            }
            if let Some(previous) = self.last_good.get(&id)
                && let Some(error) = errors.get_mut(index)
            {
                error.message.push_str(" (keeping the last good version)");
                good.insert(
                    id,
                    Known {
                        file: error.file.clone(),
                        object: previous.object.clone(),
                    },
                );
            }
        }
        // Objects last read from a file that is still there but (partly) unreadable are
        // kept: they may well be inside the part that does not parse.
        let mut kept: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (id, previous) in &self.last_good {
            if good.contains_key(id) {
                continue;
            }
            if let Some(&index) = broken.get(&previous.file) {
                kept.entry(index).or_default().push(label(id));
                good.insert(id.clone(), previous.clone());
            }
        }
        for (index, labels) in kept {
            if let Some(error) = errors.get_mut(index) {
                error.message.push_str(&format!(
                    " (keeping the last good version of {} from this file)",
                    labels.join(", ")
                ));
            }
        }

        self.last_good = good;
        (snapshot(&self.last_good), errors)
    }

    /// Waits until something in the directory changed, coalescing bursts: returns once
    /// the directory has been quiet for [`DEBOUNCE`] (or after [`MAX_DEBOUNCE`]).
    pub async fn changed(&mut self) {
        if self.events.recv().await.is_none() {
            // The watcher is gone (it lives as long as `self`, so this does not happen).
            std::future::pending::<()>().await;
        }
        let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
        loop {
            let quiet = tokio::time::Instant::now() + DEBOUNCE;
            match tokio::time::timeout_at(quiet.min(deadline), self.events.recv()).await {
                Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
                _ => break,
            }
        }
    }
}

/// Whether a watch event can change what [`ManifestSource::load`] reads. Opening and
/// reading files (as `load` itself does) does not; finishing a write does.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn snapshot(objects: &BTreeMap<ObjectId, Known>) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for ((_, namespace, name), known) in objects {
        let key = (namespace.clone(), name.clone());
        match &known.object {
            Object::Service(svc) => {
                snapshot.services.insert(key, Arc::clone(svc));
            }
            Object::EndpointSlice(slice) => {
                snapshot.slices.insert(key, Arc::clone(slice));
            }
        }
    }
    snapshot
}

/// The manifest files directly in `dir`, sorted.
fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let manifest = [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext));
        if name.starts_with('.') || !manifest {
            continue;
        }
        // Follows symlinks (a ConfigMap volume is made of them); a dangling one is
        // reported when read.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        files.push(path);
    }
    files.sort();
    Ok(files)
}

fn read_text(file: &Path) -> Result<String, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("could not be read: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "could not be read: not UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    })
}

/// Splits multi-document YAML at `---` and `...` markers. Returns each document's
/// first line (0-based) and text.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    fn is_marker(line: &str, marker: &str) -> bool {
        line.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    }
    let mut documents = Vec::new();
    let (mut start_line, mut start_byte, mut offset) = (0, 0, 0);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let end = offset + line.len();
        if is_marker(bare, "---") {
            // The marker opens the next document (it may carry content, `--- |`).
            documents.push((start_line, &text[start_byte..offset]));
            (start_line, start_byte) = (i, offset);
        } else if is_marker(bare, "...") {
            documents.push((start_line, &text[start_byte..end]));
            (start_line, start_byte) = (i + 1, end);
        }
        offset = end;
    }
    documents.push((start_line, &text[start_byte..]));
    documents
}

/// `text` with `lines` empty lines in front, so the parser's line numbers are the
/// file's.
fn at_line(lines: usize, text: &str) -> String {
    let mut padded = "\n".repeat(lines);
    padded.push_str(text);
    padded
}

fn parse_file(file: &Path, text: &str, json: bool) -> Vec<Outcome> {
    let documents = if json {
        // JSON has no document markers; it is parsed as the YAML it also is.
        vec![(0, text)]
    } else {
        split_documents(text)
    };
    let mut outcomes = Vec::new();
    let mut number = 0;
    for (first_line, document) in documents {
        let value: Value = match serde_yaml::from_str(document) {
            Ok(value) => value,
            Err(_) => {
                number += 1;
                // Parse again with the file's line numbering for the message.
                let message = match serde_yaml::from_str::<Value>(&at_line(first_line, document)) {
                    Err(e) => format!("did not parse: {e}"),
                    Ok(_) => "did not parse".to_string(),
                };
                outcomes.push(Outcome::Unidentified(ManifestError {
                    file: file.to_path_buf(),
                    object: Some(format!("document {number}")),
                    field: None,
                    message,
                }));
                continue;
            }
        };
        if value.is_null() {
            continue; // empty: only comments or markers
        }
        number += 1;
        let context = Context {
            file,
            place: format!("document {number}"),
        };
        match object_meta(&value) {
            Some(("v1", "List")) => list(&context, &value, None, &mut outcomes),
            Some(("v1", "ServiceList")) => {
                list(&context, &value, Some(Kind::Service), &mut outcomes);
            }
            Some(("discovery.k8s.io/v1", "EndpointSliceList")) => {
                list(&context, &value, Some(Kind::EndpointSlice), &mut outcomes);
            }
            _ => outcomes.push(object(
                &context,
                &value,
                Source::Text {
                    first_line,
                    text: document,
                },
            )),
        }
    }
    outcomes
}

/// Where a document is, for messages.
struct Context<'a> {
    file: &'a Path,
    /// `document N` or `document N item M`.
    place: String,
}

impl Context<'_> {
    fn error(&self, object: Option<String>, field: Option<&str>, message: String) -> ManifestError {
        ManifestError {
            file: self.file.to_path_buf(),
            object: Some(object.unwrap_or_else(|| self.place.clone())),
            field: field.map(str::to_owned),
            message,
        }
    }
}

/// What a typed object is parsed from: the document's text (for messages with line
/// numbers) or, for List items, the already parsed value.
enum Source<'a> {
    Text {
        /// The document's first line in the file (0-based).
        first_line: usize,
        text: &'a str,
    },
    Value(&'a Value),
}

impl Source<'_> {
    fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_yaml::Error> {
        match self {
            Source::Text { first_line, text } => serde_yaml::from_str(text)
                // Parse again with the file's line numbering for the message.
                .or_else(|_| serde_yaml::from_str(&at_line(*first_line, text))),
            Source::Value(value) => T::deserialize(*value),
        }
    }
}

/// `(apiVersion, kind)` of a mapping, where both are strings.
fn object_meta(value: &Value) -> Option<(&str, &str)> {
    Some((
        value.get("apiVersion")?.as_str()?,
        value.get("kind")?.as_str()?,
    ))
}

/// The items of a `List` (any kinds) or of a `ServiceList` / `EndpointSliceList`, whose
/// items may leave out `apiVersion` and `kind` as API responses do.
fn list(context: &Context<'_>, value: &Value, typed: Option<Kind>, outcomes: &mut Vec<Outcome>) {
    let items = match value.get("items") {
        None | Some(Value::Null) => return,
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            outcomes.push(Outcome::Unidentified(context.error(
                Some(format!("{} (List)", context.place)),
                Some("items"),
                "must be a list of objects".into(),
            )));
            return;
        }
    };
    for (i, item) in items.iter().enumerate() {
        let item_context = Context {
            file: context.file,
            place: format!("{} item {}", context.place, i + 1),
        };
        if object_meta(item).is_some_and(|(_, kind)| kind == "List") {
            outcomes.push(Outcome::Unidentified(item_context.error(
                None,
                Some("kind"),
                "a List inside a List is not supported".into(),
            )));
            continue;
        }
        match (typed, item) {
            (Some(kind), Value::Mapping(fields)) => {
                let mut fields = fields.clone();
                for (key, default) in [("apiVersion", kind.api_version()), ("kind", kind.name())] {
                    if !fields.contains_key(key) {
                        fields.insert(key.into(), default.into());
                    }
                }
                let item = Value::Mapping(fields);
                outcomes.push(object(&item_context, &item, Source::Value(&item)));
            }
            _ => outcomes.push(object(&item_context, item, Source::Value(item))),
        }
    }
}

/// Classifies, parses and validates one object.
fn object(context: &Context<'_>, value: &Value, source: Source<'_>) -> Outcome {
    if !value.is_mapping() {
        return Outcome::Unidentified(context.error(
            None,
            None,
            "is not a Kubernetes object (a mapping with apiVersion, kind and metadata)".into(),
        ));
    }
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    let kind_name = value.get("kind").and_then(Value::as_str);
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let namespace = match meta.and_then(|m| m.get("namespace")) {
        None | Some(Value::Null) => Some(DEFAULT_NAMESPACE),
        Some(ns) => ns
            .as_str()
            .map(|ns| if ns.is_empty() { DEFAULT_NAMESPACE } else { ns }),
    };
    let kind = kind_name.and_then(Kind::from_name);
    let id: Option<ObjectId> = match (kind, namespace, name) {
        (Some(kind), Some(namespace), Some(name)) => {
            Some((kind, namespace.to_owned(), name.to_owned()))
        }
        _ => None,
    };
    let object_label = id.as_ref().map(label);
    let fail = |field: Option<&str>, message: String| {
        let error = context.error(object_label.clone(), field, message);
        match &id {
            Some(id) => Outcome::Invalid(id.clone(), error),
            None => Outcome::Unidentified(error),
        }
    };

    let (Some(api_version), Some(kind_name)) = (api_version, kind_name) else {
        let field = if api_version.is_none() {
            "apiVersion"
        } else {
            "kind"
        };
        return fail(Some(field), "is required".into());
    };
    let Some(kind) = kind else {
        if api_version == "v1" && !CORE_V1_KINDS.contains(&kind_name)
            || api_version == "discovery.k8s.io/v1"
        {
            return fail(
                Some("kind"),
                format!("unknown kind {kind_name:?} in apiVersion {api_version}"),
            );
        }
        debug!(
            file = %context.file.display(),
            place = %context.place,
            api_version,
            kind = kind_name,
            name = name.unwrap_or(""),
            "ignoring a kind this source does not read"
        );
        return Outcome::Ignored;
    };
    if api_version != kind.api_version() {
        return fail(
            Some("apiVersion"),
            format!(
                "{} is in apiVersion {}, not {api_version:?}",
                kind.name(),
                kind.api_version()
            ),
        );
    }

    let parsed = match kind {
        Kind::Service => source.parse::<Service>().map(|mut svc| {
            default_namespace(&mut svc.metadata);
            let checked = validate::service(&svc);
            (Object::Service(Arc::new(svc)), checked)
        }),
        Kind::EndpointSlice => source.parse::<EndpointSlice>().map(|mut slice| {
            default_namespace(&mut slice.metadata);
            let checked = validate::endpoint_slice(&slice);
            (Object::EndpointSlice(Arc::new(slice)), checked)
        }),
    };
    match parsed {
        Err(e) => fail(None, format!("did not parse: {e}")),
        Ok((_, Err(FieldError { field, message }))) => fail(Some(&field), message),
        Ok((object, Ok(()))) => match id {
            Some(id) => Outcome::Good(id, object),
            // Validation requires a name, so this is not reached; be safe anyway.
            None => Outcome::Unidentified(context.error(
                None,
                Some("metadata.name"),
                "is required".into(),
            )),
        },
    }
}

fn default_namespace(meta: &mut ObjectMeta) {
    if meta.namespace.as_deref().unwrap_or("").is_empty() {
        meta.namespace = Some(DEFAULT_NAMESPACE.to_owned());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "proxy-agent-manifests-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }

        fn file(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        fn write(&self, name: &str, content: &str) {
            std::fs::write(self.file(name), content).unwrap();
        }

        fn remove(&self, name: &str) {
            std::fs::remove_file(self.file(name)).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn service_yaml(ns: &str, name: &str, ip: &str, port: i64) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
             spec:\n  clusterIP: {ip}\n  ports:\n  - name: http\n    port: {port}\n    \
             targetPort: 8080\n"
        )
    }

    fn slice_yaml(ns: &str, name: &str, service: &str, address: &str) -> String {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
             namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {service}\n\
             addressType: IPv4\nports:\n- name: http\n  port: 8080\nendpoints:\n\
             - addresses: [\"{address}\"]\n"
        )
    }

    fn source(dir: &TempDir) -> ManifestSource {
        ManifestSource::new(dir.path().to_path_buf()).unwrap()
    }

    fn keys<V>(map: &BTreeMap<(String, String), V>) -> Vec<String> {
        map.keys()
            .map(|(ns, name)| format!("{ns}/{name}"))
            .collect()
    }

    fn port(snapshot: &Snapshot, ns: &str, name: &str) -> i32 {
        let svc = &snapshot.services[&(ns.to_string(), name.to_string())];
        svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port
    }

    /// The errors as displayed, with the directory replaced by `DIR`.
    fn shown(dir: &TempDir, errors: &[ManifestError]) -> Vec<String> {
        let prefix = format!("{}/", dir.path().display());
        errors
            .iter()
            .map(|e| e.to_string().replace(&prefix, "DIR/"))
            .collect()
    }

    // ---- loading --------------------------------------------------------------------

    #[test]
    fn services_and_slices_load_from_yaml_yml_and_json_files() {
        let dir = TempDir::new();
        dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
        dir.write("b.yml", &slice_yaml("demo", "a-1", "a", "10.244.0.11"));
        dir.write(
            "c.json",
            r#"{"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "c", "namespace": "demo"},
                "spec": {"clusterIP": "10.96.0.3", "ports": [{"name": "http", "port": 81}]}}"#,
        );
        let (snapshot, errors) = source(&dir).load();
        assert_eq!(errors, []);
        assert_eq!(keys(&snapshot.services), ["demo/a", "demo/c"]);
        assert_eq!(keys(&snapshot.slices), ["demo/a-1"]);
        assert_eq!(port(&snapshot, "demo", "c"), 81);
        let target = snapshot.services[&("demo".into(), "a".into())]
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()[0]
            .target_port
            .clone();
        assert_eq!(target, Some(IntOrString::Int(8080)));
    }

    #[test]
    fn every_document_of_a_multi_document_file_loads() {
        let dir = TempDir::new();
        let text = format!(
            "---\n# leading marker and comments\n{}---\n---\n# an empty document\n--- \n{}...\n{}",
            service_yaml("demo", "a", "10.96.0.1", 80),
            service_yaml("demo", "b", "10.96.0.2", 80),
            slice_yaml("demo", "a-1", "a", "10.244.0.11"),
        );
        dir.write("all.yaml", &text);
        let (snapshot, errors) = source(&dir).load();
        assert_eq!(errors, []);
        assert_eq!(keys(&snapshot.services), ["demo/a", "demo/b"]);
        assert_eq!(keys(&snapshot.slices), ["demo/a-1"]);
    }

    #[test]
    fn a_list_of_items_loads() {
        let dir = TempDir::new();
        dir.write(
            "list.yaml",
            "apiVersion: v1\nkind: List\nitems:\n\
             - apiVersion: v1\n  kind: Service\n  metadata: {name: a, namespace: demo}\n  \
               spec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80}]}\n\
             - apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: a, namespace: demo}\n\
             - apiVersion: v1\n  kind: Service\n  metadata: {name: b, namespace: demo}\n  \
               spec: {clusterIP: 10.96.0.2, ports: [{name: http, port: 0}]}\n",
        );
        let (snapshot, errors) = source(&dir).load();
        assert_eq!(keys(&snapshot.services), ["demo/a"]);
        assert_eq!(
            shown(&dir, &errors),
            ["DIR/list.yaml: Service demo/b: spec.ports[0].port: 0 is not in 1..=65535"]
        );
    }

    #[test]
    fn other_kinds_files_and_directories_are_ignored() {
        let dir = TempDir::new();
        dir.write(
            "app.yaml",
            &format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\n---\n\
                 apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: web}}\n---\n{}",
                service_yaml("demo", "a", "10.96.0.1", 80)
            ),
        );
        dir.write("README.md", "# not a manifest: [");
        dir.write(".hidden.yaml", "not: [valid");
        dir.write("notes.txt", "{");
        std::fs::create_dir(dir.file("sub.yaml")).unwrap();
        std::fs::write(
            dir.file("sub.yaml").join("x.yaml"),
            service_yaml("demo", "x", "10.96.0.9", 80),
        )
        .unwrap();
        let (snapshot, errors) = source(&dir).load();
        assert_eq!(errors, []);
        assert_eq!(keys(&snapshot.services), ["demo/a"]);
    }

    #[test]
    fn an_object_without_a_namespace_is_in_default() {
        let dir = TempDir::new();
        dir.write(
            "a.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  clusterIP: 10.96.0.1\n  \
             ports: [{port: 80}]\n",
        );
        let (snapshot, errors) = source(&dir).load();
        assert_eq!(errors, []);
        assert_eq!(keys(&snapshot.services), ["default/a"]);
        let svc = &snapshot.services[&("default".into(), "a".into())];
        assert_eq!(svc.metadata.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn typed_lists_load_with_or_without_item_kinds() {
        let dir = TempDir::new();
        dir.write(
            "services.json",
            r#"{"apiVersion": "v1", "kind": "ServiceList", "items": [
                {"metadata": {"name": "a", "namespace": "demo"},
                 "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}},
                {"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": "b", "namespace": "demo"},
                 "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 80}]}}]}"#,
        );
        dir.write(
            "slices.yaml",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSliceList\nitems:\n\
             - metadata: {name: a-1, namespace: demo, labels: {kubernetes.io/service-name: a}}\n  \
               addressType: IPv4\n  endpoints: [{addresses: [10.244.0.11]}]\n\
             - apiVersion: v1\n  kind: Service\n  metadata: {name: c, namespace: demo}\n",
        );
        let (snapshot, errors) = source(&dir).load();
        assert_eq!(keys(&snapshot.services), ["demo/a", "demo/b"]);
        assert_eq!(keys(&snapshot.slices), ["demo/a-1"]);
        // An item of another kind in a typed list is the list's own business: the
        // source reads it like any object (here, a Service without ports).
        assert_eq!(
            shown(&dir, &errors),
            ["DIR/slices.yaml: Service demo/c: spec: is required"]
        );
    }

    // ---- errors -----------------------------------------------------------------------

    #[test]
    fn errors_display_file_object_field_and_message() {
        let e = ManifestError {
            file: "examples/bad.yaml".into(),
            object: Some("Service default/web".into()),
            field: Some("spec.ports[0].port".into()),
            message: "70000 is not in 1..=65535".into(),
        };
        assert_eq!(
            e.to_string(),
            "examples/bad.yaml: Service default/web: spec.ports[0].port: 70000 is not in 1..=65535"
        );
        let e = ManifestError {
            file: "bad.yaml".into(),
            object: Some("document 2".into()),
            field: None,
            message: "did not parse: x".into(),
        };
        assert_eq!(e.to_string(), "bad.yaml: document 2: did not parse: x");
        let e = ManifestError {
            file: "gone.yaml".into(),
            object: None,
            field: None,
            message: "could not be read: x".into(),
        };
        assert_eq!(e.to_string(), "gone.yaml: could not be read: x");
    }

    #[test]
    fn validation_errors_name_file_object_and_field_and_other_documents_still_load() {
        let dir = TempDir::new();
        let good = service_yaml("demo", "good", "10.96.0.1", 80);
        let cases = [
            (
                service_yaml("demo", "big", "10.96.0.2", 70000),
                "Service demo/big: spec.ports[0].port: 70000 is not in 1..=65535",
            ),
            (
                service_yaml("demo", "zero", "10.96.0.3", 0),
                "Service demo/zero: spec.ports[0].port: 0 is not in 1..=65535",
            ),
            (
                service_yaml("demo", "ip", "10.96.0.300", 80),
                "Service demo/ip: spec.clusterIP: \"10.96.0.300\" is not an IP address, \"None\" or empty",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: noports, namespace: demo}\n\
                 spec: {clusterIP: 10.96.0.4}\n"
                    .to_string(),
                "Service demo/noports: spec.ports: at least one port is required (only headless and ExternalName services may have none)",
            ),
            (
                service_yaml("demo", "proto", "10.96.0.5", 80).replace(
                    "targetPort: 8080",
                    "targetPort: 8080\n    protocol: ICMP",
                ),
                "Service demo/proto: spec.ports[0].protocol: unknown protocol \"ICMP\"",
            ),
            (
                slice_yaml("demo", "s-1", "s", "10.244.0.300"),
                "EndpointSlice demo/s-1: endpoints[0].addresses[0]: \"10.244.0.300\" is not an IPv4 address (the slice's addressType is IPv4)",
            ),
            (
                slice_yaml("demo", "s-2", "s", "10.244.0.1")
                    .replace("  labels:\n    kubernetes.io/service-name: s\n", ""),
                "EndpointSlice demo/s-2: metadata.labels[kubernetes.io/service-name]: is required: it names the Service this slice belongs to",
            ),
            (
                slice_yaml("demo", "s-3", "s", "10.244.0.1").replace("port: 8080", "port: 65536"),
                "EndpointSlice demo/s-3: ports[0].port: 65536 is not in 1..=65535",
            ),
            (
                slice_yaml("demo", "s-4", "s", "10.244.0.1")
                    .replace("port: 8080", "port: 8080\n  protocol: QUIC"),
                "EndpointSlice demo/s-4: ports[0].protocol: unknown protocol \"QUIC\"",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo}\nspec: {clusterIP: 10.96.0.6, ports: [{port: 80}]}\n".to_string(),
                "document 2: metadata.name: is required",
            ),
        ];
        for (bad, expected) in cases {
            dir.write("mixed.yaml", &format!("{good}---\n{bad}"));
            let (snapshot, errors) = source(&dir).load();
            assert_eq!(
                shown(&dir, &errors),
                [format!("DIR/mixed.yaml: {expected}")]
            );
            assert_eq!(keys(&snapshot.services), ["demo/good"], "{expected}");
            assert!(snapshot.slices.is_empty());
        }
    }

    #[test]
    fn an_unparseable_document_is_reported_with_its_line_and_the_others_load() {
        let dir = TempDir::new();
        let text = format!(
            "{}---\n# comment\nfoo: [1, 2\n---\n{}",
            service_yaml("demo", "a", "10.96.0.1", 80),
            service_yaml("demo", "b", "10.96.0.2", 80)
        );
        dir.write("bad.yaml", &text);
        let (snapshot, errors) = source(&dir).load();
        assert_eq!(keys(&snapshot.services), ["demo/a", "demo/b"]);
        assert_eq!(
            shown(&dir, &errors),
            [
                "DIR/bad.yaml: document 2: did not parse: did not find expected ',' or ']' at line 15 column 1, while parsing a flow sequence at line 14 column 6"
            ]
        );
    }

    #[test]
    fn a_type_error_names_the_object_field_line_and_column() {
        let dir = TempDir::new();
        let text = format!(
            "{}---\n{}",
            service_yaml("demo", "a", "10.96.0.1", 80),
            service_yaml("demo", "b", "10.96.0.2", 80).replace("port: 80", "port: eighty")
        );
        dir.write("typed.yaml", &text);
        let (snapshot, errors) = source(&dir).load();
        assert_eq!(keys(&snapshot.services), ["demo/a"]);
        assert_eq!(
            shown(&dir, &errors),
            [
                "DIR/typed.yaml: Service demo/b: did not parse: spec.ports[0].port: invalid type: string \"eighty\", expected i32 at line 22 column 11"
            ]
        );
    }

    #[test]
    fn kind_and_api_version_problems_are_reported() {
        let dir = TempDir::new();
        let cases = [
            (
                "apiVersion: v1\nkind: Servcie\nmetadata: {name: a}\n",
                "document 1: kind: unknown kind \"Servcie\" in apiVersion v1",
            ),
            (
                "apiVersion: discovery.k8s.io/v1\nkind: Endpointslice\nmetadata: {name: a}\n",
                "document 1: kind: unknown kind \"Endpointslice\" in apiVersion discovery.k8s.io/v1",
            ),
            (
                "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: a-1, namespace: demo}\n",
                "EndpointSlice demo/a-1: apiVersion: EndpointSlice is in apiVersion discovery.k8s.io/v1, not \"discovery.k8s.io/v1beta1\"",
            ),
            (
                "apiVersion: v2\nkind: Service\nmetadata: {name: a}\n",
                "Service default/a: apiVersion: Service is in apiVersion v1, not \"v2\"",
            ),
            (
                "kind: Service\nmetadata: {name: a}\n",
                "Service default/a: apiVersion: is required",
            ),
            (
                "apiVersion: v1\nmetadata: {name: a}\n",
                "document 1: kind: is required",
            ),
            (
                "- a\n- b\n",
                "document 1: is not a Kubernetes object (a mapping with apiVersion, kind and metadata)",
            ),
            (
                "just a string\n",
                "document 1: is not a Kubernetes object (a mapping with apiVersion, kind and metadata)",
            ),
            (
                "apiVersion: v1\nkind: List\nitems: 3\n",
                "document 1 (List): items: must be a list of objects",
            ),
            (
                "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n",
                "document 1 item 1: kind: a List inside a List is not supported",
            ),
        ];
        for (text, expected) in cases {
            dir.write("k.yaml", text);
            let (snapshot, errors) = source(&dir).load();
            assert_eq!(shown(&dir, &errors), [format!("DIR/k.yaml: {expected}")]);
            assert!(snapshot.services.is_empty() && snapshot.slices.is_empty());
        }
    }

    #[test]
    fn an_unreadable_file_is_reported_and_other_files_still_load() {
        let dir = TempDir::new();
        dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
        std::fs::write(dir.file("binary.yaml"), b"apiVersion: v1\n\xff\xfe\n").unwrap();
        std::os::unix::fs::symlink(dir.file("missing-target"), dir.file("dangling.yaml")).unwrap();
        let (snapshot, errors) = source(&dir).load();
        assert_eq!(keys(&snapshot.services), ["demo/a"]);
        assert_eq!(
            shown(&dir, &errors),
            [
                "DIR/binary.yaml: could not be read: not UTF-8 (invalid byte at offset 15)",
                "DIR/dangling.yaml: could not be read: No such file or directory (os error 2)",
            ]
        );
    }

    #[test]
    fn an_object_defined_twice_is_reported_and_the_first_file_wins() {
        let dir = TempDir::new();
        dir.write("a.yaml", &service_yaml("demo", "web", "10.96.0.1", 80));
        dir.write("b.yaml", &service_yaml("demo", "web", "10.96.0.2", 81));
        let (snapshot, errors) = source(&dir).load();
        assert_eq!(port(&snapshot, "demo", "web"), 80);
        assert_eq!(
            shown(&dir, &errors),
            [
                "DIR/b.yaml: Service demo/web: also defined in DIR/a.yaml; this definition is ignored"
            ]
        );
    }

    // ---- last good versions and deletion ------------------------------------------------

    #[test]
    fn an_object_that_becomes_invalid_keeps_its_last_good_version() {
        let dir = TempDir::new();
        dir.write("web.yaml", &service_yaml("demo", "web", "10.96.0.1", 80));
        let mut src = source(&dir);
        let (snapshot, errors) = src.load();
        assert_eq!((port(&snapshot, "demo", "web"), errors.len()), (80, 0));

        dir.write("web.yaml", &service_yaml("demo", "web", "10.96.0.1", 70000));
        let (snapshot, errors) = src.load();
        assert_eq!(port(&snapshot, "demo", "web"), 80);
        assert_eq!(
            shown(&dir, &errors),
            [
                "DIR/web.yaml: Service demo/web: spec.ports[0].port: 70000 is not in 1..=65535 (keeping the last good version)"
            ]
        );
        // Still kept on the next read, and replaced once fixed.
        let (snapshot, _) = src.load();
        assert_eq!(port(&snapshot, "demo", "web"), 80);
        dir.write("web.yaml", &service_yaml("demo", "web", "10.96.0.1", 8080));
        let (snapshot, errors) = src.load();
        assert_eq!((port(&snapshot, "demo", "web"), errors.len()), (8080, 0));
    }

    #[test]
    fn an_object_invalid_from_the_start_is_only_reported() {
        let dir = TempDir::new();
        dir.write("web.yaml", &service_yaml("demo", "web", "10.96.0.1", 70000));
        let (snapshot, errors) = source(&dir).load();
        assert!(snapshot.services.is_empty());
        assert_eq!(
            shown(&dir, &errors),
            ["DIR/web.yaml: Service demo/web: spec.ports[0].port: 70000 is not in 1..=65535"]
        );
    }

    #[test]
    fn objects_of_a_file_that_stops_parsing_are_kept_until_it_is_fixed_or_deleted() {
        let dir = TempDir::new();
        let both = format!(
            "{}---\n{}",
            service_yaml("demo", "a", "10.96.0.1", 80),
            slice_yaml("demo", "a-1", "a", "10.244.0.11")
        );
        dir.write("a.yaml", &both);
        dir.write("b.yaml", &service_yaml("demo", "b", "10.96.0.2", 80));
        let mut src = source(&dir);
        src.load();

        // A truncated write: the first document is cut in the middle of a flow mapping.
        dir.write(
            "a.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a,\n",
        );
        let (snapshot, errors) = src.load();
        assert_eq!(keys(&snapshot.services), ["demo/a", "demo/b"]);
        assert_eq!(keys(&snapshot.slices), ["demo/a-1"]);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].to_string().ends_with(
                " (keeping the last good version of Service demo/a, EndpointSlice demo/a-1 from this file)"
            ),
            "{}",
            errors[0]
        );
        assert_eq!(errors[0].object.as_deref(), Some("document 1"));

        // Fixed without the slice: the slice goes.
        dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
        let (snapshot, errors) = src.load();
        assert_eq!(errors, []);
        assert_eq!(keys(&snapshot.services), ["demo/a", "demo/b"]);
        assert!(snapshot.slices.is_empty());

        // Broken again, then deleted: its objects go.
        dir.write("a.yaml", "{");
        let (snapshot, _) = src.load();
        assert_eq!(keys(&snapshot.services), ["demo/a", "demo/b"]);
        dir.remove("a.yaml");
        let (snapshot, errors) = src.load();
        assert_eq!(errors, []);
        assert_eq!(keys(&snapshot.services), ["demo/b"]);
    }

    #[test]
    fn a_good_object_in_a_file_with_a_broken_document_is_not_duplicated_by_retention() {
        let dir = TempDir::new();
        dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
        let mut src = source(&dir);
        src.load();
        dir.write(
            "a.yaml",
            &format!(
                "{}---\nfoo: [\n",
                service_yaml("demo", "a", "10.96.0.1", 81)
            ),
        );
        let (snapshot, errors) = src.load();
        // The new good version wins over the last good one.
        assert_eq!(port(&snapshot, "demo", "a"), 81);
        assert_eq!(errors.len(), 1);
        assert!(!errors[0].message.contains("keeping"), "{}", errors[0]);
    }

    #[test]
    fn objects_removed_from_the_files_are_removed() {
        let dir = TempDir::new();
        dir.write(
            "a.yaml",
            &format!(
                "{}---\n{}",
                service_yaml("demo", "a", "10.96.0.1", 80),
                service_yaml("demo", "b", "10.96.0.2", 80)
            ),
        );
        dir.write("c.yaml", &service_yaml("demo", "c", "10.96.0.3", 80));
        let mut src = source(&dir);
        let (snapshot, _) = src.load();
        assert_eq!(keys(&snapshot.services), ["demo/a", "demo/b", "demo/c"]);

        dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
        let (snapshot, _) = src.load();
        assert_eq!(keys(&snapshot.services), ["demo/a", "demo/c"]);

        dir.remove("c.yaml");
        let (snapshot, errors) = src.load();
        assert_eq!(errors, []);
        assert_eq!(keys(&snapshot.services), ["demo/a"]);
    }

    #[test]
    fn an_object_moved_to_another_file_stays() {
        let dir = TempDir::new();
        dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
        let mut src = source(&dir);
        src.load();
        dir.remove("a.yaml");
        dir.write("z.yaml", &service_yaml("demo", "a", "10.96.0.1", 81));
        let (snapshot, errors) = src.load();
        assert_eq!(errors, []);
        assert_eq!(port(&snapshot, "demo", "a"), 81);
    }

    // ---- the directory and its watch ----------------------------------------------------

    #[test]
    fn a_missing_directory_or_a_file_is_refused() {
        let dir = TempDir::new();
        let missing = dir.file("nope");
        let err = ManifestSource::new(missing.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "manifest directory {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
        dir.write("f.yaml", "");
        let err = ManifestSource::new(dir.file("f.yaml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "manifest directory {}: not a directory",
                dir.file("f.yaml").display()
            )
        );
    }

    #[test]
    fn a_directory_that_disappears_keeps_the_last_good_objects() {
        let dir = TempDir::new();
        dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
        let mut src = source(&dir);
        src.load();
        std::fs::remove_dir_all(dir.path()).unwrap();
        let (snapshot, errors) = src.load();
        assert_eq!(keys(&snapshot.services), ["demo/a"]);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .message
                .starts_with("could not list the directory: ")
        );
    }

    const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

    async fn expect_change(src: &mut ManifestSource, what: &str) {
        if tokio::time::timeout(EVENT_TIMEOUT, src.changed())
            .await
            .is_err()
        {
            panic!("no change reported within {EVENT_TIMEOUT:?} after {what}");
        }
    }

    async fn expect_quiet(src: &mut ManifestSource, what: &str) {
        let quiet = Duration::from_millis(400);
        if tokio::time::timeout(quiet, src.changed()).await.is_ok() {
            panic!("a change was reported after {what}");
        }
    }

    #[tokio::test]
    async fn changed_fires_after_a_file_is_written() {
        let dir = TempDir::new();
        let mut src = source(&dir);
        src.load();
        dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
        expect_change(&mut src, "writing a.yaml").await;
        let (snapshot, _) = src.load();
        assert_eq!(keys(&snapshot.services), ["demo/a"]);
    }

    #[tokio::test]
    async fn changed_fires_after_a_delete_and_an_atomic_rename() {
        let dir = TempDir::new();
        dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
        let mut src = source(&dir);
        src.load();
        dir.remove("a.yaml");
        expect_change(&mut src, "removing a.yaml").await;
        src.load();
        // How editors and kubectl-like tools write: a temporary file renamed over.
        dir.write(".b.yaml.tmp", &service_yaml("demo", "b", "10.96.0.2", 80));
        std::fs::rename(dir.file(".b.yaml.tmp"), dir.file("b.yaml")).unwrap();
        expect_change(&mut src, "renaming into b.yaml").await;
        let (snapshot, _) = src.load();
        assert_eq!(keys(&snapshot.services), ["demo/b"]);
    }

    #[tokio::test]
    async fn a_burst_of_writes_is_one_change() {
        let dir = TempDir::new();
        let mut src = source(&dir);
        src.load();
        for i in 0..20 {
            dir.write(
                &format!("s{i}.yaml"),
                &service_yaml("demo", &format!("s{i}"), "10.96.0.1", 80),
            );
        }
        expect_change(&mut src, "20 writes").await;
        let (snapshot, _) = src.load();
        assert_eq!(snapshot.services.len(), 20);
        expect_quiet(&mut src, "the burst was read").await;
    }

    #[tokio::test]
    async fn reading_the_directory_is_not_a_change() {
        let dir = TempDir::new();
        dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
        let mut src = source(&dir);
        src.load();
        src.load();
        expect_quiet(&mut src, "only reading").await;
    }

    // ---- the examples -----------------------------------------------------------------

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
    }

    #[test]
    fn the_clusterip_example_loads_and_translates_to_two_frontends() {
        let dir = TempDir::new();
        let text = std::fs::read_to_string(examples().join("clusterip.yaml")).unwrap();
        assert!(
            text.contains("\n  sessionAffinity: None\n"),
            "the demo rewrites this line"
        );
        dir.write("clusterip.yaml", &text);
        let (snapshot, errors) = source(&dir).load();
        assert_eq!(errors, []);
        let node = crate::translate::NodeContext {
            name: "node-a".into(),
            zone: None,
            ipv4: true,
            ipv6: true,
        };
        let t = crate::translate::translate(&snapshot, &node);
        assert_eq!(t.skipped, []);
        let shown: Vec<String> = t
            .desired
            .services
            .values()
            .map(|v| {
                let backends: Vec<String> = v.backends.iter().map(ToString::to_string).collect();
                format!("{} {} -> {}", v.name, v.frontend, backends.join(" "))
            })
            .collect();
        assert_eq!(
            shown,
            [
                "demo/echo:dns 10.96.0.10:53/UDP -> 10.244.0.11:5353 10.244.0.12:5353 10.244.0.13:5353",
                "demo/echo:http 10.96.0.10:80/TCP -> 10.244.0.11:8080 10.244.0.12:8080 10.244.0.13:8080",
            ]
        );
    }

    #[test]
    fn the_bad_example_reports_one_error_per_object_and_serves_nothing() {
        let dir = TempDir::new();
        let text = std::fs::read_to_string(examples().join("bad.yaml")).unwrap();
        dir.write("bad.yaml", &text);
        let (snapshot, errors) = source(&dir).load();
        assert!(snapshot.services.is_empty() && snapshot.slices.is_empty());
        let errors = shown(&dir, &errors);
        for e in &errors {
            println!("{e}");
        }
        assert_eq!(
            errors,
            [
                "DIR/bad.yaml: Service default/web: spec.ports[0].port: 70000 is not in 1..=65535",
                "DIR/bad.yaml: Service bad-examples/zero-port: spec.ports[0].port: 0 is not in 1..=65535",
                "DIR/bad.yaml: Service bad-examples/bad-ip: spec.clusterIP: \"10.96.1.300\" is not an IP address, \"None\" or empty",
                "DIR/bad.yaml: Service bad-examples/no-ports: spec.ports: at least one port is required (only headless and ExternalName services may have none)",
                "DIR/bad.yaml: Service bad-examples/icmp: spec.ports[0].protocol: unknown protocol \"ICMP\"",
                "DIR/bad.yaml: Service bad-examples/typed: did not parse: spec.ports[0].port: invalid type: string \"eighty\", expected i32 at line 78 column 13",
                "DIR/bad.yaml: document 7: did not parse: did not find expected ',' or ']' at line 90 column 1, while parsing a flow sequence at line 89 column 10",
                "DIR/bad.yaml: document 8: kind: unknown kind \"Servcie\" in apiVersion v1",
                "DIR/bad.yaml: EndpointSlice bad-examples/old-api-abc: apiVersion: EndpointSlice is in apiVersion discovery.k8s.io/v1, not \"discovery.k8s.io/v1beta1\"",
                "DIR/bad.yaml: Service bad-examples/no-api-version: apiVersion: is required",
                "DIR/bad.yaml: EndpointSlice bad-examples/bad-address-abc: endpoints[0].addresses[0]: \"10.244.0.300\" is not an IPv4 address (the slice's addressType is IPv4)",
                "DIR/bad.yaml: EndpointSlice bad-examples/orphan-abc: metadata.labels[kubernetes.io/service-name]: is required: it names the Service this slice belongs to",
                "DIR/bad.yaml: document 13: is not a Kubernetes object (a mapping with apiVersion, kind and metadata)",
            ]
        );
    }

    #[test]
    fn hostile_input_never_panics() {
        let dir = TempDir::new();
        let inputs = [
            "",
            "---",
            "...",
            "--- |\n  text\n",
            "&a [*a]",
            "!!binary AAAA",
            "{a: b, a: c}",
            "apiVersion: v1\nkind: Service\nmetadata: 5\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: [1]}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: 7}\n",
            "apiVersion: [v1]\nkind: {Service: 1}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 99999999999}]}\n",
            "apiVersion: v1\nkind: List\nitems: [1, null, {kind: Service}]\n",
            "\u{feff}apiVersion: v1\nkind: Service\nmetadata: {name: bom}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n",
            "a: b\r\n---\r\napiVersion: v1\r\n",
        ];
        let mut src = source(&dir);
        for input in inputs {
            dir.write("h.yaml", input);
            dir.write("h.json", input);
            let _ = src.load();
        }
        // The byte-order mark is not part of the document.
        dir.write("h.json", "");
        dir.write("h.yaml", inputs[13]);
        let (snapshot, errors) = src.load();
        assert_eq!(errors, []);
        assert_eq!(keys(&snapshot.services), ["default/bom"]);
    }
}
