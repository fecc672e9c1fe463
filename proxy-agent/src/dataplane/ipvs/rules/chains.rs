//! The chains the IPVS mode's rules live in and the jumps that lead into them from
//! the built-in chains, named as kube-proxy names them (operators grep for these).

use std::fmt;

/// A netfilter table the rules use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `nat`: marking for masquerade and the masquerade itself.
    Nat,
    /// `filter`: source ranges, forwarding, health checks, unknown VIP ports.
    Filter,
}

impl Table {
    /// The table's name as iptables takes it (`-t nat`, `*nat`).
    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Both tables, in the order the restore input has them.
pub const TABLES: [Table; 2] = [Table::Nat, Table::Filter];

/// nat: every service packet's first stop (from PREROUTING and OUTPUT).
pub const SERVICES: &str = "KUBE-SERVICES";
/// nat: masquerades what was marked, and hairpin connections.
pub const POSTROUTING: &str = "KUBE-POSTROUTING";
/// nat: NodePorts (marked unless Local); filter: health check node ports accepted.
pub const NODE_PORT: &str = "KUBE-NODE-PORT";
/// nat: load balancer IPs (marked unless Local).
pub const LOAD_BALANCER: &str = "KUBE-LOAD-BALANCER";
/// nat: sets the masquerade mark.
pub const MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// nat: ClusterIP traffic from outside several cluster CIDRs of one family is marked
/// (one CIDR fits in a single `! -s` rule; more need a chain). Not a kube-proxy chain:
/// declared only when used (left unreferenced if the CIDRs change back, until
/// removal, which always looks for it).
pub const CLUSTER_IP_MASQ: &str = "KUBE-CLUSTER-IP-MASQ";
/// filter: accepts marked and established forwarded traffic.
pub const FORWARD: &str = "KUBE-FORWARD";
/// filter: load balancer IPs with source ranges go to [`SOURCE_RANGES_FIREWALL`].
pub const PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// filter: what no source range allows is dropped.
pub const SOURCE_RANGES_FIREWALL: &str = "KUBE-SOURCE-RANGES-FIREWALL";
/// filter: NEW connections to a VIP on a port no service has are rejected
/// (kubernetes#72236: the VIPs must not expose the node's own ports).
pub const IPVS_FILTER: &str = "KUBE-IPVS-FILTER";
/// filter: kube-proxy's per-service drops of node access to load balancers whose
/// source ranges exclude the node (kubernetes#119656); those rules depend on the
/// services, so the constant rules leave the chain empty.
pub const IPVS_OUT_FILTER: &str = "KUBE-IPVS-OUT-FILTER";

/// The chains always declared, per table, in kube-proxy's order.
pub const CHAINS: [(Table, &str); 11] = [
    (Table::Nat, SERVICES),
    (Table::Nat, POSTROUTING),
    (Table::Nat, NODE_PORT),
    (Table::Nat, LOAD_BALANCER),
    (Table::Nat, MARK_MASQ),
    (Table::Filter, FORWARD),
    (Table::Filter, NODE_PORT),
    (Table::Filter, PROXY_FIREWALL),
    (Table::Filter, SOURCE_RANGES_FIREWALL),
    (Table::Filter, IPVS_FILTER),
    (Table::Filter, IPVS_OUT_FILTER),
];

/// Every chain this module may declare: what removal looks for.
pub fn all_chains() -> impl Iterator<Item = (Table, &'static str)> {
    CHAINS
        .into_iter()
        .chain(std::iter::once((Table::Nat, CLUSTER_IP_MASQ)))
}

/// A rule in a built-in chain jumping to one of ours:
/// `-t TABLE -A FROM -m comment --comment COMMENT -j TO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jump {
    /// The table.
    pub table: Table,
    /// The built-in chain.
    pub from: &'static str,
    /// Our chain.
    pub to: &'static str,
    /// kube-proxy's comment on the rule.
    pub comment: &'static str,
}

impl Jump {
    /// The rule's arguments after the chain name, one word each (no shell quoting).
    pub fn args(&self) -> [&'static str; 6] {
        ["-m", "comment", "--comment", self.comment, "-j", self.to]
    }
}

const fn jump(table: Table, from: &'static str, to: &'static str, comment: &'static str) -> Jump {
    Jump {
        table,
        from,
        to,
        comment,
    }
}

/// The jumps, in kube-proxy's order; each missing one is inserted first in its
/// chain, so the last of a chain ends up first (INPUT: IPVS filter, firewall,
/// health checks; FORWARD: firewall, then forwarding).
pub const JUMPS: [Jump; 9] = [
    jump(Table::Nat, "OUTPUT", SERVICES, "kubernetes service portals"),
    jump(
        Table::Nat,
        "PREROUTING",
        SERVICES,
        "kubernetes service portals",
    ),
    jump(
        Table::Nat,
        "POSTROUTING",
        POSTROUTING,
        "kubernetes postrouting rules",
    ),
    jump(
        Table::Filter,
        "FORWARD",
        FORWARD,
        "kubernetes forwarding rules",
    ),
    jump(
        Table::Filter,
        "INPUT",
        NODE_PORT,
        "kubernetes health check rules",
    ),
    jump(
        Table::Filter,
        "INPUT",
        PROXY_FIREWALL,
        "kube-proxy firewall rules",
    ),
    jump(
        Table::Filter,
        "FORWARD",
        PROXY_FIREWALL,
        "kube-proxy firewall rules",
    ),
    jump(
        Table::Filter,
        "INPUT",
        IPVS_FILTER,
        "kubernetes ipvs access filter",
    ),
    jump(
        Table::Filter,
        "OUTPUT",
        IPVS_OUT_FILTER,
        "kubernetes ipvs access filter",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_leads_to_a_declared_chain_of_its_table() {
        for j in JUMPS {
            assert!(CHAINS.contains(&(j.table, j.to)), "{j:?}");
        }
    }

    #[test]
    fn chain_names_fit_iptables() {
        // XT_EXTENSION_MAXNAMELEN is 29 with the NUL.
        for (_, name) in all_chains() {
            assert!(name.len() <= 28 && name.starts_with("KUBE-"), "{name}");
        }
    }
}
