//! netfilter's connection table as the running agent reports it: `/metrics` carries
//! netfilter's statistics (parsed as Prometheus text), read in the agent's network
//! namespace, and `proxyctl conntrack --netfilter`, run in that namespace, lists a
//! connection to a backend of a programmed service with the service's name.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use tests::{Agent, BpfFs, Cgroup, ManifestDir, ServiceSpec, agent_binary, metric_value, tool};

const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);

/// Runs `cmd` (on the calling thread's network namespace) and panics on failure.
fn must(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every sample of the exposition as (name with labels, value); panics on a line that
/// is neither a comment nor `name[{labels}] value`.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a Prometheus sample: {l:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {l:?}: {e}"));
            (name.to_owned(), value)
        })
        .collect()
}

#[test]
fn metrics_carry_netfilter_statistics_and_proxyctl_lists_a_service_connection() {
    let dir = ManifestDir::new("nfct");
    dir.write(
        "svc.yaml",
        &ServiceSpec::new("web", "ClusterIP")
            .cluster_ip(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)))
            .port("http", 80, "TCP", 8080, None)
            .endpoint(IpAddr::V4(BACKEND), "node-a")
            .yaml(),
    );
    let bpffs = BpfFs::new("nfct");
    let cgroup = Cgroup::new("nfct");
    let agent = Agent::start(bpffs.path(), cgroup.path(), dir.path(), &[]);
    let backend = SocketAddr::new(IpAddr::V4(BACKEND), 8080);
    agent.wait_for("10.96.0.10:80/TCP", &[backend], Duration::from_secs(10));

    // In the agent's namespace: the backend's address on lo, netfilter tracking (a
    // `ct state` rule), and a connection straight to the backend, as the eBPF socket
    // path leaves it (translated at connect(), so netfilter sees only the backend).
    let (listed, _conn) = agent.run_in_netns(|| {
        must(Command::new(tool("ip")).args(["addr", "add", "10.244.1.5/32", "dev", "lo"]));
        let nft = tool("nft");
        for rule in [
            "add table inet kptf",
            "add chain inet kptf out { type filter hook output priority 0 ; }",
            "add rule inet kptf out ct state new counter",
        ] {
            must(Command::new(&nft).arg(rule));
        }
        let listener = TcpListener::bind(backend).expect("binding the backend");
        let mut client = TcpStream::connect_timeout(&backend, Duration::from_secs(5))
            .expect("connecting to the backend");
        let (mut server, _) = listener.accept().expect("accepting");
        let mut byte = [0u8; 1];
        client.write_all(b"x").expect("write");
        server.read_exact(&mut byte).expect("read");
        server.write_all(b"y").expect("write");
        client.read_exact(&mut byte).expect("read");
        let local = client.local_addr().expect("local address");
        let json = must(
            Command::new(agent_binary("proxyctl"))
                .arg("--bpffs")
                .arg(&agent.bpffs)
                .args(["conntrack", "--netfilter", "--json"]),
        );
        let table = must(
            Command::new(agent_binary("proxyctl"))
                .arg("--bpffs")
                .arg(&agent.bpffs)
                .args(["conntrack", "--netfilter"]),
        );
        ((json, table, local), (client, server))
    });
    let (json, table, local) = listed;
    let entries: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{json}"));
    let ours = entries
        .as_array()
        .and_then(|a| {
            a.iter().find(|e| {
                e["entry"]["original"]["src_port"] == u64::from(local.port())
                    && e["entry"]["original"]["src"] == local.ip().to_string()
            })
        })
        .unwrap_or_else(|| panic!("no entry from {local}:\n{json}\n{table}"));
    assert_eq!(ours["service"], "test/web:http", "{ours:#}");
    assert_eq!(ours["frontend"], "10.96.0.10:80/TCP", "{ours:#}");
    assert_eq!(ours["matched"], "backend", "{ours:#}");
    assert_eq!(ours["entry"]["reply"]["src"], "10.244.1.5", "{ours:#}");
    assert_eq!(ours["entry"]["tcp_state"], "ESTABLISHED", "{ours:#}");
    assert!(
        table.lines().any(|l| l.starts_with("test/web:http")
            && l.contains(&format!("{local} -> {backend}"))
            && l.contains("ESTABLISHED")),
        "{table}"
    );

    let text = agent.metrics();
    let all = samples(&text);
    let value = |name: &str| {
        metric_value(&text, name, "").unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert_eq!(value("proxy_agent_netfilter_conntrack_readable"), 1.0);
    assert!(value("proxy_agent_netfilter_conntrack_entries") >= 1.0);
    assert!(value("proxy_agent_netfilter_conntrack_max") > 0.0);
    for stat in [
        "invalid",
        "insert_failed",
        "drop",
        "early_drop",
        "search_restart",
    ] {
        let name = format!("proxy_agent_netfilter_conntrack_{stat}_total");
        assert!(
            all.iter().any(|(n, v)| *n == name && *v >= 0.0),
            "{name} missing:\n{text}"
        );
        assert!(
            text.contains(&format!(
                "# TYPE proxy_agent_netfilter_conntrack_{stat} counter"
            )),
            "{text}"
        );
    }
}
