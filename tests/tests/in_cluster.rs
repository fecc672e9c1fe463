//! The in-cluster path end to end: the agent started as a DaemonSet's pod starts it
//! (`KUBERNETES_SERVICE_HOST`/`PORT`, a service-account directory at
//! `/var/run/secrets/kubernetes.io/serviceaccount` in a private mount namespace, no
//! `--kubeconfig`), against the fake API server over HTTPS with a certificate from a
//! test CA and a bearer-token check, serving real traffic in network namespaces.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tests::{
    Agent, BpfFs, ClusterTopology, FakeApiServer, ManifestDir, PortSpec, ProbeReply, TestCa,
    service, yaml_objects,
};

const SYNC: Duration = Duration::from_secs(15);
const PORTS: &[PortSpec<'static>] = &[("http", 80, "TCP", 8080)];

/// kube-client re-reads the token file when its cached copy is within 10 s of its 60 s
/// lifetime (`TokenFile` in kube-client 5.0's `client/auth`), so a rotated token is used
/// at most ~50 s after the previous read; with margin for a request to be made.
const TOKEN_RELOAD: Duration = Duration::from_secs(75);

/// A service-account volume as the kubelet lays it out: the files in a timestamped
/// directory, `..data` pointing at it, and `token`, `ca.crt`, `namespace` as symlinks
/// through `..data`, so that an update is one atomic rename of `..data`.
struct ServiceAccount {
    dir: PathBuf,
    version: u32,
}

impl ServiceAccount {
    fn new(parent: &Path, token: &str, ca_pem: &str) -> ServiceAccount {
        let dir = parent.join("serviceaccount");
        std::fs::create_dir(&dir).expect("creating the service-account directory");
        let mut sa = ServiceAccount { dir, version: 0 };
        sa.update(token, ca_pem);
        for f in ["token", "ca.crt", "namespace"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), sa.dir.join(f))
                .expect("linking a service-account file");
        }
        sa
    }

    /// Writes a new version and swaps `..data` to it atomically, as the kubelet does.
    fn update(&mut self, token: &str, ca_pem: &str) {
        self.version += 1;
        let name = format!("..v{}", self.version);
        let version = self.dir.join(&name);
        std::fs::create_dir(&version).expect("creating a service-account version");
        std::fs::write(version.join("token"), token).expect("writing the token");
        std::fs::write(version.join("ca.crt"), ca_pem).expect("writing ca.crt");
        std::fs::write(version.join("namespace"), "kube-system").expect("writing namespace");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).expect("linking ..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swapping ..data");
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

fn apply_all(api: &FakeApiServer, yaml: &str) {
    for o in yaml_objects(yaml) {
        api.apply(o);
    }
}

fn reached(topo: &ClusterTopology, vip: &str, n: usize) -> std::collections::BTreeSet<String> {
    let out = topo.client_probe(&["tcp", "--to", vip, "--count", &n.to_string()]);
    ProbeReply::parse_all(&String::from_utf8_lossy(&out.stdout))
        .iter()
        .map(|r| {
            r.name()
                .unwrap_or_else(|| panic!("request to {vip} failed: {r:?}"))
                .to_owned()
        })
        .collect()
}

/// A topology with two backends, the TLS fake holding a Node and `web` on 10.96.0.10.
fn setup(tag: &str, token: &str) -> (ClusterTopology, FakeApiServer, TestCa, Vec<IpAddr>) {
    let topo = ClusterTopology::new(tag, 2);
    let ips: Vec<IpAddr> = topo.backends.iter().map(|p| IpAddr::V4(p.ipv4)).collect();
    let (api, ca) = FakeApiServer::start_tls(token);
    assert!(api.url().starts_with("https://127.0.0.1:"), "{}", api.url());
    api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}));
    apply_all(
        &api,
        &service("web", "10.96.0.10".parse().expect("vip"), PORTS, &ips, None),
    );
    (topo, api, ca, ips)
}

fn addrs(ips: &[IpAddr]) -> Vec<SocketAddr> {
    ips.iter().map(|i| SocketAddr::new(*i, 8080)).collect()
}

#[test]
fn in_cluster_the_agent_lists_and_watches_over_https_with_its_token_and_follows_a_rotation() {
    let (topo, api, ca, ips) = setup("incluster", "token-1");
    let _servers = topo.serve_backends(&[8080], &[]);
    let dir = ManifestDir::new("incluster");
    let mut sa = ServiceAccount::new(dir.path(), "token-1", &ca.pem());
    let bpffs = BpfFs::new("incluster");
    let agent = Agent::start_in_cluster(
        &api,
        bpffs.path(),
        topo.client_cgroup.path(),
        sa.path(),
        &["--sync-period", "1"],
    );
    agent.wait_for("10.96.0.10:80/TCP", &addrs(&ips), SYNC);
    assert_eq!(reached(&topo, "10.96.0.10:80", 20).len(), 2);

    // Listed and watched, every request with the service account's token.
    let requests = api.requests();
    for needle in [
        "/api/v1/services?",
        "/apis/discovery.k8s.io/v1/endpointslices?",
    ] {
        assert!(
            requests
                .iter()
                .any(|r| r.contains(needle) && !r.contains("watch=")),
            "no list of {needle}: {requests:?}"
        );
        assert!(
            requests
                .iter()
                .any(|r| r.contains(needle) && r.contains("watch=")),
            "no watch of {needle}: {requests:?}"
        );
    }
    assert!(
        api.tokens_seen().iter().all(|t| t == "token-1"),
        "{:?}",
        api.tokens_seen()
    );
    assert_eq!(api.unauthorized(), 0);

    // The kubelet rotates the token; the API server accepts both until the old one
    // expires. Watches are ended every second so that the agent keeps making requests,
    // each of which shows which token it holds.
    sa.update("token-2", &ca.pem());
    api.accept_tokens(&["token-1", "token-2"]);
    let rotated = Instant::now();
    while !api.tokens_seen().iter().any(|t| t == "token-2") {
        assert!(
            rotated.elapsed() < TOKEN_RELOAD,
            "the rotated token was not used within {TOKEN_RELOAD:?}:\n{}",
            agent.log()
        );
        api.drop_watches();
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("the rotated token was used after {:?}", rotated.elapsed());

    // The old token expires: only the new one is accepted, every watch is re-made, and
    // a new Service arrives through them.
    api.accept_tokens(&["token-2"]);
    let refused_before = api.unauthorized();
    api.drop_watches();
    apply_all(
        &api,
        &service(
            "api2",
            "10.96.0.11".parse().expect("vip"),
            PORTS,
            &ips[..1],
            None,
        ),
    );
    agent.wait_for("10.96.0.11:80/TCP", &addrs(&ips[..1]), SYNC);
    assert_eq!(reached(&topo, "10.96.0.11:80", 5).len(), 1);
    assert_eq!(
        api.unauthorized(),
        refused_before,
        "requests with the old token after the rotation was picked up"
    );
    // Every ended watch was re-made cleanly over TLS, none failed.
    assert!(
        !agent.log().contains("watch failed"),
        "a watch failed:\n{}",
        agent.log()
    );
    agent.stop();
}

#[test]
fn in_cluster_a_wrong_ca_or_a_refused_token_is_reported_with_the_api_server_and_the_cause_and_nothing_is_withdrawn()
 {
    let (topo, api, ca, ips) = setup("wrongca", "token-1");
    let _servers = topo.serve_backends(&[8080], &[]);
    let dir = ManifestDir::new("wrongca");
    let mut sa = ServiceAccount::new(dir.path(), "token-1", &ca.pem());
    let bpffs = BpfFs::new("wrongca");
    let agent = Agent::start_in_cluster(
        &api,
        bpffs.path(),
        topo.client_cgroup.path(),
        sa.path(),
        &["--sync-period", "1"],
    );
    agent.wait_for("10.96.0.10:80/TCP", &addrs(&ips), SYNC);
    assert_eq!(reached(&topo, "10.96.0.10:80", 20).len(), 2);
    // A clean stop leaves the pins, as a DaemonSet's rolling update does.
    agent.stop();

    // The pod comes back with a ca.crt from another CA (a misconfigured or rotated
    // cluster CA): the API server's certificate cannot be verified.
    sa.update("token-1", &TestCa::new("kpt-other-ca").pem());
    let served_before = api.requests().len();
    let mut agent = Agent::spawn_in_cluster(
        &api,
        bpffs.path(),
        topo.client_cgroup.path(),
        sa.path(),
        &["--sync-period", "1"],
    );
    let line = agent.wait_log("watch failed", SYNC);
    let server = format!("127.0.0.1:{}", api.addr().port());
    assert!(
        line.contains(&server),
        "the error does not name the API server {server}: {line}"
    );
    let lower = line.to_ascii_lowercase();
    assert!(
        lower.contains("certificate") || lower.contains("unknownissuer"),
        "the error does not name the certificate problem: {line}"
    );
    assert!(
        api.tls_failures() > 0,
        "no failed TLS handshake at the fake"
    );
    assert_eq!(
        api.requests().len(),
        served_before,
        "a request got through an unverified connection"
    );

    // Several retries later, nothing was withdrawn: still programmed, still served.
    std::thread::sleep(Duration::from_secs(3));
    let failures = agent.log().matches("watch failed").count();
    assert!(failures >= 2, "{}", agent.log());
    agent.wait_for("10.96.0.10:80/TCP", &addrs(&ips), Duration::ZERO);
    assert_eq!(reached(&topo, "10.96.0.10:80", 20).len(), 2);
    assert!(
        agent.syncs() == 0,
        "the agent synced without the API:\n{}",
        agent.log()
    );
    agent.stop();

    // The right CA, but a token the API server refuses: "401 Unauthorized" is reported
    // the same way, and again nothing is withdrawn.
    sa.update("token-revoked", &ca.pem());
    let mut agent = Agent::spawn_in_cluster(
        &api,
        bpffs.path(),
        topo.client_cgroup.path(),
        sa.path(),
        &["--sync-period", "1"],
    );
    let line = agent.wait_log("watch failed", SYNC);
    assert!(
        line.contains(&server) && line.contains("Unauthorized"),
        "the error does not name the API server and the refusal: {line}"
    );
    assert!(api.unauthorized() > 0, "the fake refused nothing");
    assert!(api.tokens_seen().iter().any(|t| t == "token-revoked"));
    std::thread::sleep(Duration::from_secs(2));
    agent.wait_for("10.96.0.10:80/TCP", &addrs(&ips), Duration::ZERO);
    assert_eq!(reached(&topo, "10.96.0.10:80", 20).len(), 2);
    agent.stop();
}
