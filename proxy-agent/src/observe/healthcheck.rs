//! kube-proxy's service health servers: one HTTP listener per `healthCheckNodePort` of
//! an `externalTrafficPolicy: Local` Service, so that cloud load balancers only send
//! to nodes that have a local endpoint (kube-proxy's
//! `pkg/proxy/healthcheck/service_health.go`).
//!
//! Each listener answers every path and method with the Service's local endpoint
//! count: 200 when the count is non-zero and the proxy is healthy, 503 otherwise, with
//! kube-proxy's headers and byte-for-byte its JSON body.
//!
//! [`HealthCheckServers::sync`] is called after each translation: it opens listeners
//! for new ports, closes those no longer wanted, and updates the answers of the others
//! in place (no re-bind, so a probe never meets a closed port during an update). A port
//! that cannot be bound is reported and retried at the next sync; the others keep
//! serving.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::{debug, info, warn};

use crate::model::HealthCheck;

/// Whether the proxy itself is healthy (kube-proxy's `/healthz` state); read at each
/// request, so it must be cheap.
pub type HealthyFn = Arc<dyn Fn() -> bool + Send + Sync>;

/// A health check port that could not be opened; retried at the next sync.
#[derive(Debug, thiserror::Error)]
#[error("health check port {port} of service {namespace}/{name}: listening on {addr}: {source}")]
pub struct BindError {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The `healthCheckNodePort`.
    pub port: u16,
    /// The address we tried to listen on.
    pub addr: SocketAddr,
    /// Why it failed (typically `AddrInUse`).
    #[source]
    pub source: io::Error,
}

/// What one port answers; updated in place by [`HealthCheckServers::sync`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    namespace: String,
    name: String,
    local_endpoints: usize,
}

struct Server {
    answer: Arc<Mutex<Answer>>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

/// The set of health check listeners, one per `healthCheckNodePort`.
pub struct HealthCheckServers {
    bind: IpAddr,
    healthy: HealthyFn,
    servers: BTreeMap<u16, Server>,
    /// Listeners opened so far (tests check that an update does not re-bind).
    binds: u64,
    /// Where the listeners are served (None: the caller's runtime).
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for HealthCheckServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthCheckServers")
            .field("bind", &self.bind)
            .field("ports", &self.servers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl HealthCheckServers {
    /// Listeners on `bind:<port>`. When `bind` is `::`, each port gets one dual-stack
    /// socket (IPV6_V6ONLY off, so IPv4 clients are served too, whatever
    /// `net.ipv6.bindv6only` says); on a kernel without IPv6 it falls back to
    /// `0.0.0.0`. `healthy` is the proxy's own health: while it is false every port
    /// answers 503 (`"serviceProxyHealthy": false`), as kube-proxy does.
    pub fn new(bind: IpAddr, healthy: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        HealthCheckServers {
            bind,
            healthy: Arc::new(healthy),
            servers: BTreeMap::new(),
            binds: 0,
            runtime: None,
        }
    }

    /// Serves the listeners on `runtime` instead of the caller's (the daemon gives
    /// them the observers' runtime, so they answer while a sync runs).
    pub fn on(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Makes the listeners match `checks`: opens new ports, closes ports no longer
    /// wanted, and updates the answers of the others without re-binding. Returns the
    /// ports that could not be opened (each also logged); they are retried at the next
    /// call. Must be called within a Tokio runtime (the listeners are served on it);
    /// without one, every new port is reported as failed.
    ///
    /// Two Services claiming one port (the API server prevents it) get one listener,
    /// for the first in `checks`.
    pub fn sync(&mut self, checks: &[HealthCheck]) -> Vec<BindError> {
        let mut wanted: BTreeMap<u16, &HealthCheck> = BTreeMap::new();
        for c in checks {
            if c.port == 0 {
                continue;
            }
            if let Some(first) = wanted.get(&c.port) {
                warn!(
                    port = c.port,
                    service = %format_args!("{}/{}", c.namespace, c.name),
                    holder = %format_args!("{}/{}", first.namespace, first.name),
                    "health check port claimed by two services; serving the first"
                );
                continue;
            }
            wanted.insert(c.port, c);
        }

        // Close first, so a port handed from one set to another is free again as soon
        // as the runtime drops the aborted task.
        self.servers.retain(|port, server| {
            let keep = wanted.contains_key(port);
            if !keep {
                server.task.abort();
                info!(port, addr = %server.addr, "closed health check port");
            }
            keep
        });

        let runtime = match &self.runtime {
            Some(rt) => Ok(rt.clone()),
            None => tokio::runtime::Handle::try_current(),
        };
        let mut errors = Vec::new();
        for (port, check) in wanted {
            let answer = Answer {
                namespace: check.namespace.clone(),
                name: check.name.clone(),
                local_endpoints: check.local_endpoints,
            };
            if let Some(server) = self.servers.get(&port) {
                let mut current = server.answer.lock().unwrap_or_else(|e| e.into_inner());
                if *current != answer {
                    debug!(
                        port,
                        local_endpoints = answer.local_endpoints,
                        "health check updated"
                    );
                    *current = answer;
                }
                continue;
            }
            let addr = SocketAddr::new(self.bind, port);
            let bound = match &runtime {
                // try_current succeeded: we are inside the runtime, which registering
                // the listener needs.
                Ok(rt) => {
                    let _entered = rt.enter();
                    listen(addr).map(|l| (rt.clone(), l))
                }
                Err(e) => Err(io::Error::other(format!("no Tokio runtime: {e}"))),
            };
            match bound {
                Ok((rt, listener)) => {
                    self.binds += 1;
                    let local = listener.local_addr().unwrap_or(addr);
                    info!(
                        port,
                        addr = %local,
                        service = %format_args!("{}/{}", answer.namespace, answer.name),
                        local_endpoints = answer.local_endpoints,
                        "serving health check port"
                    );
                    let answer = Arc::new(Mutex::new(answer));
                    let router = Router::new().fallback(respond).with_state(Shared {
                        answer: Arc::clone(&answer),
                        healthy: Arc::clone(&self.healthy),
                    });
                    let task = rt.spawn(async move {
                        if let Err(e) = axum::serve(listener, router).await {
                            warn!(port, error = %e, "health check server stopped");
                        }
                    });
                    self.servers.insert(
                        port,
                        Server {
                            answer,
                            addr: local,
                            task,
                        },
                    );
                }
                Err(source) => {
                    let e = BindError {
                        namespace: answer.namespace,
                        name: answer.name,
                        port,
                        addr,
                        source,
                    };
                    warn!(
                        service = %format_args!("{}/{}", e.namespace, e.name),
                        port,
                        error = %e.source,
                        "cannot open health check port; retrying at the next sync"
                    );
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// The ports being served, ascending.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.keys().copied().collect()
    }

    /// The address a port's listener is bound to.
    pub fn local_addr(&self, port: u16) -> Option<SocketAddr> {
        self.servers.get(&port).map(|s| s.addr)
    }
}

impl Drop for HealthCheckServers {
    fn drop(&mut self) {
        for s in self.servers.values() {
            s.task.abort();
        }
    }
}

/// A listening socket on `addr`, dual-stack when `addr` is `[::]`.
fn listen(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = match addr.ip() {
        IpAddr::V6(ip) if ip.is_unspecified() => match tokio::net::TcpSocket::new_v6() {
            Ok(s) => {
                set_v6only(&s, false)?;
                s
            }
            // No IPv6 in this kernel: serve IPv4 alone.
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                return listen(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()));
            }
            Err(e) => return Err(e),
        },
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
    };
    // Like Go's net.Listen: a port closed with connections in TIME_WAIT can be
    // listened on again at once. A port with a live listener still fails (AddrInUse).
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn set_v6only(socket: &tokio::net::TcpSocket, on: bool) -> io::Result<()> {
    let value: libc::c_int = on.into();
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[derive(Clone)]
struct Shared {
    answer: Arc<Mutex<Answer>>,
    healthy: HealthyFn,
}

static ENDPOINT_WEIGHT: HeaderName = HeaderName::from_static("x-load-balancing-endpoint-weight");

/// kube-proxy's `hcHandler.ServeHTTP`: any path, any method.
async fn respond(State(s): State<Shared>) -> Response {
    let answer = s.answer.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let healthy = (s.healthy)();
    let status = if answer.local_endpoints != 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                ENDPOINT_WEIGHT.clone(),
                HeaderValue::from(answer.local_endpoints),
            ),
        ],
        body(
            &answer.namespace,
            &answer.name,
            answer.local_endpoints,
            healthy,
        ),
    )
        .into_response()
}

/// The body exactly as kube-proxy writes it (tab-indented, no trailing newline), so
/// that anything matching on its bytes keeps working.
fn body(namespace: &str, name: &str, local_endpoints: usize, healthy: bool) -> String {
    // JSON string quoting; for Kubernetes names (DNS labels) it equals Go's %q.
    let q = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        q(namespace),
        q(name),
        local_endpoints,
        healthy
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn check(ns: &str, name: &str, port: u16, local_endpoints: usize) -> HealthCheck {
        HealthCheck {
            namespace: ns.into(),
            name: name.into(),
            port,
            local_endpoints,
        }
    }

    /// Moves this test's thread into a network namespace of its own, with loopback up,
    /// so that nothing is bound on the machine and no other process can take a port
    /// between [`free_port`] and its use. Needs root, as CI runs; fails with the reason
    /// otherwise.
    fn private_netns() {
        // SAFETY: unshare affects only this thread (each test runs on its own thread,
        // and a current-thread runtime keeps every socket on it).
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) (run as root): {}",
            io::Error::last_os_error()
        );
        // SAFETY: a plain socket, closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: an all-zero ifreq is valid; the name fits with its NUL.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
        let ok = unsafe {
            libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) == 0 && {
                ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut ifr) == 0
            }
        };
        let err = io::Error::last_os_error();
        // SAFETY: closing the fd opened above.
        unsafe { libc::close(fd) };
        assert!(ok, "bringing lo up: {err}");
    }

    /// A free port of this test's namespace (see [`private_netns`]: nothing else
    /// binds there).
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn localhost() -> IpAddr {
        Ipv4Addr::LOCALHOST.into()
    }

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> io::Result<Reply> {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut raw = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut raw)).await??;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        Ok(Reply {
            status,
            headers,
            body: body.to_owned(),
        })
    }

    #[test]
    fn the_body_is_byte_for_byte_kube_proxys() {
        let b = body("default", "wp-nginx-service", 1, true);
        // The Content-Length kube-proxy sends for this service (seen in the wild).
        assert_eq!(b.len(), 127);
        assert_eq!(
            b,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"wp-nginx-service\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let v: serde_json::Value = serde_json::from_str(&body("ns", "n", 0, false)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"service": {"namespace": "ns", "name": "n"},
                "localEndpoints": 0, "serviceProxyHealthy": false})
        );
    }

    #[tokio::test]
    async fn ports_answer_200_with_local_endpoints_and_503_without() {
        private_netns();
        let (a, b) = (free_port(), free_port());
        let healthy = Arc::new(AtomicBool::new(true));
        let h = Arc::clone(&healthy);
        let mut hc = HealthCheckServers::new(localhost(), move || h.load(Ordering::Relaxed));
        let errors = hc.sync(&[check("demo", "web", a, 2), check("demo", "idle", b, 0)]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(hc.ports(), {
            let mut p = vec![a, b];
            p.sort();
            p
        });

        let r = get(SocketAddr::new(localhost(), a), "/healthz")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("x-load-balancing-endpoint-weight"), Some("2"));
        assert_eq!(r.body, body("demo", "web", 2, true));

        // Any path answers the same.
        let r = get(SocketAddr::new(localhost(), b), "/anything/else")
            .await
            .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-load-balancing-endpoint-weight"), Some("0"));
        assert_eq!(r.body, body("demo", "idle", 0, true));

        // An unhealthy proxy answers 503 even with local endpoints, and says why.
        healthy.store(false, Ordering::Relaxed);
        let r = get(SocketAddr::new(localhost(), a), "/").await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-load-balancing-endpoint-weight"), Some("2"));
        assert_eq!(r.body, body("demo", "web", 2, false));
    }

    #[tokio::test]
    async fn counts_are_updated_in_place_without_rebinding() {
        private_netns();
        let p = free_port();
        let mut hc = HealthCheckServers::new(localhost(), || true);
        assert!(hc.sync(&[check("demo", "web", p, 0)]).is_empty());
        let addr = hc.local_addr(p).unwrap();
        assert_eq!(get(addr, "/").await.unwrap().status, 503);

        assert!(hc.sync(&[check("demo", "web", p, 3)]).is_empty());
        let r = get(addr, "/").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-load-balancing-endpoint-weight"), Some("3"));
        assert_eq!(r.body, body("demo", "web", 3, true));
        assert_eq!(hc.binds, 1, "an update must not re-bind");
        assert_eq!(hc.local_addr(p), Some(addr));
    }

    #[tokio::test]
    async fn a_port_no_longer_wanted_is_closed() {
        private_netns();
        let (a, b) = (free_port(), free_port());
        let mut hc = HealthCheckServers::new(localhost(), || true);
        assert!(
            hc.sync(&[check("demo", "web", a, 1), check("demo", "db", b, 1)])
                .is_empty()
        );
        assert_eq!(
            get(SocketAddr::new(localhost(), a), "/")
                .await
                .unwrap()
                .status,
            200
        );

        assert!(hc.sync(&[check("demo", "db", b, 1)]).is_empty());
        assert_eq!(hc.ports(), vec![b]);
        // The aborted task drops its listener as soon as the runtime gets to it.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::net::TcpStream::connect(SocketAddr::new(localhost(), a)).await {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                _ if Instant::now() > deadline => panic!("port {a} still open"),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        assert_eq!(
            get(SocketAddr::new(localhost(), b), "/")
                .await
                .unwrap()
                .status,
            200
        );
        // The freed port can be served again.
        assert!(hc.sync(&[check("demo", "web", a, 1)]).is_empty());
        assert_eq!(
            get(SocketAddr::new(localhost(), a), "/")
                .await
                .unwrap()
                .status,
            200
        );
    }

    #[tokio::test]
    async fn a_busy_port_is_reported_and_retried_while_the_others_serve() {
        private_netns();
        let (busy, ok) = (free_port(), free_port());
        let squatter = std::net::TcpListener::bind((localhost(), busy)).unwrap();
        let mut hc = HealthCheckServers::new(localhost(), || true);
        let checks = [check("demo", "web", busy, 1), check("demo", "db", ok, 1)];

        let errors = hc.sync(&checks);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            (
                errors[0].port,
                errors[0].namespace.as_str(),
                errors[0].name.as_str()
            ),
            (busy, "demo", "web")
        );
        assert_eq!(errors[0].source.kind(), io::ErrorKind::AddrInUse);
        assert!(errors[0].to_string().contains("demo/web"), "{}", errors[0]);
        assert_eq!(hc.ports(), vec![ok]);
        assert_eq!(
            get(SocketAddr::new(localhost(), ok), "/")
                .await
                .unwrap()
                .status,
            200
        );

        // Still busy: reported again.
        assert_eq!(hc.sync(&checks).len(), 1);
        drop(squatter);
        // Freed: the next sync takes it, the other port is left alone.
        assert!(hc.sync(&checks).is_empty());
        assert_eq!(hc.binds, 2);
        let r = get(SocketAddr::new(localhost(), busy), "/").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, body("demo", "web", 1, true));
    }

    #[tokio::test]
    async fn the_unspecified_ipv6_address_serves_ipv4_clients_too() {
        private_netns();
        let p = free_port();
        let mut hc = HealthCheckServers::new(std::net::Ipv6Addr::UNSPECIFIED.into(), || true);
        assert!(hc.sync(&[check("demo", "web", p, 1)]).is_empty());
        assert_eq!(
            get(SocketAddr::new(localhost(), p), "/")
                .await
                .unwrap()
                .status,
            200
        );
        // And IPv6 clients (a new namespace's loopback has ::1 whenever the kernel
        // has IPv6, which the data plane needs anyway).
        let v6 = SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), p);
        let r = get(v6, "/").await;
        assert_eq!(
            r.as_ref().map(|r| r.status).ok(),
            Some(200),
            "{:?}",
            r.err()
        );
    }

    #[test]
    fn without_a_runtime_new_ports_are_reported_not_panicked_on() {
        private_netns();
        let mut hc = HealthCheckServers::new(localhost(), || true);
        let errors = hc.sync(&[check("demo", "web", free_port(), 1)]);
        assert_eq!(errors.len(), 1);
        assert!(hc.ports().is_empty());
    }
}
