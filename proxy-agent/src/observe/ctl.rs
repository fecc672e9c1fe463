//! `proxyctl`: inspect what the data plane holds, straight from the kernel: the eBPF
//! data plane's pinned maps, or IPVS over netlink in this network namespace.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::dataplane::ebpf::inspect as ebpf;
use crate::dataplane::ipvs::inspect as ipvs;
use crate::dataplane::ipvs::netlink::IpvsError;

#[derive(Parser)]
#[command(
    name = "proxyctl",
    version,
    about = "Inspect the service proxy's data plane on this node"
)]
struct Cli {
    /// The agent's pin directory (eBPF mode).
    #[arg(long, global = true, default_value = crate::dataplane::ebpf::DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Which data plane to read: `auto` takes the eBPF one if its maps are pinned under
    /// --bpffs, else IPVS if the kernel answers in this network namespace (run
    /// proxyctl in the agent's).
    #[arg(long, global = true, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,
    #[command(subcommand)]
    command: Command,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Whichever is there (eBPF first).
    Auto,
    /// The eBPF data plane's pinned maps.
    Ebpf,
    /// IPVS over netlink.
    Ipvs,
}

#[derive(Subcommand)]
enum Command {
    /// List the programmed frontends (kind, scope, source ranges) and their backends;
    /// in IPVS mode with each virtual server's scheduler, persistence and counters.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the data plane's event counters (translations, refusals, drops, affinity
    /// hits; eBPF mode).
    Stats,
    /// List the flows tracked by the tc path (NodePort, ExternalIP, LoadBalancer; eBPF
    /// mode).
    Conntrack {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// netfilter's entries of service traffic instead (both modes; IPVS mode's are only
        /// there); run in the agent's network namespace.
        #[arg(long)]
        netfilter: bool,
    },
    /// List the remembered ClientIP affinities (client pod -> backend; eBPF mode).
    Affinity {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The data plane `mode` names; `auto` looks for the eBPF pins, then asks IPVS.
fn choose(mode: Mode, bpffs: &Path) -> anyhow::Result<Mode> {
    if mode != Mode::Auto {
        return Ok(mode);
    }
    if ebpf::pinned(bpffs) {
        return Ok(Mode::Ebpf);
    }
    auto_without_pins(bpffs, ipvs::available())
}

/// `auto` when nothing is pinned: IPVS if it answered, else what was looked for.
fn auto_without_pins(bpffs: &Path, ipvs: Result<(), IpvsError>) -> anyhow::Result<Mode> {
    match ipvs {
        Ok(()) => Ok(Mode::Ipvs),
        Err(e) => bail!(
            "found no data plane: {} is not pinned (is the agent running with this \
             --bpffs?), and in this network namespace {e}; pass the agent's --bpffs, or run \
             proxyctl in the network namespace of an agent in IPVS mode",
            crate::dataplane::ebpf::pins::map_path(bpffs, proxy_common::maps::FRONTENDS).display()
        ),
    }
}

/// The eBPF-only commands refuse `--mode ipvs`, saying where IPVS keeps the like.
fn ebpf_only(mode: Mode, command: &str, instead: &str) -> anyhow::Result<()> {
    if mode == Mode::Ipvs {
        bail!(
            "proxyctl {command} reads the eBPF data plane's tables, which IPVS mode has none of; {instead}"
        );
    }
    Ok(())
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The `proxyctl` binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::List { json } => {
            let services = match choose(cli.mode, &cli.bpffs)? {
                Mode::Ipvs => ipvs::list().context("reading IPVS")?,
                _ => ebpf::list(&cli.bpffs)?,
            };
            if json {
                print_json(&services)?;
            } else {
                print!("{}", crate::observe::render::render_table(&services));
            }
        }
        Command::Affinity { json } => {
            ebpf_only(
                cli.mode,
                "affinity",
                "IPVS keeps affinity as persistence templates: `proxyctl list` shows them per destination",
            )?;
            let list = ebpf::affinities(&cli.bpffs)?;
            if json {
                print_json(&list)?;
            } else {
                print!("{}", crate::observe::render::render_affinities(&list));
            }
        }
        Command::Conntrack {
            json,
            netfilter: true,
        } => {
            let services = match choose(cli.mode, &cli.bpffs)? {
                Mode::Ipvs => ipvs::list().context("reading IPVS")?,
                _ => ebpf::list(&cli.bpffs)?,
            };
            print!(
                "{}",
                crate::observe::render_netfilter::conntrack(&services, json)?
            );
        }
        Command::Conntrack { json, .. } => {
            ebpf_only(
                cli.mode,
                "conntrack",
                "IPVS connections are in `conntrack -L` (and `ipvsadm -Lnc`)",
            )?;
            let flows = ebpf::conntrack(&cli.bpffs)?;
            if json {
                print_json(&flows)?;
            } else {
                print!("{}", crate::observe::render::render_conntrack(&flows));
            }
        }
        Command::Stats => {
            ebpf_only(
                cli.mode,
                "stats",
                "IPVS's own counters are in `proxyctl list`",
            )?;
            print!(
                "{}",
                crate::observe::render::render_counters(&ebpf::counters(&cli.bpffs)?)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_without_pins_takes_ipvs_when_it_answers_else_says_what_it_looked_for() {
        let pins = Path::new("/nonexistent/proxy-agent");
        assert_eq!(auto_without_pins(pins, Ok(())).ok(), Some(Mode::Ipvs));
        let e = auto_without_pins(pins, Err(IpvsError::NoIpvs))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("/nonexistent/proxy-agent/maps/FRONTENDS is not pinned")
                && e.contains("is the agent running with this --bpffs?")
                && e.contains("the kernel has no IPVS"),
            "{e}"
        );
        assert_eq!(choose(Mode::Ebpf, pins).ok(), Some(Mode::Ebpf));
    }

    #[test]
    fn an_unknown_mode_is_refused_with_the_choices() {
        let e = Cli::try_parse_from(["proxyctl", "--mode", "iptables", "list"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("[possible values: auto, ebpf, ipvs]"), "{e}");
        let ok = Cli::try_parse_from(["proxyctl", "list", "--mode", "ipvs"]);
        assert!(
            ok.is_ok_and(|c| c.mode == Mode::Ipvs),
            "global: after the command too"
        );
    }

    #[test]
    fn the_ebpf_only_commands_refuse_ipvs_mode_pointing_elsewhere() {
        let e = ebpf_only(Mode::Ipvs, "conntrack", "see conntrack -L")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("proxyctl conntrack reads the eBPF") && e.ends_with("see conntrack -L"),
            "{e}"
        );
        assert!(ebpf_only(Mode::Auto, "stats", "").is_ok());
    }
}
