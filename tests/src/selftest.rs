//! Self-test of the harness: needs root and a real kernel (CI has both). A test that
//! cannot set up its environment fails with the reason; nothing is skipped.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::{
    BpfFs, Cgroup, ClusterTopology, FakeApiServer, Netns, ProbeReply, cgroup2_mount, cleanup_stale,
    run, spawn, spawn_guarded, stdout_lines, try_run,
};

fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

fn probe_lines(topo: &ClusterTopology, args: &[&str]) -> Vec<ProbeReply> {
    let out = topo.client_probe(args);
    assert!(
        out.status.success(),
        "probe {args:?}: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ProbeReply::parse_all(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn cluster_topology_carries_tcp_and_udp_on_both_families_and_cleans_up() {
    let mut names = Vec::new();
    let cgroup_path: PathBuf;
    {
        let mut topo = ClusterTopology::new("self", 3);
        names.push(topo.node.name().to_owned());
        names.push(topo.client.netns.name().to_owned());
        names.extend(topo.backends.iter().map(|b| b.netns.name().to_owned()));
        cgroup_path = topo.client_cgroup.path().to_owned();
        assert!(cgroup_path.is_dir());
        assert_eq!(
            topo.backends
                .iter()
                .map(|b| b.ipv4.to_string())
                .collect::<Vec<_>>(),
            ["10.244.0.11", "10.244.0.12", "10.244.0.13"]
        );

        let _servers = topo.serve_backends(&[8080], &[8081]);
        for backend in &topo.backends {
            for (tcp, udp, client) in [
                (
                    backend.addr_v4(8080),
                    backend.addr_v4(8081),
                    topo.client.ipv4.to_string(),
                ),
                (
                    backend.addr_v6(8080),
                    backend.addr_v6(8081),
                    topo.client.ipv6.to_string(),
                ),
            ] {
                let replies = probe_lines(
                    &topo,
                    &["tcp", "--to", &tcp.to_string(), "--count", "2", "--peer"],
                );
                assert_eq!(replies.len(), 2);
                for r in replies {
                    let ProbeReply::Ok { name, addr, peer } = r else {
                        panic!("tcp to {tcp}: {r:?}")
                    };
                    assert_eq!(name, backend.name);
                    assert_eq!(addr, tcp);
                    let peer = peer.expect("--peer gives the address the server saw");
                    assert_eq!(peer.ip().to_string(), client);
                }
                let udp_to = udp.to_string();
                for extra in [&[][..], &["--same-socket"], &["--connected"]] {
                    let mut args = vec!["udp", "--to", &udp_to, "--count", "2"];
                    args.extend_from_slice(extra);
                    args.push("--peer");
                    let replies = probe_lines(&topo, &args);
                    assert_eq!(replies.len(), 2, "{args:?}");
                    for r in replies {
                        let ProbeReply::Ok { name, addr, peer } = r else {
                            panic!("udp {args:?}: {r:?}")
                        };
                        assert_eq!(name, backend.name);
                        assert_eq!(addr, udp);
                        assert_eq!(peer.map(|p| p.ip().to_string()), Some(client.clone()));
                    }
                }
            }
        }

        // A backend added later is reachable too.
        let late = topo.add_backend();
        assert_eq!(late.name, "backend-3");
        assert_eq!(late.ipv6.to_string(), "fd00:244::14");
        names.push(late.netns.name().to_owned());
        let late_server = late.serve(&[8080], &[]);
        let late_addr = late.addr_v4(8080).to_string();
        let replies = probe_lines(&topo, &["tcp", "--to", &late_addr]);
        assert_eq!(replies[0].name(), Some("backend-3"));
        drop(late_server);

        // Nothing listens on 9999: refused, and reported as such.
        let refused = topo.backends[0].addr_v4(9999).to_string();
        let replies = probe_lines(&topo, &["tcp", "--to", &refused]);
        assert_eq!(replies[0].error(), Some("ECONNREFUSED"));
        let replies = probe_lines(
            &topo,
            &[
                "udp",
                "--to",
                &refused,
                "--connected",
                "--timeout-ms",
                "300",
            ],
        );
        assert_eq!(replies[0].error(), Some("ECONNREFUSED"));
        let replies = probe_lines(&topo, &["udp", "--to", &refused, "--timeout-ms", "300"]);
        assert_eq!(replies[0].error(), Some("timeout"));
    }
    for name in &names {
        assert!(!netns_exists(name), "netns {name} left behind");
    }
    assert!(!cgroup_path.exists(), "cgroup {cgroup_path:?} left behind");
}

#[test]
fn hold_crr_and_rr_report_their_lines() {
    let topo = ClusterTopology::new("load", 1);
    let _servers = topo.serve_backends(&[80], &[]);
    let to = topo.backends[0].addr_v4(80).to_string();

    let mut hold =
        topo.spawn_client_probe(&["hold", "--to", &to, "--rounds", "3", "--interval-ms", "50"]);
    let first = hold.expect_line(Duration::from_secs(5));
    assert_eq!(
        ProbeReply::parse(&first).and_then(|r| r.name().map(str::to_owned)),
        Some("backend-0".to_owned())
    );
    for k in 1..=3 {
        assert_eq!(
            hold.expect_line(Duration::from_secs(5)),
            format!("round {k} ok")
        );
    }
    assert!(hold.wait(Duration::from_secs(5)).success());

    // A hold whose server dies fails with exit code 1.
    let victim = topo.backends[0].serve(&[81], &[]);
    let mut hold = topo.spawn_client_probe(&[
        "hold",
        "--to",
        &topo.backends[0].addr_v4(81).to_string(),
        "--rounds",
        "100",
        "--interval-ms",
        "50",
    ]);
    hold.expect_line(Duration::from_secs(5));
    drop(victim);
    let err = hold.wait_for_line(Duration::from_secs(10), |l| l.starts_with("err"));
    let reason = ProbeReply::parse(&err).and_then(|r| r.error().map(str::to_owned));
    assert!(
        matches!(reason.as_deref(), Some("EOF" | "ECONNRESET")),
        "{err}"
    );
    assert_eq!(hold.wait(Duration::from_secs(5)).code(), Some(1));

    let out = topo.client_probe(&["crr", "--to", &to, "--duration-ms", "300"]);
    let line = stdout_lines(&out).join("\n");
    eprintln!("{line}");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"conns"), "{line}");
    assert!(words[1].parse::<u64>().expect("conns count") > 10, "{line}");
    assert_eq!(words.get(4..6), Some(&["errs", "0"][..]), "{line}");

    let out = topo.client_probe(&["rr", "--to", &to, "--duration-ms", "300"]);
    let line = stdout_lines(&out).join("\n");
    eprintln!("{line}");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"rrs"), "{line}");
    assert!(words[1].parse::<u64>().expect("rr count") > 10, "{line}");
    assert_eq!(words.get(4), Some(&"p50_us"), "{line}");
}

#[test]
fn spawned_processes_join_the_namespace_and_cgroup() {
    let ns = Netns::new("join");
    let cg = Cgroup::new("join");
    let out = run(
        &ns,
        Some(&cg),
        Command::new("sh").args(["-c", "readlink /proc/self/ns/net; cat /proc/self/cgroup"]),
        Duration::from_secs(10),
    );
    assert!(out.status.success());
    let lines = stdout_lines(&out);
    let ns_inode = fs::metadata(ns.path()).expect("netns file").ino();
    assert_eq!(lines[0], format!("net:[{ns_inode}]"));
    let mount = cgroup2_mount().expect("cgroup2 mount");
    let rel = cg.path().strip_prefix(&mount).expect("under the mount");
    assert!(
        lines.contains(&format!("0::/{}", rel.display())),
        "{lines:?}"
    );
}

#[test]
fn dropping_a_cgroup_or_netns_kills_what_is_inside() {
    let ns = Netns::new("kill");
    let cg = Cgroup::new("kill");
    let mut in_cgroup = spawn(&ns, Some(&cg), Command::new("sleep").arg("1000"));
    let mut in_netns = spawn(&ns, None, Command::new("sleep").arg("1000"));
    assert_eq!(
        cg.procs().expect("procs"),
        [i32::try_from(in_cgroup.id()).expect("pid")]
    );
    let cg_path = cg.path().to_owned();
    drop(cg);
    assert!(!cg_path.exists());
    let status = in_cgroup.wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let name = ns.name().to_owned();
    drop(ns);
    assert!(!netns_exists(&name));
    let status = in_netns.wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

#[test]
fn waits_are_bounded() {
    let ns = Netns::new("bounded");
    let start = Instant::now();
    let err = try_run(
        &ns,
        None,
        Command::new("sh").args(["-c", "echo before; sleep 100"]),
        Duration::from_millis(300),
    )
    .expect_err("sleep 100 outlives the timeout");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(String::from_utf8_lossy(&err.output.stdout), "before\n");

    let mut child = spawn_guarded(&ns, None, Command::new("sleep").arg("100"));
    assert!(child.next_line(Duration::from_millis(100)).is_none());
    assert!(child.wait_timeout(Duration::from_millis(100)).is_none());
    let pid = child.id();
    drop(child);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn bpffs_is_private_and_unmounted_on_drop() {
    let fs_ = BpfFs::new("self");
    let path = fs_.path().to_owned();
    // SAFETY: an all-zero statfs is a valid value; statfs fills it in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(path.to_string_lossy().as_bytes()).expect("path");
    // SAFETY: valid path and out-pointer.
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &raw mut st) }, 0);
    assert_eq!(st.f_type, libc::BPF_FS_MAGIC);
    drop(fs_);
    assert!(!path.exists());
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let mut names = Vec::new();
    let mut cgroup = PathBuf::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let topo = ClusterTopology::new("panic", 1);
        names.push(topo.node.name().to_owned());
        names.push(topo.client.netns.name().to_owned());
        names.push(topo.backends[0].netns.name().to_owned());
        cgroup = topo.client_cgroup.path().to_owned();
        let _server = topo.backends[0].serve(&[80], &[80]);
        let _client = topo.spawn_client(Command::new("sleep").arg("1000"));
        panic!("test failure");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 3);
    for name in &names {
        assert!(!netns_exists(name), "netns {name} left behind");
    }
    assert!(!cgroup.as_os_str().is_empty() && !cgroup.exists());
}

#[test]
fn leftovers_of_runs_that_are_over_are_removed_and_nothing_else() {
    use std::os::fd::AsRawFd;
    // Runs as the harness names them (`kpt-<tag>-<run id>-<n>`), with lock files in
    // /run/kpt-harness: one whose lock nobody holds (its process died), one whose lock
    // is held (alive, maybe in another PID namespace), one without a lock file.
    let lock = |run: u64| PathBuf::from(format!("/run/kpt-harness/{run}.lock"));
    let (dead, alive, unknown) = (999_999_999_001u64, 999_999_999_002u64, 999_999_999_003u64);
    fs::create_dir_all("/run/kpt-harness").expect("lock dir");
    fs::write(lock(dead), "").expect("dead run's lock file");
    let held = fs::File::create(lock(alive)).expect("live run's lock file");
    // SAFETY: flock on a file we own.
    let rc = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    let _ = fs::remove_file(lock(unknown));
    let mount = cgroup2_mount().expect("cgroup2");
    let made: Vec<(String, PathBuf)> = [dead, alive, unknown]
        .iter()
        .map(|run| {
            let name = format!("kpt-stale-{run}-0");
            let out = Command::new(tests::tool("ip"))
                .args(["netns", "add", &name])
                .output()
                .expect("ip netns add");
            assert!(out.status.success(), "{out:?}");
            let cgroup = mount.join(&name);
            fs::create_dir(&cgroup).expect("mkdir cgroup");
            (name, cgroup)
        })
        .collect();

    cleanup_stale();
    let gone: Vec<bool> = made
        .iter()
        .map(|(name, cgroup)| !netns_exists(name) && !cgroup.exists())
        .collect();
    let dead_lock_gone = !lock(dead).exists();
    // Tidy up what must have been kept, before asserting.
    for (name, cgroup) in &made[1..] {
        let _ = Command::new(tests::tool("ip"))
            .args(["netns", "del", name])
            .output();
        let _ = fs::remove_dir(cgroup);
    }
    drop(held);
    let _ = fs::remove_file(lock(alive));
    assert_eq!(
        gone,
        [true, false, false],
        "removed (dead run, live run, run without a lock file)"
    );
    assert!(dead_lock_gone, "the dead run's lock file was left");
}

#[test]
fn the_fake_api_server_listens_only_inside_its_own_namespace() {
    let api = FakeApiServer::start();
    let addr: std::net::SocketAddr = api
        .url()
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .expect("the fake's address");
    let (code, body) = api
        .netns()
        .run(|| tests::http_get(addr, "/api/v1/services"));
    assert_eq!(code, 200, "inside its namespace: {body}");
    // Control: the machine's own loopback has nothing there. (Another process of the
    // machine listening on that very ephemeral port would fail this, never pass it.)
    let err = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .expect_err("the fake answered on the machine's own loopback");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}
