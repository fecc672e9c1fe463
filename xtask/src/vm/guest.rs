//! The guest's software: Debian 12's kernel and busybox, downloaded once and turned into
//! a bootable kernel and a base initramfs, all cached.
//!
//! The cache lives in the target directory, `target/vm/` (`$CARGO_TARGET_DIR/vm/`): it
//! is never committed, needs no root to write, is per checkout like every other build
//! product, and `cargo clean` resets it. Layout:
//!
//! - `debs/*.deb`: the packages as `apt-get download` fetched them (apt checks their
//!   SHA256 against the signed archive index while downloading). A run downloads only a
//!   package whose exact file (name and size from `apt-get download --print-uris`) is
//!   missing, so a second run downloads nothing, and a new kernel ABI in the apt lists
//!   is picked up by the next run.
//! - `resolved`: apt's answer (packages, files, sizes, SHA256), reused while the apt
//!   lists are unchanged.
//! - `<kernel version>/vmlinux`, `<kernel version>/base.cpio` (+ `base.key`): what qemu
//!   boots. The packages are unpacked (about 400 MB, in a temporary directory removed
//!   afterwards) only when one of these is missing or the key says the base is stale;
//!   their SHA256 is checked again first.
//! - `last-console.log`: the last run's console (written by the caller).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{initramfs, vmlinux};
use crate::display;

/// The meta package whose dependency names the current kernel ABI.
const KERNEL_META: &str = "linux-image-amd64";
const BUSYBOX: &str = "busybox-static";

/// What qemu needs, all under the cache.
pub struct Guest {
    /// E.g. `6.1.0-57-amd64`.
    pub kernel_version: String,
    pub vmlinux: PathBuf,
    pub base_initramfs: PathBuf,
}

/// Downloads what is missing and builds what is stale; fast when all is cached.
pub fn prepare(cache: &Path) -> Result<Guest> {
    let debs = cache.join("debs");
    let resolved = resolve(cache)?;
    let kernel_version = resolved
        .kernel
        .package
        .strip_prefix("linux-image-")
        .unwrap_or(&resolved.kernel.package)
        .to_owned();
    let kernel_deb = fetch(&debs, &resolved.kernel)?;
    let busybox_deb = fetch(&debs, &resolved.busybox)?;

    let dir = cache.join(&kernel_version);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let guest = Guest {
        vmlinux: dir.join("vmlinux"),
        base_initramfs: dir.join("base.cpio"),
        kernel_version,
    };
    let key_path = dir.join("base.key");
    let key = initramfs::base_key(&[&kernel_deb, &busybox_deb])?;
    let fresh = guest.vmlinux.is_file()
        && guest.base_initramfs.is_file()
        && fs::read_to_string(&key_path).ok().as_deref() == Some(key.as_str());
    if fresh {
        println!("vm-test: guest {} cached", guest.kernel_version);
        return Ok(guest);
    }

    println!(
        "vm-test: building the guest image from {}",
        kernel_deb.display()
    );
    // apt checked the hashes when it downloaded; check again what has sat in the cache.
    verify(&kernel_deb, &resolved.kernel)?;
    verify(&busybox_deb, &resolved.busybox)?;
    let unpacked = TempDir::new(cache.join(format!("unpack-{}", std::process::id())))?;
    let root = unpacked.path();
    unpack(&kernel_deb, root)?;
    unpack(&busybox_deb, root)?;
    let bzimage = root.join(format!("boot/vmlinuz-{}", guest.kernel_version));
    vmlinux::extract(&bzimage, &guest.vmlinux)?;
    let _ = fs::remove_file(&key_path);
    initramfs::build_base(root, &guest.kernel_version, &guest.base_initramfs)?;
    fs::write(&key_path, key).with_context(|| format!("writing {}", key_path.display()))?;
    Ok(guest)
}

/// A package and the exact file `apt-get download` fetches for it.
#[derive(Debug, PartialEq)]
struct Deb {
    package: String,
    file: String,
    size: u64,
    /// From the signed archive index, as apt prints it.
    sha256: String,
}

/// The guest's packages as the apt lists name them now.
struct Resolved {
    kernel: Deb,
    busybox: Deb,
}

/// Asks apt which packages and files make the guest, or reads the answer saved by an
/// earlier run if the apt lists have not changed since (`apt-get update` renames fresh
/// lists into place, which changes the directory's time). Asking apt takes a second
/// or two of a run that otherwise takes a few.
fn resolve(cache: &Path) -> Result<Resolved> {
    let saved = cache.join("resolved");
    let lists = fs::metadata(APT_LISTS)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| format!("lists {}", d.as_nanos()));
    if let (Some(lists), Ok(text)) = (&lists, fs::read_to_string(&saved)) {
        let mut lines = text.lines();
        if lines.next() == Some(lists.as_str()) {
            let mut debs = lines.filter_map(parse_saved);
            if let (Some(kernel), Some(busybox)) = (debs.next(), debs.next()) {
                return Ok(Resolved { kernel, busybox });
            }
        }
    }
    let kernel = kernel_package()?;
    let mut debs = deb_files(&[&kernel, BUSYBOX]).or_else(|_| {
        // The apt lists may be older than the archive; refresh them once.
        crate::run_streamed(Command::new("apt-get").arg("update"))?;
        deb_files(&[&kernel, BUSYBOX])
    })?;
    let (Some(busybox), Some(kernel)) = (debs.pop(), debs.pop()) else {
        bail!("apt-get download --print-uris named fewer files than packages");
    };
    if let Some(lists) = lists {
        let text = format!(
            "{lists}\n{}\n{}\n",
            saved_line(&kernel),
            saved_line(&busybox)
        );
        fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
        fs::write(&saved, text).with_context(|| format!("writing {}", saved.display()))?;
    }
    Ok(Resolved { kernel, busybox })
}

const APT_LISTS: &str = "/var/lib/apt/lists";

fn saved_line(deb: &Deb) -> String {
    format!("{} {} {} {}", deb.package, deb.file, deb.size, deb.sha256)
}

fn parse_saved(line: &str) -> Option<Deb> {
    let mut words = line.split_whitespace();
    Some(Deb {
        package: words.next()?.to_owned(),
        file: words.next()?.to_owned(),
        size: words.next()?.parse().ok()?,
        sha256: words.next()?.to_owned(),
    })
}

/// `linux-image-6.1.0-N-amd64`, the package `linux-image-amd64` depends on now.
fn kernel_package() -> Result<String> {
    let mut cmd = Command::new("apt-cache");
    cmd.args(["depends", KERNEL_META]);
    let stdout = output(&mut cmd)?;
    stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_owned)
        .with_context(|| format!("`{}` names no linux-image-*-amd64", display(&cmd)))
}

/// The path of `deb` in `debs`, downloading it if it is not there.
fn fetch(debs: &Path, deb: &Deb) -> Result<PathBuf> {
    let path = debs.join(&deb.file);
    if fs::metadata(&path).is_ok_and(|m| m.len() == deb.size) {
        return Ok(path);
    }
    println!(
        "vm-test: downloading {} ({} MB)",
        deb.file,
        deb.size / 1_000_000
    );
    fs::create_dir_all(debs).with_context(|| format!("creating {}", debs.display()))?;
    // Into a directory of its own first, so a failed download leaves nothing in `debs`.
    let partial = TempDir::new(debs.join(format!("partial-{}", std::process::id())))?;
    let mut download = Command::new("apt-get");
    download
        .args(["download", "-q", &deb.package])
        .current_dir(partial.path());
    output(&mut download)?;
    fs::rename(partial.path().join(&deb.file), &path)
        .with_context(|| format!("apt-get download left no {}", deb.file))?;
    Ok(path)
}

/// The files `apt-get download` would fetch for `packages`, in order, from its
/// `--print-uris` lines `'URI' FILE SIZE SHA256:...`.
fn deb_files(packages: &[&str]) -> Result<Vec<Deb>> {
    let mut cmd = Command::new("apt-get");
    cmd.args(["download", "--print-uris"]).args(packages);
    let stdout = output(&mut cmd)?;
    let debs = parse_print_uris(packages, &stdout)
        .with_context(|| format!("`{}`: unexpected output {stdout:?}", display(&cmd)))?;
    Ok(debs)
}

fn parse_print_uris(packages: &[&str], stdout: &str) -> Option<Vec<Deb>> {
    let mut files = Vec::new();
    for line in stdout.lines().filter(|l| l.starts_with('\'')) {
        let mut words = line.split_whitespace().skip(1);
        let file = words
            .next()
            .filter(|f| f.ends_with(".deb") && !f.contains('/'))?;
        let size: u64 = words.next()?.parse().ok()?;
        let sha256 = words.next()?.strip_prefix("SHA256:")?;
        files.push((file, size, sha256));
    }
    // apt prints in its own order: match each package to its file by name.
    packages
        .iter()
        .map(|p| {
            let prefix = format!("{p}_");
            let (file, size, sha256) = files.iter().find(|(f, _, _)| f.starts_with(&prefix))?;
            Some(Deb {
                package: (*p).to_owned(),
                file: (*file).to_owned(),
                size: *size,
                sha256: (*sha256).to_owned(),
            })
        })
        .collect()
}

/// Fails (and removes the file, so the next run downloads it again) unless `path`
/// has the SHA256 the archive index gives for `deb`.
fn verify(path: &Path, deb: &Deb) -> Result<()> {
    let sum = output(Command::new("sha256sum").arg(path))?;
    if sum.split_whitespace().next() != Some(deb.sha256.as_str()) {
        let _ = fs::remove_file(path);
        bail!(
            "{}: SHA256 is not the archive's; removed it, run again",
            path.display()
        );
    }
    Ok(())
}

fn unpack(deb: &Path, root: &Path) -> Result<()> {
    output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root))?;
    Ok(())
}

/// Runs `cmd`, returning its stdout, or failing with its stderr.
pub(super) fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("starting `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A directory removed (with its contents) when dropped, on success and on error.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(path: PathBuf) -> Result<Self> {
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_lines_are_matched_to_their_packages() {
        let out = "'http://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1%3a1.35.0-4%2bdeb12u1%2bb1_amd64.deb' busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb 928188 SHA256:3d3f\n\
                   'http://deb.debian.org/debian-security/pool/updates/main/l/linux-signed-amd64/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb' linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb 70591024 SHA256:14d2\n";
        let debs = parse_print_uris(&["linux-image-6.1.0-57-amd64", "busybox-static"], out)
            .expect("parses");
        assert_eq!(
            debs[0].file,
            "linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb"
        );
        assert_eq!(debs[0].size, 70_591_024);
        assert_eq!(debs[1].package, "busybox-static");
        assert_eq!(debs[1].size, 928_188);
        assert_eq!(debs[1].sha256, "3d3f");
        assert!(parse_print_uris(&["bash"], out).is_none());
    }

    #[test]
    fn a_saved_resolution_reads_back() {
        let deb = Deb {
            package: "busybox-static".into(),
            file: "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb".into(),
            size: 928_188,
            sha256: "3d3f".into(),
        };
        assert_eq!(parse_saved(&saved_line(&deb)), Some(deb));
    }
}
