//! The example manifests stay valid and mean what their comments say.

use std::path::PathBuf;

use proxy_agent::model::{FrontendKind, Scope};
use proxy_agent::source::manifests::ManifestSource;
use proxy_agent::translate::{NodeContext, translate};

#[test]
fn the_load_balancer_example_serves_what_its_comment_says() {
    let dir = tempdir_with("loadbalancer.yaml");
    let mut source = ManifestSource::new(dir.clone()).expect("watching the example");
    let (snapshot, errors) = source.load();
    assert!(errors.is_empty(), "{errors:?}");
    let node = NodeContext {
        name: "node-a".into(),
        zone: None,
        ipv4: true,
        ipv6: true,
    };
    let t = translate(&snapshot, &node);
    assert!(t.skipped.is_empty(), "{:?}", t.skipped);
    let external: Vec<String> = t
        .desired
        .services
        .values()
        .filter(|v| v.frontend.scope == Scope::External)
        .map(|v| {
            let ranges: Vec<String> = v.source_ranges.iter().map(ToString::to_string).collect();
            let backends: Vec<String> = v.backends.iter().map(ToString::to_string).collect();
            format!("{} {} {:?} {:?}", v.frontend, v.kind, backends, ranges)
        })
        .collect();
    assert_eq!(
        external,
        [
            "*:30080/TCP (external) NodePort [\"10.244.1.11:8080\"] []",
            "198.51.100.10:80/TCP (external) ExternalIP [\"10.244.1.11:8080\"] []",
            "203.0.113.10:80/TCP (external) LoadBalancer [\"10.244.1.11:8080\"] [\"192.0.2.0/24\"]",
        ]
    );
    // Clients on the node reach every endpoint.
    let internal_lb = t
        .desired
        .services
        .values()
        .find(|v| v.frontend.scope == Scope::Internal && v.kind == FrontendKind::LoadBalancer)
        .expect("an internal LoadBalancer frontend");
    assert_eq!(internal_lb.backends.len(), 2);
    assert_eq!(t.health_checks.len(), 1);
    assert_eq!(
        (t.health_checks[0].port, t.health_checks[0].local_endpoints),
        (32000, 1)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A fresh directory holding a copy of `examples/<name>`.
fn tempdir_with(name: &str) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let dir = std::env::temp_dir().join(format!("example-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    std::fs::copy(&src, dir.join(name)).expect("copying the example");
    dir
}
