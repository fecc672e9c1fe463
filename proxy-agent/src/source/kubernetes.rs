//! The Kubernetes source: kube-rs watchers for Services, EndpointSlices and this node.
//!
//! Each watcher feeds a store that follows kube-runtime's reflector discipline: a
//! (re)list is buffered and swapped in whole at `InitDone`, so a relist after a dropped
//! watch or a "410 Gone" never shows the translation layer a half-empty world. While
//! the API server is unreachable the stores keep their last contents (the watchers
//! retry with backoff), so services are never withdrawn for that reason. No snapshot
//! is offered before both Services and EndpointSlices have been listed once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::{Changes, NodeInfo, ObjectKey, Snapshot, Taken, Update};
use crate::error_text::chain;

/// Objects of one kind, as last listed and watched.
#[derive(Debug)]
struct Store<K> {
    live: BTreeMap<ObjectKey, Arc<K>>,
    /// A relist in progress.
    pending: Option<BTreeMap<ObjectKey, Arc<K>>>,
    /// Listed completely at least once.
    ready: bool,
    /// Keys changed since the last [`KubeSource::take`].
    dirty: BTreeSet<ObjectKey>,
    /// Swapped in whole since the last take.
    reset: bool,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Store {
            live: BTreeMap::new(),
            pending: None,
            ready: false,
            dirty: BTreeSet::new(),
            reset: false,
        }
    }
}

/// Checks an object before it may replace the last good version.
type Check<K> = fn(&K) -> Result<(), crate::source::validate::FieldError>;

impl<K: Resource + Clone> Store<K>
where
    K::DynamicType: Default,
{
    /// Applies one watcher event; returns whether the visible contents changed, and
    /// the problem if an object was invalid (its last good version, if any, is kept).
    fn apply(&mut self, event: Event<K>, check: Check<K>) -> (bool, Option<String>) {
        match event {
            Event::Init => {
                self.pending = Some(BTreeMap::new());
                (false, None)
            }
            Event::InitApply(obj) => {
                let k = key(&obj);
                let problem = check(&obj).err();
                let keep = match &problem {
                    None => Some(Arc::new(obj)),
                    Some(_) => self.live.get(&k).cloned(),
                };
                if let (Some(p), Some(obj)) = (self.pending.as_mut(), keep) {
                    p.insert(k.clone(), obj);
                }
                (false, problem.map(|e| describe::<K>(&k, &e)))
            }
            Event::InitDone => {
                if let Some(p) = self.pending.take() {
                    self.live = p;
                }
                self.ready = true;
                self.reset = true;
                self.dirty.clear();
                (true, None)
            }
            Event::Apply(obj) => {
                let k = key(&obj);
                match check(&obj) {
                    Ok(()) => {
                        self.live.insert(k.clone(), Arc::new(obj));
                        self.dirty.insert(k);
                        (true, None)
                    }
                    Err(e) => (false, Some(describe::<K>(&k, &e))),
                }
            }
            Event::Delete(obj) => {
                let k = key(&obj);
                let changed = self.live.remove(&k).is_some();
                if changed {
                    self.dirty.insert(k);
                }
                (changed, None)
            }
        }
    }

    /// The changes since the last call: the keys with their current objects.
    fn take_changes(&mut self) -> Vec<(ObjectKey, Option<Arc<K>>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|k| {
                let v = self.live.get(&k).cloned();
                (k, v)
            })
            .collect()
    }
}

fn describe<K: Resource>(k: &ObjectKey, e: &crate::source::validate::FieldError) -> String
where
    K::DynamicType: Default,
{
    format!(
        "{} {}/{}: {e} (skipped; its last good version, if any, stays)",
        K::kind(&K::DynamicType::default()),
        k.0,
        k.1
    )
}

fn key<K: Resource>(obj: &K) -> ObjectKey {
    let meta = obj.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

#[derive(Debug, Default)]
struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    node: Store<Node>,
    /// When the oldest change not yet taken by [`KubeSource::snapshot`] arrived.
    first_pending: Option<Instant>,
    changes: Changes,
}

/// What the watcher tasks and the source share.
#[derive(Default)]
struct Shared {
    stores: Mutex<Stores>,
    notify: Notify,
    errors: Mutex<Vec<String>>,
}

/// Watches the API server; see the module docs.
pub struct KubeSource {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl KubeSource {
    /// Starts the watchers on `client`, which talks to `server` (its URL, named in
    /// every watch error); `node_name` selects this node's object.
    pub fn start(client: Client, server: &str, node_name: &str) -> KubeSource {
        let shared = Arc::new(Shared::default());
        let server: Arc<str> = server.into();
        let selector = watcher::Config::default().labels(super::SELECTOR);
        let node_selector =
            watcher::Config::default().fields(&format!("metadata.name={node_name}"));
        let tasks = vec![
            spawn_watch(
                Api::<Service>::all(client.clone()),
                selector.clone(),
                Arc::clone(&shared),
                Arc::clone(&server),
                |s| &mut s.services,
                |c| &mut c.services,
                crate::source::validate::service,
            ),
            spawn_watch(
                Api::<EndpointSlice>::all(client.clone()),
                selector,
                Arc::clone(&shared),
                Arc::clone(&server),
                |s| &mut s.slices,
                |c| &mut c.endpoint_slices,
                crate::source::validate::endpoint_slice,
            ),
            spawn_watch(
                Api::<Node>::all(client),
                node_selector,
                Arc::clone(&shared),
                server,
                |s| &mut s.node,
                |c| &mut c.nodes,
                |_| Ok(()),
            ),
        ];
        KubeSource { shared, tasks }
    }

    /// Waits until something changed (or a watch error was recorded). Cancel-safe:
    /// the watchers call `Notify::notify_one`, whose permit is kept while nobody
    /// waits and handed on if a notified waiter is dropped.
    pub async fn changed(&self) {
        self.shared.notify.notified().await;
    }

    /// What changed since the last call, once Services and EndpointSlices have each
    /// been listed (the whole world after a (re)list, else the changed objects); the
    /// watch errors and change counts since the last call.
    pub fn take(&self) -> Taken {
        let errors = std::mem::take(&mut *lock(&self.shared.errors));
        let mut st = lock(&self.shared.stores);
        if !(st.services.ready && st.slices.ready) {
            return Taken {
                update: None,
                errors,
                changes: Changes::default(),
            };
        }
        let mut changes = std::mem::take(&mut st.changes);
        changes.since = st.first_pending.take();
        let update = if st.services.reset || st.slices.reset {
            st.services.reset = false;
            st.slices.reset = false;
            st.services.dirty.clear();
            st.slices.dirty.clear();
            Update::Reset(Snapshot {
                services: st.services.live.clone(),
                slices: st.slices.live.clone(),
            })
        } else {
            Update::Changes {
                services: st.services.take_changes(),
                slices: st.slices.take_changes(),
            }
        };
        Taken {
            update: Some(update),
            errors,
            changes,
        }
    }

    /// This node as last seen.
    pub fn node(&self) -> NodeInfo {
        let st = lock(&self.shared.stores);
        st.node
            .live
            .values()
            .next()
            .map(|n| NodeInfo {
                zone: n.labels().get("topology.kubernetes.io/zone").cloned(),
                deleting: n.metadata.deletion_timestamp.is_some(),
                families: node_families(n),
                internal_ips: n
                    .status
                    .as_ref()
                    .and_then(|s| s.addresses.as_ref())
                    .into_iter()
                    .flatten()
                    .filter(|a| a.type_ == "InternalIP")
                    .filter_map(|a| crate::source::validate::parse_ip(&a.address))
                    .collect(),
            })
            .unwrap_or_default()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The families of a node's cluster-facing addresses, as kube-proxy derives the
/// families it serves.
fn node_families(node: &Node) -> Option<(bool, bool)> {
    let ips: Vec<std::net::IpAddr> = node
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| crate::source::validate::parse_ip(&a.address))
        .collect();
    if ips.is_empty() {
        return None;
    }
    Some((
        ips.iter().any(|i| i.is_ipv4()),
        ips.iter().any(|i| i.is_ipv6()),
    ))
}

/// Locks, ignoring poisoning (a panicked holder cannot leave these half-updated).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    shared: Arc<Shared>,
    server: Arc<str>,
    pick: fn(&mut Stores) -> &mut Store<K>,
    count: fn(&mut Changes) -> &mut u64,
    check: Check<K>,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    let (changed, problem) = {
                        let mut st = lock(&shared.stores);
                        let r = pick(&mut st).apply(event, check);
                        if r.0 {
                            *count(&mut st.changes) += 1;
                            st.first_pending.get_or_insert_with(Instant::now);
                        }
                        r
                    };
                    if let Some(p) = problem {
                        warn!("{p}");
                        lock(&shared.errors).push(p);
                    }
                    if changed {
                        shared.notify.notify_one();
                    }
                }
                Err(e) => {
                    // The watcher retries with backoff; the store keeps its contents.
                    // The whole cause chain: kube's own message for a TLS or connection
                    // failure is only "client error (Connect)"; the cause (an untrusted
                    // certificate, a refused connection) is in its sources.
                    let error = chain(&e);
                    warn!(%kind, %server, %error, "watch failed; keeping the last known state");
                    debug!(?e);
                    lock(&shared.errors).push(format!("{kind} watch of {server}: {error}"));
                    shared.notify.notify_one();
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_error_names_each_cause_once() {
        #[derive(Debug)]
        struct Connect(std::io::Error);
        impl std::fmt::Display for Connect {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Connect {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Connect(std::io::Error::other(
            "invalid peer certificate: UnknownIssuer",
        ));
        assert_eq!(
            chain(&e),
            "client error (Connect): invalid peer certificate: UnknownIssuer"
        );
        let plain = std::io::Error::other("connection refused");
        assert_eq!(chain(&plain), "connection refused");
    }
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(name: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    fn ok(_: &Service) -> Result<(), crate::source::validate::FieldError> {
        Ok(())
    }

    fn names(s: &Store<Service>) -> Vec<String> {
        s.live.keys().map(|(_, n)| n.clone()).collect()
    }

    /// No visible change and no problem: what every event of a list in progress
    /// returns.
    const UNCHANGED: (bool, Option<String>) = (false, None);

    #[test]
    fn services_and_slices_are_watched_with_kube_proxys_exact_selector() {
        // The string kube-proxy's `labels.Selector` renders, requirement for requirement.
        assert_eq!(
            crate::source::SELECTOR,
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
        );
        let keys = |k: &[&'static str]| crate::source::selected(k.iter().copied());
        assert!(keys(&[]) && keys(&["app", "kubernetes.io/service-name"]));
        assert!(!keys(&["app", "service.kubernetes.io/headless"]));
        assert!(!keys(&["service.kubernetes.io/service-proxy-name"]));
    }

    #[test]
    fn a_relist_is_swapped_in_whole_at_init_done() {
        let mut s = Store::default();
        assert_eq!(s.apply(Event::Init, ok), UNCHANGED);
        assert_eq!(s.apply(Event::InitApply(svc("a")), ok), UNCHANGED);
        assert_eq!(s.apply(Event::InitApply(svc("b")), ok), UNCHANGED);
        assert!(!s.ready, "not ready before the first list completes");
        assert!(names(&s).is_empty(), "nothing visible before InitDone");
        assert_eq!(s.apply(Event::InitDone, ok), (true, None));
        assert_eq!(names(&s), ["a", "b"]);

        // Relist: until InitDone, the old world stays visible and nothing reads as
        // changed.
        assert_eq!(s.apply(Event::Init, ok), UNCHANGED);
        assert_eq!(s.apply(Event::InitApply(svc("b")), ok), UNCHANGED);
        assert_eq!(names(&s), ["a", "b"]);
        assert_eq!(s.apply(Event::InitDone, ok), (true, None));
        assert_eq!(names(&s), ["b"], "objects missing from the relist are gone");
    }

    #[test]
    fn applies_and_deletes_change_the_live_set() {
        let mut s = Store::default();
        assert_eq!(s.apply(Event::Init, ok), UNCHANGED);
        assert_eq!(s.apply(Event::InitDone, ok), (true, None));
        assert!(s.apply(Event::Apply(svc("a")), ok).0);
        assert!(s.apply(Event::Delete(svc("a")), ok).0);
        assert!(
            !s.apply(Event::Delete(svc("a")), ok).0,
            "deleting twice changes nothing"
        );
        assert!(names(&s).is_empty());
    }
}
