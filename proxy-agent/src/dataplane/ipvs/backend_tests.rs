use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::dataplane::ipvs::fake::Fake;
use crate::dataplane::ipvs::netlink::{self, Entry};
use crate::model::{Protocol, Scope, ServicePortName};

type Fakes = IpvsDataplane<Fake, Fake, Fake>;

fn backend(fake: &Fake) -> Fakes {
    let dp = IpvsDataplane::new(
        fake.clone(),
        fake.clone(),
        fake.clone(),
        &Options::default(),
    )
    .expect("adopting");
    // The sets it creates at start (see `sets_exist_from_the_start`).
    fake.state()
        .journal
        .retain(|l| !l.starts_with("create_set"));
    dp
}

fn svc(vip: &str, port: u16, backends: &[&str]) -> VirtualService {
    let ip: IpAddr = vip.parse().expect("vip");
    let mut backends: Vec<SocketAddr> = backends
        .iter()
        .map(|b| b.parse().expect("backend"))
        .collect();
    backends.sort();
    VirtualService {
        name: ServicePortName {
            namespace: "default".into(),
            name: "web".into(),
            port: "http".into(),
        },
        frontend: FrontendKey::internal(ip, port, Protocol::Tcp),
        backends,
        affinity_timeout_s: None,
        kind: FrontendKind::ClusterIp,
        source_ranges: Vec::new(),
        node_local: false,
    }
}

fn id(s: &VirtualService) -> ServiceId {
    service_id(&s.frontend)
}

/// The kernel's contents, without the journal.
type Contents = (
    BTreeMap<ServiceId, (Service, Vec<netlink::Destination>)>,
    BTreeMap<String, Vec<Entry>>,
    BTreeSet<IpAddr>,
);

fn contents(fake: &Fake) -> Contents {
    let st = fake.state();
    (st.services.clone(), st.sets.clone(), st.addrs.clone())
}

fn journal(fake: &Fake) -> Vec<String> {
    std::mem::take(&mut fake.state().journal)
}

#[test]
fn a_new_service_is_programmed_virtual_server_first_and_made_reachable_last() {
    let fake = Fake::default();
    let mut dp = backend(&fake);
    let web = svc("10.96.0.10", 80, &["10.244.1.5:8080", "10.244.2.5:8080"]);
    dp.upsert(&web).expect("upsert");
    assert_eq!(
        journal(&fake),
        [
            "add_member KUBE-CLUSTER-IP 10.96.0.10,tcp:80",
            "add_member KUBE-IPVS-IPS 10.96.0.10",
            "add_member KUBE-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5",
            "add_member KUBE-LOOP-BACK 10.244.2.5,tcp:8080,10.244.2.5",
            "new_service TCP 10.96.0.10:80",
            "new_dest TCP 10.96.0.10:80 10.244.1.5:8080 w1",
            "new_dest TCP 10.96.0.10:80 10.244.2.5:8080 w1",
            "create_link",
            "add_address 10.96.0.10",
        ]
    );
    let st = fake.state();
    let (service, _) = &st.services[&id(&web)];
    assert_eq!(service.scheduler, "rr");
    assert_eq!(service.flags, ServiceFlags::default());
    assert_eq!(
        st.sets["KUBE-CLUSTER-IP"][0].comment.as_deref(),
        Some("default/web:http")
    );
}

#[test]
fn affinity_is_persistence_with_the_timeout_and_a_host_netmask() {
    let fake = Fake::default();
    let mut dp = backend(&fake);
    for (vip, netmask) in [("10.96.0.10", 32), ("fd00:96::10", 128)] {
        let sticky = VirtualService {
            affinity_timeout_s: Some(10_800),
            ..svc(vip, 80, &[])
        };
        dp.upsert(&sticky).expect("upsert");
        let st = fake.state();
        let (service, _) = &st.services[&id(&sticky)];
        assert!(service.flags.contains(ServiceFlags::PERSISTENT), "{vip}");
        assert_eq!(
            (service.timeout, service.netmask),
            (10_800, netmask),
            "{vip}"
        );
    }
    assert!(fake.state().sets.contains_key("KUBE-6-CLUSTER-IP"));
}

#[test]
fn an_update_adds_new_destinations_before_draining_removed_ones() {
    // (what, backends before, backends after, the destination writes, what IPVS holds)
    type Case<'a> = (
        &'a str,
        &'a [&'a str],
        &'a [&'a str],
        &'a [&'a str],
        &'a [&'a str],
    );
    let cases: &[Case] = &[
        (
            "one replaced",
            &["10.244.1.5:8080"],
            &["10.244.2.5:8080"],
            &[
                "new_dest TCP 10.96.0.10:80 10.244.2.5:8080 w1",
                "set_dest TCP 10.96.0.10:80 10.244.1.5:8080 w0",
            ],
            &["10.244.1.5:8080 w0", "10.244.2.5:8080 w1"],
        ),
        (
            "one added",
            &["10.244.1.5:8080"],
            &["10.244.1.5:8080", "10.244.2.5:8080"],
            &["new_dest TCP 10.96.0.10:80 10.244.2.5:8080 w1"],
            &["10.244.1.5:8080 w1", "10.244.2.5:8080 w1"],
        ),
        (
            "all removed",
            &["10.244.1.5:8080", "10.244.2.5:8080"],
            &[],
            &[
                "set_dest TCP 10.96.0.10:80 10.244.1.5:8080 w0",
                "set_dest TCP 10.96.0.10:80 10.244.2.5:8080 w0",
            ],
            &["10.244.1.5:8080 w0", "10.244.2.5:8080 w0"],
        ),
        (
            "unchanged",
            &["10.244.1.5:8080"],
            &["10.244.1.5:8080"],
            &[],
            &["10.244.1.5:8080 w1"],
        ),
    ];
    for (what, before, after, writes, held) in cases {
        let fake = Fake::default();
        let mut dp = backend(&fake);
        dp.upsert(&svc("10.96.0.10", 80, before)).expect("first");
        journal(&fake);
        let updated = svc("10.96.0.10", 80, after);
        dp.upsert(&updated).expect("update");
        let mut wrote = journal(&fake);
        // The hairpin members follow the endpoints (see the tests of `plan`).
        wrote.retain(|l| !l.contains("_member KUBE-LOOP-BACK"));
        assert_eq!(wrote, *writes, "{what}");
        assert_eq!(fake.state().dests(&id(&updated)), *held, "{what}");
    }
}

#[test]
fn a_removed_udp_destination_is_deleted_at_once_and_restored_if_the_update_fails() {
    let udp = |backends: &[&str]| {
        let mut s = svc("10.96.0.10", 53, backends);
        s.frontend.protocol = Protocol::Udp;
        s
    };
    let fake = Fake::default();
    let mut dp = backend(&fake);
    dp.upsert(&udp(&["10.244.1.5:53"])).expect("first");
    journal(&fake);
    let moved = udp(&["10.244.2.5:53"]);
    // The last write (the old endpoint's hairpin member) fails.
    fake.state().fail = Some("del_member KUBE-LOOP-BACK 10.244.1.5".into());
    dp.upsert(&moved).expect_err("the member fails");
    let mut wrote = journal(&fake);
    wrote.retain(|l| l.contains("_dest"));
    assert_eq!(
        wrote,
        [
            "new_dest UDP 10.96.0.10:53 10.244.2.5:53 w1",
            "del_dest UDP 10.96.0.10:53 10.244.1.5:53 w1",
            // Undone, last first.
            "new_dest UDP 10.96.0.10:53 10.244.1.5:53 w1",
            "del_dest UDP 10.96.0.10:53 10.244.2.5:53 w1",
        ]
    );
    assert_eq!(fake.state().dests(&id(&moved)), ["10.244.1.5:53 w1"]);
    fake.state().fail = None;
    dp.upsert(&moved).expect("retry");
    assert_eq!(fake.state().dests(&id(&moved)), ["10.244.2.5:53 w1"]);
    assert_eq!(dp.programmed().expect("programmed"), [moved]);
}

#[test]
fn a_drained_destination_coming_back_is_weighted_again() {
    let fake = Fake::default();
    let mut dp = backend(&fake);
    dp.upsert(&svc("10.96.0.10", 80, &["10.244.1.5:8080"]))
        .expect("first");
    dp.upsert(&svc("10.96.0.10", 80, &[])).expect("drained");
    journal(&fake);
    let back = svc("10.96.0.10", 80, &["10.244.1.5:8080"]);
    dp.upsert(&back).expect("back");
    let wrote = journal(&fake);
    assert_eq!(
        wrote
            .iter()
            .find(|l| l.contains("_dest"))
            .map(String::as_str),
        Some("set_dest TCP 10.96.0.10:80 10.244.1.5:8080 w1"),
        "{wrote:?}"
    );
    assert_eq!(fake.state().dests(&id(&back)), ["10.244.1.5:8080 w1"]);
}

#[test]
fn a_drained_destination_goes_at_the_refresh_after_its_last_connection() {
    let fake = Fake::default();
    let mut dp = backend(&fake);
    let both = svc("10.96.0.10", 80, &["10.244.1.5:8080", "10.244.1.6:8080"]);
    dp.upsert(&both).expect("both");
    let one = svc("10.96.0.10", 80, &["10.244.1.6:8080"]);
    dp.upsert(&one).expect("one left");
    let leaving: SocketAddr = "10.244.1.5:8080".parse().expect("addr");
    fake.state().busy.insert(leaving);

    // Still serving its connections: kept, at weight 0.
    dp.refresh().expect("refresh");
    assert_eq!(
        fake.state().dests(&id(&one)),
        ["10.244.1.5:8080 w0", "10.244.1.6:8080 w1"]
    );
    // Its last connection gone: deleted at the next refresh, and nothing else moves.
    fake.state().busy.clear();
    journal(&fake);
    dp.refresh().expect("refresh");
    assert_eq!(
        journal(&fake),
        ["del_dest TCP 10.96.0.10:80 10.244.1.5:8080 w0"]
    );
    assert_eq!(fake.state().dests(&id(&one)), ["10.244.1.6:8080 w1"]);
    assert_eq!(dp.programmed().expect("programmed"), [one]);
}

#[test]
fn a_draining_destination_still_busy_after_the_grace_period_goes() {
    let fake = Fake::default();
    let options = Options {
        drain_grace: Duration::ZERO,
        ..Options::default()
    };
    let mut dp =
        IpvsDataplane::new(fake.clone(), fake.clone(), fake.clone(), &options).expect("adopting");
    let both = svc("10.96.0.10", 80, &["10.244.1.5:8080", "10.244.1.6:8080"]);
    dp.upsert(&both).expect("both");
    let one = svc("10.96.0.10", 80, &["10.244.1.6:8080"]);
    dp.upsert(&one).expect("one left");
    fake.state()
        .busy
        .insert("10.244.1.5:8080".parse().expect("addr"));
    journal(&fake);

    // Connections or not, its time is up: deleted, and nothing else moves.
    dp.refresh().expect("refresh");
    assert_eq!(
        journal(&fake),
        ["del_dest TCP 10.96.0.10:80 10.244.1.5:8080 w0"]
    );
    assert_eq!(fake.state().dests(&id(&one)), ["10.244.1.6:8080 w1"]);
}

#[test]
fn a_destination_found_draining_at_start_gets_a_whole_grace_period() {
    // A restart finds a weight-0 destination with connections: its grace period
    // starts at the first refresh, as if drained then (the agent cannot know when).
    let fake = Fake::default();
    let both = svc("10.96.0.10", 80, &["10.244.1.5:8080", "10.244.1.6:8080"]);
    let one = svc("10.96.0.10", 80, &["10.244.1.6:8080"]);
    {
        let mut first = backend(&fake);
        first.upsert(&both).expect("both");
        first.upsert(&one).expect("one left");
    }
    fake.state()
        .busy
        .insert("10.244.1.5:8080".parse().expect("addr"));
    let mut dp = backend(&fake);
    dp.refresh().expect("refresh");
    dp.refresh().expect("refresh");
    assert_eq!(
        fake.state().dests(&id(&one)),
        ["10.244.1.5:8080 w0", "10.244.1.6:8080 w1"]
    );
}

#[test]
fn the_address_goes_with_the_last_frontend_on_its_ip() {
    let fake = Fake::default();
    let mut dp = backend(&fake);
    let http = svc("10.96.0.10", 80, &["10.244.1.5:8080"]);
    let https = svc("10.96.0.10", 443, &["10.244.1.5:8443"]);
    dp.upsert(&http).expect("http");
    dp.upsert(&https).expect("https");
    let vip: IpAddr = "10.96.0.10".parse().expect("ip");

    dp.remove(&http.frontend).expect("remove http");
    {
        let st = fake.state();
        assert!(st.addrs.contains(&vip), "https still uses the VIP");
        assert!(!st.services.contains_key(&id(&http)));
        assert_eq!(st.sets["KUBE-CLUSTER-IP"].len(), 1);
    }
    dp.remove(&https.frontend).expect("remove https");
    let st = fake.state();
    assert!(st.addrs.is_empty(), "the last frontend took the VIP");
    assert!(st.services.is_empty());
    assert!(st.sets["KUBE-CLUSTER-IP"].is_empty());
    drop(st);
    assert_eq!(dp.programmed().expect("programmed"), []);
    // Removing again finds nothing to do and does not fail.
    dp.remove(&https.frontend).expect("remove twice");
}

#[test]
fn a_failing_write_leaves_the_previous_state_and_names_the_service() {
    let old = svc("10.96.0.10", 80, &["10.244.1.5:8080"]);
    let new = svc("10.96.0.10", 80, &["10.244.2.5:8080", "10.244.3.5:8080"]);
    // (what, already programmed, the write that fails)
    let cases: &[(&str, bool, &str)] = &[
        ("new: the virtual server", false, "new_service"),
        (
            "new: a destination",
            false,
            "new_dest TCP 10.96.0.10:80 10.244.3.5",
        ),
        ("new: the link", false, "create_link"),
        ("new: the address", false, "add_address"),
        ("new: the member", false, "add_member"),
        (
            "update: a new destination",
            true,
            "new_dest TCP 10.96.0.10:80 10.244.3.5",
        ),
        (
            "update: draining",
            true,
            "set_dest TCP 10.96.0.10:80 10.244.1.5:8080 w0",
        ),
        ("update: a member", true, "add_member"),
        (
            "update: a member removed",
            true,
            "del_member KUBE-LOOP-BACK 10.244.1.5",
        ),
    ];
    for (what, existing, failing) in cases {
        let fake = Fake::default();
        let mut dp = backend(&fake);
        if *existing {
            dp.upsert(&old).expect("first");
        }
        let before = contents(&fake);
        let programmed = dp.programmed().expect("programmed");
        fake.state().fail = Some((*failing).to_owned());
        let err = dp.upsert(&new).expect_err(what);
        assert!(
            err.to_string().contains("default/web:http"),
            "{what}: {err}"
        );
        fake.state().fail = None;
        assert_eq!(contents(&fake).0, before.0, "{what}: IPVS");
        assert_eq!(contents(&fake).2, before.2, "{what}: addresses");
        let members = |c: &Contents| c.1.values().flatten().cloned().collect::<Vec<_>>();
        assert_eq!(members(&contents(&fake)), members(&before), "{what}: ipset");
        assert_eq!(dp.programmed().expect("programmed"), programmed, "{what}");
        // And it converges once the kernel takes the writes.
        dp.upsert(&new).expect("retry");
        assert_eq!(
            dp.programmed().expect("programmed"),
            std::slice::from_ref(&new),
            "{what}"
        );
    }
}

#[test]
fn programmed_round_trips_what_upsert_wrote_and_survives_a_restart() {
    let fake = Fake::default();
    let mut dp = backend(&fake);
    let mut udp6 = svc("fd00:96::10", 53, &["[fd00:244::5]:5353"]);
    udp6.frontend.protocol = Protocol::Udp;
    udp6.name.name = "dns".into();
    udp6.name.port = String::new();
    let sticky = VirtualService {
        affinity_timeout_s: Some(600),
        ..svc("10.96.0.11", 80, &["10.244.1.5:8080", "10.244.2.5:8080"])
    };
    let external = external(
        FrontendKind::ExternalIp,
        svc("192.0.2.10", 80, &["10.244.1.5:8080"]),
    );
    let drained = svc("10.96.0.12", 80, &[]);
    let mut want = vec![
        udp6,
        sticky,
        external,
        drained.clone(),
        svc("10.96.0.10", 80, &["10.244.1.5:8080"]),
    ];
    for s in &want {
        dp.upsert(s).expect("upsert");
    }
    // A destination drained by an update is held in the kernel, not reported.
    dp.upsert(&svc("10.96.0.12", 80, &["10.244.9.9:80"]))
        .expect("add");
    dp.upsert(&drained).expect("drain");
    for s in &want {
        assert_eq!(
            dp.held(s).as_ref(),
            s,
            "IPVS holds all of a supported service"
        );
    }
    // The external address's internal twin (translation makes one) is held as
    // nothing but its identity.
    let twin = VirtualService {
        frontend: FrontendKey {
            scope: Scope::Internal,
            ..want[2].frontend
        },
        ..want[2].clone()
    };
    dp.upsert(&twin).expect("twin");
    want.push(VirtualService {
        backends: Vec::new(),
        ..twin
    });
    want.sort_by_key(|s| s.frontend);
    assert_eq!(dp.programmed().expect("programmed"), want);
    dp.refresh().expect("refresh");
    assert_eq!(dp.programmed().expect("after refresh"), want);
    let restarted = backend(&fake);
    assert_eq!(restarted.programmed().expect("after a restart"), want);
}

/// `svc` as an external frontend of `kind`.
fn external(kind: FrontendKind, svc: VirtualService) -> VirtualService {
    VirtualService {
        kind,
        frontend: FrontendKey {
            scope: Scope::External,
            ..svc.frontend
        },
        ..svc
    }
}

fn node_port(port: u16, backends: &[&str]) -> VirtualService {
    external(FrontendKind::NodePort, svc("0.0.0.0", port, backends))
}

fn members(fake: &Fake, set: &str) -> Vec<String> {
    let st = fake.state();
    let mut out: Vec<String> = st
        .sets
        .get(set)
        .map(|m| m.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn servers(fake: &Fake) -> Vec<String> {
    fake.state()
        .services
        .keys()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn every_set_exists_from_the_start_and_the_backend_refuses_nothing() {
    let fake = Fake::default();
    let dp = backend(&fake);
    assert_eq!(dp.mode(), "ipvs");
    assert_eq!(dp.capabilities(), Capabilities::all());
    let st = fake.state();
    for name in sets::all() {
        assert!(st.sets.contains_key(&name), "{name} created at start");
    }
}

#[test]
fn a_node_port_is_served_on_each_node_address_and_follows_them() {
    let fake = Fake::default();
    fake.state().node_ips = vec![
        "192.168.1.2".parse().expect("ip"),
        "10.0.0.2".parse().expect("ip"),
        "fd00::2".parse().expect("ip"),
    ];
    let mut dp = backend(&fake);
    let node = NodeAddresses {
        nodeport_addresses: crate::model::NodePortAddresses::Primary,
        node_ips: Vec::new(),
    };
    dp.set_node(&node).expect("node");
    let mut np = node_port(30080, &["10.244.1.5:8080"]);
    np.node_local = true;
    journal(&fake);
    dp.upsert(&np).expect("upsert");
    // New and Local: in the -LOCAL set before its first server takes a connection.
    let lines = journal(&fake);
    let local = lines
        .iter()
        .position(|l| l.starts_with("add_member KUBE-NODE-PORT-LOCAL-TCP"));
    let served = lines.iter().position(|l| l.starts_with("new_service"));
    assert!(local.is_some() && local < served, "{lines:?}");
    // Its internal twin programs nothing: IPVS has one server per address and port.
    let twin = VirtualService {
        frontend: FrontendKey {
            scope: Scope::Internal,
            ..np.frontend
        },
        ..np.clone()
    };
    journal(&fake);
    dp.upsert(&twin).expect("twin");
    assert!(journal(&fake).is_empty(), "the twin writes nothing");
    assert_eq!(
        servers(&fake),
        ["TCP 10.0.0.2:30080", "TCP 192.168.1.2:30080"]
    );
    assert!(fake.state().addrs.is_empty(), "no VIP for a NodePort");
    assert_eq!(members(&fake, "KUBE-NODE-PORT-TCP"), ["30080"]);
    assert_eq!(members(&fake, "KUBE-NODE-PORT-LOCAL-TCP"), ["30080"]);
    assert_eq!(
        members(&fake, "KUBE-LOOP-BACK"),
        ["10.244.1.5,tcp:8080,10.244.1.5"]
    );

    // The node loses an address and gains one: the server moves, new one first.
    fake.state().node_ips = vec![
        "192.168.1.2".parse().expect("ip"),
        "10.0.0.3".parse().expect("ip"),
    ];
    dp.set_node(&node).expect("node changed");
    assert_eq!(
        servers(&fake),
        ["TCP 10.0.0.3:30080", "TCP 192.168.1.2:30080"]
    );
    let lines = journal(&fake);
    let new_at = lines
        .iter()
        .position(|l| l == "new_service TCP 10.0.0.3:30080");
    let del_at = lines
        .iter()
        .position(|l| l == "del_service TCP 10.0.0.2:30080");
    assert!(new_at < del_at && del_at.is_some(), "{lines:?}");

    // Round trip: a restarted backend reads the same frontends, twin included.
    let want = vec![dp.held(&twin).into_owned(), np.clone()];
    let mut restarted = backend(&fake);
    assert_eq!(restarted.programmed().expect("programmed"), want);
    restarted.set_node(&node).expect("node");
    journal(&fake);
    restarted.upsert(&np).expect("unchanged");
    assert!(journal(&fake).is_empty(), "nothing to rewrite");

    // ETP Cluster now, with a remote endpoint: out of the -LOCAL set before the new
    // destination, so that no connection to it goes unmasqueraded.
    np.node_local = false;
    np.backends
        .push("10.244.2.5:8080".parse().expect("backend"));
    journal(&fake);
    dp.upsert(&np).expect("policy change");
    assert!(members(&fake, "KUBE-NODE-PORT-LOCAL-TCP").is_empty());
    let lines = journal(&fake);
    let out_of_local = lines
        .iter()
        .position(|l| l.starts_with("del_member KUBE-NODE-PORT-LOCAL-TCP"));
    let remote = lines
        .iter()
        .position(|l| l.contains("new_dest") && l.contains("10.244.2.5"));
    assert!(out_of_local.is_some() && out_of_local < remote, "{lines:?}");
    dp.remove(&np.frontend).expect("remove");
    dp.remove(&twin.frontend).expect("remove twin");
    assert!(servers(&fake).is_empty());
    assert!(members(&fake, "KUBE-NODE-PORT-TCP").is_empty());
    assert!(members(&fake, "KUBE-LOOP-BACK").is_empty());
}

#[test]
fn a_load_balancer_with_source_ranges_fills_its_sets_and_reads_back_whole() {
    let fake = Fake::default();
    let mut dp = backend(&fake);
    let mut lb = external(
        FrontendKind::LoadBalancer,
        svc("192.0.2.10", 80, &["10.244.1.5:8080"]),
    );
    lb.node_local = true;
    lb.source_ranges = vec![
        "203.0.113.7/32".parse().expect("cidr"),
        "198.51.100.0/24".parse().expect("cidr"),
    ];
    dp.upsert(&lb).expect("upsert");
    assert_eq!(
        members(&fake, "KUBE-LOAD-BALANCER-SOURCE-CIDR"),
        ["192.0.2.10,tcp:80,198.51.100.0/24"]
    );
    assert_eq!(
        members(&fake, "KUBE-LOAD-BALANCER-SOURCE-IP"),
        ["192.0.2.10,tcp:80,203.0.113.7"]
    );
    for set in [
        "KUBE-LOAD-BALANCER",
        "KUBE-LOAD-BALANCER-LOCAL",
        "KUBE-LOAD-BALANCER-FW",
    ] {
        assert_eq!(members(&fake, set), ["192.0.2.10,tcp:80"], "{set}");
    }
    assert_eq!(members(&fake, "KUBE-IPVS-IPS"), ["192.0.2.10"]);
    let held = dp.held(&lb).into_owned();
    let twin = VirtualService {
        frontend: FrontendKey {
            scope: Scope::Internal,
            ..lb.frontend
        },
        backends: Vec::new(),
        source_ranges: Vec::new(),
        node_local: false,
        ..lb.clone()
    };
    assert_eq!(
        backend(&fake).programmed().expect("read back"),
        [twin, held]
    );

    // A range removed goes from its set; the others stay.
    lb.source_ranges.truncate(1);
    dp.upsert(&lb).expect("one range less");
    assert!(members(&fake, "KUBE-LOAD-BALANCER-SOURCE-CIDR").is_empty());
    assert_eq!(members(&fake, "KUBE-LOAD-BALANCER-SOURCE-IP").len(), 1);
}

#[test]
fn shared_members_and_vips_go_with_their_last_user() {
    let fake = Fake::default();
    let mut dp = backend(&fake);
    let http = svc("10.96.0.10", 80, &["10.244.1.5:8080"]);
    let other_port = svc("10.96.0.10", 81, &["10.244.1.5:8080"]);
    dp.upsert(&http).expect("http");
    dp.upsert(&other_port).expect("81");
    dp.remove(&http.frontend).expect("remove http");
    assert_eq!(fake.state().addrs.len(), 1, "the VIP stays for :81");
    assert_eq!(members(&fake, "KUBE-IPVS-IPS"), ["10.96.0.10"]);
    assert_eq!(
        members(&fake, "KUBE-LOOP-BACK").len(),
        1,
        "the hairpin stays"
    );
    dp.remove(&other_port.frontend).expect("remove 81");
    assert!(fake.state().addrs.is_empty());
    assert!(members(&fake, "KUBE-IPVS-IPS").is_empty());
    assert!(members(&fake, "KUBE-LOOP-BACK").is_empty());
}

#[test]
fn a_missing_member_reads_as_drift_and_the_next_upsert_writes_it_again() {
    let fake = Fake::default();
    let mut dp = backend(&fake);
    let web = svc("10.96.0.10", 80, &["10.244.1.5:8080"]);
    dp.upsert(&web).expect("upsert");
    fake.state()
        .sets
        .get_mut("KUBE-LOOP-BACK")
        .expect("set")
        .clear();
    dp.refresh().expect("refresh");
    assert_ne!(
        dp.programmed().expect("held"),
        std::slice::from_ref(&web),
        "drift"
    );
    dp.upsert(&web).expect("repair");
    assert_eq!(members(&fake, "KUBE-LOOP-BACK").len(), 1);
    dp.refresh().expect("refresh");
    assert_eq!(dp.programmed().expect("held"), [web]);
}

#[test]
fn virtual_servers_inside_the_exclude_cidrs_are_never_adopted_nor_written() {
    let fake = Fake::default();
    let theirs = svc("10.200.0.1", 80, &["10.244.9.9:80"]);
    backend(&fake).upsert(&theirs).expect("someone else's");
    let options = Options {
        exclude_cidrs: vec!["10.200.0.0/16".parse().expect("cidr")],
        ..Options::default()
    };
    let mut dp =
        IpvsDataplane::new(fake.clone(), fake.clone(), fake.clone(), &options).expect("adopting");
    assert!(dp.programmed().expect("held").is_empty(), "not adopted");
    let err = dp.upsert(&theirs).expect_err("refused");
    assert!(err.to_string().contains("--ipvs-exclude-cidrs"), "{err}");
}

#[test]
fn a_virtual_server_with_another_scheduler_reads_as_drift_and_is_rewritten() {
    let fake = Fake::default();
    let web = svc("10.96.0.10", 80, &["10.244.1.5:8080"]);
    backend(&fake).upsert(&web).expect("upsert with rr");
    let options = Options {
        scheduler: "wlc".into(),
        ..Options::default()
    };
    let mut dp = IpvsDataplane::new(fake.clone(), fake.clone(), fake.clone(), &options)
        .expect("restarted with wlc");
    let held = dp.programmed().expect("programmed");
    assert_eq!(held.len(), 1);
    assert_ne!(held[0], web, "the scheduler differs: drift");
    journal(&fake);
    dp.upsert(&web).expect("the repair");
    let wrote = journal(&fake);
    assert!(
        wrote.iter().any(|l| l == "set_service TCP 10.96.0.10:80"),
        "{wrote:?}"
    );
    assert_eq!(fake.state().services[&id(&web)].0.scheduler, "wlc");
    dp.refresh().expect("refresh");
    assert_eq!(dp.programmed().expect("programmed"), [web]);
}

#[test]
fn health_check_node_ports_follow_the_served_ones_in_both_families() {
    let fake = Fake::default();
    let mut dp = backend(&fake);
    dp.set_health_check_ports(&[30100, 30101]).expect("two");
    dp.set_health_check_ports(&[30101]).expect("one");
    for set in [
        "KUBE-HEALTH-CHECK-NODE-PORT",
        "KUBE-6-HEALTH-CHECK-NODE-PORT",
    ] {
        assert_eq!(members(&fake, set), ["30101"], "{set}");
    }
    // A restarted agent knows them, and removes the one no longer served.
    let mut restarted = backend(&fake);
    restarted.set_health_check_ports(&[]).expect("none");
    assert!(members(&fake, "KUBE-HEALTH-CHECK-NODE-PORT").is_empty());
}
