//! The decision, table by table: each case is a small set of maps, a flow, and what
//! the programs would do with it (verdict, choice, and the outcome of every check in
//! order).

#![allow(clippy::unwrap_used, reason = "tests")]

use std::net::SocketAddr;

use proxy_common as pc;
use proxy_common::{ct_state, proto};

use super::decide::{ClientNetns, Query, decide};
use super::fixtures::{COOKIE, World, ext, pod, query, sa};
use super::view::{Choice, Explanation, FlowPath, Outcome, Verdict};
use crate::model::{FrontendKind, Protocol, Scope};

fn choice(x: &Explanation) -> String {
    match &x.choice {
        Choice::None => "none".into(),
        Choice::Conntrack { backend, .. } => format!("conntrack {backend}"),
        Choice::Affinity { backend, .. } => format!("affinity {backend}"),
        Choice::Random { per } => format!("random per {per}"),
        Choice::Unknown { .. } => "unknown".into(),
    }
}

fn outcomes(x: &Explanation) -> Vec<(&'static str, Outcome)> {
    x.checks.iter().map(|c| (c.check, c.outcome)).collect()
}

use Outcome::{Fail, Pass, Pin, Skip, Unknown};

struct Case {
    name: &'static str,
    world: World,
    query: Query,
    verdict: Verdict,
    choice: &'static str,
    checks: &'static [(&'static str, Outcome)],
    /// Words the reason must contain.
    reason: &'static str,
}

fn cases() -> Vec<Case> {
    let np3 = ["10.244.1.11:8080", "10.244.1.12:8080", "10.244.2.11:8080"];
    let pod_ok: &[(&str, Outcome)] = &[
        ("conntrack", Skip),
        ("frontend", Pass),
        ("backends", Pass),
        ("source ranges", Skip),
        ("affinity", Skip),
    ];
    let mut udp = query(FlowPath::Pod, "10.244.0.2", "10.96.0.10:53", Protocol::Udp);
    udp.netns = ClientNetns::Unknown("not needed".into());
    let mut unknown_ns = pod("10.96.0.10:80");
    unknown_ns.netns = ClientNetns::Unknown("2 network namespaces have 10.244.0.2".into());
    vec![
        Case {
            name: "a pod's TCP connection to a ClusterIP picks a slot at random",
            world: World::new().web(0),
            query: pod("10.96.0.10:80"),
            verdict: Verdict::Translated,
            choice: "random per connection",
            checks: pod_ok,
            reason: "one of 3 backends",
        },
        Case {
            name: "a pod's UDP socket is balanced by its cookie's hash",
            world: World::new().frontend(
                5,
                "test/dns:dns",
                "10.96.0.10:53",
                Protocol::Udp,
                Scope::Internal,
                FrontendKind::ClusterIp,
                &["10.244.0.11:5353"],
                0,
            ),
            query: udp,
            verdict: Verdict::Translated,
            choice: "random per socket cookie hash",
            checks: pod_ok,
            reason: "socket's cookie",
        },
        Case {
            name: "an address that is no frontend is left untouched, naming the near misses",
            world: World::new().web(0),
            query: pod("10.96.0.10:443"),
            verdict: Verdict::Passed,
            choice: "none",
            checks: &[("conntrack", Skip), ("frontend", Fail)],
            reason: "untouched",
        },
        Case {
            name: "a pod does not reach an external-only frontend",
            world: World::new().nodeport(&np3, 0),
            query: pod("192.0.2.1:30080"),
            verdict: Verdict::Passed,
            choice: "none",
            checks: &[("conntrack", Skip), ("frontend", Fail)],
            reason: "not a service address",
        },
        Case {
            name: "a frontend without backends refuses a pod at once",
            world: World::new().frontend(
                1,
                "test/web:http",
                "10.96.0.10:80",
                Protocol::Tcp,
                Scope::Internal,
                FrontendKind::ClusterIp,
                &[],
                0,
            ),
            query: pod("10.96.0.10:80"),
            verdict: Verdict::Refused,
            choice: "none",
            checks: &[("conntrack", Skip), ("frontend", Pass), ("backends", Fail)],
            reason: "terminating",
        },
        Case {
            name: "a fresh affinity of the pod's namespace pins its backend",
            world: World::new().web(pc::FRONTEND_F_AFFINITY).pod_affinity(
                1,
                "10.244.0.12:8080",
                30,
            ),
            query: pod("10.96.0.10:80"),
            verdict: Verdict::Translated,
            choice: "affinity 10.244.0.12:8080",
            checks: &[
                ("conntrack", Skip),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Skip),
                ("affinity", Pin),
            ],
            reason: "ClientIP affinity pins it",
        },
        Case {
            name: "an affinity past its timeout is ignored",
            world: World::new().web(pc::FRONTEND_F_AFFINITY).pod_affinity(
                1,
                "10.244.0.12:8080",
                601,
            ),
            query: pod("10.96.0.10:80"),
            verdict: Verdict::Translated,
            choice: "random per connection",
            checks: &[
                ("conntrack", Skip),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Skip),
                ("affinity", Pass),
            ],
            reason: "at random",
        },
        Case {
            name: "an affinity to a backend that left the service is ignored",
            world: World::new()
                .web(pc::FRONTEND_F_AFFINITY)
                .pod_affinity(1, "10.244.0.12:8080", 1)
                .not_member(1, "10.244.0.12:8080"),
            query: pod("10.96.0.10:80"),
            verdict: Verdict::Translated,
            choice: "random per connection",
            checks: &[
                ("conntrack", Skip),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Skip),
                ("affinity", Pass),
            ],
            reason: "at random",
        },
        Case {
            name: "another pod's affinity does not pin this one",
            world: World::new()
                .web(pc::FRONTEND_F_AFFINITY)
                .pod_affinity(1, "10.244.0.12:8080", 1),
            query: Query {
                netns: ClientNetns::Known {
                    cookie: COOKIE + 1,
                    from: "/run/netns/other".into(),
                },
                ..pod("10.96.0.10:80")
            },
            verdict: Verdict::Translated,
            choice: "random per connection",
            checks: &[
                ("conntrack", Skip),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Skip),
                ("affinity", Pass),
            ],
            reason: "at random",
        },
        Case {
            name: "without the pod's namespace a remembered affinity cannot be told",
            world: World::new()
                .web(pc::FRONTEND_F_AFFINITY)
                .pod_affinity(1, "10.244.0.12:8080", 1),
            query: unknown_ns,
            verdict: Verdict::Translated,
            choice: "unknown",
            checks: &[
                ("conntrack", Skip),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Skip),
                ("affinity", Unknown),
            ],
            reason: "may pin it",
        },
        Case {
            name: "source ranges are not checked at the socket layer",
            world: World::new()
                .web(pc::FRONTEND_F_SOURCE_RANGES)
                .source_range(1, "198.18.0.0/15"),
            query: pod("10.96.0.10:80"),
            verdict: Verdict::Translated,
            choice: "random per connection",
            checks: pod_ok,
            reason: "at random",
        },
        Case {
            name: "a node address finds the NodePort keyed by the unspecified address",
            world: World::new().nodeport(&np3, 0),
            query: ext("192.0.2.100", "192.0.2.1:30080"),
            verdict: Verdict::Translated,
            choice: "random per connection",
            checks: &[
                ("conntrack", Skip),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Skip),
                ("affinity", Skip),
            ],
            reason: "one of 3",
        },
        Case {
            name: "a source outside the ranges is dropped",
            world: World::new()
                .nodeport(&np3, pc::FRONTEND_F_SOURCE_RANGES)
                .source_range(2, "198.18.0.0/15"),
            query: ext("192.0.2.100", "192.0.2.1:30080"),
            verdict: Verdict::Dropped,
            choice: "none",
            checks: &[
                ("conntrack", Skip),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Fail),
            ],
            reason: "outside the service's loadBalancerSourceRanges",
        },
        Case {
            name: "a source inside a range's prefix passes",
            world: World::new()
                .nodeport(&np3, pc::FRONTEND_F_SOURCE_RANGES)
                .source_range(2, "198.18.0.0/15")
                .source_range(2, "192.0.2.96/28"),
            query: ext("192.0.2.100", "192.0.2.1:30080"),
            verdict: Verdict::Translated,
            choice: "random per connection",
            checks: &[
                ("conntrack", Skip),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Pass),
                ("affinity", Skip),
            ],
            reason: "translated",
        },
        Case {
            name: "an empty external frontend beside a served ClusterIP is ETP Local without local endpoints",
            world: World::new().web(0).nodeport(&[], 0),
            query: ext("192.0.2.100", "192.0.2.1:30080"),
            verdict: Verdict::Dropped,
            choice: "none",
            checks: &[
                ("conntrack", Skip),
                ("frontend", Pass),
                ("backends", Fail),
                ("traffic policy", Fail),
            ],
            reason: "externalTrafficPolicy: Local",
        },
        Case {
            name: "an empty external frontend alone has no usable endpoint",
            world: World::new().nodeport(&[], 0),
            query: ext("192.0.2.100", "192.0.2.1:30080"),
            verdict: Verdict::Dropped,
            choice: "none",
            checks: &[("conntrack", Skip), ("frontend", Pass), ("backends", Fail)],
            reason: "no usable endpoint",
        },
        Case {
            name: "the backend count is checked before the source ranges",
            world: World::new()
                .nodeport(&[], pc::FRONTEND_F_SOURCE_RANGES)
                .source_range(2, "198.18.0.0/15"),
            query: ext("192.0.2.100", "192.0.2.1:30080"),
            verdict: Verdict::Dropped,
            choice: "none",
            checks: &[("conntrack", Skip), ("frontend", Pass), ("backends", Fail)],
            reason: "no usable endpoint",
        },
        Case {
            name: "from outside, a ClusterIP routed to the node is served by its internal frontend",
            world: World::new().web(0),
            query: ext("192.0.2.100", "10.96.0.10:80"),
            verdict: Verdict::Translated,
            choice: "random per connection",
            checks: &[
                ("conntrack", Skip),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Skip),
                ("affinity", Skip),
            ],
            reason: "translated",
        },
        Case {
            name: "an external client's fresh affinity pins its backend",
            world: World::new()
                .nodeport(&np3, pc::FRONTEND_F_AFFINITY)
                .client_affinity("192.0.2.100", 2, "10.244.2.11:8080", 5),
            query: ext("192.0.2.100", "192.0.2.1:30080"),
            verdict: Verdict::Translated,
            choice: "affinity 10.244.2.11:8080",
            checks: &[
                ("conntrack", Skip),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Skip),
                ("affinity", Pin),
            ],
            reason: "affinity",
        },
        Case {
            name: "a tracked assured flow of the tuple carries the connection",
            world: World::new().nodeport(&np3, 0).flow(
                "192.0.2.100:40000",
                "192.0.2.1:30080",
                proto::TCP,
                2,
                "10.244.1.12:8080",
                ct_state::ESTABLISHED,
                10,
                true,
            ),
            query: ext("192.0.2.100:40000", "192.0.2.1:30080"),
            verdict: Verdict::Translated,
            choice: "conntrack 10.244.1.12:8080",
            checks: &[("conntrack", Pin)],
            reason: "tracked flow",
        },
        Case {
            name: "an unassured flow is found in the other table",
            world: World::new().nodeport(&np3, 0).flow(
                "192.0.2.100:40000",
                "192.0.2.1:30080",
                proto::TCP,
                2,
                "10.244.1.12:8080",
                ct_state::OPENING,
                1,
                false,
            ),
            query: ext("192.0.2.100:40000", "192.0.2.1:30080"),
            verdict: Verdict::Translated,
            choice: "conntrack 10.244.1.12:8080",
            checks: &[("conntrack", Pin)],
            reason: "tracked flow",
        },
        Case {
            name: "a closing TCP flow is replaced by a new one",
            world: World::new().nodeport(&np3, 0).flow(
                "192.0.2.100:40000",
                "192.0.2.1:30080",
                proto::TCP,
                2,
                "10.244.1.12:8080",
                ct_state::CLOSING,
                1,
                true,
            ),
            query: ext("192.0.2.100:40000", "192.0.2.1:30080"),
            verdict: Verdict::Translated,
            choice: "random per connection",
            checks: &[
                ("conntrack", Pass),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Skip),
                ("affinity", Skip),
            ],
            reason: "at random",
        },
        Case {
            name: "an expired flow is replaced by a new one",
            world: World::new().nodeport(&np3, 0).flow(
                "192.0.2.100:40000",
                "192.0.2.1:30080",
                proto::TCP,
                2,
                "10.244.1.12:8080",
                ct_state::OPENING,
                31,
                false,
            ),
            query: ext("192.0.2.100:40000", "192.0.2.1:30080"),
            verdict: Verdict::Translated,
            choice: "random per connection",
            checks: &[
                ("conntrack", Pass),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Skip),
                ("affinity", Skip),
            ],
            reason: "at random",
        },
        Case {
            name: "a UDP flow whose backend left the service starts over",
            world: World::new()
                .frontend(
                    3,
                    "test/dns:dns",
                    "0.0.0.0:30053",
                    Protocol::Udp,
                    Scope::External,
                    FrontendKind::NodePort,
                    &["10.244.1.11:5353"],
                    0,
                )
                .flow(
                    "192.0.2.100:40000",
                    "192.0.2.1:30053",
                    proto::UDP,
                    3,
                    "10.244.1.11:5353",
                    ct_state::ESTABLISHED,
                    1,
                    true,
                )
                .not_member(3, "10.244.1.11:5353"),
            query: query(
                FlowPath::External,
                "192.0.2.100:40000",
                "192.0.2.1:30053",
                Protocol::Udp,
            ),
            verdict: Verdict::Translated,
            choice: "random per connection",
            checks: &[
                ("conntrack", Pass),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Skip),
                ("affinity", Skip),
            ],
            reason: "at random",
        },
        Case {
            name: "a port with no tracked flow opens a new one",
            world: World::new().nodeport(&np3, 0),
            query: ext("192.0.2.100:40001", "192.0.2.1:30080"),
            verdict: Verdict::Translated,
            choice: "random per connection",
            checks: &[
                ("conntrack", Pass),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Skip),
                ("affinity", Skip),
            ],
            reason: "at random",
        },
        Case {
            name: "a missing slot is reported, the others still serve",
            world: World::new().web(0).drop_slot(1, 1),
            query: pod("10.96.0.10:80"),
            verdict: Verdict::Translated,
            choice: "random per connection",
            checks: &[
                ("conntrack", Skip),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Skip),
                ("affinity", Skip),
                ("slots", Fail),
            ],
            reason: "one of 2",
        },
        Case {
            name: "with every slot missing the connection passes untranslated",
            world: World::new()
                .web(0)
                .drop_slot(1, 0)
                .drop_slot(1, 1)
                .drop_slot(1, 2),
            query: pod("10.96.0.10:80"),
            verdict: Verdict::Passed,
            choice: "none",
            checks: &[
                ("conntrack", Skip),
                ("frontend", Pass),
                ("backends", Pass),
                ("source ranges", Skip),
                ("affinity", Skip),
                ("slots", Fail),
            ],
            reason: "untranslated",
        },
    ]
}

#[test]
fn every_case_decides_as_the_programs_would() {
    let mut failures = Vec::new();
    for c in cases() {
        let x = decide(&c.query, &c.world.m);
        let got = (x.verdict, choice(&x), outcomes(&x));
        let want = (c.verdict, c.choice.to_owned(), c.checks.to_vec());
        if got != want || !x.reason.contains(c.reason) {
            failures.push(format!(
                "{}:\n  got  {got:?}\n  want {want:?}\n  reason {:?} (want {:?})",
                c.name, x.reason, c.reason
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_affinity_backend_is_the_chosen_candidate_and_slots_are_counted() {
    let w = World::new()
        .frontend(
            1,
            "test/web:http",
            "10.96.0.10:80",
            Protocol::Tcp,
            Scope::Internal,
            FrontendKind::ClusterIp,
            &["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.11:8080"],
            pc::FRONTEND_F_AFFINITY,
        )
        .pod_affinity(1, "10.244.0.12:8080", 3);
    let x = decide(&pod("10.96.0.10:80"), &w.m);
    let c: Vec<(SocketAddr, u32, bool)> = x
        .candidates
        .iter()
        .map(|c| (c.backend, c.slots, c.chosen))
        .collect();
    assert_eq!(
        c,
        [
            (sa("10.244.0.11:8080"), 2, false),
            (sa("10.244.0.12:8080"), 1, true)
        ]
    );
    assert_eq!(
        x.choice,
        Choice::Affinity {
            backend: sa("10.244.0.12:8080"),
            idle_s: 3,
            timeout_s: 600
        }
    );
    let f = x.frontend.unwrap();
    assert_eq!(
        (
            f.frontend.as_str(),
            f.kind.as_str(),
            f.scope.as_str(),
            f.service.as_str()
        ),
        (
            "10.96.0.10:80/TCP",
            "ClusterIP",
            "internal",
            "test/web:http"
        )
    );
}

#[test]
fn a_miss_names_the_frontends_at_the_address_and_a_nodeport_match_says_so() {
    let w = World::new().web(0).nodeport(&["10.244.1.11:8080"], 0);
    let x = decide(&pod("10.96.0.10:443"), &w.m);
    assert_eq!(
        x.notes,
        ["frontends at this address: 10.96.0.10:80/TCP"],
        "{x:?}"
    );
    let x = decide(&pod("192.0.2.1:30080"), &w.m);
    assert!(
        x.notes.iter().any(|n| n.contains("*:30080/TCP (external)")),
        "the external NodePort is named: {x:?}"
    );
    let x = decide(&ext("192.0.2.100", "192.0.2.1:30080"), &w.m);
    assert!(x.frontend.as_ref().unwrap().via_node_address, "{x:?}");
    // Not a node address: the NodePort is not reachable there.
    let x = decide(&ext("192.0.2.100", "192.0.2.9:30080"), &w.m);
    assert_eq!(x.verdict, Verdict::Passed, "{x:?}");
}

#[test]
fn exit_codes_tell_translated_untouched_and_refused_apart() {
    assert_eq!(Verdict::Translated.exit_code(), 0);
    assert_eq!(Verdict::Passed.exit_code(), 3);
    assert_eq!(Verdict::Refused.exit_code(), 4);
    assert_eq!(Verdict::Dropped.exit_code(), 4);
}
