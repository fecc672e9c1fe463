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
//! - `<kernel version>/vmlinux`, `<kernel version>/base.cpio` (+ `base.key`): what qemu
//!   boots. The packages are unpacked (about 400 MB, in a temporary directory removed
//!   afterwards) only when one of these is missing or the key says the base is stale.

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
    let kernel_pkg = kernel_package()?;
    let kernel_version = kernel_pkg
        .strip_prefix("linux-image-")
        .unwrap_or(&kernel_pkg)
        .to_owned();
    let debs = cache.join("debs");
    let kernel_deb = fetch(&debs, &kernel_pkg)?;
    let busybox_deb = fetch(&debs, BUSYBOX)?;

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

/// The path of `package`'s .deb in `debs`, downloading it if it is not there.
fn fetch(debs: &Path, package: &str) -> Result<PathBuf> {
    let (file, size) = match deb_file(package) {
        Ok(found) => found,
        Err(_) => {
            // The apt lists may be older than the archive; refresh them once.
            crate::run_streamed(Command::new("apt-get").arg("update"))?;
            deb_file(package)?
        }
    };
    let path = debs.join(&file);
    if fs::metadata(&path).is_ok_and(|m| m.len() == size) {
        return Ok(path);
    }
    println!("vm-test: downloading {file} ({} MB)", size / 1_000_000);
    fs::create_dir_all(debs).with_context(|| format!("creating {}", debs.display()))?;
    // Into a directory of its own first, so a failed download leaves nothing in `debs`.
    let partial = TempDir::new(debs.join(format!("partial-{}", std::process::id())))?;
    let mut download = Command::new("apt-get");
    download
        .args(["download", "-q", package])
        .current_dir(partial.path());
    output(&mut download)?;
    fs::rename(partial.path().join(&file), &path)
        .with_context(|| format!("apt-get download left no {file}"))?;
    Ok(path)
}

/// The file name and size `apt-get download` would fetch for `package`, from
/// `'URI' FILE SIZE SHA256:...`.
fn deb_file(package: &str) -> Result<(String, u64)> {
    let mut cmd = Command::new("apt-get");
    cmd.args(["download", "--print-uris", package]);
    let stdout = output(&mut cmd)?;
    let mut words = stdout
        .lines()
        .find(|l| l.starts_with('\''))
        .with_context(|| format!("`{}` printed no URI", display(&cmd)))?
        .split_whitespace()
        .skip(1);
    let file = words
        .next()
        .filter(|f| f.ends_with(".deb") && !f.contains('/'));
    let size = words.next().and_then(|s| s.parse().ok());
    match (file, size) {
        (Some(file), Some(size)) => Ok((file.to_owned(), size)),
        _ => bail!("`{}`: unexpected output {stdout:?}", display(&cmd)),
    }
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
