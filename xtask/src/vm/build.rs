//! Building what the VM runs, for the host, and finding the executables cargo made.
//!
//! The paths come from cargo's JSON messages rather than being guessed under `target/`:
//! a `[[test]]` target's executable carries a hash in its name, and the target directory
//! may be moved by configuration.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use super::{Kind, VmBinary};
use crate::{cargo, display};

/// Builds `b` (`cargo build --bin` or `cargo test --no-run --test`, with `--release`
/// if `release`) and returns its executable. Compiler diagnostics stream to stderr as
/// usual.
pub fn build(b: &VmBinary, release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    match b.kind {
        Kind::Bin => cmd.args(["build", "-p", b.package, "--bin", b.name]),
        Kind::Test => cmd.args(["test", "--no-run", "-p", b.package, "--test", b.name]),
    };
    if release {
        cmd.arg("--release");
    }
    cmd.arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    let shown = display(&cmd);
    println!("xtask: $ {shown}");
    let mut child = cmd.spawn().with_context(|| format!("starting `{shown}`"))?;
    let mut executable = None;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading cargo's messages")?;
            executable = executable.or_else(|| artifact(&line, b));
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    executable.with_context(|| format!("`{shown}` reported no executable for {}", b.name))
}

/// The executable in one of cargo's JSON messages, if it is `b`'s.
fn artifact(line: &str, b: &VmBinary) -> Option<PathBuf> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    let kind = match b.kind {
        Kind::Bin => "bin",
        Kind::Test => "test",
    };
    let target = msg.get("target")?;
    let ours = msg.get("reason")?.as_str()? == "compiler-artifact"
        && target.get("name")?.as_str()? == b.name
        && target
            .get("kind")?
            .as_array()?
            .iter()
            .any(|k| k.as_str() == Some(kind));
    ours.then(|| msg.get("executable")?.as_str().map(PathBuf::from))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOKE: VmBinary = VmBinary {
        package: "tests",
        kind: Kind::Bin,
        name: "vm-smoke",
        args: &[],
        needs: &[],
    };

    #[test]
    fn the_executable_is_taken_from_our_targets_artifact_only() {
        let ours = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"vm-smoke"},"executable":"/t/debug/vm-smoke"}"#;
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"tests"},"executable":null}"#;
        let other = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"probe"},"executable":"/t/debug/probe"}"#;
        assert_eq!(
            artifact(ours, &SMOKE),
            Some(PathBuf::from("/t/debug/vm-smoke"))
        );
        assert_eq!(artifact(lib, &SMOKE), None);
        assert_eq!(artifact(other, &SMOKE), None);
        assert_eq!(artifact("not json", &SMOKE), None);
        let test = VmBinary {
            kind: Kind::Test,
            name: "ipvs",
            ..SMOKE
        };
        let built = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"ipvs"},"executable":"/t/debug/deps/ipvs-0123abcd"}"#;
        assert_eq!(
            artifact(built, &test),
            Some(PathBuf::from("/t/debug/deps/ipvs-0123abcd"))
        );
    }
}
