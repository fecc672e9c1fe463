//! The host's iptables in the guest image: the IPVS mode installs its netfilter rules
//! with `iptables-restore`, and its VM tests read them back with `iptables-save`.
//! Debian's guest packages are never installed on the host, but the host's own
//! iptables (nf_tables backend, from `cargo xtask setup`) runs in the guest as the
//! test binaries do: its multi-call binary, the command names as links to it, every
//! extension it may `dlopen`, and their shared libraries.
//!
//! Written into the cached base archive; [`key`] is what makes an iptables upgrade on
//! the host rebuild it (the libraries go with the binary that was ldd'ed, so a base
//! that is stale on library versions is still consistent).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::cpio::Writer;
use super::initramfs::{add_host_file, mtime, shared_libraries};

/// Where the guest finds the binary (first on its `PATH`, before busybox's applets).
const MULTI: &str = "usr/sbin/xtables-nft-multi";
/// The names it answers to, as links next to it (it dispatches on `argv[0]`).
pub const COMMANDS: [&str; 6] = [
    "iptables",
    "iptables-restore",
    "iptables-save",
    "ip6tables",
    "ip6tables-restore",
    "ip6tables-save",
];
/// Where libxtables looks for extensions (its build-time `XTABLES_LIBDIR`).
const EXTENSIONS: &str = "usr/lib/x86_64-linux-gnu/xtables";

/// The host's iptables, by where its files are.
pub struct Tools {
    /// The nf_tables multi-call binary.
    pub multi: PathBuf,
    /// The extension directory.
    pub extensions: PathBuf,
}

impl Tools {
    /// The host's own, at Debian's paths.
    pub fn host() -> Tools {
        Tools {
            multi: Path::new("/").join(MULTI),
            extensions: Path::new("/").join(EXTENSIONS),
        }
    }

    /// The extension directory's entries, sorted: `(name, Some(link target))` for a
    /// link (several extensions share one library), `(name, None)` for a file.
    fn extensions(&self) -> Result<Vec<(String, Option<PathBuf>)>> {
        let dir = &self.extensions;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| {
            format!(
                "reading {} (apt-get install iptables, or `cargo xtask setup`)",
                dir.display()
            )
        })? {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type().context("reading a file type")?;
            let link = if kind.is_symlink() {
                Some(fs::read_link(entry.path()).with_context(|| format!("reading {name}"))?)
            } else {
                None
            };
            out.push((name, link));
        }
        out.sort();
        Ok(out)
    }

    /// The files the base copies and their sizes and times.
    pub fn key(&self) -> Result<String> {
        let mut key = String::new();
        let meta = fs::metadata(&self.multi).with_context(|| {
            format!(
                "reading {} (apt-get install iptables, or `cargo xtask setup`)",
                self.multi.display()
            )
        })?;
        key += &format!(
            "iptables {} {} {}\n",
            self.multi.display(),
            meta.len(),
            mtime(&meta)
        );
        for (name, link) in self.extensions()? {
            let path = self.extensions.join(&name);
            match link {
                Some(target) => key += &format!("xtables {name} -> {}\n", target.display()),
                None => {
                    let meta = fs::metadata(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    key += &format!("xtables {name} {} {}\n", meta.len(), mtime(&meta));
                }
            }
        }
        Ok(key)
    }

    /// Writes the binary, its command links, the extensions and every shared library
    /// they load that is not in `have`; returns how many libraries that was.
    pub fn add<W: Write>(&self, w: &mut Writer<W>, have: &[&str]) -> Result<usize> {
        let data =
            fs::read(&self.multi).with_context(|| format!("reading {}", self.multi.display()))?;
        w.file(MULTI, 0o755, &data)?;
        let file = MULTI.rsplit('/').next().unwrap_or(MULTI);
        for command in COMMANDS {
            w.symlink(&format!("usr/sbin/{command}"), file)?;
        }
        let mut elves = vec![self.multi.clone()];
        for (name, link) in self.extensions()? {
            let at = format!("{EXTENSIONS}/{name}");
            match link {
                Some(target) => w.symlink(&at, &target.to_string_lossy())?,
                None => {
                    let path = self.extensions.join(&name);
                    let data =
                        fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                    w.file(&at, 0o644, &data)?;
                    elves.push(path);
                }
            }
        }
        let mut libs = shared_libraries(&elves)?;
        libs.retain(|l| !have.contains(&l.as_str()));
        for lib in &libs {
            add_host_file(w, Path::new(lib))?;
        }
        Ok(libs.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::cpio::tests::entries;

    /// A fake iptables: the test binary itself (some dynamic ELF) as the multi-call
    /// binary and as one extension, plus a link to it.
    fn fake(dir: &Path) -> Tools {
        let exe = std::env::current_exe().expect("the test binary");
        let ext = dir.join("xtables");
        fs::create_dir_all(&ext).expect("mkdir");
        fs::copy(&exe, ext.join("libxt_NAT.so")).expect("copy");
        std::os::unix::fs::symlink("libxt_NAT.so", ext.join("libxt_MASQUERADE.so"))
            .expect("symlink");
        Tools {
            multi: exe,
            extensions: ext,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_image_gets_the_binary_its_command_links_and_the_extensions() {
        let dir = scratch("iptables-add");
        let tools = fake(&dir);
        let mut w = Writer::new(Vec::new(), 1);
        // Whatever the test binary links, all of it counts as already there.
        let have: Vec<String> = shared_libraries(std::slice::from_ref(&tools.multi)).expect("ldd");
        let have: Vec<&str> = have.iter().map(String::as_str).collect();
        assert_eq!(tools.add(&mut w, &have).expect("add"), 0);
        let e = entries(&w.finish().expect("finish"));
        let _ = fs::remove_dir_all(&dir);

        let find = |name: &str| {
            e.iter().find(|(n, ..)| n == name).unwrap_or_else(|| {
                panic!("{name} in {:?}", e.iter().map(|x| &x.0).collect::<Vec<_>>())
            })
        };
        let exe = fs::read(&tools.multi).expect("read");
        assert_eq!(find(MULTI).1 & 0o7777, 0o755);
        assert_eq!(find(MULTI).3, exe);
        for command in COMMANDS {
            let link = find(&format!("usr/sbin/{command}"));
            assert_eq!(link.1 & 0o170_000, 0o120_000, "{command} is a link");
            assert_eq!(link.3, b"xtables-nft-multi");
        }
        assert_eq!(find(&format!("{EXTENSIONS}/libxt_NAT.so")).3, exe);
        let masq = find(&format!("{EXTENSIONS}/libxt_MASQUERADE.so"));
        assert_eq!(masq.1 & 0o170_000, 0o120_000);
        assert_eq!(masq.3, b"libxt_NAT.so");
        for (name, ..) in &e {
            assert!(
                !have.contains(&format!("/{name}").as_str()),
                "{name} was there already"
            );
        }
    }

    #[test]
    fn the_key_changes_with_an_extension_and_names_missing_tools() {
        let dir = scratch("iptables-key");
        let tools = fake(&dir);
        let before = tools.key().expect("key");
        assert!(
            before.contains("xtables libxt_MASQUERADE.so -> libxt_NAT.so\n"),
            "{before}"
        );
        fs::write(tools.extensions.join("libxt_set.so"), b"new").expect("write");
        let after = tools.key().expect("key");
        let _ = fs::remove_dir_all(&dir);
        assert_ne!(before, after);

        let missing = Tools {
            multi: dir.join("nowhere"),
            extensions: dir.join("nowhere"),
        };
        let e = missing.key().expect_err("no iptables").to_string();
        assert!(e.contains("apt-get install iptables"), "{e}");
    }
}
