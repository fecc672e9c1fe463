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
//!
//! `parse` turns files into objects, `error` has what can go wrong; this file holds
//! the source itself: the directory, its watch, and the last good objects.

mod error;
mod parse;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

pub use error::{ManifestError, SourceError};
use parse::{Object, ObjectId, Outcome, label, manifest_files, parse_file, read_text};

use super::Snapshot;
use super::debounce::Debounce;

/// How long the directory must stay quiet before [`ManifestSource::changed`] returns.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// The longest [`ManifestSource::changed`] waits for a quiet spell once something
/// changed, so a directory that never stops changing is still re-read.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// A good object and the file it came from.
#[derive(Clone, Debug)]
struct Known {
    file: PathBuf,
    object: Object,
}

/// Services and EndpointSlices from a directory of manifests.
pub struct ManifestSource {
    dir: PathBuf,
    /// Kept alive for its inotify watch.
    _watcher: RecommendedWatcher,
    /// "Something changed" signals, debounced; the burst in progress lives here, not
    /// in the future of [`changed`](Self::changed), so dropping that loses nothing.
    events: Debounce,
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
            events: Debounce::new(events, DEBOUNCE, MAX_DEBOUNCE),
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
        // Changes from here on are seen by the next `changed`; those before, including
        // one a dropped `changed` was debouncing, are read now.
        self.events.clear();

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
    /// the directory has been quiet for [`DEBOUNCE`] since the last event (or
    /// [`MAX_DEBOUNCE`] after the first).
    ///
    /// Cancel-safe, so it can be raced in `tokio::select!` against timers: the future
    /// holds no state of its own. It only ever waits on a channel receive (which loses
    /// nothing when dropped), and records an event in `self` (the debounce in progress)
    /// before it waits again; a later call resumes that debounce where a dropped one
    /// left it, so a change is never lost, nor its debounce restarted.
    pub async fn changed(&mut self) {
        self.events.changed().await;
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

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
