//! The iptables-restore input of the IPVS mode's constant rules: what kube-proxy's
//! `writeIptablesRules` writes (pkg/proxy/ipvs/proxier.go), for tables `nat` and
//! `filter`. Pure: the same options give the same text.
//!
//! Unlike kube-proxy, which leaves out the rules of an empty set, every rule is
//! written whatever the sets hold: the backend creates every set at start, so the
//! rules never change while services do, and applying them is idempotent.
//!
//! The path of a service packet through them:
//!
//! - nat PREROUTING/OUTPUT -> `KUBE-SERVICES`: a packet to a ClusterIP from outside
//!   the cluster CIDRs (or any, with masquerade-all), to an externalIP, a NodePort or
//!   a load balancer IP gets the mark 0x4000 (`KUBE-MARK-MASQ`), except for the
//!   `-LOCAL` sets (externalTrafficPolicy: Local keeps the client's address);
//! - nat POSTROUTING -> `KUBE-POSTROUTING`: hairpin connections (`KUBE-LOOP-BACK`) and
//!   marked packets are masqueraded;
//! - filter INPUT/FORWARD -> `KUBE-PROXY-FIREWALL`: a load balancer IP with source
//!   ranges is reached only from them;
//! - filter INPUT -> `KUBE-IPVS-FILTER`: an INVALID segment from an endpoint is
//!   dropped (unless `drop_invalid` is off; our addition, see there); a NEW connection
//!   to a VIP on a port no set holds is rejected; `KUBE-NODE-PORT` accepts health check node ports;
//! - filter FORWARD -> `KUBE-FORWARD`: marked and established traffic is forwarded,
//!   INVALID packets dropped (unless `drop_invalid` is off).

use std::fmt::Write;

use ipnetwork::IpNetwork;

use super::chains::{
    CHAINS, CLUSTER_IP_MASQ, FORWARD, IPVS_FILTER, LOAD_BALANCER, MARK_MASQ, NODE_PORT,
    POSTROUTING, PROXY_FIREWALL, SERVICES, SOURCE_RANGES_FIREWALL, TABLES, Table,
};
use crate::dataplane::ipvs::RuleOptions;
use crate::dataplane::ipvs::sets::{self, KubeSet};

/// The comment of the rule dropping INVALID replies of endpoints to the node.
pub const INVALID_FROM_ENDPOINTS: &str = "INVALID replies of endpoints to masqueraded connections";

/// The nfacct object the INVALID drop rules add to (kube-proxy's name): read back as
/// `kubeproxy_iptables_ct_state_invalid_dropped_packets_total`.
pub const INVALID_DROPPED_COUNTER: &str = "ct_state_invalid_dropped_pkts";

/// kube-proxy's masquerade mark (`--iptables-masquerade-bit` 14).
pub const MASQ_MARK: &str = "0x4000";

/// The iptables-restore input (for `iptables-restore --noflush`, or ip6tables' with
/// `v6`): the chains declared, which flushes them, and their rules.
pub fn render(v6: bool, opts: &RuleOptions) -> String {
    let cidrs: Vec<&IpNetwork> = opts
        .cluster_cidrs
        .iter()
        .filter(|c| c.is_ipv6() == v6)
        .collect();
    let mut r = Rules {
        v6,
        out: String::new(),
    };
    for table in TABLES {
        r.line(&format!("*{table}"));
        for (t, chain) in CHAINS {
            if t == table {
                r.line(&format!(":{chain} - [0:0]"));
            }
        }
        match table {
            Table::Nat => {
                if !opts.masquerade_all && cidrs.len() > 1 {
                    r.line(&format!(":{CLUSTER_IP_MASQ} - [0:0]"));
                }
                r.nat(opts.masquerade_all, &cidrs);
            }
            Table::Filter => r.filter(opts),
        }
        r.line("COMMIT");
    }
    r.out
}

struct Rules {
    v6: bool,
    out: String,
}

impl Rules {
    fn line(&mut self, line: &str) {
        self.out.push_str(line);
        self.out.push('\n');
    }

    /// `-A CHAIN [-p PROTO] -m comment --comment "HOLDS" -m set --match-set SET
    /// FLAGS [EXTRA] -j TARGET`: a rule on a set, commented as kube-proxy does.
    fn on_set(
        &mut self,
        chain: &str,
        proto: Option<&str>,
        set: &KubeSet,
        flags: &str,
        extra: &str,
        target: &str,
    ) {
        let mut l = format!("-A {chain}");
        if let Some(p) = proto {
            let _ = write!(l, " -p {p}");
        }
        let _ = write!(
            l,
            " -m comment --comment \"{}\" -m set --match-set {} {flags}",
            set.holds,
            set.name_for(self.v6)
        );
        if !extra.is_empty() {
            let _ = write!(l, " {extra}");
        }
        let _ = write!(l, " -j {target}");
        self.line(&l);
    }

    /// `-A CHAIN -m set --match-set SET FLAGS -j TARGET`, uncommented.
    fn bare_set(&mut self, chain: &str, set: &KubeSet, flags: &str, target: &str) {
        let name = set.name_for(self.v6);
        self.line(&format!(
            "-A {chain} -m set --match-set {name} {flags} -j {target}"
        ));
    }

    fn nat(&mut self, masquerade_all: bool, cidrs: &[&IpNetwork]) {
        // KUBE-SERVICES: the node talking to itself over loopback is no service's.
        let lo = if self.v6 { "::1/128" } else { "127.0.0.0/8" };
        self.line(&format!("-A {SERVICES} -s {lo} -j RETURN"));
        self.on_set(
            SERVICES,
            None,
            &sets::LOAD_BALANCER,
            "dst,dst",
            "",
            LOAD_BALANCER,
        );
        self.cluster_ip_masquerade(masquerade_all, cidrs);
        // externalIPs: masqueraded unless Local; accepted in nat when the packet comes
        // from off the machine (not a bridged pod, not a local process) or is to an
        // address local here.
        self.on_set(SERVICES, None, &sets::EXTERNAL_IP, "dst,dst", "", MARK_MASQ);
        for set in [&sets::EXTERNAL_IP, &sets::EXTERNAL_IP_LOCAL] {
            self.on_set(
                SERVICES,
                None,
                set,
                "dst,dst",
                "-m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL",
                "ACCEPT",
            );
            self.on_set(
                SERVICES,
                None,
                set,
                "dst,dst",
                "-m addrtype --dst-type LOCAL",
                "ACCEPT",
            );
        }
        self.line(&format!(
            "-A {SERVICES} -m addrtype --dst-type LOCAL -j {NODE_PORT}"
        ));
        // Accepted here so that no later nat rule of someone else's touches them.
        self.bare_set(SERVICES, &sets::CLUSTER_IP, "dst,dst", "ACCEPT");
        self.bare_set(SERVICES, &sets::LOAD_BALANCER, "dst,dst", "ACCEPT");

        // KUBE-POSTROUTING: hairpin (an endpoint reaching itself through its
        // service) first, then what was marked; the mark is cleared so that a packet
        // traversing the stack again is not masqueraded twice.
        self.on_set(
            POSTROUTING,
            None,
            &sets::LOOP_BACK,
            "dst,dst,src",
            "",
            "MASQUERADE",
        );
        self.line(&format!(
            "-A {POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
        ));
        self.line(&format!("-A {POSTROUTING} -j MARK --xor-mark {MASQ_MARK}"));
        self.line(&format!(
            "-A {POSTROUTING} -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
        ));

        // KUBE-NODE-PORT (reached for local destinations): a Local service's port
        // returns before the catch-all marks it.
        for (proto, local, all) in [
            ("tcp", &sets::NODE_PORT_LOCAL_TCP, &sets::NODE_PORT_TCP),
            ("udp", &sets::NODE_PORT_LOCAL_UDP, &sets::NODE_PORT_UDP),
        ] {
            self.on_set(NODE_PORT, Some(proto), local, "dst", "", "RETURN");
            self.on_set(NODE_PORT, Some(proto), all, "dst", "", MARK_MASQ);
        }

        // KUBE-LOAD-BALANCER: Local services keep the client address.
        self.on_set(
            LOAD_BALANCER,
            None,
            &sets::LOAD_BALANCER_LOCAL,
            "dst,dst",
            "",
            "RETURN",
        );
        self.line(&format!("-A {LOAD_BALANCER} -j {MARK_MASQ}"));

        self.line(&format!("-A {MARK_MASQ} -j MARK --or-mark {MASQ_MARK}"));

        if !masquerade_all && cidrs.len() > 1 {
            for cidr in cidrs {
                self.line(&format!("-A {CLUSTER_IP_MASQ} -s {cidr} -j RETURN"));
            }
            self.line(&format!("-A {CLUSTER_IP_MASQ} -j {MARK_MASQ}"));
        }
    }

    /// kube-proxy's three cases: every ClusterIP connection with masquerade-all;
    /// those from outside the cluster CIDRs (off-node clients routed to a VIP may
    /// bounce to another node); without either, node connections whose source is a
    /// VIP (the kernel picks the VIP, local on the dummy interface, as the source
    /// towards a VIP, and a remote backend's reply to it would stay on its node).
    fn cluster_ip_masquerade(&mut self, masquerade_all: bool, cidrs: &[&IpNetwork]) {
        let set = &sets::CLUSTER_IP;
        match (masquerade_all, cidrs) {
            (true, _) => self.on_set(SERVICES, None, set, "dst,dst", "", MARK_MASQ),
            (false, []) => self.on_set(SERVICES, None, set, "src,dst", "", MARK_MASQ),
            (false, [cidr]) => {
                let extra = format!("! -s {cidr}");
                self.on_set(SERVICES, None, set, "dst,dst", &extra, MARK_MASQ);
            }
            (false, _) => self.on_set(SERVICES, None, set, "dst,dst", "", CLUSTER_IP_MASQ),
        }
    }

    fn filter(&mut self, opts: &RuleOptions) {
        let drop_invalid = opts.drop_invalid;
        // Each INVALID drop counted in kube-proxy's nfacct object when it exists
        // (`count_invalid`): the rule fails to load without it.
        let counted = if opts.count_invalid {
            format!(" -m nfacct --nfacct-name {INVALID_DROPPED_COUNTER}")
        } else {
            String::new()
        };
        // KUBE-FORWARD: INVALID packets would skip the un-DNAT and reach the client
        // with the backend's address, which answers with a reset (kubernetes#74839);
        // kube-proxy's iptables mode drops them first unless conntrack is liberal.
        if drop_invalid {
            self.line(&format!(
                "-A {FORWARD} -m conntrack --ctstate INVALID{counted} -j DROP"
            ));
        }
        // Marked traffic is forwarded even when FORWARD's policy drops, and so is the
        // rest of its connection.
        self.line(&format!(
            "-A {FORWARD} -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
        ));
        self.line(&format!(
            "-A {FORWARD} -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ));

        self.on_set(
            NODE_PORT,
            None,
            &sets::HEALTH_CHECK_NODE_PORT,
            "dst",
            "",
            "ACCEPT",
        );

        // Load balancer IPs with source ranges: a source in a range, or the node
        // itself when a range holds it, returns; the rest is dropped.
        self.on_set(
            PROXY_FIREWALL,
            None,
            &sets::LOAD_BALANCER_FW,
            "dst,dst",
            "",
            SOURCE_RANGES_FIREWALL,
        );
        self.on_set(
            SOURCE_RANGES_FIREWALL,
            None,
            &sets::LOAD_BALANCER_SOURCE_CIDR,
            "dst,dst,src",
            "",
            "RETURN",
        );
        self.on_set(
            SOURCE_RANGES_FIREWALL,
            None,
            &sets::LOAD_BALANCER_SOURCE_IP,
            "dst,dst,src",
            "",
            "RETURN",
        );
        self.line(&format!("-A {SOURCE_RANGES_FIREWALL} -j DROP"));

        // KUBE-IPVS-FILTER (INPUT): an INVALID segment from an endpoint (ip and port
        // in KUBE-LOOP-BACK) to the node is the reply of a masqueraded connection that
        // conntrack could not un-SNAT; the node's stack would answer it with a reset
        // the endpoint accepts (kubernetes#74839 with masquerading, which kube-proxy's
        // FORWARD rule never sees). Not in kube-proxy's IPVS mode.
        if drop_invalid {
            let loop_back = sets::LOOP_BACK.name_for(self.v6);
            self.line(&format!(
                "-A {IPVS_FILTER} -m comment --comment \"{INVALID_FROM_ENDPOINTS}\" -m conntrack --ctstate INVALID -m set --match-set {loop_back} src,src,src{counted} -j DROP"
            ));
        }
        // KUBE-IPVS-FILTER: a VIP answers only on its services' ports.
        for set in [
            &sets::LOAD_BALANCER,
            &sets::CLUSTER_IP,
            &sets::EXTERNAL_IP,
            &sets::EXTERNAL_IP_LOCAL,
        ] {
            self.bare_set(IPVS_FILTER, set, "dst,dst", "RETURN");
        }
        self.bare_set(IPVS_FILTER, &sets::HEALTH_CHECK_NODE_PORT, "dst", "RETURN");
        let ips = sets::IPVS_IPS.name_for(self.v6);
        self.line(&format!(
            "-A {IPVS_FILTER} -m conntrack --ctstate NEW -m set --match-set {ips} dst -j REJECT"
        ));
    }
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
