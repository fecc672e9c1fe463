use super::super::test_support::*;
use super::super::{Translator, translate_with};
use crate::model::{Capabilities, Feature};
use crate::source::World;

fn without(features: &[Feature]) -> Capabilities {
    Capabilities {
        unsupported: features.to_vec(),
    }
}

#[test]
fn a_service_needing_an_unsupported_feature_is_refused_whole_with_the_reason() {
    let affine = with(web(), |s| {
        spec(s).session_affinity = Some("ClientIP".into());
    });
    let other = svc("demo", "api", "10.96.0.11", &[("http", 80, "TCP")]);
    let t = translate_with(
        &snapshot(vec![affine, other], vec![]),
        &node(),
        &without(&[Feature::SessionAffinity]),
    );
    assert_eq!(
        frontends(&t),
        vec!["10.96.0.11:80/TCP"],
        "the other Service is served"
    );
    assert_eq!(
        skipped(&t),
        vec![
            "Service demo/web: frontend 10.96.0.10:80/TCP needs ClientIP session affinity, \
             which this data plane does not support; the Service is not served"
        ]
    );
}

#[test]
fn one_unsupported_port_refuses_every_port_of_the_service() {
    let mixed = svc(
        "demo",
        "dns",
        "10.96.0.10",
        &[("dns-tcp", 53, "TCP"), ("dns", 53, "UDP")],
    );
    let t = translate_with(
        &snapshot(vec![mixed], vec![]),
        &node(),
        &without(&[Feature::Udp]),
    );
    assert!(frontends(&t).is_empty(), "{:?}", frontends(&t));
    assert_eq!(t.skipped.len(), 1);
}

#[test]
fn with_every_capability_nothing_is_refused() {
    let affine = with(web(), |s| {
        spec(s).session_affinity = Some("ClientIP".into());
    });
    let t = translate_with(
        &snapshot(vec![affine], vec![]),
        &node(),
        &Capabilities::all(),
    );
    assert_eq!(frontends(&t), vec![WEB]);
    assert!(t.skipped.is_empty());
}

#[test]
fn the_incremental_translator_refuses_the_same_services() {
    let snap = snapshot(
        vec![
            node_ports(web(), &[30080]),
            svc("demo", "api", "10.96.0.11", &[("http", 80, "TCP")]),
        ],
        vec![],
    );
    let caps = without(&[Feature::ExternalScope]);
    let full = translate_with(&snap, &node(), &caps);
    let mut world = World::default();
    world.reset(snap);
    let mut t = Translator::new(caps);
    t.rebuild(&world, &node());
    assert_eq!(t.desired(), &full.desired);
    assert_eq!(t.skipped(), full.skipped);
    assert_eq!(t.skipped_count(), 1);
}
