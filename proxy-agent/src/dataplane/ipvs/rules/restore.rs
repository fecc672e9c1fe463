//! Applying and removing the rules with the iptables tools, as kube-proxy does:
//! `iptables-restore -w 5 --noflush` with [`render`]'s text (which declares, so
//! flushes, only our chains), then each jump from a built-in chain checked with
//! `iptables -C` and inserted first in its chain when missing (kube-proxy's
//! `EnsureRule`), so applying twice changes nothing. `ip6tables*` for IPv6.
//!
//! The tools run in the calling thread's network namespace (a child starts in it).
//! Whichever backend they have (nf_tables or legacy), the rules read the same in
//! `iptables-save`.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::process::{Command, Output, Stdio};

use super::chains::{JUMPS, Jump, TABLES, Table, all_chains};
use super::error::RulesError;
use super::render::render;
use crate::dataplane::ipvs::RuleOptions;

/// How long a tool waits for the xtables lock (legacy backend) before failing.
const WAIT_S: &str = "5";
/// More copies of one jump than this means deleting does not take: stop.
const MAX_COPIES: usize = 64;

/// Runs a program: the seam the unit tests fake.
pub trait Runner {
    /// Runs `program` with `args`, `stdin` as its input (none: `/dev/null`), and
    /// returns how it exited and what it printed.
    fn run(&mut self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<Output>;
}

/// Runs the real programs, found on `PATH`.
#[derive(Clone, Copy, Debug, Default)]
pub struct System;

impl Runner for System {
    fn run(&mut self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<Output> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let input = child.stdin.take();
        std::thread::scope(|s| {
            if let (Some(mut pipe), Some(text)) = (input, stdin) {
                // Written beside the wait so that neither side blocks the other; a
                // tool that stops reading early says why on stderr, so a broken
                // pipe here adds nothing.
                s.spawn(move || {
                    let _ = pipe.write_all(text.as_bytes());
                });
            }
            child.wait_with_output()
        })
    }
}

/// The rules of one family, applied or removed through `R`.
#[derive(Debug)]
pub struct Iptables<R = System> {
    v6: bool,
    runner: R,
}

impl Iptables<System> {
    /// The real tools of the family (`ip6tables*` with `v6`).
    pub fn new(v6: bool) -> Self {
        Iptables::with_runner(v6, System)
    }
}

/// Applies the rules of the family in the calling thread's namespace.
pub fn apply(v6: bool, opts: &RuleOptions) -> Result<(), RulesError> {
    Iptables::new(v6).apply(opts)
}

/// Removes the rules of the family; whether there was anything to remove.
pub fn remove(v6: bool) -> Result<bool, RulesError> {
    Iptables::new(v6).remove()
}

impl<R: Runner> Iptables<R> {
    /// The family's tools run by `runner`.
    pub fn with_runner(v6: bool, runner: R) -> Self {
        Iptables { v6, runner }
    }

    /// `iptables` or `ip6tables`, followed by `suffix` (`-restore`, `-save`).
    pub fn program(&self, suffix: &str) -> String {
        let base = if self.v6 { "ip6tables" } else { "iptables" };
        format!("{base}{suffix}")
    }

    /// Restores [`render`]'s rules, then makes sure each jump is there once.
    pub fn apply(&mut self, opts: &RuleOptions) -> Result<(), RulesError> {
        self.restore(&render(self.v6, opts))?;
        for jump in &JUMPS {
            if !self.has(jump)? {
                let mut args = vec!["-I", jump.from];
                args.extend(jump.args());
                self.iptables(jump.table, &args)?;
            }
        }
        Ok(())
    }

    /// Deletes the jumps, then flushes and deletes the chains this module declares
    /// (no other); whether any was there. Absent chains and tables are fine.
    pub fn remove(&mut self) -> Result<bool, RulesError> {
        let present = chains_in(&self.save()?);
        let ours: Vec<(Table, &str)> = all_chains()
            .filter(|(t, c)| present.contains(&(t.name().to_owned(), (*c).to_owned())))
            .collect();
        // A jump needs its target chain, so without our chains there is none.
        if ours.is_empty() {
            return Ok(false);
        }
        for jump in JUMPS.iter().filter(|j| ours.contains(&(j.table, j.to))) {
            let mut copies = 0;
            while self.has(jump)? {
                copies += 1;
                if copies > MAX_COPIES {
                    return Err(RulesError::Command {
                        table: jump.table.name(),
                        command: self.command_line(jump.table, &["-D", jump.from]),
                        status: "still present".into(),
                        stderr: format!("more than {MAX_COPIES} deletions of the same jump"),
                    });
                }
                let mut args = vec!["-D", jump.from];
                args.extend(jump.args());
                self.iptables(jump.table, &args)?;
            }
        }
        for table in TABLES {
            let chains: Vec<&str> = ours
                .iter()
                .filter(|(t, _)| *t == table)
                .map(|(_, c)| *c)
                .collect();
            if !chains.is_empty() {
                self.restore(&deletion(table, &chains))?;
            }
        }
        Ok(true)
    }

    /// `iptables-save`'s output: every table of the family.
    pub fn save(&mut self) -> Result<String, RulesError> {
        let program = self.program("-save");
        let out = self.run(&program, &[], None)?;
        if !out.status.success() {
            return Err(RulesError::Command {
                table: "all",
                command: program,
                status: out.status.to_string(),
                stderr: stderr(&out),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether `jump` is in its chain (`iptables -C`: 0 yes, 1 no).
    fn has(&mut self, jump: &Jump) -> Result<bool, RulesError> {
        let mut args = vec!["-C", jump.from];
        args.extend(jump.args());
        let out = self.iptables_output(jump.table, &args)?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(self.failed(jump.table, &args, &out)),
        }
    }

    fn iptables(&mut self, table: Table, args: &[&str]) -> Result<(), RulesError> {
        let out = self.iptables_output(table, args)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(self.failed(table, args, &out))
        }
    }

    fn iptables_output(&mut self, table: Table, args: &[&str]) -> Result<Output, RulesError> {
        let program = self.program("");
        let mut all = vec!["-w", WAIT_S, "-t", table.name()];
        all.extend_from_slice(args);
        self.run(&program, &all, None)
    }

    fn failed(&self, table: Table, args: &[&str], out: &Output) -> RulesError {
        RulesError::Command {
            table: table.name(),
            command: self.command_line(table, args),
            status: out.status.to_string(),
            stderr: stderr(out),
        }
    }

    fn command_line(&self, table: Table, args: &[&str]) -> String {
        let mut line = format!("{} -w {WAIT_S} -t {table}", self.program(""));
        for a in args {
            if a.contains(' ') {
                line += &format!(" \"{a}\"");
            } else {
                line += &format!(" {a}");
            }
        }
        line
    }

    fn restore(&mut self, input: &str) -> Result<(), RulesError> {
        let program = self.program("-restore");
        let out = self.run(&program, &["-w", WAIT_S, "--noflush"], Some(input))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = stderr(&out);
        let line = failed_line(&stderr).and_then(|n| {
            let text = input.lines().nth(n.checked_sub(1)?)?;
            Some((n, text.to_owned()))
        });
        Err(RulesError::Restore {
            program,
            table: line
                .as_ref()
                .map_or(Table::Nat, |(n, _)| table_at(input, *n))
                .name(),
            status: out.status.to_string(),
            line,
            stderr,
        })
    }

    fn run(
        &mut self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output, RulesError> {
        self.runner
            .run(program, args, stdin)
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => RulesError::NotFound {
                    program: program.to_owned(),
                },
                _ => RulesError::Spawn {
                    program: program.to_owned(),
                    source,
                },
            })
    }
}

/// The restore input that flushes `chains` (declaring one flushes it) and deletes them;
/// flushing all first drops their references to each other.
fn deletion(table: Table, chains: &[&str]) -> String {
    let mut s = format!("*{table}\n");
    for c in chains {
        s += &format!(":{c} - [0:0]\n");
    }
    for c in chains {
        s += &format!("-X {c}\n");
    }
    s + "COMMIT\n"
}

/// `(table, chain)` of every chain in `iptables-save` output (`*table`, `:CHAIN ...`).
fn chains_in(saved: &str) -> BTreeSet<(String, String)> {
    let mut table = "";
    let mut chains = BTreeSet::new();
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim();
        } else if let Some(chain) = line
            .strip_prefix(':')
            .and_then(|rest| rest.split_whitespace().next())
        {
            chains.insert((table.to_owned(), chain.to_owned()));
        }
    }
    chains
}

/// The line iptables-restore names in its complaint: `Error occurred at line: N`
/// (a line it could not parse) or `line N failed` (a commit the kernel refused).
fn failed_line(stderr: &str) -> Option<usize> {
    stderr.match_indices("line").find_map(|(at, word)| {
        let rest = stderr[at + word.len()..].trim_start_matches([':', ' ']);
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// The table line `n` (from 1) of a restore input is in.
fn table_at(input: &str, n: usize) -> Table {
    input
        .lines()
        .take(n)
        .filter_map(|l| l.strip_prefix('*'))
        .last()
        .and_then(|t| TABLES.into_iter().find(|table| table.name() == t.trim()))
        .unwrap_or(Table::Nat)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

#[cfg(test)]
#[path = "restore_tests.rs"]
mod tests;
