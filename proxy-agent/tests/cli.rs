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

/// Fails if a message segment of `stderr` (between `:`, `;` and line ends) of some
/// length is printed twice: each cause is to be said once.
#[track_caller]
fn assert_said_once(stderr: &str) {
    let mut seen = std::collections::HashSet::new();
    for seg in stderr
        .split(['\n', ':', ';'])
        .map(str::trim)
        .filter(|s| s.len() >= 12)
    {
        assert!(seen.insert(seg), "{seg:?} is said twice in:\n{stderr}");
    }
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
    assert_eq!(
        err.lines().next(),
        Some("error: no agent state under /nonexistent/proxy-agent: the directory does not exist"),
        "{err}"
    );
    assert!(
        err.contains("\nhint: check that the agent is running on this node in eBPF mode")
            && err.contains("started with this --bpffs"),
        "{err}"
    );
    assert_said_once(&err);
}

#[test]
fn proxyctl_on_an_empty_pin_directory_says_where_it_looked_and_what_to_check() {
    let dir = std::env::temp_dir().join(format!("proxyctl-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let bpffs = dir.to_str().expect("a UTF-8 path");
    // Every command that reads the eBPF maps, in auto mode too (no IPVS here, or not
    // in this namespace: the message then says both).
    for args in [
        vec!["--bpffs", bpffs, "list"],
        vec!["--mode", "ebpf", "--bpffs", bpffs, "list", "-o", "json"],
        vec!["--bpffs", bpffs, "conntrack"],
        vec!["--bpffs", bpffs, "affinity", "--json"],
        vec!["--bpffs", bpffs, "stats"],
    ] {
        let (ok, err) = run(env!("CARGO_BIN_EXE_proxyctl"), &args);
        if ok {
            // `list` in auto mode found IPVS in this namespace: nothing to explain.
            assert!(
                !args.contains(&"ebpf") && args.contains(&"list"),
                "{args:?}"
            );
            continue;
        }
        let looked = format!("no agent state under {bpffs}: {bpffs}/maps/FRONTENDS is not pinned");
        assert!(
            err.starts_with("error: ") && err.contains(&looked),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("hint: check that the agent is running")
                && err.contains(&format!("{bpffs} is not on a bpf filesystem"))
                && err.contains("mount -t bpf bpf /sys/fs/bpf"),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("BPF_OBJ_GET") && !err.contains("Caused by"),
            "{err}"
        );
        assert_said_once(&err);
    }
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn the_agent_says_a_missing_manifest_directory_once_with_what_to_pass() {
    let (ok, err) = run(
        env!("CARGO_BIN_EXE_proxy-agent"),
        &["--manifests", "/nonexistent"],
    );
    assert!(!ok);
    let enoent = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    assert_eq!(err.matches(&enoent).count(), 1, "{err}");
    assert!(
        err.contains("error: watching /nonexistent: manifest directory /nonexistent: ")
            && err.contains("hint: --manifests takes an existing directory"),
        "{err}"
    );
    assert!(!err.contains("Caused by"), "{err}");
    assert_said_once(&err);
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
