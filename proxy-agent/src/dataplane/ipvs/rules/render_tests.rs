//! Golden tests: the rendered text as iptables-restore will read it. A change to the
//! rules shows here as a diff of the golden file (rewrite it only after reading it).

use super::*;
use crate::dataplane::ipvs::sets::KUBE_SETS;

/// The agent's default: no cluster CIDR, no masquerade-all, INVALID dropped.
fn default() -> RuleOptions {
    RuleOptions {
        drop_invalid: true,
        ..RuleOptions::default()
    }
}

fn cidrs(list: &[&str]) -> Vec<IpNetwork> {
    list.iter().map(|c| c.parse().expect("a CIDR")).collect()
}

#[track_caller]
fn golden(got: &str, want: &str) {
    if got != want {
        panic!("rendered rules differ from the golden file; got:\n{got}");
    }
}

#[test]
fn default_v4() {
    golden(
        &render(false, &default()),
        include_str!("golden/v4_default.rules"),
    );
}

#[test]
fn default_v6_uses_the_kube_6_sets_and_ipv6_loopback() {
    golden(
        &render(true, &default()),
        include_str!("golden/v6_default.rules"),
    );
}

#[test]
fn masquerade_all_marks_every_cluster_ip_connection_whatever_the_cidrs() {
    let opts = RuleOptions {
        masquerade_all: true,
        cluster_cidrs: cidrs(&["10.244.0.0/16"]),
        ..default()
    };
    golden(
        &render(false, &opts),
        include_str!("golden/v4_masquerade_all.rules"),
    );
}

#[test]
fn a_cluster_cidr_per_family_marks_cluster_ip_traffic_from_outside_it() {
    let opts = RuleOptions {
        cluster_cidrs: cidrs(&["10.244.0.0/16", "fd00:10:244::/56"]),
        ..default()
    };
    golden(
        &render(false, &opts),
        include_str!("golden/v4_cluster_cidr.rules"),
    );
    golden(
        &render(true, &opts),
        include_str!("golden/v6_cluster_cidr.rules"),
    );
}

#[test]
fn several_cluster_cidrs_of_a_family_return_from_a_chain_of_their_own() {
    let opts = RuleOptions {
        cluster_cidrs: cidrs(&["10.244.0.0/16", "10.245.0.0/16", "fd00:10:244::/56"]),
        ..default()
    };
    golden(
        &render(false, &opts),
        include_str!("golden/v4_two_cluster_cidrs.rules"),
    );
    // One IPv6 CIDR: kube-proxy's single rule, no extra chain.
    golden(
        &render(true, &opts),
        include_str!("golden/v6_cluster_cidr.rules"),
    );
}

#[test]
fn liberal_conntrack_leaves_the_invalid_drop_out() {
    let opts = RuleOptions {
        drop_invalid: false,
        ..default()
    };
    golden(
        &render(false, &opts),
        include_str!("golden/v4_liberal.rules"),
    );
    let invalid = "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n";
    assert!(!render(true, &opts).contains(invalid));
    assert_eq!(render(true, &default()).matches(invalid).count(), 1);
}

#[test]
fn counted_invalid_drops_add_to_kube_proxys_nfacct_object_and_nothing_else_changes() {
    let counted = RuleOptions {
        count_invalid: true,
        ..default()
    };
    for v6 in [false, true] {
        let loop_back = sets::LOOP_BACK.name_for(v6);
        let want = render(v6, &default())
            .replace(
                "--ctstate INVALID -j DROP",
                "--ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP",
            )
            .replace(
                &format!("{loop_back} src,src,src -j DROP"),
                &format!(
                    "{loop_back} src,src,src -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP"
                ),
            );
        let got = render(v6, &counted);
        assert_eq!(got, want, "v6={v6}");
        assert_eq!(got.matches("--nfacct-name").count(), 2, "v6={v6}: {got}");
    }
    // No rule, no counting.
    let liberal = RuleOptions {
        drop_invalid: false,
        ..counted
    };
    assert!(!render(false, &liberal).contains("nfacct"));
}

#[test]
fn every_set_is_matched_in_its_family_and_no_other() {
    for v6 in [false, true] {
        let text = render(v6, &default());
        for set in KUBE_SETS {
            let name = format!("--match-set {} ", set.name_for(v6));
            assert!(text.contains(&name), "{name} in v6={v6}");
            let other = format!("--match-set {} ", set.name_for(!v6));
            assert!(!text.contains(&other), "{other} in v6={v6}");
        }
    }
}

#[test]
fn each_table_declares_its_chains_and_commits() {
    let text = render(false, &default());
    let tables: Vec<&str> = text.split("COMMIT\n").collect();
    assert_eq!(tables.len(), 3, "two tables and nothing after: {text}");
    assert_eq!(tables[2], "");
    for (table, chain) in CHAINS {
        let i = usize::from(table == Table::Filter);
        assert!(tables[i].starts_with(&format!("*{table}\n")));
        assert!(
            tables[i].contains(&format!("\n:{chain} - [0:0]\n")),
            "{chain}"
        );
    }
}

#[test]
fn set_names_are_cut_to_what_ipset_takes_as_kube_proxy_cuts_them() {
    assert_eq!(
        sets::LOAD_BALANCER_SOURCE_CIDR.name_for(true),
        "KUBE-6-LOAD-BALANCER-SOURCE-CID"
    );
    assert_eq!(
        sets::LOAD_BALANCER_SOURCE_CIDR.name_for(false),
        "KUBE-LOAD-BALANCER-SOURCE-CIDR"
    );
    for set in KUBE_SETS {
        assert!(set.name_for(true).len() <= 31);
    }
}
