//! A fake Kubernetes API server on 127.0.0.1 of a namespace of its own that speaks just enough list and watch
//! for the agent's real kube-rs client: namespaced and cluster-wide lists (with
//! `resourceVersion`), chunked watch streams with ADDED/MODIFIED/DELETED events, and the
//! failure modes that matter: dropped watches, "410 Gone" (expired resource versions,
//! which force a relist) and a server that is down.
//!
//! With [`FakeApiServer::start_tls`] it serves HTTPS as a real API server does, with a
//! certificate from a CA made at test time, and answers "401 Unauthorized" to a request
//! without an accepted `Authorization: Bearer` token: the in-cluster path (service-account
//! token and CA) is exercised against it.
//!
//! No kube-apiserver can be installed on the test machines; this is the one stand-in.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Netns;

/// A resource the fake serves: its URL collection and list kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// `/api/v1/services`
    Services,
    /// `/apis/discovery.k8s.io/v1/endpointslices`
    EndpointSlices,
    /// `/api/v1/nodes`
    Nodes,
}

impl Resource {
    fn from_path(path: &str) -> Option<(Resource, Option<String>)> {
        // /api/v1/services, /api/v1/namespaces/NS/services, /api/v1/nodes,
        // /apis/discovery.k8s.io/v1/[namespaces/NS/]endpointslices
        let path = path
            .strip_prefix("/api/v1/")
            .or_else(|| path.strip_prefix("/apis/discovery.k8s.io/v1/"))?;
        let (ns, rest) = match path.strip_prefix("namespaces/") {
            Some(p) => {
                let (ns, rest) = p.split_once('/')?;
                (Some(ns.to_owned()), rest)
            }
            None => (None, path),
        };
        let r = match rest {
            "services" => Resource::Services,
            "endpointslices" => Resource::EndpointSlices,
            "nodes" => Resource::Nodes,
            _ => return None,
        };
        Some((r, ns))
    }

    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Resource::Services => ("v1", "ServiceList"),
            Resource::EndpointSlices => ("discovery.k8s.io/v1", "EndpointSliceList"),
            Resource::Nodes => ("v1", "NodeList"),
        }
    }

    /// The resource an object of this `kind` belongs to.
    pub fn of_kind(kind: &str) -> Option<Resource> {
        match kind {
            "Service" => Some(Resource::Services),
            "EndpointSlice" => Some(Resource::EndpointSlices),
            "Node" => Some(Resource::Nodes),
            _ => None,
        }
    }
}

#[derive(Clone)]
struct Event {
    rv: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (resource, namespace, name) -> object
    objects: BTreeMap<(Resource, String, String), Value>,
    events: Vec<(Resource, Event)>,
    /// Watches started from a version at or below this get 410 Gone.
    expired_below: u64,
    /// Bumped to end every open watch stream.
    generation: u64,
    down: bool,
    requests: Vec<String>,
    /// The bearer token of each request, in order ("" for none).
    tokens: Vec<String>,
    /// Bearer tokens accepted; `None` accepts any request (the plain HTTP fake).
    accepted: Option<Vec<String>>,
    /// Requests answered "401 Unauthorized".
    unauthorized: usize,
    /// TLS handshakes that failed (e.g. a client that does not trust the CA).
    tls_failures: usize,
    /// Serialized cluster-wide lists, valid while `rv` is unchanged (a real API server
    /// serves lists from its watch cache; this keeps the fake's own cost out of the
    /// agent's timings).
    list_cache: BTreeMap<Resource, (u64, Arc<String>)>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    /// The HTTPS configuration; plain HTTP without it.
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// A certificate authority made for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("generating the CA key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signing the CA");
        let issuer = rcgen::Issuer::new(params, key);
        TestCa { cert, issuer }
    }

    /// The CA certificate, PEM (the contents of a service account's `ca.crt`).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `ip` (as its one subject alternative name, which is what
    /// a client checks for an `https://IP:PORT` URL) and its key, DER.
    fn server_cert(
        &self,
        ip: std::net::IpAddr,
    ) -> (
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().expect("generating the server key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver");
        params.subject_alt_names = vec![rcgen::SanType::IpAddress(ip)];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing the server certificate");
        let key_der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        (cert.der().clone(), key_der.into())
    }
}

/// The running fake; stops when dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Where it listens; the agent that talks to it runs there too.
    netns: Netns,
}

impl FakeApiServer {
    /// Starts serving on an ephemeral port of 127.0.0.1, in a new network namespace
    /// (never on the machine's own loopback).
    pub fn start() -> FakeApiServer {
        FakeApiServer::start_with(None)
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> FakeApiServer {
        let netns = Netns::new("api");
        // The listening socket belongs to the namespace it was made in.
        let listener = netns
            .run(|| TcpListener::bind("127.0.0.1:0"))
            .expect("binding the fake API server");
        let addr = listener.local_addr().expect("local_addr");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1000,
                ..State::default()
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            tls,
        });
        let s = Arc::clone(&shared);
        thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let s = Arc::clone(&s);
                        thread::spawn(move || {
                            let _ = accept_connection(&s, stream);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeApiServer {
            shared,
            addr,
            netns,
        }
    }

    /// Serves HTTPS with a certificate for 127.0.0.1 from a new [`TestCa`] (see
    /// [`ca`](Self::ca)) and accepts only requests carrying `Authorization: Bearer
    /// <token>`; others get "401 Unauthorized". The accepted tokens can be changed with
    /// [`accept_tokens`](Self::accept_tokens).
    pub fn start_tls(token: &str) -> (FakeApiServer, TestCa) {
        let ca = TestCa::new("kpt-test-ca");
        let (cert, key) = ca.server_cert(std::net::Ipv4Addr::LOCALHOST.into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("the server certificate");
        let server = FakeApiServer::start_with(Some(Arc::new(config)));
        server.accept_tokens(&[token]);
        (server, ca)
    }

    /// Accepts exactly these bearer tokens from now on (a rotation: the API server stops
    /// accepting an old token once it expires). Connections are kept; the next request
    /// on each is checked.
    pub fn accept_tokens(&self, tokens: &[&str]) {
        self.with_state(|st| st.accepted = Some(tokens.iter().map(|t| (*t).to_owned()).collect()));
    }

    /// The bearer token of every request so far, in order ("" for a request without one).
    pub fn tokens_seen(&self) -> Vec<String> {
        self.with_state(|st| st.tokens.clone())
    }

    /// How many requests were answered "401 Unauthorized".
    pub fn unauthorized(&self) -> usize {
        self.with_state(|st| st.unauthorized)
    }

    /// How many TLS handshakes failed (a client that rejected the certificate).
    pub fn tls_failures(&self) -> usize {
        self.with_state(|st| st.tls_failures)
    }

    /// Where it listens (inside [`netns`](Self::netns)).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The namespace it listens in.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// `http://127.0.0.1:PORT`, or `https://` for [`start_tls`](Self::start_tls)
    /// (inside [`netns`](Self::netns)).
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Writes a kubeconfig pointing at this server into `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) {
        let cfg = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: fake\n",
            self.url()
        );
        std::fs::write(path, cfg).expect("writing the kubeconfig");
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut st);
        self.shared.changed.notify_all();
        r
    }

    /// Creates or replaces an object (a JSON value with `kind` and `metadata`).
    pub fn apply(&self, mut object: Value) {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let res =
            Resource::of_kind(&kind).unwrap_or_else(|| panic!("fake API: unknown kind {kind:?}"));
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("fake API: object without a name: {object}"))
            .to_owned();
        self.with_state(|st| {
            st.rv += 1;
            object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            let key = (res, ns, name);
            let kind = if st.objects.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            st.objects.insert(key, object.clone());
            let rv = st.rv;
            st.events.push((res, Event { rv, kind, object }));
        });
    }

    /// Deletes an object.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let res =
            Resource::of_kind(kind).unwrap_or_else(|| panic!("fake API: unknown kind {kind:?}"));
        self.with_state(|st| {
            if let Some(mut object) =
                st.objects
                    .remove(&(res, namespace.to_owned(), name.to_owned()))
            {
                st.rv += 1;
                object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                let rv = st.rv;
                st.events.push((
                    res,
                    Event {
                        rv,
                        kind: "DELETED",
                        object,
                    },
                ));
            }
        });
    }

    /// Ends every open watch stream (clients re-watch from their last version).
    pub fn drop_watches(&self) {
        self.with_state(|st| st.generation += 1);
    }

    /// Makes every version seen so far too old: open watches end, and re-watching
    /// gets "410 Gone", so clients must relist.
    pub fn expire_history(&self) {
        self.with_state(|st| {
            st.expired_below = st.rv;
            st.generation += 1;
        });
    }

    /// Takes the server down (connections are closed at once, open watches end) or
    /// brings it back.
    pub fn set_down(&self, down: bool) {
        self.with_state(|st| {
            st.down = down;
            st.generation += 1;
        });
    }

    /// The request lines served so far ("GET /api/v1/services?...").
    pub fn requests(&self) -> Vec<String> {
        self.with_state(|st| st.requests.clone())
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.with_state(|st| st.generation += 1);
    }
}

/// Serves one connection, after the TLS handshake if the server has TLS.
fn accept_connection(shared: &Shared, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let Some(tls) = &shared.tls else {
        return serve_connection(shared, &mut stream);
    };
    let mut conn = rustls::ServerConnection::new(Arc::clone(tls)).map_err(std::io::Error::other)?;
    // The handshake first, so that a client that rejects the certificate is counted.
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut stream) {
            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.tls_failures += 1;
            return Err(e);
        }
    }
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let served = serve_connection(shared, &mut tls);
    // A TLS connection ends with close_notify: without it the client reads the close as
    // a truncation attack and fails the request it may already have sent on it.
    tls.conn.send_close_notify();
    let _ = tls.flush();
    served
}

fn serve_connection<S: Read + Write>(shared: &Shared, stream: &mut S) -> std::io::Result<()> {
    // One stream for both directions: reads go through the buffer, writes straight to
    // the stream (a TLS stream cannot be cloned into halves).
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        // Headers up to the blank line; only `Connection: close` and the bearer token
        // matter.
        let mut close = false;
        let mut token = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            close |= lower.starts_with("connection: close");
            if let Some((name, value)) = h.split_once(':')
                && name.eq_ignore_ascii_case("authorization")
                && let Some((scheme, t)) = value.trim().split_once(' ')
                && scheme.eq_ignore_ascii_case("bearer")
            {
                t.trim().clone_into(&mut token);
            }
        }
        let out = reader.get_mut();
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        {
            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.requests.push(request_line.trim().to_owned());
            st.tokens.push(token.clone());
            if st.down {
                return Ok(()); // close without answering
            }
            if st.accepted.as_ref().is_some_and(|ok| !ok.contains(&token)) {
                st.unauthorized += 1;
                drop(st);
                respond(out, 401, &status_body(401, "Unauthorized", "Unauthorized"))?;
                if close {
                    return Ok(());
                }
                continue;
            }
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let params: BTreeMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let Some((res, ns)) = Resource::from_path(path) else {
            respond(out, 404, &status_body(404, "NotFound", "no such resource"))?;
            continue;
        };
        if params
            .get("watch")
            .is_some_and(|w| *w == "true" || *w == "1")
        {
            let from: u64 = params
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            // The connection stays open after a watch ends, as a real API server's
            // does: the client may already be sending its next request on it.
            watch(shared, out, res, ns.as_deref(), from)?;
            if close {
                return Ok(());
            }
            continue;
        }
        let body = list_body(shared, res, ns.as_deref());
        respond_raw(out, 200, &body)?;
        if close {
            return Ok(());
        }
    }
}

/// The JSON of a list, from the cache when nothing changed since it was made.
fn list_body(shared: &Shared, res: Resource, ns: Option<&str>) -> Arc<String> {
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    if ns.is_none()
        && let Some((rv, body)) = st.list_cache.get(&res)
        && *rv == st.rv
    {
        return Arc::clone(body);
    }
    let items: Vec<&Value> = st
        .objects
        .iter()
        .filter(|((r, n, _), _)| *r == res && ns.is_none_or(|ns| ns == n))
        .map(|(_, o)| o)
        .collect();
    let (api_version, kind) = res.list_kind();
    let body = Arc::new(
        json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        })
        .to_string(),
    );
    if ns.is_none() {
        let rv = st.rv;
        st.list_cache.insert(res, (rv, Arc::clone(&body)));
    }
    body
}

impl FakeApiServer {
    /// Serializes every list once, so that later lists come from the cache.
    pub fn warm_list_cache(&self) {
        for res in [
            Resource::Services,
            Resource::EndpointSlices,
            Resource::Nodes,
        ] {
            list_body(&self.shared, res, None);
        }
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
           "code": code, "reason": reason, "message": message, "metadata": {}})
}

fn respond(out: &mut impl Write, code: u16, body: &Value) -> std::io::Result<()> {
    respond_raw(out, code, &body.to_string())
}

fn respond_raw(out: &mut impl Write, code: u16, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Error",
    };
    write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

fn chunk(out: &mut impl Write, line: &str) -> std::io::Result<()> {
    write!(out, "{:x}\r\n{line}\n\r\n", line.len() + 1)?;
    out.flush()
}

/// Streams events after `from` until the stream is ended (drop/expire/down/stop) or
/// the client goes away; ends with a clean last chunk.
fn watch(
    shared: &Shared,
    out: &mut impl Write,
    res: Resource,
    ns: Option<&str>,
    from: u64,
) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    if from != 0 && from <= st.expired_below {
        let e = json!({"type": "ERROR", "object": status_body(410, "Expired", "too old resource version")});
        drop(st);
        chunk(out, &e.to_string())?;
        return end_chunks(out);
    }
    let generation = st.generation;
    let mut sent = if from == 0 { st.rv } else { from };
    let deadline = Instant::now() + Duration::from_secs(290);
    loop {
        let pending: Vec<Event> = st
            .events
            .iter()
            .filter(|(r, e)| {
                *r == res
                    && e.rv > sent
                    && ns.is_none_or(|ns| e.object["metadata"]["namespace"].as_str() == Some(ns))
            })
            .map(|(_, e)| e.clone())
            .collect();
        if let Some(last) = st.events.last() {
            sent = sent.max(last.1.rv);
        }
        drop(st);
        for e in pending {
            chunk(
                out,
                &json!({"type": e.kind, "object": e.object}).to_string(),
            )?;
        }
        st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.generation != generation
            || shared.stop.load(Ordering::Relaxed)
            || Instant::now() > deadline
        {
            drop(st);
            return end_chunks(out);
        }
        let (guard, _) = shared
            .changed
            .wait_timeout(st, Duration::from_millis(200))
            .unwrap_or_else(|e| e.into_inner());
        st = guard;
    }
}

/// The last chunk of a chunked body, flushed (a TLS stream buffers until then).
fn end_chunks(out: &mut impl Write) -> std::io::Result<()> {
    write!(out, "0\r\n\r\n")?;
    out.flush()
}
