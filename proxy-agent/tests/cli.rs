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
