//! What `proxyctl explain` answers: the flow asked about, the frontend it matches, each
//! check the programs make in their order, the candidate backends, the choice, and
//! the verdict. Plain values: rendered by `observe::render`, serialized for `-o json`.

use std::net::SocketAddr;

/// Which programs see the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowPath {
    /// A process in the attached cgroup calls `connect()`/`sendmsg()`: the socket
    /// programs, internal-scope frontends.
    Pod,
    /// A packet from outside the node arrives on an external interface: the tc
    /// program, its connection table, external-scope frontends, then internal ones.
    External,
}

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Passed: the programs go on.
    Pass,
    /// Failed: the flow is refused, dropped, or left untranslated here.
    Fail,
    /// Decided the backend (a tracked flow, a remembered affinity).
    Pin,
    /// Not made on this path, or nothing to check.
    Skip,
    /// Cannot be told from what is readable (the outcome depends on it).
    Unknown,
}

/// One check the programs make, in their order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// `conntrack`, `frontend`, `backends`, `traffic policy`, `source ranges`,
    /// `affinity`, `slots`.
    pub check: &'static str,
    /// Its outcome.
    pub outcome: Outcome,
    /// What was found, in words.
    pub detail: String,
}

/// The frontend the flow matches.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MatchedFrontend {
    /// The model form: `10.96.0.10:80/TCP`, `*:30080/TCP (external)`.
    pub frontend: String,
    /// `ClusterIP`, `NodePort`, `ExternalIP` or `LoadBalancer`.
    pub kind: String,
    /// `internal` or `external`.
    pub scope: String,
    /// `namespace/name:port` ("" if not recorded).
    pub service: String,
    /// Its service id in the maps.
    pub service_id: u32,
    /// Matched as a NodePort: the destination is a node address and the frontend is
    /// keyed by the unspecified address.
    pub via_node_address: bool,
    /// How many slots it has (0: no usable backend).
    pub backend_count: u32,
}

/// One backend a new connection may go to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Candidate {
    /// Its address.
    pub backend: SocketAddr,
    /// How many of the frontend's slots hold it (its share of random picks).
    pub slots: u32,
    /// The one the choice names (a remembered affinity, a tracked flow).
    pub chosen: bool,
}

/// How the backend is chosen.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Choice {
    /// No backend: the flow is refused, dropped or left alone.
    None,
    /// A tracked flow of this very tuple carries it on.
    Conntrack {
        /// The backend the flow goes to.
        backend: SocketAddr,
        /// Its state (`opening`, `established`, `closing`).
        state: String,
        /// In the table of assured flows.
        assured: bool,
    },
    /// A remembered ClientIP affinity.
    Affinity {
        /// The backend it names.
        backend: SocketAddr,
        /// Seconds since the client last used it.
        idle_s: u64,
        /// The frontend's affinity timeout.
        timeout_s: u32,
    },
    /// A slot picked per connection: uniformly at random (TCP at the socket layer,
    /// every new flow at tc), or by the hash of the socket's cookie (UDP at the
    /// socket layer, so one socket keeps its backend).
    Random {
        /// `connection` or `socket cookie hash`.
        per: &'static str,
    },
    /// A remembered affinity may pin it, but it cannot be read: the client's network
    /// namespace is not known.
    Unknown {
        /// Why.
        why: String,
    },
}

/// What the programs do with the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Sent to a backend.
    Translated,
    /// Not a service address (or a slot is missing mid-update): left untouched.
    Passed,
    /// `connect()`/`sendmsg()` fails at once with `ECONNREFUSED` (socket layer).
    Refused,
    /// The packet is dropped (tc): the client times out.
    Dropped,
}

impl Verdict {
    /// `proxyctl explain`'s exit status: 0 translated, 3 left untouched (no service
    /// there), 4 refused or dropped. (1 is an error, 2 a usage error.)
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Translated => 0,
            Verdict::Passed => 3,
            Verdict::Refused | Verdict::Dropped => 4,
        }
    }
}

/// The whole answer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Explanation {
    /// The client: `IP` or `IP:PORT`.
    pub source: String,
    /// The destination.
    pub destination: SocketAddr,
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// Which programs see it.
    pub path: FlowPath,
    /// The frontend it matches (also when a tracked flow decides).
    pub frontend: Option<MatchedFrontend>,
    /// The checks, in the programs' order, up to the one that decided.
    pub checks: Vec<Check>,
    /// The backends a new connection may go to, in slot order.
    pub candidates: Vec<Candidate>,
    /// How the backend is chosen.
    pub choice: Choice,
    /// What happens.
    pub verdict: Verdict,
    /// The verdict in one sentence, with its reason.
    pub reason: String,
    /// What else an operator may need (other frontends at the address, caveats).
    pub notes: Vec<String>,
}
