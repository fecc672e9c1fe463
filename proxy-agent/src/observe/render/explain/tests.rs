//! Golden files of `proxyctl explain`, on explanations the real decision makes from
//! fixed maps (`observe/golden/explain_*.txt`).

use super::render_explain;
use crate::dataplane::ebpf::inspect::explain::decide::decide;
use crate::dataplane::ebpf::inspect::explain::fixtures::{World, ext, pod};
use crate::observe::render::golden;
use proxy_common as pc;
use proxy_common::ct_state;

#[test]
fn a_pod_pinned_by_affinity_shows_every_check_and_the_chosen_backend() {
    let w = World::new()
        .web(pc::FRONTEND_F_AFFINITY)
        .pod_affinity(1, "10.244.0.12:8080", 42);
    golden::check(
        "explain_pod_affinity.txt",
        &render_explain(&decide(&pod("10.96.0.10:80"), &w.m)),
    );
}

#[test]
fn a_source_outside_the_ranges_is_shown_dropped() {
    let w = World::new()
        .nodeport(
            &["10.244.1.11:8080", "10.244.2.11:8080"],
            pc::FRONTEND_F_SOURCE_RANGES,
        )
        .source_range(2, "198.18.0.0/15");
    golden::check(
        "explain_source_denied.txt",
        &render_explain(&decide(&ext("192.0.2.100", "192.0.2.1:30080"), &w.m)),
    );
}

#[test]
fn no_usable_endpoint_and_etp_local_are_explained() {
    let none = World::new().frontend(
        1,
        "test/web:http",
        "10.96.0.10:80",
        crate::model::Protocol::Tcp,
        crate::model::Scope::Internal,
        crate::model::FrontendKind::ClusterIp,
        &[],
        0,
    );
    golden::check(
        "explain_no_endpoints.txt",
        &render_explain(&decide(&pod("10.96.0.10:80"), &none.m)),
    );
    let local = World::new().web(0).nodeport(&[], 0);
    golden::check(
        "explain_etp_local.txt",
        &render_explain(&decide(&ext("192.0.2.100", "192.0.2.1:30080"), &local.m)),
    );
}

#[test]
fn a_miss_and_a_tracked_flow_are_explained() {
    let w = World::new().web(0);
    golden::check(
        "explain_no_frontend.txt",
        &render_explain(&decide(&pod("10.96.0.10:443"), &w.m)),
    );
    let w = World::new()
        .nodeport(&["10.244.1.11:8080", "10.244.2.11:8080"], 0)
        .flow(
            "192.0.2.100:40000",
            "192.0.2.1:30080",
            pc::proto::TCP,
            2,
            "10.244.2.11:8080",
            ct_state::ESTABLISHED,
            12,
            true,
        );
    golden::check(
        "explain_conntrack.txt",
        &render_explain(&decide(&ext("192.0.2.100:40000", "192.0.2.1:30080"), &w.m)),
    );
}
