//! Properties of the whole translation: determinism, hostile input, the incremental
//! translator agreeing with the full one, and the examples.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus,
    SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::{FrontendKind, Scope};
use crate::source::World;
use crate::source::manifests::test_support::{TempDir, examples, source};
use crate::translate::test_support::*;
use crate::translate::{Translator, translate};

#[test]
fn the_translation_is_deterministic() {
    let services = vec![
        web(),
        local_web_named("local"),
        svc("demo", "dns", "10.96.0.53", &[("dns", 53, "UDP")]),
    ];
    let slices = vec![
        web_slice(
            "web-1",
            vec![ep("10.244.0.12"), for_zones(ep("10.244.0.11"), &["zone-a"])],
        ),
        web_slice("web-2", vec![terminating(ep("10.244.0.12"))]),
    ];
    let first = run(services.clone(), slices.clone());
    for _ in 0..5 {
        assert_eq!(run(services.clone(), slices.clone()), first);
    }
}

fn local_web_named(name: &str) -> Service {
    let mut s = local_web();
    s.metadata.name = Some(name.into());
    spec(&mut s).cluster_ip = Some("10.96.0.11".into());
    spec(&mut s).cluster_ips = Some(vec!["10.96.0.11".into()]);
    s
}

#[test]
fn hostile_input_never_panics() {
    // Every combination of odd field values: the translation reports or serves,
    // and never panics or emits an out-of-range frontend.
    let ips = [
        "10.96.0.10",
        "fd00::10",
        "None",
        "",
        "garbage",
        "::ffff:10.0.0.1",
    ];
    let ports = [i32::MIN, -1, 0, 1, 80, 65535, 65536, i32::MAX];
    let protocols = ["TCP", "UDP", "SCTP", "", "tcp"];
    let addresses = ["10.244.0.11", "fd00::11", "", "x", "10.244.0.11.5"];
    let slice_ports = [None, Some(-5), Some(0), Some(8080), Some(70000)];
    let mut programmed = 0;
    for ip in ips {
        for port in ports {
            for protocol in protocols {
                let s = with(svc("demo", "web", ip, &[("http", port, protocol)]), |s| {
                    spec(s).session_affinity_config = Some(SessionAffinityConfig {
                        client_ip: Some(ClientIPConfig {
                            timeout_seconds: Some(port),
                        }),
                    });
                    spec(s).session_affinity = Some("ClientIP".into());
                });
                for address in addresses {
                    for slice_port in slice_ports {
                        let mut sl = web_slice("web-1", vec![ep(address)]);
                        sl.ports.as_mut().unwrap()[0].port = slice_port;
                        sl.address_type = if address.contains(':') {
                            "IPv6"
                        } else {
                            "IPv4"
                        }
                        .into();
                        let t = run(vec![s.clone()], vec![sl]);
                        for v in t.desired.services.values() {
                            assert!(v.frontend.port >= 1);
                            assert!(v.backends.iter().all(|b| b.port() >= 1));
                        }
                        if !t.desired.services.is_empty() {
                            programmed += 1;
                        }
                        // The one sane combination is served, with its backend.
                        if (ip, port, protocol, address, slice_port)
                            == ("10.96.0.10", 80, "TCP", "10.244.0.11", Some(8080))
                        {
                            let backends: Vec<String> = t
                                .desired
                                .services
                                .values()
                                .flat_map(|v| v.backends.iter().map(|b| b.to_string()))
                                .collect();
                            assert_eq!(backends, ["10.244.0.11:8080"], "{t:?}");
                        }
                    }
                }
            }
        }
    }
    // Odd values elsewhere must not take the good ones down with them: a port of 1
    // or 65535 with a valid address is served too.
    assert!(programmed > 1, "only {programmed} combinations served");
    // Objects with nothing set at all.
    let t = run(vec![Service::default()], vec![EndpointSlice::default()]);
    assert!(t.desired.services.is_empty());
    assert_eq!(t.skipped.len(), 2);
}

#[test]
fn hostile_external_fields_never_panic_or_widen_source_ranges() {
    let types = [None, Some("NodePort"), Some("LoadBalancer"), Some("Weird")];
    let node_ports = [
        None,
        Some(i32::MIN),
        Some(-1),
        Some(0),
        Some(30080),
        Some(65536),
    ];
    let external_ips = [
        "",
        "x",
        "0.0.0.0",
        "192.0.2.1",
        "::ffff:192.0.2.1",
        "2001:db8::1",
    ];
    let ranges: [&[&str]; 6] = [
        &[],
        &[""],
        &["x"],
        &["203.0.113.0/24", "10.0.0.0/33"],
        &["2001:db8::/32"],
        &["0.0.0.0/0"],
    ];
    let ingress = [
        ("192.0.2.100", None),
        ("192.0.2.100", Some("Proxy")),
        ("192.0.2.100", Some("Bogus")),
        ("0.0.0.0", None),
        ("", None),
        ("nope", None),
    ];
    let health = [None, Some(-1), Some(0), Some(32000), Some(70000)];
    let mut restricted = 0;
    for type_ in types {
        for node_port in node_ports {
            for eip in external_ips {
                for range in ranges {
                    for (ip, mode) in ingress {
                        for hc_port in health {
                            let s = with(web(), |s| {
                                spec(s).type_ = type_.map(Into::into);
                                spec(s).ports.as_mut().unwrap()[0].node_port = node_port;
                                spec(s).external_ips = Some(vec![eip.into()]);
                                spec(s).load_balancer_source_ranges =
                                    Some(range.iter().map(|r| r.to_string()).collect());
                                spec(s).health_check_node_port = hc_port;
                                spec(s).external_traffic_policy = Some("Local".into());
                                s.status = Some(ServiceStatus {
                                    load_balancer: Some(LoadBalancerStatus {
                                        ingress: Some(vec![LoadBalancerIngress {
                                            ip: Some(ip.into()),
                                            ip_mode: mode.map(Into::into),
                                            ..Default::default()
                                        }]),
                                    }),
                                    ..Default::default()
                                });
                            });
                            let t = run(vec![s], spread());
                            for v in t.desired.services.values() {
                                assert!(v.frontend.port >= 1);
                                // A Service that lists ranges never has an
                                // unrestricted external load balancer frontend.
                                if !range.is_empty()
                                    && v.kind == FrontendKind::LoadBalancer
                                    && v.frontend.scope == Scope::External
                                {
                                    assert!(!v.source_ranges.is_empty(), "{range:?}");
                                }
                                if v.frontend.scope == Scope::Internal {
                                    assert!(v.source_ranges.is_empty());
                                }
                            }
                            assert!(t.health_checks.iter().all(|h| h.port >= 1));
                            // A source range that parses restricts the external
                            // load balancer frontend to exactly itself.
                            if range == ["2001:db8::/32"] || range == ["0.0.0.0/0"] {
                                for v in t.desired.services.values().filter(|v| {
                                    v.kind == FrontendKind::LoadBalancer
                                        && v.frontend.scope == Scope::External
                                }) {
                                    let got: Vec<String> =
                                        v.source_ranges.iter().map(|r| r.to_string()).collect();
                                    assert_eq!(got, range, "{v:?}");
                                    restricted += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        restricted > 0,
        "no combination reached a restricted load balancer"
    );
}

/// The incremental translator agrees with the full translation after every step
/// of a long pseudo-random sequence of changes, conflicts included.
#[test]
fn incremental_translation_matches_full_translation_after_every_change() {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let node = node();
    let mut world = World::default();
    let mut translator = Translator::default();
    let mut applied = BTreeMap::new();
    let vips = ["10.96.0.10", "10.96.0.11", "10.96.0.12"];
    // Which interesting situations the sequence went through.
    let mut seen = [false; 6];
    for step in 0..2_000 {
        let n = rand(6);
        let name = format!("s{n}");
        let key = ("demo".to_string(), name.clone());
        let (services, slices) = match rand(4) {
            0 => {
                let vip = vips[rand(3) as usize];
                let port = 80 + rand(2) as i32;
                let mut svc = svc("demo", &name, vip, &[("http", port, "TCP")]);
                // Every kind of frontend, on few enough addresses and ports that
                // Services keep colliding.
                let node_port = 30080 + rand(2) as i32;
                svc = match rand(4) {
                    0 => svc,
                    1 => node_ports(svc, &[node_port]),
                    2 => {
                        let ip = ["192.0.2.100", "10.96.0.10"][rand(2) as usize];
                        let mut lb = load_balancer(node_ports(svc, &[node_port]), &[ip]);
                        if rand(2) == 0 {
                            spec(&mut lb).health_check_node_port = Some(32000 + rand(2) as i32);
                        }
                        let ranges = [None, Some("203.0.113.0/24"), Some("2001:db8::/32")];
                        if let Some(r) = ranges[rand(3) as usize] {
                            lb = source_ranges(lb, &[r]);
                        }
                        lb
                    }
                    _ => with(svc, |s| {
                        let ip = ["192.0.2.100", "10.96.0.11"][rand(2) as usize];
                        spec(s).external_ips = Some(vec![ip.into()]);
                    }),
                };
                if rand(2) == 0 {
                    svc = external_local(svc);
                }
                if rand(4) == 0 {
                    spec(&mut svc).internal_traffic_policy = Some("Local".into());
                }
                if rand(2) == 0 {
                    svc.metadata.creation_timestamp =
                        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            jiff::Timestamp::from_second(1_700_000_000 + rand(3) as i64).unwrap(),
                        ));
                }
                (vec![(key, Some(Arc::new(svc)))], vec![])
            }
            1 => (vec![(key, None)], vec![]),
            2 => {
                let owner = format!("s{}", rand(6));
                let slice_name = format!("sl{}", rand(8));
                let eps = (0..rand(4))
                    .map(|i| {
                        let e = ep(&format!("10.244.0.{}", 10 + i + rand(3)));
                        let e = on(e, ["node-a", "node-b"][rand(2) as usize]);
                        if rand(4) == 0 { terminating(e) } else { e }
                    })
                    .collect();
                let sl = slice(
                    "demo",
                    &slice_name,
                    &owner,
                    "IPv4",
                    &[("http", 8080, "TCP")],
                    eps,
                );
                (
                    vec![],
                    vec![(("demo".to_string(), slice_name), Some(Arc::new(sl)))],
                )
            }
            _ => (
                vec![],
                vec![(("demo".to_string(), format!("sl{}", rand(8))), None)],
            ),
        };
        let dirty = world.apply(services, slices);
        let changed = if rand(50) == 0 {
            translator.rebuild(&world, &node)
        } else {
            translator.update(&world, dirty, &node)
        };
        let full = translate(world.snapshot(), &node);
        assert_eq!(translator.desired(), &full.desired, "step {step}");
        assert_eq!(
            translator.health_checks(),
            full.health_checks,
            "step {step}"
        );
        seen[0] |= !full.health_checks.is_empty();
        seen[1] |= translator.no_local_endpoints_external() > 0;
        seen[2] |= full
            .skipped
            .iter()
            .any(|s| s.reason.contains("already served"));
        seen[3] |= full
            .desired
            .services
            .values()
            .any(|v| !v.source_ranges.is_empty());
        seen[4] |= full
            .skipped
            .iter()
            .any(|s| s.reason.contains("no IPv4 range"));
        seen[5] |= full
            .desired
            .services
            .values()
            .any(|v| v.kind == FrontendKind::ExternalIp);
        // The counters agree with a translator built from scratch.
        let mut fresh = Translator::default();
        fresh.rebuild(&world, &node);
        assert_eq!(
            (
                translator.no_local_endpoints(),
                translator.no_local_endpoints_external(),
                translator.skipped_count(),
            ),
            (
                fresh.no_local_endpoints(),
                fresh.no_local_endpoints_external(),
                fresh.skipped_count(),
            ),
            "step {step}"
        );
        // Applying only the reported frontends keeps a copy in step.
        for f in changed {
            match translator.desired().services.get(&f) {
                Some(vs) => applied.insert(f, vs.clone()),
                None => applied.remove(&f),
            };
        }
        assert_eq!(
            applied, full.desired.services,
            "step {step}: a change was not reported"
        );
    }
    assert_eq!(seen, [true; 6], "the sequence missed a situation");
}

#[test]
fn the_clusterip_example_loads_and_translates_to_two_frontends() {
    let dir = TempDir::new();
    let text = std::fs::read_to_string(examples().join("clusterip.yaml")).unwrap();
    assert!(
        text.contains("\n  sessionAffinity: None\n"),
        "the demo rewrites this line"
    );
    dir.write("clusterip.yaml", &text);
    let (snapshot, errors) = source(&dir).load();
    assert_eq!(errors, []);
    let node = crate::translate::NodeContext {
        name: "node-a".into(),
        zone: None,
        ipv4: true,
        ipv6: true,
    };
    let t = crate::translate::translate(&snapshot, &node);
    assert_eq!(t.skipped, []);
    let shown: Vec<String> = t
        .desired
        .services
        .values()
        .map(|v| {
            let backends: Vec<String> = v.backends.iter().map(ToString::to_string).collect();
            format!("{} {} -> {}", v.name, v.frontend, backends.join(" "))
        })
        .collect();
    assert_eq!(
        shown,
        [
            "demo/echo:dns 10.96.0.10:53/UDP -> 10.244.0.11:5353 10.244.0.12:5353 10.244.0.13:5353",
            "demo/echo:http 10.96.0.10:80/TCP -> 10.244.0.11:8080 10.244.0.12:8080 10.244.0.13:8080",
        ]
    );
}
