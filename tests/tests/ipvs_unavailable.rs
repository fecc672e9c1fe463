//! `--proxy-mode=ipvs` on a kernel without IPVS (this machine's: it has no `ip_vs`
//! and loads no modules): the real agent exits at once, non-zero, with one error that
//! names the missing module and both remedies, said once, and changes nothing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tests::{BpfFs, ManifestDir, Netns, agent_binary, service};

#[test]
fn an_ipvs_agent_on_a_kernel_without_ipvs_exits_at_once_naming_the_module() {
    // The premise: /proc/net/ip_vs exists in every namespace once ip_vs is loaded.
    assert!(
        !Path::new("/proc/net/ip_vs").exists(),
        "this test needs a kernel without IPVS, and ip_vs is loaded here \
         (the VM tests cover a kernel with it)"
    );
    let ns = Netns::new("noipvs");
    let dir = ManifestDir::new("noipvs");
    let ip = |s: &str| s.parse().expect("an address");
    dir.write(
        "web.yaml",
        &service(
            "web",
            ip("10.96.0.10"),
            &[("http", 80, "TCP", 8080)],
            &[ip("10.244.1.5")],
            None,
        ),
    );
    let bpffs = BpfFs::new("noipvs");
    let started = Instant::now();
    let out = tests::run(
        &ns,
        None,
        Command::new(agent_binary("proxy-agent"))
            .args(["--proxy-mode=ipvs", "--hostname-override", "node-a"])
            .arg("--manifests")
            .arg(dir.path())
            // A directory on the private bpffs, as the agent's default is one on the
            // machine's: the IPVS mode removes the eBPF mode's pins there first.
            .arg("--bpffs")
            .arg(bpffs.path().join("agent"))
            // Only the error chain: no backtrace lines around it.
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE"),
        Duration::from_secs(30),
    );
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the agent ran without IPVS: {stderr}"
    );
    // Generous for a loaded machine: what matters is that it does not wait for a
    // sync or retry.
    assert!(took < Duration::from_secs(10), "took {took:?}: {stderr}");
    let cause = "the kernel has no IPVS (no generic netlink family \"IPVS\"): load the ip_vs \
                 module (modprobe ip_vs) or use --proxy-mode=ebpf";
    assert!(
        stderr.contains("error: opening the IPVS data plane"),
        "{stderr}"
    );
    assert!(stderr.contains(cause), "{stderr}");
    assert_eq!(stderr.matches("no IPVS").count(), 1, "said once: {stderr}");
    // One line: the chain joined, each cause once.
    assert_eq!(stderr.matches("Caused by:").count(), 0, "{stderr}");
    // Nothing was set up before the refusal.
    let link = ns.try_exec(&["ip", "link", "show", "kube-ipvs0"]);
    assert!(!link.status.success(), "kube-ipvs0 was created: {link:?}");
}
