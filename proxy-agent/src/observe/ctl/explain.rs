//! `proxyctl explain SRC DST:PORT/PROTO`: its arguments, and the run.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;

use crate::dataplane::ebpf::inspect::explain::{self, ClientNetns, Explanation, FlowPath, Query};
use crate::model::Protocol;

/// `SRC`: the client's address, with its port to ask about one tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    /// The address.
    pub ip: IpAddr,
    /// The port, if given.
    pub port: Option<u16>,
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Source { ip, port: None });
        }
        match s.parse::<SocketAddr>() {
            Ok(a) => Ok(Source {
                ip: a.ip(),
                port: Some(a.port()),
            }),
            Err(_) => Err(format!(
                "{s:?} is not IP or IP:PORT (e.g. 10.244.0.2, 192.0.2.100:40000, [fd00::2]:40000)"
            )),
        }
    }
}

/// `DST:PORT/PROTO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The address and port.
    pub addr: SocketAddr,
    /// The protocol.
    pub protocol: Protocol,
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let example = "(e.g. 10.96.0.10:80/TCP, [fd00:96::10]:53/UDP)";
        let Some((addr, proto)) = s.rsplit_once('/') else {
            return Err(format!("{s:?} has no /PROTO {example}"));
        };
        let protocol = match proto.to_ascii_uppercase().as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            _ => return Err(format!("{proto:?} is not TCP or UDP {example}")),
        };
        let addr = addr
            .parse::<SocketAddr>()
            .map_err(|_| format!("{addr:?} is not ADDRESS:PORT {example}"))?;
        Ok(Destination { addr, protocol })
    }
}

/// Explains the flow from the maps pinned under `bpffs`. Without `--external` the
/// client is a pod (the socket programs).
pub fn run(
    bpffs: &Path,
    source: Source,
    destination: Destination,
    external: bool,
    netns: Option<&Path>,
) -> anyhow::Result<Explanation> {
    let q = Query {
        source: source.ip,
        source_port: source.port,
        destination: destination.addr,
        protocol: destination.protocol,
        path: if external {
            FlowPath::External
        } else {
            FlowPath::Pod
        },
        netns: ClientNetns::Unknown("not looked for".into()),
    };
    explain::explain(bpffs, q, netns)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::super::{Cli, Command};
    use super::*;

    #[test]
    fn explain_takes_one_path_and_a_namespace() {
        let parse = |args: &[&str]| {
            let mut all = vec!["proxyctl", "explain", "10.244.0.2", "10.96.0.10:80/TCP"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
        };
        let cli = parse(&["--netns", "/run/netns/client"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Explain {
                external: false,
                netns: Some(_),
                ..
            }
        ));
        assert!(
            parse(&["--external"])
                .is_ok_and(|c| matches!(c.command, Command::Explain { external: true, .. }))
        );
        assert!(parse(&["--from-pod", "--external"]).is_err());
        let e = Cli::try_parse_from(["proxyctl", "explain", "10.244.0.2", "10.96.0.10:80"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("has no /PROTO"), "{e}");
    }

    #[test]
    fn sources_and_destinations_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(
            "10.244.0.2".parse::<Source>(),
            Ok(Source {
                ip: "10.244.0.2".parse().expect("ip"),
                port: None
            })
        );
        assert_eq!(
            "[fd00::2]:40000".parse::<Source>().map(|s| s.port),
            Ok(Some(40000))
        );
        assert!(
            "web"
                .parse::<Source>()
                .is_err_and(|e| e.contains("is not IP or IP:PORT"))
        );
        let d: Destination = "[fd00:96::10]:53/udp".parse().expect("a destination");
        assert_eq!(
            (d.addr, d.protocol),
            ("[fd00:96::10]:53".parse().expect("addr"), Protocol::Udp)
        );
        for (bad, says) in [
            ("10.96.0.10:80", "has no /PROTO"),
            ("10.96.0.10:80/SCTP", "is not TCP or UDP"),
            ("10.96.0.10/TCP", "is not ADDRESS:PORT"),
        ] {
            let e = bad.parse::<Destination>().err().unwrap_or_default();
            assert!(e.contains(says) && e.contains("e.g."), "{bad}: {e}");
        }
    }
}
