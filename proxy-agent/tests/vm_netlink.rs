//! The IPVS and ipset netlink messages (`dataplane/ipvs/netlink`) against a kernel that
//! has both: run by `cargo xtask vm-test` inside Debian's kernel under qemu, never on
//! the host (whose kernel has neither; the target has `test = false`). The unit tests
//! check the bytes against layouts read from the kernel headers; these check that the
//! kernel takes them: what is written reads back the same, and each refusal comes back
//! as the typed error that names its object.
//!
//! Each test runs in a network namespace of its own (IPVS and ipset state is per
//! namespace), so they run in parallel without seeing each other.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use proxy_agent::dataplane::ipvs::netlink::{
    Destination, Entry, Ipset, IpsetErrno, IpsetError, Ipvs, IpvsError, Protocol, Service,
    ServiceFlags, ServiceId, SetFamily, SetSpec, SetType, TimeoutConfig,
};
use proxy_agent::dataplane::ipvs::{cleanup, inspect, sets, sysctl};
use proxy_agent::model::FrontendKey;

/// Moves this test's thread into a new network namespace, with a route to the pod
/// range: IPVS takes an IPv4 destination only if it is routable (`inet_addr_type` must
/// say unicast or local), and a new namespace routes nothing.
fn own_netns() {
    // SAFETY: plain syscall; only this thread changes namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    // Children forked from this thread start in its namespace.
    for args in [
        &["link", "set", "lo", "up"][..],
        &["route", "add", "10.244.0.0/16", "dev", "lo"],
    ] {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("running ip (busybox's, in the VM)");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

fn id(protocol: Protocol, addr: &str, port: u16) -> ServiceId {
    ServiceId {
        protocol,
        addr: ip(addr),
        port,
    }
}

#[test]
fn services_and_destinations_read_back_as_written_and_refusals_name_their_object() {
    own_netns();
    let mut ipvs = Ipvs::open().expect("IPVS (the VM loads ip_vs)");
    assert!(ipvs.services().expect("dump").is_empty(), "a new namespace");

    // A persistent TCP service (ClientIP affinity) and an IPv6 UDP one.
    let tcp = id(Protocol::Tcp, "10.96.0.10", 80);
    let mut sticky = Service::new(tcp, "rr");
    sticky.flags = ServiceFlags::PERSISTENT;
    sticky.timeout = 10_800;
    let udp6 = id(Protocol::Udp, "fd00:96::10", 53);
    let plain6 = Service::new(udp6, "wrr");
    ipvs.new_service(&sticky).expect("NEW_SERVICE tcp");
    ipvs.new_service(&plain6).expect("NEW_SERVICE udp6");
    let mut held: Vec<Service> = ipvs
        .services()
        .expect("dump")
        .into_iter()
        .map(|s| s.service)
        .collect();
    held.sort_by_key(|s| s.id.port);
    assert_eq!(held, [plain6.clone(), sticky.clone()]);

    // Destinations: masquerade, weight 1; then weight 0 (graceful termination).
    let a = Destination::masquerade(ip("10.244.1.5"), 8080);
    let b = Destination::masquerade(ip("10.244.2.5"), 8080);
    ipvs.new_dest(&tcp, &a).expect("NEW_DEST a");
    ipvs.new_dest(&tcp, &b).expect("NEW_DEST b");
    let six = Destination::masquerade(ip("fd00:244::5"), 5353);
    ipvs.new_dest(&udp6, &six).expect("NEW_DEST v6");
    let draining = Destination {
        weight: 0,
        ..b.clone()
    };
    ipvs.set_dest(&tcp, &draining).expect("SET_DEST weight 0");
    let mut dests: Vec<Destination> = ipvs
        .dests(&tcp)
        .expect("dump")
        .into_iter()
        .map(|d| d.destination)
        .collect();
    dests.sort_by_key(|d| d.addr);
    assert_eq!(dests, [a.clone(), draining]);
    let v6: Vec<Destination> = ipvs
        .dests(&udp6)
        .expect("dump")
        .into_iter()
        .map(|d| d.destination)
        .collect();
    assert_eq!(v6, [six]);

    // Options change in place.
    let mut rescheduled = sticky.clone();
    rescheduled.scheduler = "lc".into();
    ipvs.set_service(&rescheduled).expect("SET_SERVICE");
    let got = ipvs.service(&tcp).expect("GET_SERVICE").expect("present");
    assert_eq!(got.service, rescheduled);

    // Refusals, typed and naming the object.
    match ipvs.new_service(&sticky) {
        Err(e @ IpvsError::Exists { .. }) => {
            assert!(e.to_string().contains("10.96.0.10:80"), "{e}");
        }
        other => panic!("NEW_SERVICE twice: {other:?}"),
    }
    let absent = id(Protocol::Tcp, "10.96.0.99", 80);
    assert!(
        matches!(
            ipvs.del_service(&absent),
            Err(IpvsError::NoSuchService { .. })
        ),
        "DEL_SERVICE of an absent service"
    );
    let stranger = Destination::masquerade(ip("10.244.9.9"), 8080);
    assert!(
        matches!(
            ipvs.del_dest(&tcp, &stranger),
            Err(IpvsError::NoSuchDestination { .. })
        ),
        "DEL_DEST of an absent destination"
    );
    let unknown = ipvs.new_service(&Service::new(absent, "nosuch"));
    assert!(
        matches!(unknown, Err(IpvsError::NoScheduler { .. })),
        "an unknown scheduler: {unknown:?}"
    );
    assert!(ipvs.service(&absent).expect("GET_SERVICE").is_none());

    // Deleting a destination, then a service, then everything.
    ipvs.del_dest(&tcp, &a).expect("DEL_DEST");
    assert_eq!(ipvs.dests(&tcp).expect("dump").len(), 1);
    ipvs.del_service(&udp6).expect("DEL_SERVICE");
    assert_eq!(ipvs.services().expect("dump").len(), 1);
    ipvs.flush().expect("FLUSH");
    assert!(ipvs.services().expect("dump").is_empty());
}

#[test]
fn every_scheduler_kube_proxy_accepts_is_taken_by_the_kernel() {
    own_netns();
    let mut ipvs = Ipvs::open().expect("IPVS");
    for (i, sched) in [
        "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh",
    ]
    .into_iter()
    .enumerate()
    {
        let port = 1000 + u16::try_from(i).expect("few");
        let svc = Service::new(id(Protocol::Tcp, "10.96.0.10", port), sched);
        ipvs.new_service(&svc)
            .unwrap_or_else(|e| panic!("scheduler {sched}: {e}"));
        let got = ipvs.service(&svc.id).expect("GET").expect("present");
        assert_eq!(got.service.scheduler, sched);
    }
}

/// One set of each type kube-proxy's IPVS mode keeps, with a member of its shape.
fn sets() -> Vec<(SetSpec, Entry)> {
    let tcp = Protocol::Tcp;
    vec![
        (
            SetSpec::new("KUBE-CLUSTER-IP", SetType::HashIpPort, SetFamily::Inet),
            Entry::ip_port(ip("10.96.0.10"), tcp, 80),
        ),
        (
            SetSpec::new("KUBE-6-CLUSTER-IP", SetType::HashIpPort, SetFamily::Inet6),
            Entry::ip_port(ip("fd00:96::10"), Protocol::Udp, 53),
        ),
        (
            SetSpec::new("KUBE-LOOP-BACK", SetType::HashIpPortIp, SetFamily::Inet),
            Entry::ip_port_ip(ip("10.244.1.5"), tcp, 8080, ip("10.244.1.5")),
        ),
        (
            SetSpec::new(
                "KUBE-LOAD-BALANCER-SOURCE-CIDR",
                SetType::HashIpPortNet,
                SetFamily::Inet,
            ),
            Entry::ip_port_net(ip("203.0.113.20"), tcp, 80, ip("192.0.2.0"), 24),
        ),
        (
            SetSpec::new(
                "KUBE-NODE-PORT-LOCAL-TCP",
                SetType::BitmapPort,
                SetFamily::Inet,
            ),
            Entry::port(30080),
        ),
        (
            SetSpec::new(
                "KUBE-HEALTH-CHECK-NODE-PORT",
                SetType::BitmapPort,
                SetFamily::Inet,
            ),
            Entry::port(32000),
        ),
        (
            SetSpec::new("KUBE-IPVS-IPS", SetType::HashIp, SetFamily::Inet),
            Entry::ip(ip("10.96.0.10")),
        ),
        (
            SetSpec::new("KUBE-EXCLUDE-CIDR", SetType::HashNet, SetFamily::Inet),
            Entry::net(ip("10.0.0.0"), 8),
        ),
    ]
}

#[test]
fn sets_of_every_kube_proxy_type_are_created_filled_listed_and_destroyed() {
    own_netns();
    let mut ipset = Ipset::open().expect("ipset (the VM loads ip_set and its types)");
    for (spec, member) in sets() {
        let name = spec.name.clone();
        ipset
            .create(&spec, false)
            .unwrap_or_else(|e| panic!("create {name} ({}): {e}", spec.kind.name()));
        // Created again with exist_ok: no error; without: the typed refusal.
        ipset.create(&spec, true).expect("create, exist_ok");
        match ipset.create(&spec, false) {
            Err(IpsetError::Kernel { code, .. }) => {
                // The kernel answers a plain EEXIST here, not IPSET_ERR_EXIST.
                assert_eq!(code, IpsetErrno::Os(libc::EEXIST), "{name}: {code}");
            }
            other => panic!("create {name} twice: {other:?}"),
        }
        let with_comment = member.clone().with_comment("test/web:http");
        ipset
            .add(&name, &with_comment, false)
            .unwrap_or_else(|e| panic!("add to {name}: {e}"));
        ipset
            .add(&name, &with_comment, true)
            .expect("add, exist_ok");
        assert!(
            matches!(
                ipset.add(&name, &with_comment, false),
                Err(IpsetError::Kernel { .. })
            ),
            "{name}: adding twice must be refused"
        );
        assert!(ipset.test(&name, &member).expect("test"), "{name}: member");

        let listed = ipset.list(&name).expect("list").expect("the set exists");
        assert_eq!(listed.kind, Some(spec.kind), "{name}");
        assert!(listed.comment, "{name}: created with comments");
        assert_eq!(listed.entries, [with_comment], "{name}");

        ipset.del(&name, &member, false).expect("del");
        assert!(
            !ipset.test(&name, &member).expect("test"),
            "{name}: deleted"
        );
        ipset.del(&name, &member, true).expect("del, missing_ok");
        assert!(
            ipset
                .list(&name)
                .expect("list")
                .expect("exists")
                .entries
                .is_empty(),
            "{name}"
        );
    }
    let mut names: Vec<String> = ipset
        .headers()
        .expect("headers")
        .into_iter()
        .map(|s| s.name)
        .collect();
    names.sort();
    let mut want: Vec<String> = sets().into_iter().map(|(s, _)| s.name).collect();
    want.sort();
    assert_eq!(names, want);

    // Swap, the atomic replacement: a new set of the same type takes the old one's
    // name; sets of different types are refused.
    let fresh = SetSpec::new("KUBE-IPVS-IPS-NEW", SetType::HashIp, SetFamily::Inet);
    ipset.create(&fresh, false).expect("create the replacement");
    let newer = Entry::ip(ip("10.96.0.11")).with_comment("test/new");
    ipset.add(&fresh.name, &newer, false).expect("add");
    ipset.swap("KUBE-IPVS-IPS", &fresh.name).expect("swap");
    let swapped = ipset.list("KUBE-IPVS-IPS").expect("list").expect("exists");
    assert_eq!(swapped.entries, [newer], "swapped in");
    ipset
        .destroy(&fresh.name)
        .expect("destroy the old contents");
    match ipset.swap("KUBE-IPVS-IPS", "KUBE-EXCLUDE-CIDR") {
        Err(IpsetError::Kernel { code, .. }) => assert_eq!(code, IpsetErrno::TypeMismatch),
        other => panic!("swapping hash:ip with hash:net: {other:?}"),
    }
    for (spec, _) in sets() {
        ipset.destroy(&spec.name).expect("destroy");
    }
    assert!(ipset.headers().expect("headers").is_empty());
    // Without NLM_F_EXCL the kernel treats an absent set as destroyed already.
    ipset
        .destroy("KUBE-NONE")
        .expect("destroying an absent set");
    assert!(ipset.list("KUBE-NONE").expect("list").is_none());
}

#[test]
fn timeouts_set_over_netlink_read_back_and_the_ones_not_sent_stay() {
    own_netns();
    let mut ipvs = Ipvs::open().expect("IPVS");
    let before = ipvs.timeouts().expect("GET_CONFIG");
    // The kernel's defaults in a new namespace (ipvsadm -L --timeout: 900 120 300).
    assert_eq!(
        before,
        TimeoutConfig {
            tcp: Some(900),
            tcp_fin: Some(120),
            udp: Some(300),
        }
    );
    let given = TimeoutConfig {
        tcp: Some(3600),
        tcp_fin: None,
        udp: Some(45),
    };
    ipvs.set_timeouts(&given).expect("SET_CONFIG");
    assert_eq!(
        ipvs.timeouts().expect("GET_CONFIG"),
        TimeoutConfig {
            tcp: Some(3600),
            tcp_fin: Some(120),
            udp: Some(45),
        }
    );
    // Over INT_MAX / HZ seconds: refused, and nothing changed.
    let too_long = TimeoutConfig {
        tcp_fin: Some(u32::MAX),
        ..TimeoutConfig::default()
    };
    match ipvs.set_timeouts(&too_long) {
        Err(e @ IpvsError::Kernel { .. }) => {
            assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
        }
        other => panic!("a timeout over the kernel's limit: {other:?}"),
    }
    assert_eq!(ipvs.timeouts().expect("GET_CONFIG").tcp_fin, Some(120));
}

#[test]
fn the_sysctls_of_the_ipvs_mode_are_set_in_the_namespace() {
    own_netns();
    // ip_vs is loaded (the VM loads it): its vs/* sysctls exist in this namespace.
    Ipvs::open().expect("IPVS");
    sysctl::apply(&sysctl::Settings {
        strict_arp: true,
        tcp_be_liberal: true,
        tcp_close_wait_s: Some(3600),
    })
    .expect("setting the IPVS mode's sysctls");
    let get = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/{name}"))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .trim()
            .to_owned()
    };
    for (name, value) in sysctl::SETTINGS {
        assert_eq!(get(&format!("net/ipv4/vs/{name}")), value, "{name}");
    }
    assert_eq!(get("net/ipv4/ip_forward"), "1");
    assert_eq!(get("net/ipv4/conf/all/arp_ignore"), "1");
    assert_eq!(get("net/ipv4/conf/all/arp_announce"), "2");
    assert_eq!(get("net/netfilter/nf_conntrack_tcp_be_liberal"), "1");
    assert_eq!(
        get("net/netfilter/nf_conntrack_tcp_timeout_close_wait"),
        "3600"
    );
    // Debian 12's 6.1: 5.9 or later, so conn_reuse_mode keeps the kernel's 1.
    assert_eq!(get("net/ipv4/vs/conn_reuse_mode"), "1");
}

#[test]
fn cleanup_spares_the_virtual_servers_inside_the_excluded_ranges() {
    own_netns();
    let mut ipvs = Ipvs::open().expect("IPVS");
    let ours = Service::new(id(Protocol::Tcp, "10.96.0.10", 80), "rr");
    let theirs = Service::new(id(Protocol::Tcp, "192.168.50.7", 80), "rr");
    let theirs6 = Service::new(id(Protocol::Udp, "fd00:ab::1", 53), "rr");
    for svc in [&ours, &theirs, &theirs6] {
        ipvs.new_service(svc).expect("NEW_SERVICE");
    }
    ipvs.new_dest(&theirs.id, &Destination::masquerade(ip("10.244.1.5"), 8080))
        .expect("NEW_DEST");
    let exclude: Vec<IpNetwork> = ["192.168.50.0/24", "fd00:ab::/32"]
        .iter()
        .map(|n| n.parse().expect("a CIDR"))
        .collect();
    let removed = cleanup::cleanup("kube-ipvs0", &exclude).expect("cleanup");
    assert_eq!(removed.virtual_servers, 1, "{removed:?}");
    let mut left: Vec<ServiceId> = ipvs
        .services()
        .expect("dump")
        .into_iter()
        .map(|s| s.service.id)
        .collect();
    left.sort();
    let mut want = vec![theirs.id, theirs6.id];
    want.sort();
    assert_eq!(left, want);
    assert_eq!(ipvs.dests(&theirs.id).expect("dump").len(), 1, "untouched");
    // Control: without the exclusion the same cleanup takes them too.
    let removed = cleanup::cleanup("kube-ipvs0", &[]).expect("cleanup");
    assert_eq!(removed.virtual_servers, 2, "{removed:?}");
    assert!(ipvs.services().expect("dump").is_empty());
}

#[test]
fn inspect_lists_a_programmed_service_by_the_name_in_its_set_member() {
    own_netns();
    let mut ipvs = Ipvs::open().expect("IPVS");
    let mut ipset = Ipset::open().expect("ipset");
    // As the backend programs a ClusterIP with ClientIP affinity.
    let frontend = FrontendKey::internal(ip("10.96.0.10"), 80, proxy_agent::model::Protocol::Tcp);
    let vip = id(Protocol::Tcp, "10.96.0.10", 80);
    let mut svc = Service::new(vip, "wrr");
    svc.flags = ServiceFlags::PERSISTENT;
    svc.timeout = 600;
    ipvs.new_service(&svc).expect("NEW_SERVICE");
    let a = Destination::masquerade(ip("10.244.1.5"), 8080);
    let b = Destination::masquerade(ip("10.244.2.5"), 8080);
    ipvs.new_dest(&vip, &a).expect("NEW_DEST a");
    ipvs.new_dest(&vip, &b).expect("NEW_DEST b");
    let drained = Destination { weight: 0, ..b };
    ipvs.set_dest(&vip, &drained).expect("SET_DEST weight 0");
    let set = sets::CLUSTER_IP.spec(false);
    ipset.create(&set, true).expect("create KUBE-CLUSTER-IP");
    let member = proxy_agent::dataplane::ipvs::netlink::Entry::ip_port(
        frontend.ip,
        Protocol::Tcp,
        frontend.port,
    )
    .with_comment("default/web:http");
    ipset
        .add(&set.name, &member, false)
        .expect("add the member");
    // And someone else's virtual server, in no set.
    let other = Service::new(id(Protocol::Udp, "10.96.0.53", 53), "rr");
    ipvs.new_service(&other).expect("NEW_SERVICE other");

    let listing = inspect::list().expect("the IPVS listing");
    assert_eq!(listing.len(), 2, "{listing:#?}");
    let web = &listing[0];
    assert_eq!(web.frontend, "10.96.0.10:80/TCP");
    assert_eq!(
        (web.service.as_str(), web.kind.as_str()),
        ("default/web:http", "ClusterIP")
    );
    assert_eq!(web.affinity_timeout_s, Some(600));
    let a_addr = std::net::SocketAddr::new(a.addr, a.port);
    assert_eq!(
        web.backends,
        [a_addr],
        "the drained one takes no new connections"
    );
    let details = web.ipvs.as_ref().expect("IPVS details");
    assert_eq!(
        (
            details.scheduler.as_str(),
            details.persistent,
            details.timeout_s
        ),
        ("wrr", true, 600)
    );
    let dests: Vec<(String, u32)> = details
        .destinations
        .iter()
        .map(|d| (d.address.to_string(), d.weight))
        .collect();
    assert_eq!(
        dests,
        [
            ("10.244.1.5:8080".to_owned(), 1),
            ("10.244.2.5:8080".to_owned(), 0)
        ]
    );
    assert_eq!(details.counters.connections, 0, "no traffic yet");
    let unnamed = &listing[1];
    assert_eq!(unnamed.frontend, "10.96.0.53:53/UDP");
    assert_eq!((unnamed.service.as_str(), unnamed.kind.as_str()), ("", ""));
}
