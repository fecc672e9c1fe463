//! The binaries' command-line errors. (The real-kernel tests are in the `tests`
//! package; they run these same binaries, which `cargo test` builds for this package.)

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("running the binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_agent_explains_a_missing_source() {
    let (ok, err) = Command::new(env!("CARGO_BIN_EXE_proxy-agent"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .expect("running the agent");
    assert!(!ok);
    assert!(err.contains("no Kubernetes configuration"), "{err}");
}

#[test]
fn the_agent_rejects_a_bad_sync_period() {
    let (ok, err) = run(
        env!("CARGO_BIN_EXE_proxy-agent"),
        &["--manifests", "/nonexistent", "--min-sync-period", "soon"],
    );
    assert!(!ok);
    assert!(err.contains("\"soon\" is not a number of seconds"), "{err}");
}

#[test]
fn proxyctl_explains_a_missing_agent() {
    let (ok, err) = run(
        env!("CARGO_BIN_EXE_proxyctl"),
        &[
            "--mode",
            "ebpf",
            "--bpffs",
            "/nonexistent/proxy-agent",
            "list",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/proxy-agent/maps/FRONTENDS")
            && err.contains("is the agent running with this --bpffs?"),
        "{err}"
    );
}

#[test]
fn the_agent_rejects_a_zero_resync_period() {
    let (ok, err) = run(
        env!("CARGO_BIN_EXE_proxy-agent"),
        &["--manifests", "/nonexistent", "--sync-period", "0"],
    );
    assert!(!ok);
    assert!(err.contains("\"0\" is too short (at least 0.1 s)"), "{err}");
}

#[test]
fn the_agent_lists_the_ipvs_schedulers_for_an_unknown_one() {
    let (ok, err) = run(
        env!("CARGO_BIN_EXE_proxy-agent"),
        &[
            "--manifests",
            "/nonexistent",
            "--proxy-mode",
            "ipvs",
            "--ipvs-scheduler",
            "fastest",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("invalid value 'fastest' for '--ipvs-scheduler")
            && err.contains("rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh"),
        "{err}"
    );
}

#[test]
fn the_agent_refuses_a_config_file_with_an_unknown_field_naming_it() {
    let path = std::env::temp_dir().join(format!("proxy-agent-cli-{}.conf", std::process::id()));
    std::fs::write(
        &path,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         conntrack:\n  maxPerCorex: 1\n",
    )
    .expect("writing the file");
    let config = format!("--config={}", path.display());
    let (ok, err) = run(
        env!("CARGO_BIN_EXE_proxy-agent"),
        &["--manifests", "/nonexistent", &config],
    );
    let _ = std::fs::remove_file(&path);
    assert!(!ok);
    assert!(
        err.contains("conntrack.maxPerCorex: unknown field")
            && err.contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn the_agent_refuses_a_mode_kube_proxy_does_not_have_listing_the_valid_ones() {
    let path =
        std::env::temp_dir().join(format!("proxy-agent-cli-mode-{}.conf", std::process::id()));
    std::fs::write(
        &path,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         mode: userspace\n",
    )
    .expect("writing the file");
    let config = format!("--config={}", path.display());
    let (ok, err) = run(
        env!("CARGO_BIN_EXE_proxy-agent"),
        &["--manifests", "/nonexistent", &config],
    );
    let _ = std::fs::remove_file(&path);
    assert!(!ok);
    assert!(
        err.contains("mode: \"userspace\" is not a kube-proxy mode on Linux (\"\" (the default), iptables, ipvs, nftables)"),
        "{err}"
    );
}

#[test]
fn the_agent_help_groups_its_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_proxy-agent"))
        .arg("--help")
        .output()
        .expect("running the agent");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for heading in [
        "Kubernetes:",
        "Networking:",
        "Conntrack:",
        "IPVS:",
        "eBPF:",
        "Observability:",
        "Misc:",
    ] {
        assert!(help.contains(heading), "no {heading} in\n{help}");
    }
}
