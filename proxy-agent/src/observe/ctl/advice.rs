//! What `proxyctl` says when it finds no data plane: where it looked, what it found
//! there, and what to check. The facts are gathered by [`PinRoot::probe`] and turned
//! into words by pure functions, so that every case is tested without a bpffs.

use std::path::{Path, PathBuf};

use crate::dataplane::ebpf::{DEFAULT_BPFFS, bpffs, pins};
use crate::observe::errors::Advice;

/// What is at the pin root proxyctl was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinRoot {
    /// `--bpffs`.
    pub dir: PathBuf,
    /// Whether the directory exists.
    pub exists: bool,
    /// The nearest existing directory at or above it, if that is on a bpf filesystem.
    pub on_bpffs: Option<bool>,
}

impl PinRoot {
    /// Looks at `dir` and the directories above it.
    pub fn probe(dir: &Path) -> Self {
        let nearest = dir.ancestors().find(|d| d.exists());
        PinRoot {
            dir: dir.to_owned(),
            exists: dir.exists(),
            on_bpffs: nearest.map(bpffs::is_bpffs),
        }
    }

    /// Why nothing is there, naming the path looked for.
    fn problem(&self) -> String {
        let frontends = pins::map_path(&self.dir, proxy_common::maps::FRONTENDS);
        if self.exists {
            format!(
                "no agent state under {}: {} is not pinned",
                self.dir.display(),
                frontends.display()
            )
        } else {
            format!(
                "no agent state under {}: the directory does not exist",
                self.dir.display()
            )
        }
    }

    /// What to check, most likely first.
    fn fix(&self) -> String {
        let mut fix = format!(
            "check that the agent is running on this node in eBPF mode, and that it was \
             started with this --bpffs (both default to {DEFAULT_BPFFS}; pass proxyctl the \
             agent's --bpffs otherwise)"
        );
        if self.on_bpffs == Some(false) {
            fix.push_str(&format!(
                ". {} is not on a bpf filesystem, where the agent pins its maps: is one \
                 mounted (mount -t bpf bpf /sys/fs/bpf)?",
                self.dir.display()
            ));
        }
        fix
    }

    /// The error for eBPF mode.
    pub fn advice(&self) -> Advice {
        Advice {
            problem: self.problem(),
            fix: self.fix(),
        }
    }

    /// The error for `--mode auto`, where IPVS did not answer either (`ipvs`: why).
    pub fn advice_without_ipvs(&self, ipvs: &str) -> Advice {
        Advice {
            problem: format!(
                "found no data plane: {}; and in this network namespace {ipvs}",
                self.problem()
            ),
            fix: format!(
                "{}. For IPVS mode, run proxyctl in the agent's network namespace",
                self.fix()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(exists: bool, on_bpffs: Option<bool>) -> PinRoot {
        PinRoot {
            dir: PathBuf::from("/tmp/nothing"),
            exists,
            on_bpffs,
        }
    }

    #[test]
    fn the_advice_says_where_it_looked_and_what_to_check() {
        let cases = [
            (
                root(true, Some(false)),
                "no agent state under /tmp/nothing: /tmp/nothing/maps/FRONTENDS is not pinned",
                Some("/tmp/nothing is not on a bpf filesystem"),
            ),
            (
                root(false, Some(false)),
                "no agent state under /tmp/nothing: the directory does not exist",
                Some("mount -t bpf bpf /sys/fs/bpf"),
            ),
            (
                root(true, Some(true)),
                "no agent state under /tmp/nothing: /tmp/nothing/maps/FRONTENDS is not pinned",
                None,
            ),
        ];
        for (r, problem, mount) in cases {
            let a = r.advice();
            assert_eq!(a.problem, problem);
            assert!(
                a.fix.contains("is the agent running") || a.fix.contains("agent is running"),
                "{}",
                a.fix
            );
            assert!(a.fix.contains("started with this --bpffs"), "{}", a.fix);
            match mount {
                Some(m) => assert!(a.fix.contains(m), "{}", a.fix),
                None => assert!(!a.fix.contains("bpf filesystem"), "{}", a.fix),
            }
        }
    }

    #[test]
    fn auto_mode_also_says_why_ipvs_did_not_answer() {
        let a = root(true, Some(true)).advice_without_ipvs("the kernel has no IPVS");
        assert!(
            a.problem
                .starts_with("found no data plane: no agent state under /tmp/nothing")
                && a.problem
                    .ends_with("in this network namespace the kernel has no IPVS"),
            "{}",
            a.problem
        );
        assert!(
            a.fix
                .ends_with("run proxyctl in the agent's network namespace")
        );
    }

    #[test]
    fn probing_a_missing_directory_finds_the_nearest_existing_one() {
        let r = PinRoot::probe(Path::new("/nonexistent/proxy-agent"));
        assert!(!r.exists);
        assert_eq!(r.on_bpffs, Some(bpffs::is_bpffs(Path::new("/"))));
    }
}
