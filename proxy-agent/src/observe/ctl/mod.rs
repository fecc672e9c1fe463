//! `proxyctl`: inspect what the data plane holds, straight from the kernel: the eBPF
//! data plane's pinned maps, or IPVS over netlink in this network namespace.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::dataplane::ebpf::inspect as ebpf;
use crate::dataplane::ipvs::inspect as ipvs;
use crate::dataplane::ipvs::netlink::IpvsError;
use crate::observe::render::{self, Width};

mod advice;
mod explain;
mod filter;
mod rate;

use advice::PinRoot;
pub use filter::{AddrSel, Filter, ServiceSel};

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

/// `-o`, in kubectl's convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
    /// The table with more columns.
    Wide,
}

/// `-o FORMAT`, and `--json` for `-o json`.
#[derive(Args, Clone, Copy, Debug, Default)]
struct Output {
    /// Output format; a table without it.
    #[arg(short = 'o', long = "output", value_enum)]
    format: Option<Format>,
    /// The same as `-o json`.
    #[arg(long, conflicts_with = "format")]
    json: bool,
}

impl Output {
    fn format(self) -> Option<Format> {
        if self.json {
            Some(Format::Json)
        } else {
            self.format
        }
    }

    /// `value` as JSON or YAML, or `table` of the width asked for.
    fn print<T: serde::Serialize + ?Sized>(
        self,
        value: &T,
        table: impl FnOnce(Width) -> String,
    ) -> anyhow::Result<()> {
        match self.format() {
            Some(Format::Json) => println!("{}", serde_json::to_string_pretty(value)?),
            Some(Format::Yaml) => print!("{}", serde_yaml::to_string(value)?),
            Some(Format::Wide) => print!("{}", table(Width::Wide)),
            None => print!("{}", table(Width::Normal)),
        }
        Ok(())
    }
}

#[derive(Subcommand)]
enum Command {
    /// List the virtual servers as `ipvsadm -Ln` does: per frontend its protocol,
    /// address, scheduler, affinity and service; per backend its weight, state and
    /// connections. `-o wide` adds kinds, ids, source ranges and IPVS forwarding.
    List {
        /// Only this service's frontends: NAMESPACE/NAME, or NAMESPACE/NAME:PORT for
        /// one port.
        #[arg(long, value_name = "NS/NAME[:PORT]")]
        service: Option<ServiceSel>,
        /// Only the frontends at this address (and port). A node address with a port
        /// also finds the NodePort frontend of that port.
        #[arg(long, value_name = "IP[:PORT]")]
        vip: Option<AddrSel>,
        /// Only the frontends holding this backend, and of their backends only it.
        #[arg(long, value_name = "IP[:PORT]")]
        backend: Option<AddrSel>,
        /// Traffic per frontend and backend, as `ipvsadm -Ln --stats`: connections,
        /// packets and bytes in (from clients) and out (to clients). In eBPF mode `-`
        /// marks what the socket programs cannot see (they balance a pod's connection
        /// at connect() and see none of its packets) or a draining backend.
        #[arg(long, conflicts_with = "rate")]
        stats: bool,
        /// The same per second, over --interval (`ipvsadm -Ln --rate`).
        #[arg(long)]
        rate: bool,
        /// How long --rate measures, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = interval)]
        interval: f64,
        #[command(flatten)]
        output: Output,
    },
    /// Show the data plane's event counters (translations, refusals, drops, affinity
    /// hits; eBPF mode).
    Stats,
    /// List the flows tracked by the tc path (NodePort, ExternalIP, LoadBalancer; eBPF
    /// mode). `-o wide` adds each flow's age and bytes.
    Conntrack {
        #[command(flatten)]
        output: Output,
        /// netfilter's entries of service traffic instead (both modes; IPVS mode's
        /// connections are only there); run in the agent's network namespace.
        #[arg(long)]
        netfilter: bool,
    },
    /// List the remembered ClientIP affinities (client pod -> backend; eBPF mode).
    Affinity {
        #[command(flatten)]
        output: Output,
    },
    /// Explain what the data plane would do right now with the next connection from
    /// SRC to DST:PORT/PROTO, from the live maps with the programs' rules: the frontend
    /// it matches and in which scope, each check (tracked flow, backends, source
    /// ranges, traffic policy, affinity), the candidate backends and the one chosen.
    /// Exit status: 0 translated, 3 left untouched (no service there), 4 refused or
    /// dropped, 1 on an error (eBPF mode).
    Explain {
        /// The client: IP, or IP:PORT to check a tracked flow of that port
        /// (--external).
        #[arg(value_name = "SRC")]
        source: explain::Source,
        /// What it connects to, e.g. 10.96.0.10:80/TCP or [fd00:96::10]:53/UDP.
        #[arg(value_name = "DST:PORT/PROTO")]
        destination: explain::Destination,
        /// The client is a pod on this node, in the agent's cgroup: the socket
        /// programs (the default).
        #[arg(long, conflicts_with = "external")]
        from_pod: bool,
        /// The client is outside the node and its packets arrive on an external
        /// interface: the tc program.
        #[arg(long)]
        external: bool,
        /// The client pod's network namespace (/run/netns/NAME, /proc/PID/ns/net),
        /// which keys the socket layer's ClientIP affinity; looked for by SRC's address
        /// when not given.
        #[arg(long, value_name = "PATH")]
        netns: Option<PathBuf>,
        #[command(flatten)]
        output: Output,
    },
    /// Stream the data plane's events as they happen: drops and refusals with their
    /// reason and flow, and with `--type trace` each new flow's translation (eBPF
    /// mode). The programs emit only while a monitor runs.
    Monitor {
        /// What to show; repeat for several.
        #[arg(long = "type", value_enum, default_value = "drop")]
        types: Vec<EventType>,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        duration: Option<u64>,
        /// `-o json`: one JSON object per line.
        #[command(flatten)]
        output: Output,
    },
}

/// `monitor --type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum EventType {
    /// Dropped packets and refused connections.
    Drop,
    /// Translations of new flows and connections.
    Trace,
}

/// `--interval`: a positive number of seconds, at most an hour.
fn interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 3600.0 => Ok(x),
        _ => Err(format!(
            "{s:?} is not a number of seconds in (0, 3600]; for example --interval 0.5"
        )),
    }
}

/// The listing of the data plane `mode` chose.
fn read_list(mode: Mode, bpffs: &Path) -> anyhow::Result<Vec<ebpf::ServiceView>> {
    match mode {
        Mode::Ipvs => ipvs::list().context("reading IPVS"),
        _ => ebpf::list(bpffs),
    }
}

/// The data plane `mode` names; `auto` looks for the eBPF pins, then asks IPVS. An
/// eBPF data plane that is not there is reported here, with what to check, rather
/// than as the first map that fails to open.
fn choose(mode: Mode, bpffs: &Path) -> anyhow::Result<Mode> {
    match mode {
        Mode::Ipvs => Ok(Mode::Ipvs),
        _ if ebpf::pinned(bpffs) => Ok(Mode::Ebpf),
        Mode::Ebpf => Err(PinRoot::probe(bpffs).advice().into()),
        Mode::Auto => auto_without_pins(&PinRoot::probe(bpffs), ipvs::available()),
    }
}

/// `auto` when nothing is pinned: IPVS if it answered, else where both were looked for.
fn auto_without_pins(root: &PinRoot, ipvs: Result<(), IpvsError>) -> anyhow::Result<Mode> {
    match ipvs {
        Ok(()) => Ok(Mode::Ipvs),
        Err(e) => Err(root.advice_without_ipvs(&e.to_string()).into()),
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

/// The eBPF data plane, for the eBPF-only commands: found, or reported as [`choose`]
/// reports it.
fn ebpf_pins(bpffs: &Path) -> anyhow::Result<()> {
    if ebpf::pinned(bpffs) {
        return Ok(());
    }
    Err(PinRoot::probe(bpffs).advice().into())
}

/// The `proxyctl` binary's work; [`crate::observe::errors::exit`] prints its error.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::List {
            service,
            vip,
            backend,
            stats,
            rate,
            interval,
            output,
        } => {
            let mode = choose(cli.mode, &cli.bpffs)?;
            let mut services = read_list(mode, &cli.bpffs)?;
            if rate {
                let before = services;
                let start = std::time::Instant::now();
                std::thread::sleep(std::time::Duration::from_secs_f64(interval));
                services = read_list(mode, &cli.bpffs)?;
                rate::apply(&before, &mut services, start.elapsed().as_secs_f64());
            }
            let filter = Filter {
                service,
                vip,
                backend,
            };
            let services = filter.apply(services);
            let numbers = match (stats, rate) {
                (_, true) => Some(render::Numbers::Rate),
                (true, _) => Some(render::Numbers::Totals),
                _ => None,
            };
            output.print(&services, |w| match numbers {
                Some(n) => render::render_list_numbers(&services, n, w),
                None => render::render_list(&services, w),
            })?;
        }
        Command::Affinity { output } => {
            ebpf_only(
                cli.mode,
                "affinity",
                "IPVS keeps affinity as persistence templates: `proxyctl list -o wide` shows them per destination",
            )?;
            ebpf_pins(&cli.bpffs)?;
            let list = ebpf::affinities(&cli.bpffs)?;
            output.print(&list, |_| render::render_affinities(&list))?;
        }
        Command::Conntrack {
            output,
            netfilter: true,
        } => {
            let services = match choose(cli.mode, &cli.bpffs)? {
                Mode::Ipvs => ipvs::list().context("reading IPVS")?,
                _ => ebpf::list(&cli.bpffs)?,
            };
            let entries = crate::dataplane::netfilter::services::list(&services).context(
                "reading netfilter's connection table (run proxyctl in the agent's network namespace)",
            )?;
            output.print(&entries, |_| {
                crate::observe::render_netfilter::render(&entries)
            })?;
        }
        Command::Conntrack { output, .. } => {
            ebpf_only(
                cli.mode,
                "conntrack",
                "IPVS connections are in `conntrack -L` (and `ipvsadm -Lnc`)",
            )?;
            ebpf_pins(&cli.bpffs)?;
            let flows = ebpf::conntrack(&cli.bpffs)?;
            output.print(&flows, |w| render::render_conntrack(&flows, w))?;
        }
        Command::Explain {
            source,
            destination,
            from_pod: _,
            external,
            netns,
            output,
        } => {
            ebpf_only(
                cli.mode,
                "explain",
                "in IPVS mode, `proxyctl list --vip ADDRESS` shows the virtual server, its scheduler, persistence and destinations, and `ipvsadm -Lnc` the connections",
            )?;
            if choose(cli.mode, &cli.bpffs)? == Mode::Ipvs {
                bail!(
                    "proxyctl explain reads the eBPF data plane's maps, and this node runs IPVS mode (nothing is pinned under {}); `proxyctl list --vip ADDRESS` shows the virtual server, its scheduler, persistence and destinations",
                    cli.bpffs.display()
                );
            }
            let x = explain::run(&cli.bpffs, source, destination, external, netns.as_deref())?;
            output.print(&x, |_| render::render_explain(&x))?;
            let code = x.verdict.exit_code();
            if code != 0 {
                // The documented status for a refused, dropped or untouched flow; what
                // was printed must reach the reader first.
                use std::io::Write as _;
                std::io::stdout().flush()?;
                std::process::exit(i32::from(code));
            }
        }
        Command::Monitor {
            types,
            count,
            duration,
            output,
        } => {
            ebpf_only(
                cli.mode,
                "monitor",
                "IPVS mode's drops are netfilter's: `proxyctl conntrack --netfilter` and the INVALID counters in /metrics",
            )?;
            ebpf_pins(&cli.bpffs)?;
            monitor(&cli.bpffs, &types, count, duration, output)?;
        }
        Command::Stats => {
            ebpf_only(
                cli.mode,
                "stats",
                "IPVS's own counters are in `proxyctl list -o json`",
            )?;
            ebpf_pins(&cli.bpffs)?;
            print!("{}", render::render_counters(&ebpf::counters(&cli.bpffs)?));
        }
    }
    Ok(())
}

/// `proxyctl monitor`: renews the lease while it prints what comes.
fn monitor(
    bpffs: &Path,
    types: &[EventType],
    count: Option<u64>,
    duration: Option<u64>,
    output: Output,
) -> anyhow::Result<()> {
    use crate::dataplane::ebpf::monitor::{Kind, Listener};
    use std::time::{Duration, Instant};

    let kinds: Vec<Kind> = types
        .iter()
        .map(|t| match t {
            EventType::Drop => Kind::Drop,
            EventType::Trace => Kind::Trace,
        })
        .collect();
    let mut listener = Listener::open(bpffs, &kinds)?;
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    eprintln!("listening for {} events", names.join(" and "));
    let end = duration.map(|s| Instant::now() + Duration::from_secs(s));
    let mut shown = 0u64;
    loop {
        if end.is_some_and(|end| Instant::now() >= end) || count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        // Well within the lease, so that a slow poll never lets it lapse.
        listener.renew()?;
        for e in listener.poll(Duration::from_millis(500))? {
            if count.is_some_and(|n| shown >= n) {
                break;
            }
            match output.format() {
                Some(Format::Json) => println!("{}", serde_json::to_string(&e)?),
                Some(Format::Yaml) => print!("---\n{}", serde_yaml::to_string(&e)?),
                Some(Format::Wide) | None => print!("{}", render::render_event(&e)),
            }
            shown += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_without_pins_takes_ipvs_when_it_answers_else_says_where_it_looked() {
        let pins = Path::new("/nonexistent/proxy-agent");
        let root = PinRoot::probe(pins);
        assert_eq!(auto_without_pins(&root, Ok(())).ok(), Some(Mode::Ipvs));
        let e = auto_without_pins(&root, Err(IpvsError::NoIpvs))
            .err()
            .map(|e| crate::observe::errors::report(&e))
            .unwrap_or_default();
        assert!(
            e.contains(
                "no agent state under /nonexistent/proxy-agent: the directory does not exist"
            ) && e.contains("the kernel has no IPVS")
                && e.contains("\nhint: check that the agent is running"),
            "{e}"
        );
        assert_eq!(choose(Mode::Ipvs, pins).ok(), Some(Mode::Ipvs));
        assert!(choose(Mode::Ebpf, pins).is_err());
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
    fn output_takes_kubectls_formats_and_json_as_an_alias() {
        let format = |args: &[&str]| {
            Cli::try_parse_from(args).map(|c| match c.command {
                Command::List { output, .. }
                | Command::Conntrack { output, .. }
                | Command::Affinity { output }
                | Command::Explain { output, .. }
                | Command::Monitor { output, .. } => output.format(),
                Command::Stats => None,
            })
        };
        assert_eq!(format(&["proxyctl", "list"]).ok(), Some(None));
        assert_eq!(
            format(&["proxyctl", "list", "-o", "wide"]).ok(),
            Some(Some(Format::Wide))
        );
        assert_eq!(
            format(&["proxyctl", "list", "-o", "yaml"]).ok(),
            Some(Some(Format::Yaml))
        );
        assert_eq!(
            format(&[
                "proxyctl",
                "explain",
                "10.244.0.2",
                "10.96.0.10:80/TCP",
                "-o",
                "json"
            ])
            .ok(),
            Some(Some(Format::Json))
        );
        for cmd in ["list", "conntrack", "affinity"] {
            assert_eq!(
                format(&["proxyctl", cmd, "--json"]).ok(),
                Some(Some(Format::Json))
            );
            assert_eq!(
                format(&["proxyctl", cmd, "--output", "json"]).ok(),
                Some(Some(Format::Json))
            );
        }
        assert!(format(&["proxyctl", "list", "--json", "-o", "yaml"]).is_err());
        assert!(format(&["proxyctl", "list", "-o", "xml"]).is_err());
    }

    #[test]
    fn list_filters_parse_and_refuse_bad_values_with_an_example() {
        let cli = Cli::try_parse_from([
            "proxyctl",
            "list",
            "--service",
            "default/web:http",
            "--vip",
            "10.96.0.10:80",
            "--backend",
            "10.244.1.5",
        ]);
        assert!(cli.is_ok_and(|c| matches!(
            c.command,
            Command::List {
                service: Some(_),
                vip: Some(_),
                backend: Some(_),
                ..
            }
        )));
        let cli = Cli::try_parse_from(["proxyctl", "list", "--rate", "--interval", "0.5"]);
        assert!(cli.is_ok_and(|c| matches!(
            c.command,
            Command::List { rate: true, stats: false, interval, .. } if interval == 0.5
        )));
        for bad in ["0", "-1", "soon", "7200"] {
            let arg = format!("--interval={bad}");
            let e = Cli::try_parse_from(["proxyctl", "list", "--rate", arg.as_str()])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("for example --interval 0.5"), "{bad}: {e}");
        }
        assert!(Cli::try_parse_from(["proxyctl", "list", "--stats", "--rate"]).is_err());
        let e = Cli::try_parse_from(["proxyctl", "list", "--vip", "web"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("is not IP or IP:PORT"), "{e}");
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
