//! `proxyctl`: inspect what the data plane holds, straight from the pinned maps.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "proxyctl",
    version,
    about = "Inspect the eBPF service proxy on this node"
)]
struct Cli {
    /// The agent's pin directory.
    #[arg(long, global = true, default_value = crate::dataplane::ebpf::DEFAULT_BPFFS)]
    bpffs: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the programmed frontends (kind, scope, source ranges) and their backends.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the data plane's event counters (translations, refusals, drops, affinity hits).
    Stats,
    /// List the flows tracked by the tc path (NodePort, ExternalIP, LoadBalancer).
    Conntrack {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the remembered ClientIP affinities (client pod -> backend).
    Affinity {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The `proxyctl` binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::List { json } => {
            let services = crate::dataplane::ebpf::inspect::list(&cli.bpffs)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&services)?);
            } else {
                print!("{}", crate::observe::render::render_table(&services));
            }
        }
        Command::Affinity { json } => {
            let list = crate::dataplane::ebpf::inspect::affinities(&cli.bpffs)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", crate::observe::render::render_affinities(&list));
            }
        }
        Command::Conntrack { json } => {
            let flows = crate::dataplane::ebpf::inspect::conntrack(&cli.bpffs)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&flows)?);
            } else {
                print!("{}", crate::observe::render::render_conntrack(&flows));
            }
        }
        Command::Stats => {
            print!(
                "{}",
                crate::observe::render::render_counters(
                    &crate::dataplane::ebpf::inspect::counters(&cli.bpffs)?
                )
            );
        }
    }
    Ok(())
}
