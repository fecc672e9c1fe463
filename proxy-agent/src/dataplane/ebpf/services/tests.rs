//! The service programming against in-memory tables: no kernel, no root.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::dataplane::ebpf::fake::FakeTables;
use crate::model::{FrontendKind, Protocol, Scope};

fn svc(port: u16, backends: &[&str]) -> VirtualService {
    VirtualService {
        name: ServicePortName {
            namespace: "default".into(),
            name: format!("s{port}"),
            port: "http".into(),
        },
        frontend: model::FrontendKey::internal("10.96.0.1".parse().unwrap(), port, Protocol::Tcp),
        backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
        affinity_timeout_s: None,
        kind: FrontendKind::ClusterIp,
        source_ranges: Vec::new(),
        node_local: false,
    }
}

fn lb(port: u16, backends: &[&str], ranges: &[&str]) -> VirtualService {
    VirtualService {
        frontend: model::FrontendKey {
            ip: "192.0.2.100".parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
            scope: Scope::External,
        },
        kind: FrontendKind::LoadBalancer,
        source_ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
        ..svc(port, backends)
    }
}

fn be(addr: &str) -> Backend {
    keys::backend(&addr.parse().unwrap(), pc::proto::TCP)
}

/// A fresh index and tables holding `svcs`.
fn programmed(svcs: &[VirtualService]) -> (Services, FakeTables) {
    let mut s = Services::new(MapSizes::default());
    let mut t = FakeTables::default();
    for v in svcs {
        s.upsert(&mut t, v).unwrap();
    }
    (s, t)
}

/// What the index says is programmed, as the reconciler would compare it.
fn held(s: &Services) -> Vec<VirtualService> {
    s.programmed()
}

fn backend_id(s: &Services, addr: &str) -> Option<u32> {
    s.backends.get(&be(addr)).map(|r| r.id)
}

fn refs(s: &Services, addr: &str) -> Option<u32> {
    s.backends.get(&be(addr)).map(|r| r.refs)
}

#[test]
fn kept_backends_keep_their_slots() {
    assert_eq!(place(&[1, 2, 3], &[1, 2, 3, 4]), vec![1, 2, 3, 4]);
    assert_eq!(place(&[1, 2, 3], &[3, 1]), vec![1, 3]);
    assert_eq!(place(&[1, 2, 3], &[1, 3, 5]), vec![1, 5, 3]);
}

#[test]
fn removing_the_middle_moves_only_the_tail() {
    assert_eq!(place(&[1, 2, 3, 4, 5], &[1, 2, 4, 5]), vec![1, 2, 5, 4]);
}

#[test]
fn empty_and_full_replacement() {
    assert_eq!(place(&[], &[7, 8]), vec![7, 8]);
    assert_eq!(place(&[1, 2], &[]), Vec::<u32>::new());
    assert_eq!(place(&[1, 2], &[3, 4]), vec![3, 4]);
}

#[test]
fn a_slot_found_missing_is_refilled_in_place() {
    assert_eq!(place(&[1, 0, 3], &[1, 2, 3]), vec![1, 2, 3]);
}

#[test]
fn a_new_service_is_written_whole_with_the_frontend_holding_the_count() {
    let v = lb(
        443,
        &["10.0.0.1:8443", "10.0.0.2:8443"],
        &["203.0.113.0/24"],
    );
    let (s, t) = programmed(std::slice::from_ref(&v));
    let c = &t.contents;
    assert_eq!(c.backends.len(), 2);
    assert_eq!(c.slots.len(), 2);
    assert_eq!(c.members.len(), 2);
    assert_eq!(c.source_ranges.len(), 1);
    let value = c.frontends[&frontend_key(&v.frontend)];
    assert_eq!(value.backend_count, 2);
    assert_eq!(keys::kind_of(value.flags), FrontendKind::LoadBalancer);
    assert!(value.flags & pc::FRONTEND_F_SOURCE_RANGES != 0);
    assert_eq!(c.names[&value.service_id].as_str(), "default/s443:http");
    assert_eq!(held(&s), vec![v]);
}

#[test]
fn ids_are_allocated_in_order_and_reused_after_removal() {
    let a = svc(80, &["10.0.0.1:80"]);
    let b = svc(81, &["10.0.0.2:80"]);
    let c = svc(82, &["10.0.0.3:80"]);
    let (mut s, mut t) = programmed(&[a.clone(), b.clone(), c]);
    let sid = |s: &Services, v: &VirtualService| s.by_frontend[&v.frontend].value.service_id;
    assert_eq!(sid(&s, &a), 1);
    assert_eq!(sid(&s, &b), 2);
    assert_eq!(
        (1..=3)
            .map(|i| backend_id(&s, &format!("10.0.0.{i}:80")))
            .collect::<Vec<_>>(),
        vec![Some(1), Some(2), Some(3)]
    );
    s.remove(&mut t, &b.frontend).unwrap();
    assert_eq!(backend_id(&s, "10.0.0.2:80"), None);
    assert!(!t.contents.backends.contains_key(&2));
    // The freed ids are handed out again before new ones.
    let d = svc(83, &["10.0.0.4:80", "10.0.0.5:80"]);
    s.upsert(&mut t, &d).unwrap();
    assert_eq!(sid(&s, &d), 2);
    assert_eq!(backend_id(&s, "10.0.0.4:80"), Some(2));
    assert_eq!(backend_id(&s, "10.0.0.5:80"), Some(4));
}

#[test]
fn frontends_sharing_a_backend_count_their_references() {
    let a = svc(80, &["10.0.0.1:80", "10.0.0.2:80"]);
    let b = svc(81, &["10.0.0.2:80"]);
    let (mut s, mut t) = programmed(&[a.clone(), b.clone()]);
    assert_eq!(
        t.contents.backends.len(),
        2,
        "the shared backend is written once"
    );
    assert_eq!(refs(&s, "10.0.0.1:80"), Some(1));
    assert_eq!(refs(&s, "10.0.0.2:80"), Some(2));
    let shared = backend_id(&s, "10.0.0.2:80").unwrap();

    // Removal releases only what nothing else references.
    s.remove(&mut t, &a.frontend).unwrap();
    assert_eq!(refs(&s, "10.0.0.1:80"), None);
    assert_eq!(refs(&s, "10.0.0.2:80"), Some(1));
    assert!(t.contents.backends.contains_key(&shared));
    assert_eq!(t.contents.backends.len(), 1);
    assert_eq!(t.contents.slots.len(), 1);
    assert_eq!(t.contents.members.len(), 1);

    s.remove(&mut t, &b.frontend).unwrap();
    assert_eq!(t.contents, Default::default(), "nothing is left behind");
    assert_eq!(s.slots_used, 0);
}

#[test]
fn a_backend_leaving_one_service_stays_for_the_other() {
    let (mut s, mut t) = programmed(&[
        svc(80, &["10.0.0.1:80", "10.0.0.2:80"]),
        svc(81, &["10.0.0.2:80"]),
    ]);
    let shared = backend_id(&s, "10.0.0.2:80").unwrap();
    s.upsert(&mut t, &svc(80, &["10.0.0.1:80"])).unwrap();
    assert_eq!(refs(&s, "10.0.0.2:80"), Some(1));
    assert!(t.contents.backends.contains_key(&shared));
    let sid80 = s.by_frontend[&svc(80, &[]).frontend].value.service_id;
    assert!(!t.contents.members.contains(&AffinityMatchKey {
        service_id: sid80,
        backend_id: shared
    }));
}

#[test]
fn a_one_endpoint_change_is_a_handful_of_writes() {
    let v = svc(80, &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
    let (mut s, mut t) = programmed(&[v]);
    let before = t.writes;
    s.upsert(
        &mut t,
        &svc(80, &["10.0.0.1:80", "10.0.0.3:80", "10.0.0.4:80"]),
    )
    .unwrap();
    // Backend, membership, slot; then the membership and backend that left. The
    // frontend's count did not change, so it is not rewritten.
    assert_eq!(t.writes - before, 5);
    // Unchanged: no write at all.
    let before = t.writes;
    s.upsert(
        &mut t,
        &svc(80, &["10.0.0.1:80", "10.0.0.3:80", "10.0.0.4:80"]),
    )
    .unwrap();
    assert_eq!(t.writes, before);
}

#[test]
fn shrinking_deletes_the_slots_past_the_new_count() {
    let (mut s, mut t) = programmed(&[svc(80, &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])]);
    s.upsert(&mut t, &svc(80, &["10.0.0.3:80"])).unwrap();
    let sid = s.by_frontend[&svc(80, &[]).frontend].value.service_id;
    let slots: Vec<u32> = (0..3)
        .filter(|slot| {
            t.contents.slots.contains_key(&SlotKey {
                service_id: sid,
                slot: *slot,
            })
        })
        .collect();
    assert_eq!(slots, vec![0]);
    assert_eq!(t.contents.backends.len(), 1);
    assert_eq!(s.slots_used, 1);
}

/// Scenarios for the rollback property: the services programmed first, and the upsert
/// whose writes are failed one by one.
fn rollback_scenarios() -> Vec<(&'static str, Vec<VirtualService>, VirtualService)> {
    vec![
        (
            "a new service",
            vec![],
            lb(
                443,
                &["10.0.0.1:80", "10.0.0.2:80"],
                &["203.0.113.0/24", "198.51.100.0/24"],
            ),
        ),
        (
            "a new service sharing a backend",
            vec![svc(80, &["10.0.0.1:80", "10.0.0.2:80"])],
            svc(81, &["10.0.0.2:80", "10.0.0.3:80"]),
        ),
        (
            "growing",
            vec![svc(80, &["10.0.0.1:80"])],
            svc(80, &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]),
        ),
        (
            "shrinking",
            vec![svc(80, &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])],
            svc(80, &["10.0.0.2:80"]),
        ),
        (
            "replacing every backend",
            vec![
                svc(80, &["10.0.0.1:80", "10.0.0.2:80"]),
                svc(81, &["10.0.0.2:80"]),
            ],
            svc(80, &["10.0.0.3:80", "10.0.0.4:80"]),
        ),
        (
            "changing source ranges and turning affinity on",
            vec![lb(443, &["10.0.0.1:80"], &["203.0.113.0/24"])],
            VirtualService {
                affinity_timeout_s: Some(60),
                ..lb(443, &["10.0.0.1:80"], &["198.51.100.0/24"])
            },
        ),
        ("emptying", vec![svc(80, &["10.0.0.1:80"])], svc(80, &[])),
    ]
}

#[test]
fn a_failed_write_at_any_step_leaves_tables_and_index_as_they_were() {
    for (scenario, setup, target) in rollback_scenarios() {
        let (s0, t0) = programmed(&setup);
        let mut failures = 0;
        for n in 1.. {
            let (mut s, mut t) = (s0.clone(), t0.clone());
            t.fail_nth_write_from_now(n);
            let result = s.upsert(&mut t, &target);
            if !t.failed {
                // Past the last write: the upsert went through untouched.
                assert!(result.is_ok(), "{scenario}: {result:?}");
                assert!(failures > 0, "{scenario}: no write was made");
                break;
            }
            match result {
                Err(e) => {
                    failures += 1;
                    assert!(
                        matches!(e, DataplaneError::Kernel { .. }),
                        "{scenario}: {e:?}"
                    );
                    assert_eq!(t.contents, t0.contents, "{scenario}: write {n} failed");
                    assert_eq!(s, s0, "{scenario}: write {n} failed");
                }
                // A failure after the frontend was written (the name, a surplus entry)
                // does not fail the service: it is served as wanted.
                Ok(()) => {
                    let got = s.programmed();
                    assert!(got.contains(&target), "{scenario}: write {n}: {got:?}");
                    let value = t.contents.frontends[&frontend_key(&target.frontend)];
                    assert_eq!(value.backend_count as usize, target.backends.len());
                }
            }
            // Whatever happened, a retry without faults converges.
            s.upsert(&mut t, &target).unwrap();
            assert!(
                s.programmed().contains(&target),
                "{scenario}: retry after {n}"
            );
        }
    }
}

#[test]
fn a_full_table_reported_by_the_kernel_rolls_back_too() {
    let (s0, mut t0) = programmed(&[]);
    t0.capacity.insert(maps::SOURCE_RANGES, 1);
    let (mut s, mut t) = (s0.clone(), t0.clone());
    let e = s
        .upsert(
            &mut t,
            &lb(
                443,
                &["10.0.0.1:80"],
                &["203.0.113.0/24", "198.51.100.0/24"],
            ),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            DataplaneError::Capacity {
                table: maps::SOURCE_RANGES,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(t.contents, t0.contents);
    assert_eq!(s, s0);
}

#[test]
fn capacity_is_checked_before_any_write() {
    let sizes = MapSizes {
        frontends: 2,
        slots: 3,
        backends: 2,
        ..MapSizes::default()
    };
    let mut s = Services::new(sizes);
    let mut t = FakeTables::default();
    s.upsert(&mut t, &svc(80, &["10.0.0.1:80", "10.0.0.2:80"]))
        .unwrap();
    s.upsert(&mut t, &svc(81, &[])).unwrap();
    let cases = [
        (svc(82, &[]), maps::FRONTENDS),
        (svc(81, &["10.0.0.1:80", "10.0.0.2:80"]), maps::SLOTS),
        (svc(81, &["10.0.0.3:80"]), maps::BACKENDS),
    ];
    for (v, table) in cases {
        let (s0, writes) = (s.clone(), t.writes);
        let e = s.upsert(&mut t, &v).unwrap_err();
        match &e {
            DataplaneError::Capacity {
                table: got, what, ..
            } => {
                assert_eq!(*got, table);
                assert_eq!(what, &v.name.to_string(), "the error names the service");
            }
            other => panic!("{table}: {other:?}"),
        }
        assert_eq!(t.writes, writes, "{table}: nothing written");
        assert_eq!(s, s0);
    }
    // Replacing within the limits is fine: the shared backends need no new entry.
    s.upsert(&mut t, &svc(81, &["10.0.0.2:80"])).unwrap();
}

#[test]
fn a_removal_whose_frontend_delete_fails_changes_nothing() {
    let (s0, t0) = programmed(&[svc(80, &["10.0.0.1:80"])]);
    let (mut s, mut t) = (s0.clone(), t0.clone());
    t.fail_nth_write_from_now(1);
    assert!(s.remove(&mut t, &svc(80, &[]).frontend).is_err());
    assert_eq!((t.contents, s), (t0.contents, s0));
}

#[test]
fn removing_an_unknown_frontend_is_a_no_op() {
    let (mut s, mut t) = programmed(&[]);
    s.remove(&mut t, &svc(80, &[]).frontend).unwrap();
    assert_eq!(t.writes, 0);
}

#[test]
fn a_new_agent_adopts_the_tables_and_rewrites_nothing() {
    let svcs = [
        svc(80, &["10.0.0.1:80", "10.0.0.2:80"]),
        svc(81, &["10.0.0.2:80"]),
        VirtualService {
            affinity_timeout_s: Some(10800),
            ..lb(443, &["10.0.0.3:80"], &["203.0.113.0/24"])
        },
    ];
    let (old, mut t) = programmed(&svcs);
    let new = Services::adopt(&mut t, MapSizes::default()).unwrap();
    assert_eq!(held(&new), held(&old));
    assert_eq!(new.backends, old.backends, "ids and reference counts");
    assert_eq!(new.slots_used, old.slots_used);
    let mut new = new;
    let writes = t.writes;
    for v in &svcs {
        new.upsert(&mut t, v).unwrap();
    }
    assert_eq!(t.writes, writes, "the first sync rewrites nothing");
    // New ids do not collide with adopted ones.
    new.upsert(&mut t, &svc(82, &["10.0.0.9:80"])).unwrap();
    assert_eq!(new.by_frontend[&svc(82, &[]).frontend].value.service_id, 4);
    assert_eq!(backend_id(&new, "10.0.0.9:80"), Some(4));
}

#[test]
fn adoption_releases_orphan_backends() {
    let (_, mut t) = programmed(&[svc(80, &["10.0.0.1:80"])]);
    // A previous agent died after writing backends nothing references yet.
    t.contents.backends.insert(7, be("10.0.0.7:80"));
    t.contents.backends.insert(5, be("10.0.0.5:80"));
    let s = Services::adopt(&mut t, MapSizes::default()).unwrap();
    assert_eq!(
        t.contents.backends.keys().copied().collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(backend_id(&s, "10.0.0.7:80"), None);
    // Their ids are free again (the last freed first), before fresh ones.
    assert_eq!(
        s.backend_ids.upcoming().take(3).collect::<Vec<_>>(),
        vec![7, 5, 8]
    );
}

#[test]
fn a_slot_missing_at_adoption_reads_as_drift_and_is_repaired() {
    let v = svc(80, &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
    let (old, mut t) = programmed(std::slice::from_ref(&v));
    let sid = old.by_frontend[&v.frontend].value.service_id;
    let middle = SlotKey {
        service_id: sid,
        slot: 1,
    };
    t.contents.slots.remove(&middle);
    let mut s = Services::adopt(&mut t, MapSizes::default()).unwrap();
    let got = held(&s);
    assert_ne!(
        got,
        vec![v.clone()],
        "the missing slot shows as a difference"
    );
    assert_eq!(got[0].backends.len(), 2);
    assert_eq!(s.by_frontend[&v.frontend].slots[1], 0);
    // The backend only that slot referenced was an orphan.
    assert_eq!(t.contents.backends.len(), 2);

    s.upsert(&mut t, &v).unwrap();
    assert_eq!(held(&s), vec![v.clone()]);
    assert!(t.contents.slots.contains_key(&middle));
    assert_eq!(
        t.contents.frontends[&frontend_key(&v.frontend)].backend_count,
        3
    );
    // And a later agent finds it whole.
    let again = Services::adopt(&mut t, MapSizes::default()).unwrap();
    assert_eq!(held(&again), vec![v]);
}

#[test]
fn a_rollback_after_adopting_a_missing_slot_deletes_what_it_wrote() {
    let v = svc(80, &["10.0.0.1:80", "10.0.0.2:80"]);
    let (old, mut t) = programmed(std::slice::from_ref(&v));
    let sid = old.by_frontend[&v.frontend].value.service_id;
    t.contents.slots.remove(&SlotKey {
        service_id: sid,
        slot: 1,
    });
    let s0 = Services::adopt(&mut t, MapSizes::default()).unwrap();
    let t0 = t.clone();
    // The membership of the backend that slot referenced outlived it; adoption does not
    // read memberships, so a rollback that rewrote it deletes it. Harmless: no slot
    // of the service references that backend.
    let stale = AffinityMatchKey {
        service_id: sid,
        backend_id: 2,
    };
    assert!(t0.contents.members.contains(&stale));
    let mut without_stale = t0.contents.clone();
    without_stale.members.remove(&stale);
    let mut failures = 0;
    for n in 1.. {
        let (mut s, mut t) = (s0.clone(), t0.clone());
        t.fail_nth_write_from_now(n);
        let result = s.upsert(&mut t, &v);
        if !t.failed {
            break;
        }
        if result.is_err() {
            failures += 1;
            assert!(
                t.contents == t0.contents || t.contents == without_stale,
                "write {n}: {:?}",
                t.contents
            );
            assert_eq!(s, s0, "write {n}");
        }
    }
    // Backend, membership, slot.
    assert_eq!(failures, 3);
}

#[test]
fn refresh_sees_drift_and_reads_names_as_the_kernel_holds_them() {
    let long = VirtualService {
        name: ServicePortName {
            namespace: "a".repeat(100),
            name: "b".repeat(60),
            port: "http".into(),
        },
        ..svc(80, &["10.0.0.1:80"])
    };
    let other = svc(81, &["10.0.0.2:80"]);
    let (mut s, mut t) = programmed(&[long.clone(), other.clone()]);
    // Behind the agent's back: a frontend deleted, a slot overwritten.
    t.contents.frontends.remove(&frontend_key(&other.frontend));
    let sid = s.by_frontend[&long.frontend].value.service_id;
    t.contents.slots.insert(
        SlotKey {
            service_id: sid,
            slot: 0,
        },
        99,
    );
    s.refresh(&mut t).unwrap();
    let got = held(&s);
    assert_eq!(got.len(), 1, "the deleted frontend is gone: {got:?}");
    assert!(got[0].backends.is_empty(), "slot 0 points at no backend");
    assert_eq!(
        got[0].name,
        keys::held_name(&long.name).expect("a name too long for SVC_NAMES"),
        "SVC_NAMES' truncated name: what the kernel holds"
    );
    assert_ne!(got[0].name, long.name);

    // The next sync repairs both.
    s.upsert(&mut t, &long).unwrap();
    s.upsert(&mut t, &other).unwrap();
    let repaired = VirtualService {
        name: keys::held_name(&long.name).expect("a name too long for SVC_NAMES"),
        ..long
    };
    assert_eq!(held(&s), vec![repaired, other]);
}

#[test]
fn a_failed_refresh_keeps_the_index() {
    let (s0, mut t) = programmed(&[svc(80, &["10.0.0.1:80"])]);
    let mut s = s0.clone();
    t.fail_slot_reads = true;
    assert!(s.refresh(&mut t).is_err());
    assert_eq!(s, s0);
}

#[test]
fn ipv6_and_udp_frontends_are_programmed_like_the_others() {
    let v = VirtualService {
        frontend: model::FrontendKey::internal(
            "fd00::10".parse::<IpAddr>().unwrap(),
            53,
            Protocol::Udp,
        ),
        backends: vec!["[fd00::5]:53".parse().unwrap()],
        ..svc(53, &[])
    };
    let (s, mut t) = programmed(std::slice::from_ref(&v));
    assert_eq!(held(&s), vec![v.clone()]);
    let b = t.contents.backends.values().next().copied().unwrap();
    assert_eq!(b.proto, pc::proto::UDP);
    assert_eq!(
        held(&Services::adopt(&mut t, MapSizes::default()).unwrap()),
        vec![v]
    );
}

/// What a connection picking each slot of `v`'s frontend finds in `c`: the backend's
/// address, or `None` for a slot (or its backend) that is missing. `None` overall if
/// the frontend is not there.
fn lookups(
    c: &crate::dataplane::ebpf::fake::Contents,
    v: &VirtualService,
) -> Option<Vec<Option<SocketAddr>>> {
    let fe = c.frontends.get(&frontend_key(&v.frontend))?;
    Some(
        (0..fe.backend_count)
            .map(|slot| {
                let key = SlotKey {
                    service_id: fe.service_id,
                    slot,
                };
                let id = c.slots.get(&key)?;
                c.backends.get(id).map(keys::backend_addr)
            })
            .collect(),
    )
}

/// Runs `steps` (each replaces the service's backends) with every write recorded, and
/// returns, for each state between two writes, the lookups that failed or reached a
/// backend of neither the step's old nor its new set.
fn bad_lookups(order: WriteOrder, steps: &[&[&str]]) -> Vec<String> {
    let mut s = Services::new(MapSizes::default());
    s.write_order = order;
    let mut t = FakeTables::default();
    let mut old = svc(80, steps[0]);
    s.upsert(&mut t, &old).unwrap();
    let mut bad = Vec::new();
    for step in &steps[1..] {
        let new = svc(80, step);
        t.history = Some(Vec::new());
        s.upsert(&mut t, &new).unwrap();
        let allowed: HashSet<SocketAddr> =
            old.backends.iter().chain(&new.backends).copied().collect();
        for (i, c) in t.history.take().unwrap().iter().enumerate() {
            let seen = lookups(c, &new);
            let ok = seen
                .as_ref()
                .is_some_and(|l| l.iter().all(|a| a.is_some_and(|a| allowed.contains(&a))));
            if !ok {
                bad.push(format!(
                    "{:?} -> {:?}, after write {}: {seen:?}",
                    old.backends,
                    new.backends,
                    i + 1
                ));
            }
        }
        old = new;
    }
    bad
}

/// Growing, shrinking and replacing in one go: between any two writes, every slot the
/// frontend counts resolves to a backend of the old or the new set. The unsafe order
/// (the control of the real-kernel test) breaks exactly that.
#[test]
fn between_any_two_writes_every_counted_slot_reaches_an_old_or_new_backend() {
    let steps: &[&[&str]] = &[
        &["10.0.0.1:80", "10.0.0.2:80"],
        &[
            "10.0.0.1:80",
            "10.0.0.3:80",
            "10.0.0.4:80",
            "10.0.0.5:80",
            "10.0.0.6:80",
        ],
        &["10.0.0.6:80"],
        &["10.0.0.7:80", "10.0.0.8:80", "10.0.0.9:80"],
        &["10.0.0.1:80", "10.0.0.2:80"],
    ];
    assert_eq!(bad_lookups(WriteOrder::Safe, steps), Vec::<String>::new());
    let unsafe_bad = bad_lookups(WriteOrder::Unsafe, steps);
    assert!(
        !unsafe_bad.is_empty(),
        "the unsafe order must expose missing slots"
    );
    // Both hazards show: a count grown before its slots, slots gone before the count
    // shrinks.
    assert!(
        unsafe_bad
            .iter()
            .any(|b| b.starts_with("[10.0.0.1:80, 10.0.0.2:80] ->"))
    );
    assert!(unsafe_bad.iter().any(|b| b.contains("-> [10.0.0.6:80]")));
}

#[test]
fn the_write_order_is_safe_unless_a_debug_build_is_told_otherwise() {
    // The test process does not set the variable.
    assert!(std::env::var_os(UNSAFE_WRITE_ORDER_ENV).is_none());
    assert_eq!(WriteOrder::from_env(), WriteOrder::Safe);
    assert_eq!(
        Services::new(MapSizes::default()).write_order(),
        WriteOrder::Safe
    );
}
