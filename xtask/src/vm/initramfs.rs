//! The guest's initramfs, in two concatenated cpio archives (the kernel unpacks them in
//! order, later entries over earlier ones):
//!
//! - the base, built once per guest kernel and cached: busybox and its applet links, the
//!   kernel modules the proxy's IPVS mode needs with their dependencies and a module
//!   index made by `depmod`, the host's core glibc libraries, and the host's iptables
//!   (see [`super::iptables`]);
//! - a small per-run archive: `/init`, the test binaries, and any further shared library
//!   they link (found with `ldd`).
//!
//! The test binaries are built on this host against its glibc; the guest kernel does not
//! care which C library its programs use, so the host's libraries go in as they are.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::cpio::Writer;
use super::guest::output;
use super::iptables::Tools;
use crate::display;

/// Kernel modules, in the order `/init` loads them (each with its dependencies).
/// `crc32c_generic` comes first: `libcrc32c` (needed by nf_conntrack, IPVS, nf_tables)
/// asks for the crc32c algorithm through a soft dependency, which busybox's modprobe
/// ignores, and fails with "unknown symbol" when it is not loaded yet.
pub const MODULES: &[&str] = &[
    "crc32c_generic",
    // IPVS and every scheduler kube-proxy's --ipvs-scheduler accepts.
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_lblc",
    "ip_vs_lblcr",
    "ip_vs_sh",
    "ip_vs_dh",
    "ip_vs_sed",
    "ip_vs_nq",
    "ip_vs_mh",
    "ip_vs_fo",
    "ip_vs_ovf",
    "nf_conntrack",
    "nf_nat",
    "nf_conntrack_netlink",
    // nftables, and the xtables matches kube-proxy's IPVS mode puts in its rules
    // (iptables-nft runs them through nft_compat).
    "nf_tables",
    "nft_ct",
    "nft_nat",
    "nft_chain_nat",
    "nft_masq",
    "nft_fib_inet",
    "nft_reject_inet",
    "nft_compat",
    "xt_conntrack",
    "xt_set",
    "xt_mark",
    "xt_comment",
    "xt_addrtype",
    "xt_MASQUERADE",
    "xt_ipvs",
    "xt_nat",
    "xt_tcpudp",
    "xt_multiport",
    "xt_physdev",
    "xt_statistic",
    // kube-proxy's count of the packets its INVALID drop rules drop (`-m nfacct`).
    "nfnetlink_acct",
    "xt_nfacct",
    "iptable_nat",
    "iptable_filter",
    // REJECT of the IPVS filter rules (VIP ports no service has): the xtables targets
    // iptables-nft runs through nft_compat, and nft's own in case it translates them.
    "ipt_REJECT",
    "ip6t_REJECT",
    "nft_reject_ipv4",
    "nft_reject_ipv6",
    // ipset and the set types kube-proxy creates.
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_ipport",
    "ip_set_hash_ipportip",
    "ip_set_hash_ipportnet",
    "ip_set_hash_net",
    "ip_set_bitmap_port",
    // Test topologies: pods are namespaces joined by veth, service IPs sit on a dummy.
    "veth",
    "dummy",
    "bridge",
    "br_netfilter",
];

/// The host libraries every Rust binary built here links; further ones go into the
/// per-run archive. Each is written at the path the binaries' `ldd` names.
const BASE_LIBS: &[&str] = &[
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib/x86_64-linux-gnu/libm.so.6",
    "/lib/x86_64-linux-gnu/libgcc_s.so.1",
];

/// Bump when the base's content changes in a way the key cannot see (this file).
/// 2: the host's iptables.
const BASE_FORMAT: u32 = 2;

/// What the cached base was built from: when it differs, the base is rebuilt.
pub fn base_key(debs: &[&Path]) -> Result<String> {
    let mut key = format!("format {BASE_FORMAT}\nmodules {}\n", MODULES.join(" "));
    for deb in debs {
        key += &format!("deb {}\n", deb.display());
    }
    for lib in BASE_LIBS {
        // A glibc upgrade on the host changes the libraries' size or time.
        let meta = fs::metadata(lib).with_context(|| format!("reading {lib}"))?;
        key += &format!("lib {lib} {} {}\n", meta.len(), mtime(&meta));
    }
    key += &Tools::host().key()?;
    Ok(key)
}

/// A file's modification time in seconds (0 if unknown).
pub(super) fn mtime(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Builds the base archive at `out` from the unpacked kernel and busybox packages in
/// `root` (which this also uses as scratch space; it must be on `out`'s file system).
pub fn build_base(root: &Path, kernel_version: &str, out: &Path) -> Result<()> {
    let modules = module_files(root, kernel_version)?;
    println!(
        "vm-test: base initramfs: {} modules ({} named, the rest dependencies)",
        modules.len(),
        MODULES.len()
    );
    // The image's module tree, indexed by depmod for the guest's modprobe.
    let image = root.join("image");
    let moddir = format!("lib/modules/{kernel_version}");
    for rel in modules.iter().map(PathBuf::from).chain(
        [
            "modules.order",
            "modules.builtin",
            "modules.builtin.modinfo",
        ]
        .iter()
        .map(PathBuf::from),
    ) {
        let to = image.join(&moddir).join(&rel);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::copy(root.join(&moddir).join(&rel), &to)
            .with_context(|| format!("copying {}", rel.display()))?;
    }
    depmod(&image, kernel_version)?;

    // Written in the scratch directory (removed with it on error), then moved into place.
    let tmp = root.join("base.cpio");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = Writer::new(BufWriter::new(file), 1);
    for dir in [
        "dev", "proc", "sys", "tmp", "run", "root", "etc", "usr/sbin",
    ] {
        w.dir(dir)?;
    }
    w.symlink("var/run", "/run")?;
    // The kernel opens /dev/console for /init before anything mounts devtmpfs.
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    w.file("etc/group", 0o644, b"root:x:0:\n")?;
    busybox(&mut w, root)?;
    add_tree(&mut w, &image, Path::new(""))?;
    for lib in BASE_LIBS {
        add_host_file(&mut w, Path::new(lib))?;
    }
    let libs = Tools::host().add(&mut w, BASE_LIBS)?;
    println!("vm-test: base initramfs: the host's iptables, with {libs} more libraries");
    w.finish()?
        .into_inner()
        .map_err(|e| e.into_error())
        .context("writing the base initramfs")?
        .sync_all()
        .context("syncing the base initramfs")?;
    fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))
}

/// Writes the initrd for one run at `out`: the base archive followed by one with `/init`
/// and each `(name, binary)` as `/tests/<name>`, plus the shared libraries they need
/// beyond the base's. (qemu takes one initrd file, hence the copy of the base.)
pub fn write_run(
    out: &Path,
    base: &Path,
    init: &str,
    binaries: &[(String, PathBuf)],
) -> Result<()> {
    fs::copy(base, out).with_context(|| format!("copying {}", base.display()))?;
    let file = fs::OpenOptions::new()
        .append(true)
        .open(out)
        .with_context(|| format!("opening {}", out.display()))?;
    let mut w = Writer::new(BufWriter::new(file), 1 << 24);
    w.file("init", 0o755, init.as_bytes())?;
    let mut libs = BTreeSet::new();
    for (name, binary) in binaries {
        let data = without_debug_info(binary, out)?;
        w.file(&format!("tests/{name}"), 0o755, &data)?;
        libs.extend(shared_libraries(std::slice::from_ref(binary))?);
    }
    for lib in libs.iter().filter(|l| !BASE_LIBS.contains(&l.as_str())) {
        add_host_file(&mut w, Path::new(lib))?;
    }
    w.finish()?.flush().context("writing the per-run initramfs")
}

/// `binary`'s bytes without its debug sections (`strip --strip-debug`, symbols kept, so
/// backtraces still name functions): a debug test binary is ~180 MB, mostly DWARF, and
/// two of them unstripped no longer unpack in the guest's 1 GiB ("Initramfs unpacking
/// failed: write error"). Without `strip` on the host, the binary as built.
fn without_debug_info(binary: &Path, scratch: &Path) -> Result<Vec<u8>> {
    let stripped = scratch.with_extension("stripped");
    let ran = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(binary)
        .status();
    let data = match ran {
        Ok(status) if status.success() => {
            fs::read(&stripped).with_context(|| format!("reading {}", stripped.display()))?
        }
        _ => {
            eprintln!(
                "vm-test: strip --strip-debug failed on {}; packing it whole",
                binary.display()
            );
            fs::read(binary).with_context(|| format!("reading {}", binary.display()))?
        }
    };
    let _ = fs::remove_file(&stripped);
    Ok(data)
}

/// The module files (relative to the module directory) for [`MODULES`] and everything
/// they depend on, from the guest kernel's own `modules.dep`.
fn module_files(root: &Path, kernel_version: &str) -> Result<BTreeSet<String>> {
    // The package ships no index (its postinst makes one); make it in the unpacked tree.
    depmod(root, kernel_version)?;
    let moddir = root.join(format!("lib/modules/{kernel_version}"));
    let dep = fs::read_to_string(moddir.join("modules.dep")).context("reading modules.dep")?;
    let index = parse_modules_dep(&dep);
    let builtin: HashSet<String> = fs::read_to_string(moddir.join("modules.builtin"))
        .context("reading modules.builtin")?
        .lines()
        .map(module_name)
        .collect();
    let mut files = BTreeSet::new();
    for name in MODULES {
        match index.get(*name) {
            Some((path, deps)) => {
                files.insert(path.clone());
                files.extend(deps.iter().cloned());
            }
            None if builtin.contains(*name) => {}
            None => bail!("kernel {kernel_version} has no module {name}"),
        }
    }
    Ok(files)
}

/// `name -> (file, [dependency files])` from `modules.dep`, whose lines read
/// `kernel/net/x/a.ko: kernel/net/x/b.ko kernel/lib/c.ko` (dependencies already closed
/// transitively by depmod).
fn parse_modules_dep(dep: &str) -> HashMap<String, (String, Vec<String>)> {
    dep.lines()
        .filter_map(|line| {
            let (path, deps) = line.split_once(':')?;
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            Some((module_name(path), (path.to_owned(), deps)))
        })
        .collect()
}

/// `kernel/net/netfilter/xt_MASQUERADE.ko[.xz]` -> `xt_MASQUERADE` (`-` read as `_`, as
/// the kernel does).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

fn depmod(root: &Path, kernel_version: &str) -> Result<()> {
    output(
        Command::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(kernel_version),
    )
    .context("depmod (apt-get install kmod, or `cargo xtask setup`)")?;
    Ok(())
}

/// `/bin/busybox` and a link for each applet, at the paths busybox itself lists.
fn busybox<W: Write>(w: &mut Writer<W>, root: &Path) -> Result<()> {
    let bin = root.join("bin/busybox");
    let data = fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    w.file("bin/busybox", 0o755, &data)?;
    // The static busybox runs on the host too.
    let list = output(Command::new(&bin).arg("--list-full"))?;
    let mut links = 0;
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if applet != "bin/busybox" {
            w.symlink(applet, "/bin/busybox")?;
            links += 1;
        }
    }
    if links < 100 {
        bail!("busybox lists only {links} applets: not the static busybox?");
    }
    Ok(())
}

/// Adds the tree under `base/rel` at `rel`, in a stable order.
fn add_tree<W: Write>(w: &mut Writer<W>, base: &Path, rel: &Path) -> Result<()> {
    let dir = base.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = rel.join(entry.file_name());
        let name = rel.to_string_lossy();
        let kind = entry.file_type().context("reading a file type")?;
        if kind.is_dir() {
            w.dir(&name)?;
            add_tree(w, base, &rel)?;
        } else {
            let data = fs::read(base.join(&rel)).with_context(|| format!("reading {name}"))?;
            w.file(&name, 0o644, &data)?;
        }
    }
    Ok(())
}

/// A host file at the same path in the image (its content, through any symlink).
pub(super) fn add_host_file<W: Write>(w: &mut Writer<W>, path: &Path) -> Result<()> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    w.file(&path.to_string_lossy(), 0o755, &data)
}

/// The shared libraries `binaries` load, as `ldd` resolves them on this host (one
/// `ldd` for all: it takes a few milliseconds per file), each once.
pub(super) fn shared_libraries(binaries: &[PathBuf]) -> Result<Vec<String>> {
    let mut cmd = Command::new("ldd");
    cmd.args(binaries);
    let out = cmd
        .output()
        .with_context(|| format!("starting `{}`", display(&cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary needs nothing ("not a dynamic executable", exit status 1).
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
            || stdout.contains("statically linked")
        {
            return Ok(Vec::new());
        }
        bail!("`{}` failed: {}", display(&cmd), stdout.trim());
    }
    let mut libs =
        parse_ldd(&stdout).with_context(|| format!("libraries of `{}`", display(&cmd)))?;
    let mut seen = HashSet::new();
    libs.retain(|l| seen.insert(l.clone()));
    Ok(libs)
}

/// Library paths from `ldd` output lines: `libc.so.6 => /lib/.../libc.so.6 (0x...)`,
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file. With several files,
/// each one's list follows a `/path/of/file:` line, which names no library.
fn parse_ldd(stdout: &str) -> Result<Vec<String>> {
    let mut libs = Vec::new();
    for line in stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.ends_with(':'))
    {
        let target = line.split_once("=>").map_or(line, |(_, t)| t.trim());
        if target.starts_with("not found") {
            bail!("missing shared library: {line}");
        }
        let path = target.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            libs.push(path.to_owned());
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_loaded_before_anything_that_needs_libcrc32c() {
        assert_eq!(MODULES[0], "crc32c_generic");
    }

    #[test]
    fn modules_dep_lines_give_name_file_and_dependencies() {
        let dep = "kernel/crypto/crc32c_generic.ko:\n\
                   kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko kernel/lib/libcrc32c.ko\n\
                   kernel/net/netfilter/xt_MASQUERADE.ko.xz: kernel/net/netfilter/x_tables.ko.xz\n";
        let index = parse_modules_dep(dep);
        assert_eq!(index["crc32c_generic"].1, Vec::<String>::new());
        assert_eq!(
            index["ip_vs"],
            (
                "kernel/net/netfilter/ipvs/ip_vs.ko".to_owned(),
                vec![
                    "kernel/net/netfilter/nf_conntrack.ko".to_owned(),
                    "kernel/lib/libcrc32c.ko".to_owned()
                ]
            )
        );
        assert!(index.contains_key("xt_MASQUERADE"));
        assert_eq!(module_name("kernel/drivers/net/ip-vs.ko"), "ip_vs");
    }

    #[test]
    fn ldd_output_gives_library_paths_and_skips_the_vdso() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f09)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f0a)\n";
        assert_eq!(
            parse_ldd(out).expect("parses"),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn ldd_output_for_several_files_skips_their_headers() {
        let out = "/usr/sbin/xtables-nft-multi:\n\
                   \tlibxtables.so.12 => /lib/x86_64-linux-gnu/libxtables.so.12 (0x7f1d)\n\
                   /usr/lib/x86_64-linux-gnu/xtables/libxt_set.so:\n\
                   \tlibxtables.so.12 => /lib/x86_64-linux-gnu/libxtables.so.12 (0x7f3e)\n";
        assert_eq!(
            parse_ldd(out).expect("parses"),
            [
                "/lib/x86_64-linux-gnu/libxtables.so.12",
                "/lib/x86_64-linux-gnu/libxtables.so.12"
            ]
        );
    }

    #[test]
    fn the_ipvs_rules_modules_are_loaded() {
        for m in [
            "xt_set",
            "xt_mark",
            "xt_conntrack",
            "xt_comment",
            "xt_addrtype",
            "xt_MASQUERADE",
            "xt_physdev",
            "xt_nfacct",
            "ipt_REJECT",
            "ip6t_REJECT",
        ] {
            assert!(MODULES.contains(&m), "{m}");
        }
    }
}
