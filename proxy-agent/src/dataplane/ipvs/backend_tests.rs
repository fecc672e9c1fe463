use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::dataplane::ipvs::fake::Fake;
use crate::dataplane::ipvs::netlink::{self, Entry};
use crate::model::Protocol;

type Fakes = IpvsDataplane<Fake, Fake, Fake>;

fn backend(fake: &Fake) -> Fakes {
    IpvsDataplane::new(fake.clone(), fake.clone(), fake.clone(), "rr").expect("adopting")
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
            "new_service TCP 10.96.0.10:80",
            "new_dest TCP 10.96.0.10:80 10.244.1.5:8080 w1",
            "new_dest TCP 10.96.0.10:80 10.244.2.5:8080 w1",
            "create_link",
            "add_address 10.96.0.10",
            "create_set KUBE-CLUSTER-IP",
            "add_member KUBE-CLUSTER-IP 10.96.0.10,tcp:80",
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
        // The member is re-added each time (its comment follows the name).
        wrote.retain(|l| !l.starts_with("add_member"));
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
    fake.state().fail = Some("add_member".into());
    dp.upsert(&moved).expect_err("the member fails");
    assert_eq!(
        journal(&fake),
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
    assert_eq!(
        journal(&fake)[0],
        "set_dest TCP 10.96.0.10:80 10.244.1.5:8080 w1"
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
        ("new: the set", false, "create_set"),
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
        ("update: the member", true, "add_member"),
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
    let external = VirtualService {
        kind: FrontendKind::ExternalIp,
        ..svc("192.0.2.10", 80, &["10.244.1.5:8080"])
    };
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
    want.sort_by_key(|s| s.frontend);
    for s in &want {
        assert_eq!(
            dp.held(s).as_ref(),
            s,
            "IPVS holds all of a supported service"
        );
    }
    assert_eq!(dp.programmed().expect("programmed"), want);
    dp.refresh().expect("refresh");
    assert_eq!(dp.programmed().expect("after refresh"), want);
    let restarted = backend(&fake);
    assert_eq!(restarted.programmed().expect("after a restart"), want);
}

#[test]
fn what_the_backend_cannot_do_is_refused_up_front_and_at_upsert() {
    let fake = Fake::default();
    let mut dp = backend(&fake);
    assert_eq!(dp.mode(), "ipvs");
    let caps = dp.capabilities();
    let external = VirtualService {
        frontend: FrontendKey {
            scope: Scope::External,
            ..svc("10.96.0.10", 80, &[]).frontend
        },
        ..svc("10.96.0.10", 80, &[])
    };
    let ranges = VirtualService {
        source_ranges: vec!["192.0.2.0/24".parse().expect("cidr")],
        ..svc("10.96.0.10", 80, &[])
    };
    assert_eq!(caps.missing(&external), Some(Feature::ExternalScope));
    assert_eq!(caps.missing(&ranges), Some(Feature::SourceRanges));
    assert_eq!(caps.missing(&svc("10.96.0.10", 80, &[])), None);
    let node_port = VirtualService {
        kind: FrontendKind::NodePort,
        ..svc("0.0.0.0", 30080, &[])
    };
    for refused in [external, ranges, node_port] {
        let err = dp.upsert(&refused).expect_err("refused");
        assert!(matches!(err, DataplaneError::Unsupported(_)), "{err}");
        assert!(err.to_string().contains("default/web:http"), "{err}");
    }
    assert!(journal(&fake).is_empty(), "nothing written");
}

#[test]
fn a_virtual_server_with_another_scheduler_reads_as_drift_and_is_rewritten() {
    let fake = Fake::default();
    let web = svc("10.96.0.10", 80, &["10.244.1.5:8080"]);
    backend(&fake).upsert(&web).expect("upsert with rr");
    let mut dp = IpvsDataplane::new(fake.clone(), fake.clone(), fake.clone(), "wlc")
        .expect("restarted with wlc");
    let held = dp.programmed().expect("programmed");
    assert_eq!(held.len(), 1);
    assert_ne!(held[0], web, "the scheduler differs: drift");
    journal(&fake);
    dp.upsert(&web).expect("the repair");
    assert_eq!(journal(&fake)[0], "set_service TCP 10.96.0.10:80");
    assert_eq!(fake.state().services[&id(&web)].0.scheduler, "wlc");
    dp.refresh().expect("refresh");
    assert_eq!(dp.programmed().expect("programmed"), [web]);
}
