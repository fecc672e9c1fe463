//! From files to objects: which files are read, how a file splits into YAML documents,
//! `List`s and their items, and how an item becomes a validated Service or
//! EndpointSlice (or an error naming the file, object and field).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use tracing::debug;

use super::ManifestError;
use crate::source::validate::{self, DEFAULT_NAMESPACE, FieldError};

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

/// The kinds this source reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
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
pub(super) type ObjectId = (Kind, String, String);

pub(super) fn label(id: &ObjectId) -> String {
    format!("{} {}/{}", id.0.name(), id.1, id.2)
}

#[derive(Clone, Debug)]
pub(super) enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
}

/// What one document (or List item) turned out to be.
pub(super) enum Outcome {
    /// A valid object.
    Good(ObjectId, Object),
    /// An object we can name, but invalid.
    Invalid(ObjectId, ManifestError),
    /// Something we cannot even name.
    Unidentified(ManifestError),
    /// A resource this source does not read.
    Ignored,
}

/// The manifest files directly in `dir`, sorted.
pub(super) fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
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

pub(super) fn read_text(file: &Path) -> Result<String, String> {
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

pub(super) fn parse_file(file: &Path, text: &str, json: bool) -> Vec<Outcome> {
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

    // What kube-proxy's list/watch selector filters out is absent, not invalid: a file
    // shows the agent what a watch would.
    let label_keys = meta
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_mapping)
        .into_iter()
        .flat_map(|labels| labels.keys().filter_map(Value::as_str));
    if !crate::source::selected(label_keys) {
        debug!(
            file = %context.file.display(),
            object = object_label.as_deref().unwrap_or(&context.place),
            selector = crate::source::SELECTOR,
            "skipping an object outside kube-proxy's selector"
        );
        return Outcome::Ignored;
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
mod tests;
