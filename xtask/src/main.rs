//! `cargo xtask <task>`: the one entry point for setting up a machine, running the full
//! check suite, the VM tests, the demo and the benchmarks.

mod bench;
mod demo;
mod setup;
mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (apt packages, rust-src, bpf-linker) and
    /// mount bpffs. Idempotent; fast when everything is there.
    Setup,
    /// `setup`, then `cargo fmt --check`, `cargo clippy -D warnings` and `cargo test`
    /// over the workspace. Arguments after `--` go to `cargo test`: `cargo xtask test --
    /// -p tests` tests only that package (no `--workspace` then), `cargo xtask test --
    /// -- --nocapture` passes `--nocapture` to the test binaries.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Build the VM test binaries, boot Debian 12's kernel (which has IPVS) in qemu and
    /// run them inside; downloads the guest kernel and busybox once (cached in
    /// target/vm/). Needs `cargo xtask setup` first (qemu, kmod, xz).
    VmTest {
        /// Run only this binary (repeatable); default: all of them.
        #[arg(long = "bin", value_name = "NAME")]
        bins: Vec<String>,
        /// Kill the VM and fail after this many seconds.
        #[arg(long, default_value_t = vm::DEFAULT_TIMEOUT.as_secs())]
        timeout: u64,
        /// The guest's memory in MiB.
        #[arg(long, default_value_t = vm::DEFAULT_MEMORY_MIB)]
        memory_mib: u32,
    },
    /// Run the demo.
    Demo,
    /// Run the benchmark NAME.
    Bench {
        /// Which benchmark: clusterip, flood, ipvs, nodeport, pkt or sync.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Test { cargo_test_args } => test(&cargo_test_args),
        Task::VmTest {
            bins,
            timeout,
            memory_mib,
        } => vm::run(&vm::Options {
            bins,
            timeout: std::time::Duration::from_secs(timeout),
            memory_mib,
            ..vm::Options::default()
        }),
        Task::Demo => demo::run(),
        Task::Bench { name } => bench::run(&name),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's directory).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The cargo that runs us (`$CARGO`), else `cargo` from `PATH`.
pub(crate) fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cmd` with inherited stdio (output streams through) and fails on non-zero exit.
pub(crate) fn run_streamed(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    println!("xtask: $ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("starting `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// `program arg arg ...` for messages.
pub(crate) fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn test(cargo_test_args: &[String]) -> Result<()> {
    setup::run()?;
    run_streamed(cargo().args(["fmt", "--all", "--check"]))?;
    run_streamed(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // `--all-targets` leaves out test targets with `test = false`: the VM's.
    run_streamed(cargo().args([
        "clippy",
        "-p",
        "proxy-agent",
        "--test",
        "vm_netlink",
        "--test",
        "vm_ipvs_backend",
        "--test",
        "vm_rules",
        "--test",
        "vm_ipvs_agent",
        "--test",
        "vm_ipvs_bench",
        "--test",
        "vm_ipvs_external",
        "--test",
        "vm_ipvs_conntrack",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The real-kernel tests run these binaries; build them even when `-p` narrows the
    // test run (the harness refuses stale ones).
    run_streamed(cargo().args(["build", "-p", "proxy-agent", "-p", "tests", "--bins"]))?;
    let mut test = cargo();
    test.arg("test");
    if !selects_packages(cargo_test_args) {
        test.arg("--workspace");
    }
    run_tests(test.args(cargo_test_args))?;
    // The IPVS mode's kernel interfaces, in Debian's kernel under qemu (this kernel has
    // no IPVS): part of every full run, as the data plane's own tests are.
    if !selects_packages(cargo_test_args) {
        vm::run(&vm::Options::default())?;
    }
    Ok(())
}

/// Runs `cargo test`, streaming its output, and ends with one summary line over every
/// test binary (`tests: N passed, N failed`), so the total is not lost among the
/// per-binary results (the last of which is often an empty doc-test run).
fn run_tests(cmd: &mut Command) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let shown = display(cmd);
    println!("xtask: $ {shown}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                passed += count(rest, "passed");
                failed += count(rest, "failed");
            }
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{shown}`"))?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// The number before `word` in a `test result:` line ("ok. 3 passed; 0 failed; ...").
fn count(result: &str, word: &str) -> u64 {
    let words: Vec<&str> = result.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[1].trim_end_matches(';') == word)
        .and_then(|w| w[0].parse().ok())
        .unwrap_or(0)
}

/// Whether cargo arguments (before a `--`) pick packages with `-p`/`--package`, which
/// `--workspace` would override.
fn selects_packages(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "--package" || a.starts_with("--package=") || a.starts_with("-p"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn test_result_lines_are_counted() {
        let line =
            "ok. 136 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.76s";
        assert_eq!(count(line, "passed"), 136);
        assert_eq!(count(line, "failed"), 2);
    }

    #[test]
    fn package_selection_is_seen_before_the_separator_only() {
        assert!(selects_packages(&strings(&["-p", "tests"])));
        assert!(selects_packages(&strings(&["-ptests"])));
        assert!(selects_packages(&strings(&["--package=tests"])));
        assert!(!selects_packages(&strings(&["--", "-p"])));
        assert!(!selects_packages(&strings(&["--release"])));
        assert!(!selects_packages(&[]));
    }
}
